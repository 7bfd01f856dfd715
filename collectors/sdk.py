"""In-process SDK: record one request event per AI call, with a few microseconds of overhead.

    with track(operation="code_completion", provider="openai", model="gpt-4o", team="ide") as t:
        reply = client.chat.completions.create(...)
        t.usage(input_tokens=..., output_tokens=...)

or `@tracked(operation=..., provider=..., model=...)` on a sync or async function. Latency is
measured, an exception marks the event `status=error` with its type and is re-raised.

Why so thin: the caller's thread only builds a dict and appends it to the shared producer's
queue; encoding and Kafka happen on the producer's thread. Only token counts, timings and tags
are recorded, never prompt or response text (there is no parameter that could carry them).
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import itertools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pyarrow as pa

from costpipe.collectors.producer import BatchingProducer, producer_for
from costpipe.core.settings import Settings, get_settings
from costpipe.schemas.records import BILLED_UNITS

F = TypeVar("F", bound=Callable[..., Any])

_TAG_FIELDS = ("team", "app", "feature")
_EXTRA_FIELDS = frozenset(
    {"gen_ai_operation", "response_model", "host", "gpu_uuid", "ttft_ms", "source", *_TAG_FIELDS,
     *BILLED_UNITS}  # audio/image units: characters, seconds, audio tokens (set via set())
)


class _Ids:
    """Request ids: a random per-process prefix plus a counter (cheaper than uuid4 per call)."""

    prefix = os.urandom(8).hex()
    counter = itertools.count()

    @classmethod
    def reset(cls) -> None:  # after fork, a child must not repeat the parent's ids
        cls.prefix = os.urandom(8).hex()
        cls.counter = itertools.count()


os.register_at_fork(after_in_child=_Ids.reset)


class _State:
    settings: Settings | None = None
    producer: BatchingProducer | None = None
    tags: dict[str, str] = {}
    kinds: dict[str, str] = {}
    inflight: set[Tracker] = set()  # started, not finished: heartbeats wait for them


HOLD_BACK_LIMIT_US = 3600 * 1_000_000  # a tracker never finished stops holding back after 1 h


def _oldest_in_flight() -> dt.datetime | None:
    """Start of the oldest tracked call still running (its event will carry that time)."""
    try:
        starts = [t._ts_us for t in list(_State.inflight)]
    except RuntimeError:  # the caller's thread changed the set meanwhile: try next time
        return dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    now = time.time_ns() // 1000
    live = [s for s in starts if now - s < HOLD_BACK_LIMIT_US]
    if not live:
        return None
    return dt.datetime.fromtimestamp(min(live) / 1e6, dt.UTC)


def configure(
    settings: Settings | None = None,
    producer: BatchingProducer | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Choose settings, producer (default: the shared requests producer) and default tags."""
    _State.settings = settings
    _State.producer = producer
    _State.tags = {k: v for k, v in (tags or {}).items() if k in _TAG_FIELDS}
    _State.kinds = {}


def _producer() -> BatchingProducer:
    producer = _State.producer
    if producer is None:
        producer = _State.producer = producer_for(_settings(), "requests")
        producer.hold_back(_oldest_in_flight)
    return producer


def _settings() -> Settings:
    if _State.settings is None:
        _State.settings = get_settings()
    return _State.settings


def _kind(provider: str) -> str:
    kind = _State.kinds.get(provider)
    if kind is None:
        kind = "internal" if _settings().is_internal(provider) else "external"
        _State.kinds[provider] = kind
    return kind


class Tracker:
    """One tracked call; `usage()` and `set()` fill in what the caller learns during it."""

    __slots__ = ("_start", "_ts_us", "event")

    def __init__(self, operation: str, provider: str, model: str, fields: Mapping[str, Any]):
        event: dict[str, Any] = {
            "operation": operation, "provider": provider, "model": model,
            "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "source": "sdk",
        }
        if _State.tags:
            event.update(_State.tags)
        if fields:
            unknown = set(fields) - _EXTRA_FIELDS
            if unknown:
                raise TypeError(f"track() got unknown field(s) {sorted(unknown)}; "
                                f"allowed: {sorted(_EXTRA_FIELDS)}")
            event.update(fields)
        self.event = event
        self._start = 0.0
        self._ts_us = 0

    def usage(
        self,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        **units: float | None,
    ) -> None:
        """Token counts as reported by the provider (None leaves a count unchanged), and any
        other billed unit by its request-event name: `input_characters=`,
        `input_audio_seconds=`, `output_audio_seconds=`, `input_audio_tokens=`, ..."""
        unknown = set(units) - set(BILLED_UNITS)
        if unknown:
            raise TypeError(f"Tracker.usage() got unknown unit(s) {sorted(unknown)}; billed "
                            f"units are {', '.join(BILLED_UNITS)}")
        event = self.event
        for name, value in units.items():
            if value is not None:
                kind = BILLED_UNITS[name][0]
                event[name] = float(value) if pa.types.is_floating(kind) else int(value)
        if input_tokens is not None:
            event["input_tokens"] = int(input_tokens)
        if output_tokens is not None:
            event["output_tokens"] = int(output_tokens)
        if cache_read_tokens is not None:
            event["cache_read_tokens"] = int(cache_read_tokens)
        if cache_write_tokens is not None:
            event["cache_write_tokens"] = int(cache_write_tokens)

    def set(self, **fields: Any) -> None:
        """Other known fields: response_model, model, host, gpu_uuid, tags, ..."""
        unknown = set(fields) - _EXTRA_FIELDS - {"model", "operation", "provider"}
        if unknown:
            raise TypeError(f"Tracker.set() got unknown field(s) {sorted(unknown)}")
        self.event.update(fields)

    def first_token(self) -> None:
        """Mark time-to-first-token now (streaming); only the first call counts."""
        if self.event.get("ttft_ms") is None:
            self.event["ttft_ms"] = (time.perf_counter() - self._start) * 1000.0

    def start(self) -> Tracker:
        self._ts_us = time.time_ns() // 1000
        self._start = time.perf_counter()
        _State.inflight.add(self)
        return self

    def finish(self, error: BaseException | None = None) -> None:
        latency_ms = (time.perf_counter() - self._start) * 1000.0
        _State.inflight.discard(self)
        event = self.event
        event["request_id"] = f"{_Ids.prefix}-{next(_Ids.counter):x}"
        event["timestamp"] = self._ts_us
        event["latency_ms"] = latency_ms
        event["provider_kind"] = _kind(event["provider"])
        if error is None:
            event.setdefault("status", "ok")
        else:
            event["status"] = "error"
            event["error_type"] = type(error).__qualname__
        _producer().emit(event)

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.finish(exc)

    async def __aenter__(self) -> Tracker:
        return self.start()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.finish(exc)


def track(operation: str, provider: str, model: str, **fields: Any) -> Tracker:
    """Context manager (sync or async) that records one request event when it exits."""
    return Tracker(operation, provider, model, fields)


def tracked(operation: str, provider: str, model: str, **fields: Any) -> Callable[[F], F]:
    """Decorator form of `track`; the function may take a `tracker` keyword to report usage."""

    def decorate(func: F) -> F:
        wants_tracker = "tracker" in inspect.signature(func).parameters

        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with Tracker(operation, provider, model, fields) as tracker:
                    if wants_tracker:
                        kwargs["tracker"] = tracker
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with Tracker(operation, provider, model, fields) as tracker:
                if wants_tracker:
                    kwargs["tracker"] = tracker
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate
