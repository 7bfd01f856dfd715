"""The SDK's `usage()` takes every billed unit by its request-event name."""

from __future__ import annotations

import pytest

from costpipe.collectors.sdk import Tracker


def test_usage_records_voice_units_and_names_a_wrong_one() -> None:
    tracker = Tracker("voice", "own-tts", "kokoro-82m", {})
    tracker.usage(input_tokens=80, input_characters=312, output_audio_seconds=20.8)
    assert (tracker.event["input_tokens"], tracker.event["input_characters"],
            tracker.event["output_audio_seconds"]) == (80, 312, 20.8)
    with pytest.raises(TypeError, match=r"input_chars.*billed units are"):
        tracker.usage(input_chars=3)
