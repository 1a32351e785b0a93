"""`abharness validate SPEC`: every check a run makes before its first call, and budgets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..shell import EXIT_INVALID, console, db_option, err_console, one_line_errors

if TYPE_CHECKING:
    from ..run.plan import Plan


@click.command("validate")
@click.argument("spec", type=click.Path(path_type=Path))
@db_option
@click.option(
    "--allow-changed-prompts", is_flag=True, help="Only warn when name@N's content changed."
)
@click.option("--batch", is_flag=True, help="As `run --batch` would run it.")
@one_line_errors
def command(spec: Path, db: Path, allow_changed_prompts: bool, batch: bool) -> None:
    """Render every prompt for every case and fit it to its budget, calling no model."""
    from rich.table import Table

    from ..errors import CallError, InvalidInput
    from ..run.arm import CompositePlan
    from ..run.experiment import prepare
    from ..run.plan import check_budgets

    plan, warnings = prepare(spec, db, allow_changed_prompts=allow_changed_prompts, batch=batch)
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
        role = " (baseline)" if a.is_baseline else (f" ({a.role})" if a.role != "arm" else "")
        table.add_row(
            a.id + role,
            a.endpoint_name,
            a.model,
            a.template.ref,
            a.template.hash,
            a.api() + (" (batch)" if a.batch else ""),
            a.tokenizer().method,
            str(a.budget() if a.budget() is not None else "unlimited"),
        )
    console.print(table)
    for arm in plan.arms:
        if isinstance(arm, CompositePlan):
            console.print(f"{arm.id}: {arm.describe()}", markup=False, soft_wrap=True)
    if any(a.is_baseline for a in plan.arms) and len(plan.arms) > 1:
        console.print(power_note(plan.n_cases, len(plan.arms) - 1), soft_wrap=True)
    for line, warn in gate_notes(plan, spec):
        (err_console if warn else console).print(
            f"[yellow]warning:[/] {line}" if warn else line, soft_wrap=True
        )
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
    """What this many cases can tell, before any money is spent: the exact test's power
    with one call per case, for two shares of cases that differ between the arms (a
    difference can be no larger than that share)."""
    from ..report.power import binary_detectable, min_units_to_reject
    from ..report.stats import ALPHA

    against = f"{arms_compared} arm{'s' if arms_compared > 1 else ''} against the baseline"
    least = min_units_to_reject(ALPHA, arms_compared)
    if n_cases < least:
        return (
            f"With {n_cases} cases and {against}, no pass-rate difference can be detected: the "
            f"exact test needs at least {least} cases that differ to reject at 5%"
            + (" (Holm across the arms)." if arms_compared > 1 else ".")
        )
    level = ALPHA / arms_compared
    typical = binary_detectable(n_cases, 0.2, level, cap=0.2)
    many = binary_detectable(n_cases, 0.5, level, cap=0.5)
    head = f"With {n_cases} cases and {against}, "
    tail = (
        " Repeats at temperature > 0 narrow this a little; at temperature 0 they are copies "
        "and do not."
    )
    if many is None:
        return (
            head + "no pass-rate difference would be detected reliably (80% power), even if half "
            "of the cases differed between the arms." + tail
        )
    if typical is None:
        return (
            head + f"the smallest pass-rate difference detectable with 80% power is about "
            f"±{many * 100:.0f} points if half of the cases differ between the arms; if only 20% "
            "do, no difference would be (it could be no larger than 20 points)." + tail
        )
    return (
        head + f"the smallest pass-rate difference detectable with 80% power is about "
        f"±{typical * 100:.0f} points if 20% of cases differ between the arms, "
        f"±{many * 100:.0f} if half do." + tail
    )


def gate_notes(plan: Plan, spec: Path) -> list[tuple[str, bool]]:
    """What each gate would catch with 80% power at this size, and a warning per gate
    too small for its threshold: (line, is a warning). The spec's gates, or the nightly
    defaults for a spec in a `nightly` folder that sets none."""
    from ..report.compare import nightly_default_gates
    from ..report.gate_power import a_priori

    gates = plan.spec.experiment.gates
    whose = "the spec's gates"
    if gates == type(gates)():
        if spec.resolve().parent.name != "nightly":
            return []
        gates, whose = nightly_default_gates(len(plan.arms)), "the nightly defaults"
    n, arms = plan.n_cases, len(plan.arms)
    zero = all(a.params.temperature == 0 for a in plan.callers())
    out: list[tuple[str, bool]] = [
        (
            f"Gates ({whose}): what `compare` and `nightly` would catch with 80% power "
            f"(99% intervals) on {n} cases:",
            False,
        )
    ]
    for c in a_priori(gates, n, arms, plan.spec.experiment.repeats, zero):
        against = " against the baseline arm" if c.gate == "latency_p50_increase_pct" else ""
        detail = f" ({c.why})" if c.why and c.detectable is not None else ""
        out.append((f"  {c.gate} {c.threshold}: {c.text}{against}{detail}", False))
        warning = c.warning(n)
        if warning:
            out.append((warning, True))
    for gate in ("cost_increase_pct", "cost_abs_increase_pct"):
        if getattr(gates, gate) is not None:
            out.append(
                (
                    f"  {gate} +{getattr(gates, gate):g}%: depends on how much the cost per call "
                    "varies; `compare` and the nightly page show it from the runs",
                    False,
                )
            )
    relative = [g for g in ("latency_p50_increase_pct", "cost_increase_pct") if getattr(gates, g)]
    if relative and arms < 2:
        out.append(
            (
                f"{' and '.join(relative)} compare each arm with the baseline arm, and this spec "
                "has one arm: they will not be evaluated; the absolute gates "
                "(latency_p50_abs_increase_pct, cost_abs_increase_pct) apply to a single arm",
                True,
            )
        )
    return out
