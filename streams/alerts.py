"""Cost alerts from closed windows: statistical spikes, absolute budgets, dependency share.

- spike: per key (operation/provider/model) an EWMA of window cost and of its variance; after
  `warmup_windows` windows a window fires when cost > mean + k*sigma AND cost - mean >=
  spike_min_dollars. The baseline is updated after the check (a spike does not hide itself).
- budget_hour / budget_day: external spend in the current UTC hour/day above the budget.
- dependency_share: a window's external share of cost (over all its keys, on-time rows) above
  1 - target_internal_share, evaluated once the window is complete: windows are merged per key
  on several partitions, and each merger partition reports how far it has closed windows.
Each alert has a deterministic id (rule + key + period), a cooldown per (rule, key), and is
de-duplicated by id, so replays and repeated windows never fire twice.
Alerts exactly once: the engine's state is saved with the offsets it covers (`to_state`,
`from_state`; the worker keeps it in a changelogged table and acknowledges the windows it read
only once the state that includes them is saved), so a new owner after a crash or a rebalance
continues from it and re-fires nothing it had fired; an alert re-emitted after a crash has the
same id, and the lake and the webhook sender drop it.
A window's rows may arrive over several messages (envelopes of ENVELOPE_ROWS): every rule is
per row or de-duplicated by id, so chunks never double count or fire twice.
State is bounded by windows.correction_horizon_seconds behind the newest window seen: older
seen windows, alert ids, cooldowns and spend periods are dropped, and rows for windows older
than that horizon (late deltas of evicted windows) are ignored here: their period has passed
(they still reach the lake).
The webhook (Slack-compatible `{"text": ...}`) runs in a background task with retries and
backoff; it never blocks the stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa

from costpipe.core.metrics import ALERTS
from costpipe.core.settings import Settings
from costpipe.schemas.records import ALERT

log = logging.getLogger("costpipe.alerts")


@dataclass
class Ewma:
    """Exponentially weighted mean and variance (West's incremental form)."""

    alpha: float
    mean: float = 0.0
    var: float = 0.0
    count: int = 0

    def update(self, x: float) -> None:
        if self.count == 0:
            self.mean, self.var = x, 0.0
        else:
            diff = x - self.mean
            incr = self.alpha * diff
            self.mean += incr
            self.var = (1 - self.alpha) * (self.var + diff * incr)
        self.count += 1

    @property
    def sigma(self) -> float:
        return math.sqrt(max(self.var, 0.0))


@dataclass
class AlertEngine:
    settings: Settings
    baselines: dict[str, Ewma] = field(default_factory=dict)
    last_fired: dict[tuple[str, str], float] = field(default_factory=dict)
    seen_ids: dict[str, dt.datetime] = field(default_factory=dict)  # id -> window start
    spend: dict[str, Decimal] = field(default_factory=dict)  # "<rule>:<period>" -> $
    seen_windows: dict[dt.datetime, set[tuple[Any, ...]]] = field(default_factory=dict)
    newest: dt.datetime | None = None
    # window start -> [external cost, total cost] of its on-time rows, until it is complete
    window_costs: dict[dt.datetime, list[Decimal]] = field(default_factory=dict)
    complete_through: dt.datetime | None = None

    def on_windows(self, windows: pa.Table,
                   complete_through: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Evaluate every rule on a set of closed window rows; returns new alerts.

        `complete_through`: every window ending at or before it is complete on every merger
        partition, so its share over all keys can be judged (per-row rules need no wait)."""
        cfg = self.settings.alerts
        alerts: list[dict[str, Any]] = []
        rows = sorted(windows.to_pylist(), key=lambda r: (r["window_start"], r["operation"],
                                                          r["provider"], r["model"]))
        if rows and (self.newest is None or rows[-1]["window_start"] > self.newest):
            self.newest = rows[-1]["window_start"]
            self._forget(self.newest - dt.timedelta(
                seconds=self.settings.windows.correction_horizon_seconds))
        cutoff = self._cutoff()
        for row in rows:
            start = row["window_start"]
            if cutoff is not None and start < cutoff:
                continue  # older than the horizon: its state (and period) is gone
            ident = (row["operation"], row["provider_kind"], row["provider"], row["model"],
                     row.get("revision") or 0)
            seen = self.seen_windows.setdefault(start, set())
            if ident in seen:
                continue  # a re-emitted window after a restart
            seen.add(ident)
            key = f"{row['operation']}/{row['provider']}/{row['model']}"
            cost = float(row["cost"])
            if (row.get("revision") or 0) == 0 and row["operation"] != "_gpu_idle":
                base = self.baselines.setdefault(key, Ewma(cfg.ewma_alpha))
                if base.count >= cfg.warmup_windows:
                    threshold = max(base.mean + cfg.spike_sigma * base.sigma,
                                    base.mean + float(cfg.spike_min_dollars))
                    if cost > threshold:
                        alerts += self._fire("spike", key, start, cost, threshold,
                                             f"cost ${cost:.4f} in window vs baseline "
                                             f"${base.mean:.4f} (k={cfg.spike_sigma})")
                base.update(cost)
            span = dt.timedelta(seconds=self.settings.windows.seconds)
            if (row.get("revision") or 0) == 0 and (
                    self.complete_through is None or start + span > self.complete_through):
                costs = self.window_costs.setdefault(start, [Decimal(0), Decimal(0)])
                costs[1] += row["cost"]
                if row["provider_kind"] == "external":
                    costs[0] += row["cost"]
            if row["provider_kind"] == "external":
                alerts += self._budgets(start, row["cost"])
        if complete_through is not None:
            alerts += self._complete(complete_through)
        return alerts

    def _complete(self, through: dt.datetime) -> list[dict[str, Any]]:
        """Judge the share of every window that has ended by `through`."""
        if self.complete_through is not None and through <= self.complete_through:
            return []
        self.complete_through = through
        span = dt.timedelta(seconds=self.settings.windows.seconds)
        limit = 1 - self.settings.target_internal_share
        alerts: list[dict[str, Any]] = []
        for start in sorted(s for s in self.window_costs if s + span <= through):
            external, total = self.window_costs.pop(start)
            share = float(external / total) if total else None
            if share is not None and share > limit and limit < 1:
                alerts += self._fire("dependency_share", "all", start, share, limit,
                                     f"external share of cost {share:.1%} above target "
                                     f"{limit:.1%}")
        return alerts

    def _cutoff(self) -> dt.datetime | None:
        if self.newest is None:
            return None
        return self.newest - dt.timedelta(
            seconds=self.settings.windows.correction_horizon_seconds)

    def _forget(self, cutoff: dt.datetime) -> None:
        """Drop state of windows older than the cutoff (cheap: iterates windows, not rows)."""
        for start in [s for s in self.seen_windows if s < cutoff]:
            del self.seen_windows[start]
        for alert_id in [i for i, s in self.seen_ids.items() if s < cutoff]:
            del self.seen_ids[alert_id]
        # A fire before cutoff - cooldown cannot block a window at or after the cutoff.
        oldest = cutoff.timestamp() - self.settings.alerts.cooldown_seconds
        for rule_key in [k for k, at in self.last_fired.items() if at < oldest]:
            del self.last_fired[rule_key]
        for slot in list(self.spend):
            if _period_end(slot) <= cutoff:
                del self.spend[slot]
        for start in [s for s in self.window_costs if s < cutoff]:
            del self.window_costs[start]

    # -- durable state (JSON-native, for a changelogged table)
    def to_state(self) -> dict[str, Any]:
        return {
            "baselines": {k: [b.mean, b.var, b.count] for k, b in self.baselines.items()},
            "last_fired": {f"{r}|{k}": at for (r, k), at in self.last_fired.items()},
            "seen_ids": {i: s.isoformat() for i, s in self.seen_ids.items()},
            "spend": {slot: str(v) for slot, v in self.spend.items()},
            "seen_windows": {s.isoformat(): [list(i) for i in ids]
                             for s, ids in self.seen_windows.items()},
            "newest": None if self.newest is None else self.newest.isoformat(),
            "window_costs": {s.isoformat(): [str(e), str(t)]
                             for s, (e, t) in self.window_costs.items()},
            "complete_through": None if self.complete_through is None
            else self.complete_through.isoformat(),
        }

    @classmethod
    def from_state(cls, settings: Settings, state: dict[str, Any] | None) -> AlertEngine:
        engine = cls(settings)
        if not state:
            return engine
        alpha = settings.alerts.ewma_alpha
        engine.baselines = {k: Ewma(alpha, m, v, int(c))
                            for k, (m, v, c) in state["baselines"].items()}
        engine.last_fired = {tuple(k.split("|", 1)): at  # type: ignore[misc]
                             for k, at in state["last_fired"].items()}
        engine.seen_ids = {i: dt.datetime.fromisoformat(s) for i, s in state["seen_ids"].items()}
        engine.spend = {slot: Decimal(v) for slot, v in state["spend"].items()}
        engine.seen_windows = {dt.datetime.fromisoformat(s): {tuple(i) for i in ids}
                               for s, ids in state["seen_windows"].items()}
        engine.newest = None if state["newest"] is None else \
            dt.datetime.fromisoformat(state["newest"])
        engine.window_costs = {dt.datetime.fromisoformat(s): [Decimal(e), Decimal(t)]
                               for s, (e, t) in state["window_costs"].items()}
        engine.complete_through = None if state["complete_through"] is None else \
            dt.datetime.fromisoformat(state["complete_through"])
        return engine

    def _budgets(self, start: dt.datetime, cost: Decimal) -> list[dict[str, Any]]:
        cfg = self.settings.alerts
        out: list[dict[str, Any]] = []
        for rule, budget, period in (
            ("budget_hour", cfg.external_budget_per_hour, start.strftime("%Y-%m-%dT%H")),
            ("budget_day", cfg.external_budget_per_day, start.strftime("%Y-%m-%d")),
        ):
            slot = f"{rule}:{period}"
            self.spend[slot] = self.spend.get(slot, Decimal(0)) + cost
            if budget is not None and self.spend[slot] > budget:
                out += self._fire(rule, period, start, float(self.spend[slot]), float(budget),
                                  f"external spend ${self.spend[slot]:.2f} over budget "
                                  f"${budget} for {period}", period_id=period)
        return out

    def _fire(self, rule: str, key: str, start: dt.datetime, observed: float, threshold: float,
              message: str, period_id: str | None = None) -> list[dict[str, Any]]:
        period = period_id or start.isoformat()
        alert_id = hashlib.sha1(f"{rule}|{key}|{period}".encode()).hexdigest()[:20]
        if alert_id in self.seen_ids:
            return []
        at = start.timestamp()
        last = self.last_fired.get((rule, key))
        if last is not None and at - last < self.settings.alerts.cooldown_seconds:
            return []
        self.seen_ids[alert_id] = start
        self.last_fired[(rule, key)] = at
        ALERTS.labels(rule).inc()
        severity = "critical" if rule.startswith("budget") else "warning"
        log.warning("ALERT %s %s: %s", rule, key, message)
        fired_at = start + dt.timedelta(seconds=self.settings.windows.seconds)
        return [{"alert_id": alert_id, "timestamp": fired_at, "rule": rule,
                 "severity": severity, "key": key, "window_start": start,
                 "observed": float(observed), "threshold": float(threshold),
                 "message": message}]


def _period_end(slot: str) -> dt.datetime:
    """End of a spend slot's period ("budget_hour:%Y-%m-%dT%H" / "budget_day:%Y-%m-%d")."""
    rule, period = slot.split(":", 1)
    if rule == "budget_hour":
        return dt.datetime.strptime(period, "%Y-%m-%dT%H").replace(tzinfo=dt.UTC) + \
            dt.timedelta(hours=1)
    return dt.datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=dt.UTC) + dt.timedelta(days=1)


def alerts_table(alerts: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(alerts, schema=ALERT)


async def post_webhook(url: str, alert: dict[str, Any], attempts: int = 5) -> bool:
    """POST `{"text": ...}` with exponential backoff; False after the last failed attempt."""
    import aiohttp

    start = alert.get("window_start")
    when = f" (window {start:%Y-%m-%d %H:%M:%S} UTC)" if start is not None else ""
    text = f"[{alert['severity']}] {alert['rule']} {alert['key']}{when}: {alert['message']}"
    delay = 0.5
    for attempt in range(attempts):
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with (aiohttp.ClientSession(timeout=timeout) as session,
                        session.post(url, json={"text": text}) as response):
                if response.status < 300:
                    return True
                if 400 <= response.status < 500 and response.status != 429:
                    log.error("webhook refused alert (HTTP %s)", response.status)
                    return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("webhook attempt %d failed: %s", attempt + 1, exc)
        if attempt < attempts - 1:  # no pointless wait after the last attempt
            await asyncio.sleep(delay)
            delay *= 2
    return False
