"""Audio durations from WAV headers and pcm byte counts, without keeping the audio."""

from __future__ import annotations

import base64
import io
import json
import struct

import pytest

from costpipe.collectors.audio_units import (
    WAV_HEAD_MAX,
    AudioMeter,
    audio_seconds,
    file_seconds,
    parse_wav_header,
    speech_sse_units,
    sse_audio_bytes,
    usage_units,
)
from tests.openai_stub import wav_file

PCM = bytes(48_000 * 3)  # 3 s of 24 kHz 16-bit mono


def _streamed_wav(pcm: bytes, declared: int) -> bytes:
    """A WAV as streaming encoders write it: a LIST chunk first, the data size unknown."""
    fmt = struct.pack("<HHIIHH", 1, 1, 24_000, 48_000, 2, 16)
    info = b"INFOISFT\x05\x00\x00\x00Lavf\x00\x00"  # odd-sized chunk: padded to even
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
            + fmt + b"LIST" + struct.pack("<I", len(info) - 1) + info
            + b"data" + struct.pack("<I", declared) + pcm)


def test_wav_header_gives_the_duration() -> None:
    stereo = wav_file(bytes(44_100 * 4 * 2), rate=44_100, channels=2)
    assert audio_seconds("wav", stereo[:WAV_HEAD_MAX], len(stereo)) == 2.0
    assert audio_seconds(None, stereo[:64], len(stereo)) == 2.0  # an upload: sniffed as RIFF
    header = parse_wav_header(stereo[:64])
    assert header is not None and header.byte_rate == 44_100 * 4 and header.data_offset == 44


@pytest.mark.parametrize("declared", [0, 0xFFFFFFFF])
def test_streamed_wav_without_a_length_counts_the_bytes(declared: int) -> None:
    body = _streamed_wav(PCM, declared)
    header = parse_wav_header(body[:WAV_HEAD_MAX])
    assert header is not None and header.data_length is None
    assert audio_seconds("wav", body[:WAV_HEAD_MAX], len(body)) == 3.0


def test_a_cut_wav_counts_only_the_samples_that_came() -> None:
    body = wav_file(PCM)[: 44 + 48_000]
    assert audio_seconds("wav", body, len(body)) == 1.0


@pytest.mark.parametrize("head", [b"", b"ID3\x04" + bytes(100), b"RIFF\x00\x00\x00\x00WAVE",
                                  b"RIFF\x00\x00\x00\x00WAVEdata\x10\x00\x00\x00"])
def test_not_wav_or_broken_headers_give_none(head: bytes) -> None:
    assert audio_seconds(None, head, 10_000) is None
    assert audio_seconds("mp3", head, 10_000) is None


def test_meter_keeps_only_the_header_whatever_the_chunks() -> None:
    body = wav_file(PCM)
    meter = AudioMeter("wav")
    for i in range(0, len(body), 7):  # a header split over many reads
        meter.feed(body[i:i + 7])
    assert meter.seconds() == 3.0 and meter.total == len(body)
    assert len(meter._head) == WAV_HEAD_MAX
    pcm = AudioMeter("pcm")
    pcm.feed(PCM)
    assert pcm.seconds() == 3.0 and len(pcm._head) == 0
    assert AudioMeter("opus").seconds() is None


def test_sse_audio_bytes_from_base64_length() -> None:
    for size in (0, 1, 2, 3, 1000, 1001, 1002):
        event = b'data: {"type":"speech.audio.delta","audio":"%s"}' % base64.b64encode(
            bytes(size))
        assert sse_audio_bytes(event) == size
    assert sse_audio_bytes(b'data: {"type":"speech.audio.done"}') == 0


def test_speech_sse_units() -> None:
    deltas = [{"type": "speech.audio.delta", "audio": base64.b64encode(PCM[:24_000]).decode()}
              for _ in range(4)]
    done = {"type": "speech.audio.done",
            "usage": {"input_tokens": 5, "output_tokens": 40, "total_tokens": 45}}
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in [*deltas, done]).encode()
    assert speech_sse_units(body, "pcm") == {
        "input_tokens": 5, "output_tokens": 40, "output_audio_tokens": 40,
        "output_audio_seconds": 2.0}
    assert speech_sse_units(body, "mp3") == {
        "input_tokens": 5, "output_tokens": 40, "output_audio_tokens": 40}


def test_usage_units_for_both_kinds_of_transcription_usage() -> None:
    assert usage_units({"type": "duration", "seconds": 9}, speech=False) == {
        "input_audio_seconds": 9.0}
    assert usage_units({"type": "tokens", "input_tokens": 14, "output_tokens": 45,
                        "total_tokens": 59,
                        "input_token_details": {"text_tokens": 4, "audio_tokens": 10}},
                       speech=False) == {
        "input_tokens": 14, "output_tokens": 45, "input_audio_tokens": 10}


def test_file_seconds_reads_the_header_and_restores_the_position(tmp_path) -> None:
    body = wav_file(PCM)
    upload = io.BytesIO(body)
    upload.seek(17)
    assert file_seconds(upload) == 3.0 and upload.tell() == 17
    path = tmp_path / "a.wav"
    path.write_bytes(body)
    assert file_seconds(path) == 3.0
    with path.open("rb") as handle:
        assert file_seconds(("a.wav", handle, "audio/wav")) == 3.0 and handle.tell() == 0
    assert file_seconds(body) == 3.0
    assert file_seconds(b"ID3\x04" + bytes(100)) is None
    assert file_seconds(tmp_path / "missing.wav") is None
    assert file_seconds("a.wav") is None  # a str is not a path to the openai SDK


def test_unseekable_file_is_not_read() -> None:
    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def read(self, size: int = -1) -> bytes:
            raise AssertionError("read an unseekable upload")

    assert file_seconds(Pipe()) is None
