"""Capacity-aware what-if and plan-to-target against a fleet computed by hand.

The fleet (one UTC hour, 2026-11-02 10:00-11:00): 2 GPUs sampled every 10 s (7,200 GPU-seconds
observed), utilisation 40/60 % with power 100 W + 3 W per % (so idle 100 W, busy 300 W).
Own `text` model: one request per GPU per 10 s bucket, allocated half of the bucket's $0.01
(so 5 busy GPU-seconds each; 720 requests = 3,600 busy GPU-seconds), the other half idle.
External: 1,000 `text` at $0.01, 500 `voice` at $0.002 (no own voice model measured), 300
`reasoning` at $0.05 (not movable). Energy: $0.12/kWh x PUE 1.3 = $4.3333e-8 per joule, so a
busy GPU-second costs 300 x 4.3333e-8 = $1.3e-5 and an own text request $6.5e-5 at the margin.
Usable capacity at 70 %: 0.7 x 3,600 = 2,520 GPU-seconds per GPU in the hour.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costpipe import analytics
from costpipe.analytics.planning import plan_to_target
from costpipe.core.settings import Settings
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range
from costpipe.schemas.records import COST_RECORD, GPU_SAMPLE

HOUR = dt.datetime(2026, 11, 2, 10, tzinfo=dt.UTC)
J = 0.12 * 1.3 / 3_600_000  # $ per joule
TOTAL = 33.2  # 3.6 own + 3.6 idle + 10 text + 1 voice + 15 reasoning


def _settings(root: str, movable: list[str]) -> Settings:
    return Settings.model_validate({
        "lake": {"location": root},
        "gpu": {"bucket_seconds": 10, "dollars_per_gpu_hour": "2", "dollars_per_kwh": "0.12",
                "pue": "1.3"},
        "planning": {"target_utilization": 0.7, "gpu_hours_per_month": "730",
                     "movable_operations": movable},
    })


def _record(i: int, ts: dt.datetime, op: str, kind: str, cost: str, **extra) -> dict:
    row = dict.fromkeys(COST_RECORD.names)
    row.update(record_id=f"r{i}", record_type="request", timestamp=ts, operation=op,
               provider="own" if kind == "internal" else "ext", provider_kind=kind,
               model=f"{op}-model", input_tokens=10, output_tokens=10, cache_read_tokens=0,
               cache_write_tokens=0, cost=Decimal(cost), pricing_status="priced", status="ok")
    row.update(extra)
    return row


def _write_fleet(root: str, external: dict[str, tuple[int, str]], own_cost: str = "0.005",
                 bucket_cost: str = "0.01", gpus: int = 2, fraction: float | None = None
                 ) -> None:
    lake = open_lake(root)
    rows, samples, i = [], [], 0
    for b in range(360):
        bucket = HOUR + dt.timedelta(seconds=10 * b)
        for g in range(gpus):
            gpu = f"GPU-{g}"
            rows.append(_record(i, bucket + dt.timedelta(seconds=1), "text", "internal",
                                own_cost, gpu_uuid=gpu, bucket_start=bucket,
                                pricing_status="gpu_allocated"))
            idle = Decimal(bucket_cost) - Decimal(own_cost)
            rows.append(_record(i + 1, bucket, "_gpu_idle", "internal", str(idle),
                                record_type="idle", gpu_uuid=gpu, bucket_start=bucket,
                                pricing_status="idle"))
            i += 2
            util = 40.0 if b % 2 else 60.0
            samples.append({"timestamp": bucket, "host": "h", "gpu_uuid": gpu, "gpu_index": g,
                            "utilization_pct": util, "power_w": 100 + 3 * util,
                            "interval_s": 10.0, "gpu_fraction": fraction})
    for op, (count, price) in external.items():
        for k in range(count):
            ts = HOUR + dt.timedelta(seconds=3600 * k / count)
            rows.append(_record(i, ts, op, "external", price))
            i += 1
    write_range(lake, "costs", pa.Table.from_pylist(rows, schema=COST_RECORD), "c", 0, 0, 0)
    write_range(lake, "gpu_samples", pa.Table.from_pylist(samples, schema=GPU_SAMPLE), "g", 0,
                0, 0)


FLEET = {"text": (1000, "0.01"), "voice": (500, "0.002"), "reasoning": (300, "0.05")}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fleet"))
    _write_fleet(root, FLEET)
    s = _settings(root, ["text", "voice"])
    return s, analytics.connect(s)


def _whatif(con, op: str, pct: float) -> dict:
    result = con.execute("SELECT * FROM whatif_shift(?, ?)", [op, pct])
    names = [d[0] for d in result.description]
    return dict(zip(names, result.fetchall()[0], strict=True))


def test_capacity_model_measures_gpu_seconds_and_power(fleet):
    _, con = fleet
    text = con.execute("SELECT gpu_seconds_per_request, own_marginal_cost_per_request, "
                       "own_average_cost_per_request FROM capacity_by_operation "
                       "WHERE operation = 'text'").fetchall()[0]
    assert text[0] == pytest.approx(5.0)
    assert text[1] == pytest.approx(5 * 300 * J)  # $6.5e-5
    assert text[2] == pytest.approx(0.01)  # 3.6 direct + 3.6 idle over 720 requests
    idle_w, busy_w = con.execute("SELECT idle_power_w, busy_power_w FROM gpu_power_model"
                                 ).fetchall()[0]
    assert (idle_w, busy_w) == (pytest.approx(100.0), pytest.approx(300.0))


def test_move_into_idle_capacity_costs_only_energy(fleet):
    _, con = fleet
    got = _whatif(con, "text", 20)  # 200 requests x 5 s = 1,000 s: 4,600 <= 5,040 usable
    assert got["gpus_to_add"] == 0
    assert got["total_cost"] == pytest.approx(TOTAL)
    assert got["new_total_cost"] == pytest.approx(TOTAL - 2 + 200 * 6.5e-5)  # 31.213
    assert got["avg_new_total_cost"] == pytest.approx(TOTAL)  # 200 x the $0.01 average
    assert got["saving"] == pytest.approx(2 - 0.013)
    assert got["new_internal_share_requests"] == pytest.approx(920 / 2520)
    assert got["monthly_cost_delta"] == pytest.approx((-2 + 0.013) * 730)


def test_move_past_capacity_adds_whole_gpus(fleet):
    _, con = fleet
    got = _whatif(con, "text", 50)  # +2,500 s: 6,100 / 2,520 per GPU -> 3 GPUs
    added = 1 * (2 + 100 * J * 3600)  # one GPU for the hour, with its idle power: 2.0156
    assert got["gpus_to_add"] == 1
    assert got["new_total_cost"] == pytest.approx(TOTAL - 5 + 500 * 6.5e-5 + added)
    assert round(got["new_total_cost"], 2) == 30.25
    assert got["new_internal_share_requests"] == pytest.approx(1220 / 2520)


def test_moving_work_out_frees_capacity(fleet):
    _, con = fleet
    got = _whatif(con, "text", -50)  # 360 own requests out: load 1,800 s -> 1 GPU would do
    assert got["requests_moved_out"] == pytest.approx(360)
    assert got["gpus_to_add"] == 0 and got["gpus_spare"] == 1
    assert got["new_total_cost"] == pytest.approx(TOTAL + 360 * 0.01 - 360 * 6.5e-5)


def test_plan_reaches_the_target_with_the_hand_computed_moves(fleet):
    s, con = fleet
    plan = plan_to_target(con, s, 0.5)  # needs 0.5 x 2,520 - 720 = 540 more own requests
    assert plan.reachable and not plan.already_met
    assert plan.moves["operation"].to_list() == ["text"]
    assert plan.moves["requests_moved"].to_list() == [pytest.approx(540)]
    assert plan.outcome["gpus_to_add"] == 1  # 3,600 + 2,700 = 6,300 s -> 3 GPUs
    expected = TOTAL - 5.4 + 540 * 6.5e-5 + (2 + 100 * J * 3600)
    assert round(plan.outcome["new_total_cost"], 2) == round(expected, 2) == 29.85
    assert plan.outcome["new_internal_share_requests"] == pytest.approx(0.5)
    assert any("voice" in n for n in plan.notes)  # no own voice model measured
    assert any("reasoning" in n for n in plan.notes)  # kept external


def test_unreachable_target_is_reported_not_reached(fleet):
    s, con = fleet
    plan = plan_to_target(con, s, 0.8)
    assert not plan.reachable
    assert any("cannot be reached" in n and "68.3%" in n for n in plan.notes)
    assert plan.outcome["new_internal_share_requests"] == pytest.approx(1720 / 2520)


def test_target_already_met_moves_nothing(fleet):
    s, con = fleet
    plan = plan_to_target(con, s, 0.2)
    assert plan.already_met and plan.moves.height == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(text=st.integers(100, 3000), chat=st.integers(100, 3000),
       text_price=st.sampled_from(["0.0001", "0.001", "0.01"]),
       chat_price=st.sampled_from(["0.0005", "0.002", "0.02"]),
       target=st.floats(0.3, 0.75))
def test_plan_properties(tmp_path_factory, text, chat, text_price, chat_price, target):
    """Never dearer than a one-operation move to the same share; an unreachable target says
    so; a move that fits in idle capacity costs no more than the average-cost answer."""
    root = str(tmp_path_factory.mktemp("prop"))
    _write_fleet(root, {"text": (text, text_price), "chat": (chat, chat_price)})
    s = _settings(root, ["text", "chat"])
    con = analytics.connect(s)
    fits = _whatif(con, "text", 10)
    if fits["gpus_to_add"] == 0:
        assert fits["new_total_cost"] <= fits["avg_new_total_cost"] + 1e-9
    plan = plan_to_target(con, s, target)
    requests = 720 + text + chat
    needed = target * requests - 720
    if needed > text:  # chat has no own model: only text can move
        assert not plan.reachable and any("cannot be reached" in n for n in plan.notes)
        return
    assert plan.reachable or plan.already_met
    if plan.already_met:
        return
    single = _whatif(con, "text", 100 * needed / text)
    assert plan.outcome["new_total_cost"] <= single["new_total_cost"] + 1e-9
    assert plan.outcome["new_internal_share_requests"] == pytest.approx(target)


def test_sql_plan_macro_gives_the_same_plan(fleet):
    s, con = fleet
    rows = con.execute("SELECT operation, requests_moved, gpus_to_add, new_total_cost, "
                       "new_internal_share_requests FROM plan_to_target(0.5)").fetchall()
    plan = plan_to_target(con, s, 0.5)
    assert rows == [("text", pytest.approx(540), 1,
                     pytest.approx(plan.outcome["new_total_cost"]), pytest.approx(0.5))]
    assert con.execute("SELECT count(*) FROM plan_to_target(0.2)").fetchall()[0][0] == 0


def test_gpu_unattributed_requests_do_not_dilute_gpu_seconds(tmp_path):
    root = str(tmp_path)
    _write_fleet(root, FLEET)
    extra = [_record(10_000 + k, HOUR + dt.timedelta(seconds=5 * k), "text", "internal", "0",
                     pricing_status="gpu_unattributed") for k in range(720)]
    write_range(open_lake(root), "costs", pa.Table.from_pylist(extra, schema=COST_RECORD),
                "c", 1, 0, 0)
    con = analytics.connect(_settings(root, ["text"]))
    gs = con.execute("SELECT gpu_seconds_per_request FROM capacity_by_operation "
                     "WHERE operation = 'text'").fetchall()[0][0]
    assert gs == pytest.approx(5.0)


def test_a_shortfall_the_fleet_already_has_is_not_charged_to_a_small_move(tmp_path):
    root = str(tmp_path)
    _write_fleet(root, FLEET, own_cost="0.009")  # 90 % busy: over the 70 % target already
    con = analytics.connect(_settings(root, ["text"]))
    got = _whatif(con, "text", 1)
    assert got["gpus_to_add"] == 0
    assert got["new_total_cost"] < got["total_cost"]


def test_mig_instances_count_by_their_share_of_a_physical_gpu(tmp_path):
    root = str(tmp_path)
    _write_fleet(root, FLEET, fraction=0.5)  # the two devices are halves of one GPU
    con = analytics.connect(_settings(root, ["text"]))
    gpus, observed, busy = con.execute("SELECT gpus, gpu_seconds_observed, busy_gpu_seconds "
                                       "FROM hourly_load").fetchall()[0]
    assert (gpus, observed, busy) == (pytest.approx(1.0), pytest.approx(3600),
                                      pytest.approx(1800))
    got = _whatif(con, "text", 20)  # +200 x 2.5 s = 2,300 of 2,520 usable: still one GPU
    assert got["gpus_to_add"] == 0
