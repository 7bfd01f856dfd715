"""The page's filter (time range, team, app, operation, provider), parsed from the URL query.

Why in the URL: a link reproduces what its sender saw. Every figure takes the filter as the
macro arguments of analytics/sql/80_dashboard.sql, bound as parameters (never pasted into SQL).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass

FIELDS = ("from", "to", "team", "app", "operation", "provider")


class FilterError(ValueError):
    """A filter value the page cannot use; the message names the parameter."""


@dataclass(frozen=True)
class Filters:
    from_day: dt.date | None = None
    to_day: dt.date | None = None
    team: str | None = None
    app: str | None = None
    operation: str | None = None
    provider: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        """From `?from=YYYY-MM-DD&to=...&team=...`; empty values mean no filter."""
        def day(name: str) -> dt.date | None:
            text = (query.get(name) or "").strip()
            if not text:
                return None
            try:
                return dt.date.fromisoformat(text)
            except ValueError:
                raise FilterError(f"filter '{name}' must be a date YYYY-MM-DD, got "
                                  f"{text[:40]!r}") from None

        def text(name: str) -> str | None:
            value = (query.get(name) or "").strip()
            if len(value) > 256:
                raise FilterError(f"filter '{name}' is longer than 256 characters")
            return value or None

        out = cls(day("from"), day("to"), text("team"), text("app"), text("operation"),
                  text("provider"))
        if out.from_day and out.to_day and out.from_day > out.to_day:
            raise FilterError(f"filter 'from' ({out.from_day}) is after 'to' ({out.to_day})")
        return out

    def params(self) -> list[object]:
        """Arguments of the dashboard_* macros, in their order."""
        return [self.from_day, self.to_day, self.team, self.app, self.operation, self.provider]

    def window_params(self) -> list[object]:
        """Arguments of dashboard_window_share (windows carry no team or app)."""
        return [self.from_day, self.to_day, self.operation, self.provider]

    def as_query(self) -> dict[str, str]:
        names = dict(zip(("from_day", "to_day"), ("from", "to"), strict=True))
        return {names.get(k, k): str(v) for k, v in asdict(self).items() if v is not None}

    @property
    def key(self) -> tuple[object, ...]:
        return tuple(self.params())
