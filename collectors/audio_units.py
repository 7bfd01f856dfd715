"""Billed audio units, measured without keeping the audio: shared by the proxy and wrap_openai.

Why here: speech is billed per input character or per token, transcription per audio second
or per token, and providers do not always report the duration. Where the format says it, we
measure: a WAV file's RIFF header gives its byte rate; OpenAI's `pcm` is raw 24 kHz 16-bit mono
(48,000 bytes a second). Compressed formats (mp3, opus, aac, flac) would need a decoder or a
frame parser, so their duration stays null (not reported). At most the first `WAV_HEAD_MAX`
bytes are ever held; the rest is only counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PCM_BYTES_PER_SECOND = 48_000  # OpenAI `pcm`: 24 kHz, 16-bit little-endian, mono
WAV_HEAD_MAX = 4096  # enough for RIFF + fmt + the small chunks encoders put before `data`
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what streaming encoders write before the length is known
_SSE_AUDIO = re.compile(rb'"audio"\s*:\s*"([A-Za-z0-9+/=]*)"')


@dataclass(frozen=True)
class WavHeader:
    byte_rate: int
    data_offset: int  # where the samples start
    data_length: int | None  # as declared; None when the writer did not know it yet

    def seconds(self, total_bytes: int | None = None) -> float | None:
        """Duration of the samples; `total_bytes` (the whole file's size) caps or replaces a
        declared length, since a streamed WAV declares none and a cut one declares too much."""
        present = None if total_bytes is None else max(total_bytes - self.data_offset, 0)
        if self.data_length is None:
            length = present
        elif present is None:
            length = self.data_length
        else:
            length = min(self.data_length, present)
        return None if length is None else length / self.byte_rate


def parse_wav_header(head: bytes) -> WavHeader | None:
    """The byte rate and `data` chunk of a RIFF/WAVE header, or None if `head` is not one."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        chunk_id = head[pos:pos + 4]
        (size,) = struct.unpack_from("<I", head, pos + 4)
        if chunk_id == b"fmt " and pos + 16 <= len(head):
            (byte_rate,) = struct.unpack_from("<I", head, pos + 16)
        elif chunk_id == b"data":
            if byte_rate <= 0:
                return None
            declared = None if size in _UNKNOWN_SIZES else size
            return WavHeader(byte_rate, pos + 8, declared)
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def audio_seconds(response_format: str | None, head: bytes, total_bytes: int) -> float | None:
    """Seconds of a whole audio body of `total_bytes` that starts with `head`; None when its
    format does not tell (compressed formats, a broken header)."""
    if response_format == "pcm":
        return total_bytes / PCM_BYTES_PER_SECOND
    if response_format == "wav" or head[:4] == b"RIFF":
        header = parse_wav_header(head)
        return None if header is None else header.seconds(total_bytes)
    return None


class AudioMeter:
    """Counts an audio body as it streams by; keeps only its first WAV_HEAD_MAX bytes."""

    __slots__ = ("_head", "response_format", "total")

    def __init__(self, response_format: str | None) -> None:
        self.response_format = response_format
        self.total = 0
        self._head = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = WAV_HEAD_MAX - len(self._head)
        if room > 0 and self.response_format != "pcm":
            self._head += chunk[:room]

    def count(self, n_bytes: int) -> None:
        """Bytes seen but not passed in (base64 audio in SSE events)."""
        self.total += n_bytes

    def seconds(self) -> float | None:
        return audio_seconds(self.response_format, bytes(self._head), self.total)


def sse_audio_bytes(event: bytes) -> int:
    """Decoded size of the base64 `audio` of one SSE event (`speech.audio.delta`), 0 if none;
    computed from the base64 length, the audio itself is not decoded."""
    match = _SSE_AUDIO.search(event)
    if match is None:
        return 0
    start, end = match.span(1)
    padding = (event[end - 1:end] == b"=") + (event[end - 2:end] == b"==")
    return (end - start) * 3 // 4 - padding


def speech_sse_units(body: bytes, response_format: str | None) -> dict[str, Any]:
    """Units of a whole `stream_format="sse"` speech body (the SDK hands it over complete):
    usage from `speech.audio.done`, seconds from the pcm deltas."""
    audio_bytes = 0
    usage: dict[str, Any] | None = None
    for event in re.split(rb"\r?\n\r?\n", body):
        audio_bytes += sse_audio_bytes(event)
        if b'"usage"' in event:
            usage = _event_usage(event) or usage
    units = usage_units(usage, speech=True) if usage else {}
    if response_format == "pcm" and audio_bytes:
        units["output_audio_seconds"] = audio_bytes / PCM_BYTES_PER_SECOND
    return units


def _event_usage(event: bytes) -> dict[str, Any] | None:
    payload = b"".join(line[5:].strip() for line in event.splitlines()
                       if line.startswith(b"data:"))
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    usage = doc.get("usage") if isinstance(doc, dict) else None
    return usage if isinstance(usage, dict) else None


def usage_units(usage: Mapping[str, Any], *, speech: bool) -> dict[str, Any]:
    """An audio endpoint's `usage` -> event fields. Transcription bills either tokens
    ({"type": "tokens", ..., "input_token_details": {"audio_tokens": A}}) or duration
    ({"type": "duration", "seconds": S}); speech (gpt-4o-mini-tts) reports tokens, and all its
    output tokens are audio."""
    if usage.get("type") == "duration":
        seconds = _number(usage.get("seconds"))
        return {} if seconds is None else {"input_audio_seconds": float(seconds)}
    units: dict[str, Any] = {
        "input_tokens": int(_number(usage.get("input_tokens")) or 0),
        "output_tokens": int(_number(usage.get("output_tokens")) or 0),
    }
    details = usage.get("input_token_details") or usage.get("input_tokens_details")
    if isinstance(details, Mapping) and _number(details.get("audio_tokens")) is not None:
        units["input_audio_tokens"] = int(details["audio_tokens"])
    if speech:
        units["output_audio_tokens"] = units["output_tokens"]
    return units


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return value if ok else None


def file_seconds(file: Any) -> float | None:
    """Seconds of an upload as the openai SDK takes it (bytes, a path, a binary file object, or
    a (name, content, ...) tuple) when it is WAV; reads only its header, and puts a file
    object's position back where it was."""
    if isinstance(file, tuple) and len(file) >= 2:
        file = file[1]
    if isinstance(file, bytes | bytearray | memoryview):
        data = memoryview(file)
        return audio_seconds(None, bytes(data[:WAV_HEAD_MAX]), len(data))
    if isinstance(file, os.PathLike):
        try:
            with open(file, "rb") as handle:
                return _stream_seconds(handle)
        except OSError:
            return None
    if isinstance(file, io.IOBase):
        return _stream_seconds(file)
    return None


def _stream_seconds(handle: Any) -> float | None:
    """httpx uploads a file object from offset 0 (it seeks there), so measure from there."""
    try:
        if not handle.seekable():
            return None  # reading it would consume what the upload needs
        position = handle.tell()
    except (OSError, ValueError):
        return None
    try:
        handle.seek(0)
        head = handle.read(WAV_HEAD_MAX)
        total = handle.seek(0, io.SEEK_END)
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError, ValueError):
            handle.seek(position)
    return audio_seconds(None, head, total) if isinstance(head, bytes) else None
