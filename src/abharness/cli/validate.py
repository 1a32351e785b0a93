"""`abharness validate SPEC`: every check a run makes before its first call, and budgets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import EXIT_INVALID, console, db_option, err_console, one_line_errors


@click.command("validate")
@click.argument("spec", type=click.Path(path_type=Path))
@db_option
@click.option(
    "--allow-changed-prompts", is_flag=True, help="Only warn when name@N's content changed."
)
@one_line_errors
def command(spec: Path, db: Path, allow_changed_prompts: bool) -> None:
    """Render every prompt for every case and fit it to its budget, calling no model."""
    from rich.table import Table

    from ..errors import CallError, InvalidInput
    from ..run.arm import CompositePlan
    from ..run.experiment import prepare
    from ..run.plan import check_budgets

    plan, warnings = prepare(spec, db, allow_changed_prompts=allow_changed_prompts)
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    try:
        problems = check_budgets(plan)
    except CallError as exc:
        raise InvalidInput(f"cannot load a model to count tokens: {exc}", file=spec) from exc
    missing = dict(plan.unavailable())
    table = Table(
        title=f"{plan.spec.experiment.name}: {plan.n_cases} cases × {len(plan.arms)} arms "
        f"× {plan.spec.experiment.repeats} repeats = {plan.n_calls} calls"
    )
    for col in ("arm", "provider", "model", "prompt", "hash", "api", "tokenizer", "input budget"):
        table.add_column(col)
    for a in plan.all_arms():
        role = " (baseline)" if a.is_baseline else (" (judge)" if a not in plan.arms else "")
        table.add_row(
            a.id + role,
            a.endpoint_name,
            a.model,
            a.template.ref,
            a.template.hash,
            a.api(),
            a.tokenizer().method,
            str(a.budget() if a.budget() is not None else "unlimited"),
        )
    console.print(table)
    for arm in plan.arms:
        if isinstance(arm, CompositePlan):
            console.print(f"{arm.id}: {arm.describe()}", markup=False, soft_wrap=True)
    if any(a.is_baseline for a in plan.arms) and len(plan.arms) > 1:
        console.print(power_note(plan.n_cases, len(plan.arms) - 1), soft_wrap=True)
    for a, why in missing.items():
        err_console.print(f"[bold red]cannot run here:[/] {a.id}: {why}")
    if problems:
        for p in problems[:10]:
            err_console.print(f"[bold red]error:[/] {p}", soft_wrap=True)
        if len(problems) > 10:
            err_console.print(f"... and {len(problems) - 10} more prompts that cannot fit")
        sys.exit(EXIT_INVALID)
    if missing:
        console.print(
            f"[yellow]valid spec[/], but {len(missing)} of its arms cannot run here: `run` refuses "
            "it until they can, or runs the others with --skip-unavailable"
        )
    else:
        console.print("[green]valid[/]: every prompt renders and fits its budget")


def power_note(n_cases: int, arms_compared: int) -> str:
    """What this many cases can tell, before any money is spent."""
    from ..report.stats import minimum_detectable_effect

    typical = minimum_detectable_effect(n_cases, arms_compared, discordance=0.2)
    many = minimum_detectable_effect(n_cases, arms_compared, discordance=0.5)
    against = f"{arms_compared} arm{'s' if arms_compared > 1 else ''} against the baseline"
    return (
        f"With {n_cases} cases and {against}, the smallest pass-rate difference detectable "
        f"with 80% power is about ±{min(typical, 1) * 100:.0f} points if 20% of cases differ "
        f"between the arms, ±{min(many, 1) * 100:.0f} if half do. Repeats at temperature > 0 "
        "narrow this a little; at temperature 0 they are copies and do not."
    )
