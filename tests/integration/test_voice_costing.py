"""Voice calls with the real `openai` SDK, through the proxy and through `wrap_openai`, into a
real `costpipe worker`: each is costed to the pico-dollar from the catalog's unit prices.

Hand-computed from genai-prices 0.2.3 (the prices the catalog states for these models):
tts-1 $15 per 1M input characters; whisper-1 $0.36 per audio hour; gpt-4o-transcribe $2.50 per
1M text input tokens, $6 per 1M audio input tokens, $10 per 1M output tokens.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import openai
import pyarrow.compute as pc
import pytest

from costpipe.collectors import sdk
from costpipe.collectors.openai_wrapper import wrap_openai
from costpipe.collectors.producer import BatchingProducer
from costpipe.schemas.records import COST_RECORD
from tests.openai_stub import (
    AUDIO_TOKENS_PER_SECOND,
    TEXT_TOKENS,
    TRANSCRIPT,
    StubUpstream,
    speech_pcm,
    wav_file,
)
from tests.proxy_harness import Servers
from tests.streams_support.harness import StreamsRun, dedup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TEXT = "Your order 4411 has shipped and will arrive on Thursday."  # 56 characters
SECONDS = 12.5  # of the uploaded recording
M = Decimal(1_000_000)


def _expected() -> dict[str, Decimal]:
    audio_tokens = round(SECONDS * AUDIO_TOKENS_PER_SECOND)  # 125, reported by the stub
    words = len(TRANSCRIPT.split())  # output tokens the stub reports
    return {
        "tts-1": len(TEXT) * Decimal(15) / M,
        # the stub bills whole seconds, as OpenAI does: 13 s of an hour at $0.36
        "whisper-1": 13 * Decimal("0.36") / 3600,
        "gpt-4o-transcribe": (TEXT_TOKENS * Decimal("2.5") + audio_tokens * Decimal(6)
                              + words * Decimal(10)) / M,
    }


def _calls(client: openai.OpenAI, recording: bytes) -> None:
    client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="wav")
    client.audio.transcriptions.create(model="whisper-1", file=("call.wav", recording))
    client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("call.wav", recording))


def test_voice_calls_are_costed_from_their_unit_prices(kafka_bootstrap: str,
                                                       tmp_path: Path) -> None:
    run = StreamsRun(kafka_bootstrap, tmp_path)
    producer = BatchingProducer(run.settings, run.settings.topics.requests,
                                spool_dir=tmp_path / "spool", metrics=False)
    recording = wav_file(speech_pcm("x" * int(SECONDS / 0.05)))
    try:
        run.start_worker()
        with Servers(StubUpstream(), producer, run.settings, provider="openai") as servers:
            _calls(servers.client(**{"X-Costpipe-Feature": "proxy"}), recording)
            sdk.configure(run.settings, producer)
            try:
                wrapped = wrap_openai(openai.OpenAI(base_url=servers.upstream_url + "/v1",
                                                    api_key="sk-test", max_retries=0),
                                      tags={"feature": "wrapper"})
                _calls(wrapped, recording)
                producer.flush()
            finally:
                sdk.configure()
        costs = run.read(run.settings.topics.costs, COST_RECORD,
                         lambda t: dedup(t, ["record_id"]).num_rows >= 6, timeout=120)
    finally:
        producer.close()
        run.stop_all()
    costs = dedup(costs, ["record_id"])
    expected = _expected()
    seen = set()
    for row in costs.to_pylist():
        assert row["pricing_status"] == "priced", row
        assert row["cost"] == expected[row["model"]], (row["feature"], row["model"], row)
        assert row["list_cost"] == row["cost"]
        seen.add((row["feature"], row["model"]))
    assert seen == {(f, m) for f in ("proxy", "wrapper") for m in expected}
    speech = costs.filter(pc.equal(costs.column("model"), "tts-1"))
    assert speech.column("input_characters").to_pylist() == [len(TEXT)] * 2
