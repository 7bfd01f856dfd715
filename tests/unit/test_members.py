"""The split-lake warning: one line when the live workers of a group write to different lakes."""

from __future__ import annotations

from costpipe.core.settings import Settings
from costpipe.streams.members import (
    Member,
    idle_workers_warning,
    lake_identity,
    split_lake_warning,
)


def test_a_local_folder_is_a_different_lake_on_another_host() -> None:
    local = Settings.model_validate({"lake": {"location": "/data/lake"}})
    assert lake_identity(local, "host-a") != lake_identity(local, "host-b")
    shared = Settings.model_validate({"lake": {"location": "s3://bucket/costpipe"}})
    assert lake_identity(shared, "host-a") == lake_identity(shared, "host-b")


def test_only_live_members_that_disagree_are_reported() -> None:
    now = 1_000_000.0
    same = [Member("a", "host-a", 1, "s3://b/l", now), Member("b", "host-b", 2, "s3://b/l", now)]
    assert split_lake_warning(same, now) is None
    split = [Member("a", "host-a", 1, "host-a:/data/lake", now),
             Member("b", "host-b", 2, "host-b:/data/lake", now - 10),
             Member("c", "host-c", 3, "host-c:/old", now - 3600)]  # gone long ago
    warning = split_lake_warning(split, now)
    assert warning is not None and "\n" not in warning
    assert "2 different lakes" in warning and "host-c" not in warning
    assert "s3://" in warning  # says what to do


def test_more_live_workers_than_stage_partitions_is_one_line_naming_the_key() -> None:
    now = 1_000_000.0
    settings = Settings.model_validate({"topics": {"partitions": 8, "stage_partitions": 2}})
    three = [Member(w, "h", i, "s3://b/l", now) for i, w in enumerate("abc")]
    warning = idle_workers_warning(three, settings, now)
    assert warning is not None and "\n" not in warning
    assert "topics.stage_partitions is 2" in warning and "topics.partitions" not in warning
    assert "1 of them" in warning
    gone = [*three[:2], Member("c", "h", 9, "s3://b/l", now - 3600)]
    assert idle_workers_warning(gone, settings, now) is None  # 2 live, 2 stage partitions
