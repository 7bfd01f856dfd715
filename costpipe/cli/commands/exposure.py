"""`costpipe exposure` and `costpipe payback`: price risk and the return on own models.

Why a command: "what does a 10 % price rise cost us, did a price we pay change, and when do
the GPUs pay for themselves" are asked by people who do not write SQL. The numbers come from
`costpipe.analytics.exposure`; the method is in docs/payback.md.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import typer

from costpipe.cli.commands.analytics import _fail, _print_table, _settings

_LAKE_HELP = "Lake folder/URL (else settings)"


def _usd(value: Decimal | None, places: int = 2) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{places}f}"


def _exposure_table(df):
    """Money rounded to 1/10,000 $ for reading; the frame itself keeps exact values."""
    import polars as pl

    money = [c for c, t in df.schema.items() if isinstance(t, pl.Decimal)]
    return df.with_columns(pl.col(c).cast(pl.Float64).round(4) for c in money)


def _print_payback(result, with_plan: bool = False) -> None:
    typer.echo(f"invested:               {_usd(result.investment)} since "
               f"{result.first_investment}")
    typer.echo(f"avoided spend to date:  {_usd(result.avoided_to_date)} (to {result.as_of})")
    if result.paid_back_on is not None:
        typer.echo(f"paid back on:           {result.paid_back_on}")
        return
    typer.echo(f"remaining:              {_usd(result.remaining)}")
    _print_projection("at today's trend", result.trend,
                      f"mean of the {result.trend_days} day(s) to {result.trend_until} x 30")
    if result.override is not None:
        if with_plan:
            _print_projection("under the plan", result.override,
                              "today's trend + the saving of costpipe plan")
        else:
            _print_projection("at --monthly-saving", result.override, "given")


def _print_projection(label: str, projection, how: str) -> None:
    saving = f"{_usd(projection.monthly_saving)}/month ({how})"
    if projection.payback_month is None:
        typer.echo(f"{label + ':':<24}{saving}: never pays back (the saving is not positive)")
        return
    typer.echo(f"{label + ':':<24}{saving}: pays back in {projection.payback_month} "
               f"({projection.payback_date}, {projection.months_left} month(s) from now)")


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        _fail(f"--monthly-saving {text!r} is not a number; give dollars, e.g. 1500")
    return None


def register(app: typer.Typer) -> None:
    @app.command()
    def exposure(
        pct: float = typer.Option(10.0, "--pct",
                                  help="Price rise to test, in % of each provider's prices"),
        days: int = typer.Option(30, "--days", min=1,
                                 help="Window: the last DAYS days of the lake"),
        lake: str | None = typer.Option(None, "--lake", help=_LAKE_HELP),
    ) -> None:
        """Price risk: per provider, the bill and what +PCT % adds to it (and to avoided spend
        of own models shadow-priced there); then every model whose price changed since its
        traffic was costed (new genai-prices release, contract override or discount)."""
        from costpipe import analytics
        from costpipe.analytics.exposure import catalog_changes, price_exposure

        settings = _settings(lake)
        con = analytics.connect(settings)
        typer.echo(f"Price exposure: {pct:+g} % per provider, last {days} day(s) of the lake")
        _print_table(_exposure_table(price_exposure(con, settings, pct, days)))
        from costpipe.streams.pricing import price_batch

        changes = catalog_changes(con, settings, price_batch, days)
        if changes.height == 0:
            typer.echo(f"Catalog changes: none; no price the fleet used has changed "
                       f"(last {days} day(s))")
            return
        typer.echo("Catalog changes: cost at today's prices vs recorded "
                   "(monthly_delta: scaled to 30 days)")
        _print_table(_exposure_table(changes))

    @app.command()
    def payback(
        lake: str | None = typer.Option(None, "--lake", help=_LAKE_HELP),
        monthly_saving: str | None = typer.Option(
            None, "--monthly-saving",
            help="Also project at this monthly saving in USD (e.g. what a plan saves)"),
        with_plan: bool = typer.Option(
            False, "--with-plan",
            help="Also project at today's trend plus the saving of the plan to "
            "target_internal_share (costpipe plan)"),
    ) -> None:
        """When do the investments in own models ([[planning.investments]]) pay back, from
        avoided spend (shadow price minus fully loaded own cost) at today's trend."""
        from costpipe import analytics
        from costpipe.analytics.exposure import NoInvestmentsError
        from costpipe.analytics.exposure import payback as compute

        saving = _decimal(monthly_saving)
        settings = _settings(lake)
        con = analytics.connect(settings)
        try:
            result = compute(con, settings, saving)
            if with_plan and saving is None:
                from costpipe.analytics.planning import plan_to_target

                planned = plan_to_target(con, settings)
                if not planned.reachable and not planned.already_met:
                    typer.echo("note: the target cannot be reached with the movable "
                               "operations; the plan's saving is for moving all of them")
                outcome = planned.outcome
                plan_saving = -Decimal(repr(outcome.get("monthly_cost_delta") or 0.0))
                result = compute(con, settings, result.trend.monthly_saving + plan_saving)
        except NoInvestmentsError as exc:
            _fail(str(exc), 1)
        _print_payback(result, with_plan and saving is None)
