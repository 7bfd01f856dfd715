"""`costpipe plan`: the cheapest measured path to the target internal share."""

from __future__ import annotations

import typer


def _print(plan, settings) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    console = Console()
    out = plan.outcome
    month = float(settings.planning.gpu_hours_per_month)
    hours = out.get("period_hours") or 0.0
    per_month = month / hours if hours else 0.0
    current = "–" if plan.current_share is None else f"{plan.current_share:.1%}"
    console.print(f"Plan to {plan.target:.0%} internal requests (now {current}; measured over "
                  f"{hours:.2f} h of the lake, scaled to a {month:.0f}-hour month)")
    if plan.moves.height:
        table = Table(title_justify="left")
        for name in ("operation", "move", "req/month", "ext $/req", "own marginal",
                     "own new GPU", "economic"):
            table.add_column(name, justify="left" if name == "operation" else "right")
        for row in plan.moves.iter_rows(named=True):
            table.add_row(row["operation"], f"{row['pct']:.1f} %",
                          f"{row['requests_moved'] * per_month:,.0f}",
                          f"{row['external_cost_per_request']:.3g}",
                          f"{row['own_marginal_cost_per_request']:.3g}",
                          f"{row['own_on_new_capacity_cost_per_request']:.3g}",
                          "yes" if row["economic"] else "NO")
        console.print(table)
    if out:
        new_share = out.get("new_internal_share_requests")
        console.print(
            f"GPUs to add: {out['gpus_to_add']}   resulting internal share: "
            f"{'–' if new_share is None else f'{new_share:.1%}'}\n"
            f"monthly cost change: {out['monthly_cost_delta'] or 0:+,.2f} USD (capacity-aware)"
            f"   vs {out['avg_monthly_cost_delta'] or 0:+,.2f} USD at average own cost")
    for note in plan.notes:
        console.print(f"note: {note}", style="yellow")
    console.print('the same in SQL: costpipe sql "SELECT * FROM capacity_by_operation"; '
                  '"SELECT * FROM whatif_shift(\'voice\', 30)"', style="dim")


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        target: float = typer.Option(
            None, "--target", min=0.0, max=1.0,
            help="Internal share of requests to reach, 0-1 (default: target_internal_share)"),
        lake: str = typer.Option(None, "--lake", help="Lake location (default: lake.location)"),
    ) -> None:
        """The cheapest set of moves in-house that reaches the target internal share.

        Uses measured GPU-seconds per request, idle capacity first (marginal cost = energy),
        then whole GPUs at the target utilisation of the peak hour (planning.*, gpu.*).
        Operations outside planning.movable_operations stay external. Method:
        docs/planning.md.
        """
        from costpipe import analytics
        from costpipe.analytics.planning import plan_to_target
        from costpipe.core.settings import get_settings

        settings = get_settings()
        if lake:
            settings = settings.model_copy(deep=True)
            settings.lake.location = lake
        con = analytics.connect(settings)
        try:
            result = plan_to_target(con, settings, target)
        finally:
            con.close()
        _print(result, settings)
        if not result.reachable and not result.already_met:
            raise typer.Exit(1)
