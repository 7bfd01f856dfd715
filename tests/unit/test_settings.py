"""Settings: TOML file overlaid by COSTPIPE_* env; bad values fail with one line naming the key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from costpipe.core.settings import Settings, SettingsError, load_settings


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "costpipe.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.uses_local_broker
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert settings.topics.requests.endswith(".v1")


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
state_dir = "/srv/costpipe"
target_internal_share = 0.6
[topics]
partitions = 12
[providers]
internal = ["own-llama"]
[gpu]
dollars_per_gpu_hour = "3.10"
[[pricing.overrides]]
provider = "own-llama"
model = "llama-3-70b"
input_per_mtok = "0.05"
output_per_mtok = "0.10"
""")
    settings = load_settings(path, environ={})
    assert settings.state_dir == Path("/srv/costpipe")
    assert settings.topics.partitions == 12
    assert settings.is_internal("own-llama") and not settings.is_internal("openai")
    assert settings.gpu.dollars_per_gpu_hour == Decimal("3.10")
    assert settings.pricing.overrides[0].output_per_mtok == Decimal("0.10")


def test_env_overrides_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[topics]\npartitions = 12\n[kafka]\nlocal_port = 20000\n")
    settings = load_settings(path, environ={
        "COSTPIPE_TOPICS__PARTITIONS": "6",
        "COSTPIPE_PROVIDERS__INTERNAL": '["a", "b"]',
        "COSTPIPE_GPU__DOLLARS_PER_GPU_HOUR": "2.5",
    })
    assert settings.topics.partitions == 6
    assert settings.kafka.local_port == 20000
    assert settings.providers.internal == ["a", "b"]
    assert settings.gpu.dollars_per_gpu_hour == Decimal("2.5")


def test_kafka_bootstrap_servers_env_means_external_cluster() -> None:
    settings = load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092"})
    assert not settings.uses_local_broker
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    explicit = load_settings(environ={
        "KAFKA_BOOTSTRAP_SERVERS": "a:1", "COSTPIPE_KAFKA__BOOTSTRAP_SERVERS": "b:2",
    })
    assert explicit.bootstrap_servers == "b:2"


def test_config_file_from_env(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[windows]\nseconds = 30\n")
    settings = load_settings(environ={"COSTPIPE_CONFIG": str(path)})
    assert settings.windows.seconds == 30


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"COSTPIPE_KAFKA__LOCAL_PORT": "eighty"}, "kafka.local_port"),
        ({"COSTPIPE_KAFKA__LOCAL_PORT": "80"}, "kafka.local_port"),
        ({"COSTPIPE_TOPICS__PARTITIONS": "0"}, "topics.partitions"),
        ({"COSTPIPE_TOPICS__REQUESTS": "costpipe.requests"}, "topics.requests"),
        ({"COSTPIPE_TARGET_INTERNAL_SHARE": "1.5"}, "target_internal_share"),
        ({"COSTPIPE_GPU__PUE": "0.5"}, "gpu.pue"),
        ({"COSTPIPE_KAFKA__COMPRESSION": "snappy"}, "kafka.compression"),
        ({"COSTPIPE_KAFKA__LINGER_MS": "5"}, "kafka.linger_ms"),
        ({"COSTPIPE_KAFKA__NOPE": "1"}, "kafka.nope"),
    ],
)
def test_bad_env_value_is_one_line_naming_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {key} ")
    assert "COSTPIPE_* environment" in message


def test_bad_file_value_names_key_and_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[pricing.discounts]\nopenai = "1.2"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert "\n" not in message
    assert "pricing.discounts" in message and str(path) in message


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="is not valid TOML"):
        load_settings(_toml(tmp_path, "[kafka\n"), environ={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_given_environ_is_fully_isolated_from_the_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`environ=` must not read the real COSTPIPE_CONFIG, COSTPIPE_* or ./costpipe.toml."""
    real = _toml(tmp_path, "[windows]\nseconds = 30\n")
    monkeypatch.chdir(tmp_path)  # ./costpipe.toml exists
    monkeypatch.setenv("COSTPIPE_CONFIG", str(real))
    monkeypatch.setenv("COSTPIPE_TOPICS__PARTITIONS", "9")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")
    assert load_settings(environ={}) == Settings()
    assert load_settings().windows.seconds == 30  # the process's own view reads them all
    assert load_settings().topics.partitions == 9


def test_envelope_must_fit_under_the_message_limit() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"COSTPIPE_KAFKA__MAX_MESSAGE_BYTES": str(2 * 1024 * 1024),
                               "COSTPIPE_KAFKA__ENVELOPE_BYTES": str(2 * 1024 * 1024)})
    assert str(caught.value).startswith("invalid setting kafka.envelope_bytes ")


def test_stage_partitions_size_only_the_internal_stage_topics() -> None:
    topics = Settings.model_validate({"topics": {"partitions": 8, "stage_partitions": 2}}).topics
    counts = topics.partition_counts()
    assert {counts[topics.partials], counts[topics.gpuwork]} == {2}
    assert {counts[getattr(topics, name)] for name in
            ("requests", "gpu", "costs", "windows", "alerts", "deadletter")} == {8}
    assert counts[topics.members] == 1
    same = Settings.model_validate({"topics": {"partitions": 8}}).topics
    assert same.partition_counts()[same.gpuwork] == 8  # unset: as many as the inputs
