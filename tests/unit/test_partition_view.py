"""PartitionView's write-behind: a stage's state writes wait until its output is delivered."""

from __future__ import annotations

from costpipe.streams.state import PartitionView


def test_held_writes_are_seen_by_the_stage_but_reach_the_table_only_on_release():
    table = {"1|kept": "a", "1|gone": "b", "2|other": "c"}
    view = PartitionView(table, 1)
    view.hold()
    view["new"] = "n"
    view["kept"] = "a2"
    del view["gone"]
    assert view.get("new") == "n" and view["kept"] == "a2" and view.get("gone") is None
    assert sorted(view) == ["kept", "new"] and len(view) == 2
    assert table == {"1|kept": "a", "1|gone": "b", "2|other": "c"}  # nothing written yet
    view.release()
    assert table == {"1|kept": "a2", "1|new": "n", "2|other": "c"}
    view["after"] = "x"  # not held any more: straight through
    assert table["1|after"] == "x"


def test_discarded_writes_never_reach_the_table():
    table = {"1|kept": "a"}
    view = PartitionView(table, 1)
    view.hold()
    view["kept"] = "changed"
    assert view.pop("kept") == "changed" and view.pop("kept", "default") == "default"
    view.discard()
    assert table == {"1|kept": "a"} and view["kept"] == "a"
