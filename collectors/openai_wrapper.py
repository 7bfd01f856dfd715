"""`wrap_openai(client)`: record every call of the official `openai` client as a request event.

Covers chat.completions, completions, embeddings and responses, sync (`OpenAI`) and async
(`AsyncOpenAI`), streaming or not. Usage comes from the response; for a streamed chat or
completion we ask the server for a final usage chunk (`stream_options.include_usage`) when the
caller did not, and hide that extra chunk from the caller so their loop sees what it asked for.
When a server sends no usage at all, output tokens are estimated as the number of content
chunks and input tokens as prompt characters / 4 (the length is read, the text never stored).

Audio: `audio.speech.create` records the characters of `input`, usage tokens when the server
reports them (stream_format="sse", gpt-4o-mini-tts) and the seconds of audio returned (wav/pcm);
`audio.transcriptions.create` / `audio.translations.create` record the usage (tokens or
seconds), else verbose_json's `duration`, else the seconds of the `file` argument when it is WAV
(bytes, a path, a file object: only its header is read). Neither text nor audio is kept.

Per-call tags and operation: `costpipe_tags={"team": ...}`, `costpipe_operation="..."` keyword
arguments, removed before the call reaches the client. Per-client: `wrap_openai(..., tags=...)`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from costpipe.collectors.audio_units import (
    WAV_HEAD_MAX,
    audio_seconds,
    file_seconds,
    speech_sse_units,
    usage_units,
)
from costpipe.collectors.sdk import Tracker

_ENDPOINTS = {
    # attribute path -> (gen_ai operation name, default business operation)
    ("chat", "completions"): ("chat", "text"),
    ("completions",): ("text_completion", "text"),
    ("embeddings",): ("embeddings", "embeddings"),
    ("responses",): ("chat", "text"),
}
_AUDIO_ENDPOINTS = {
    # attribute path -> (gen_ai operation name, default business operation), as the proxy's
    ("audio", "speech"): ("speech", "speech"),
    ("audio", "transcriptions"): ("transcription", "transcription"),
    ("audio", "translations"): ("translation", "translation"),
}
_STREAM_OPTIONS_KINDS = ("chat", "text_completion")
_TOKEN_FIELDS = ("input_tokens", "output_tokens")


def wrap_openai(
    client: Any,
    operation: str | None = None,
    tags: Mapping[str, str] | None = None,
    provider: str = "openai",
) -> Any:
    """Instrument `client` in place (and return it). `provider` names who serves the base_url:
    "openai" for the API, or one of settings.providers.internal for an own vLLM server."""
    for path, (gen_ai_operation, default_operation) in (_ENDPOINTS | _AUDIO_ENDPOINTS).items():
        resource = client
        for name in path:
            resource = getattr(resource, name, None)
            if resource is None:
                break
        if resource is None or getattr(resource.create, "__costpipe__", False):
            continue
        instrument = _instrument_audio if path in _AUDIO_ENDPOINTS else _instrument
        resource.create = instrument(
            resource.create, gen_ai_operation, operation or default_operation, dict(tags or {}),
            provider,
        )
    return client


def _new_tracker(kwargs: dict[str, Any], gen_ai_operation: str, operation: str,
                 tags: dict[str, str], provider: str) -> Tracker:
    """A tracker for one call; removes our `costpipe_*` keywords from `kwargs`."""
    call_tags = {**tags, **(kwargs.pop("costpipe_tags", None) or {})}
    call_operation = kwargs.pop("costpipe_operation", None) or operation
    fields: dict[str, Any] = {"gen_ai_operation": gen_ai_operation, "source": "sdk"}
    fields.update({k: v for k, v in call_tags.items() if k in ("team", "app", "feature")})
    return Tracker(call_operation, provider, str(kwargs.get("model") or "unknown"), fields)


def _instrument(
    create: Callable[..., Any], gen_ai_operation: str, operation: str, tags: dict[str, str],
    provider: str,
) -> Callable[..., Any]:
    def begin(kwargs: dict[str, Any]) -> tuple[Tracker, bool, bool]:
        tracker = _new_tracker(kwargs, gen_ai_operation, operation, tags, provider)
        stream = kwargs.get("stream") is True
        injected = False
        if stream and gen_ai_operation in _STREAM_OPTIONS_KINDS and "stream_options" not in kwargs:
            kwargs["stream_options"] = {"include_usage": True}
            injected = True
        return tracker.start(), stream, injected

    async def finish_async(pending: Any, tracker: Tracker, stream: bool, injected: bool,
                           prompt_chars: int) -> Any:
        try:
            result = await pending
        except BaseException as exc:
            tracker.finish(exc)
            raise
        if stream:
            return _AsyncStream(result, _StreamState(tracker, injected, prompt_chars))
        _apply_usage(tracker, result)
        tracker.finish()
        return result

    @functools.wraps(create)
    def run(*args: Any, **kwargs: Any) -> Any:
        tracker, stream, injected = begin(kwargs)
        try:
            result = create(*args, **kwargs)
        except BaseException as exc:
            tracker.finish(exc)
            raise
        if inspect.isawaitable(result):  # AsyncOpenAI: its create() returns a coroutine
            return finish_async(result, tracker, stream, injected, _prompt_chars(kwargs))
        if stream:
            return _SyncStream(result, _StreamState(tracker, injected, _prompt_chars(kwargs)))
        _apply_usage(tracker, result)
        tracker.finish()
        return result

    run.__costpipe__ = True  # type: ignore[attr-defined]
    return run


def _instrument_audio(
    create: Callable[..., Any], gen_ai_operation: str, operation: str, tags: dict[str, str],
    provider: str,
) -> Callable[..., Any]:
    """Like `_instrument`, for speech, transcription and translation: their units are
    characters, seconds and audio tokens, and a streamed transcript ends in `.done` usage."""
    speech = gen_ai_operation == "speech"

    def wrap(result: Any, call: _AudioRequest) -> Any:
        if call.stream:
            state = _TranscriptStreamState(call)
            return (_AsyncStream(result, state) if hasattr(result, "__aiter__")
                    else _SyncStream(result, state))
        call.finish(result)
        return result

    async def finish_async(pending: Any, call: _AudioRequest) -> Any:
        try:
            result = await pending
        except BaseException as exc:
            call.tracker.finish(exc)
            raise
        return wrap(result, call)

    @functools.wraps(create)
    def run(*args: Any, **kwargs: Any) -> Any:
        tracker = _new_tracker(kwargs, gen_ai_operation, operation, tags, provider)
        call = _AudioRequest(tracker, kwargs, speech)  # reads the upload's header first
        tracker.start()
        try:
            result = create(*args, **kwargs)
        except BaseException as exc:
            tracker.finish(exc)
            raise
        if inspect.isawaitable(result):  # AsyncOpenAI
            return finish_async(result, call)
        return wrap(result, call)

    run.__costpipe__ = True  # type: ignore[attr-defined]
    return run


class _AudioRequest:
    """One audio call: what its arguments say in billed units (never the text or audio)."""

    __slots__ = ("characters", "response_format", "speech", "sse", "stream", "tracker",
                 "upload_seconds")

    def __init__(self, tracker: Tracker, kwargs: Mapping[str, Any], speech: bool) -> None:
        self.tracker, self.speech = tracker, speech
        text = kwargs.get("input")
        self.characters = len(text) if speech and isinstance(text, str) else None
        fmt = kwargs.get("response_format")
        self.response_format = fmt if isinstance(fmt, str) else ("mp3" if speech else None)
        self.sse = kwargs.get("stream_format") == "sse"
        self.stream = not speech and kwargs.get("stream") is True
        self.upload_seconds = None if speech else file_seconds(kwargs.get("file"))

    def finish(self, result: Any) -> None:
        """Record the units of a complete (non-streamed) result and emit the event."""
        units = self.speech_units(result) if self.speech else self.transcript_units(result)
        _record_units(self.tracker, units)
        self.tracker.finish()

    def speech_units(self, result: Any) -> dict[str, Any]:
        units: dict[str, Any] = {"input_characters": self.characters}
        body = _binary_body(result)
        if body is None:  # e.g. with_streaming_response: the body is not read yet
            return units
        if self.sse or _content_type(result) == "text/event-stream":
            units.update(speech_sse_units(body, self.response_format))
        else:
            units["output_audio_seconds"] = audio_seconds(
                self.response_format, body[:WAV_HEAD_MAX], len(body))
        return units

    def transcript_units(self, result: Any) -> dict[str, Any]:
        usage = _as_dict(getattr(result, "usage", None))
        if usage:
            return usage_units(usage, speech=False)
        duration = getattr(result, "duration", None)  # verbose_json
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            return {"input_audio_seconds": float(duration)}
        return {"input_audio_seconds": self.upload_seconds}


class _TranscriptStreamState:
    """A streamed transcription (`transcript.text.delta` ... `transcript.text.done`)."""

    __slots__ = ("call", "done", "units")

    def __init__(self, call: _AudioRequest) -> None:
        self.call = call
        self.units: dict[str, Any] | None = None
        self.done = False

    def observe(self, event: Any) -> bool:
        kind = getattr(event, "type", None)
        if kind == "transcript.text.delta":
            self.call.tracker.first_token()
        elif kind == "transcript.text.done":
            usage = _as_dict(getattr(event, "usage", None))
            if usage:
                self.units = usage_units(usage, speech=False)
        return True

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        units = self.units or {"input_audio_seconds": self.call.upload_seconds}
        _record_units(self.call.tracker, units)
        self.call.tracker.finish(error)


def _record_units(tracker: Tracker, units: Mapping[str, Any]) -> None:
    tracker.usage(**{k: units[k] for k in _TOKEN_FIELDS if k in units})
    tracker.set(**{k: v for k, v in units.items() if k not in _TOKEN_FIELDS and v is not None})


def _binary_body(result: Any) -> bytes | None:
    """The body of a speech result that has been read (HttpxBinaryResponseContent, a raw
    response); None when reading it would consume a stream the caller has not read yet."""
    try:
        body = result.content  # httpx raises ResponseNotRead rather than read a stream
    except Exception:  # not read (or no body at all): nothing measured, the call still recorded
        return None
    return body if isinstance(body, bytes) else None


def _content_type(result: Any) -> str:
    headers = getattr(getattr(result, "response", None), "headers", None)
    value = headers.get("content-type", "") if headers is not None else ""
    return str(value).split(";")[0].strip().lower()


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else {}


def _apply_usage(tracker: Tracker, result: Any) -> bool:
    """Copy usage (and the served model) from a response object; False when it has none."""
    model = getattr(result, "model", None)
    if isinstance(model, str) and model:
        tracker.set(response_model=model)
    usage = getattr(result, "usage", None)
    if usage is None:
        return False
    if getattr(usage, "input_tokens", None) is not None:  # responses API
        details = getattr(usage, "input_tokens_details", None)
        tracker.usage(
            input_tokens=usage.input_tokens,
            output_tokens=getattr(usage, "output_tokens", 0) or 0,
            cache_read_tokens=getattr(details, "cached_tokens", 0) or 0,
        )
        return True
    details = getattr(usage, "prompt_tokens_details", None)
    tracker.usage(
        input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        output_tokens=getattr(usage, "completion_tokens", 0) or 0,
        cache_read_tokens=getattr(details, "cached_tokens", 0) or 0,
    )
    return True


def _prompt_chars(kwargs: Mapping[str, Any]) -> int:
    """Prompt size in characters, only for estimating tokens when usage is missing."""
    total = 0
    for key in ("messages", "prompt", "input"):
        value = kwargs.get(key)
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    total += len(item)
                elif isinstance(item, Mapping) and isinstance(item.get("content"), str):
                    total += len(item["content"])
    return total


class _StreamState:
    """What a stream has shown so far; finishes the tracker exactly once."""

    __slots__ = ("content_chunks", "done", "injected", "prompt_chars", "tracker", "usage_seen")

    def __init__(self, tracker: Tracker, injected: bool, prompt_chars: int) -> None:
        self.tracker, self.injected, self.prompt_chars = tracker, injected, prompt_chars
        self.content_chunks = 0
        self.usage_seen = False
        self.done = False

    def observe(self, chunk: Any) -> bool:
        """Record one chunk/event; returns False for an injected usage-only chunk to hide."""
        kind = getattr(chunk, "type", None)
        if isinstance(kind, str):  # responses API events
            if kind.endswith(".delta") and "output_text" in kind:
                self.tracker.first_token()
                self.content_chunks += 1
            elif kind == "response.completed":
                self.usage_seen = _apply_usage(self.tracker, chunk.response) or self.usage_seen
            return True
        choices = getattr(chunk, "choices", None) or []
        if any(_has_content(choice) for choice in choices):
            self.tracker.first_token()
            self.content_chunks += 1
        if getattr(chunk, "usage", None) is not None:
            self.usage_seen = _apply_usage(self.tracker, chunk) or self.usage_seen
            if self.injected and not choices:
                return False
        elif getattr(chunk, "model", None):
            self.tracker.set(response_model=chunk.model)
        return True

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        if not self.usage_seen:
            self.tracker.usage(
                input_tokens=(self.prompt_chars + 3) // 4, output_tokens=self.content_chunks
            )
        self.tracker.finish(error)


def _has_content(choice: Any) -> bool:
    delta = getattr(choice, "delta", None)
    if delta is not None:
        return bool(getattr(delta, "content", None) or getattr(delta, "tool_calls", None)
                    or getattr(delta, "reasoning_content", None))
    return bool(getattr(choice, "text", None))


class _SyncStream:
    """Transparent proxy over `openai.Stream` that records TTFT, usage and the end."""

    def __init__(self, inner: Any, state: _StreamState | _TranscriptStreamState) -> None:
        self._inner, self._state = inner, state
        self._chunks = self._generate()

    def __iter__(self) -> Iterator[Any]:
        return self._chunks

    def __next__(self) -> Any:
        return next(self._chunks)

    def _generate(self) -> Iterator[Any]:
        try:
            for chunk in self._inner:
                if self._state.observe(chunk):
                    yield chunk
        except GeneratorExit:
            self._state.finish()
            raise
        except BaseException as exc:
            self._state.finish(exc)
            raise
        self._state.finish()

    def close(self) -> None:
        self._state.finish()
        self._inner.close()

    def __enter__(self) -> _SyncStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __del__(self) -> None:
        state = self.__dict__.get("_state")
        if state is not None:
            state.finish()


class _AsyncStream:
    """Transparent proxy over `openai.AsyncStream`."""

    def __init__(self, inner: Any, state: _StreamState | _TranscriptStreamState) -> None:
        self._inner, self._state = inner, state
        self._chunks = self._generate()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    async def _generate(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._inner:
                if self._state.observe(chunk):
                    yield chunk
        except GeneratorExit:
            self._state.finish()
            raise
        except BaseException as exc:
            self._state.finish(exc)
            raise
        self._state.finish()

    async def close(self) -> None:
        self._state.finish()
        await self._inner.close()

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __del__(self) -> None:
        state = self.__dict__.get("_state")
        if state is not None:
            state.finish()
