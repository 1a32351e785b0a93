"""What a run records about itself: its ``runs`` row and one ``arms`` row per arm,
part and judge, built from its `Plan` for the store's `Recorder` to write when the run
starts (`run`, `nightly`, `serve` alike). The store takes them as plain rows: it sits
below `run/` and never sees a plan."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from .. import __version__
from ..spec.models import GenerationParams
from .arm import ArmPlan, CompositePlan
from .plan import Plan


def git_sha(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def run_row(plan: Plan, kind: str) -> dict[str, Any]:
    """The run's ``runs`` row, but for what the recorder owns (its id, status and times)."""
    spec = plan.spec
    x = spec.experiment
    return {
        "experiment": x.name,
        "description": x.description,
        "spec_hash": spec.hash,
        "spec_yaml": spec.source,
        "spec_path": str(spec.path.resolve()),
        "git_sha": git_sha(spec.path.parent),
        "harness_version": __version__,
        "host": socket.gethostname(),
        "total_calls": plan.n_calls,
        "kind": kind,
    }


def arm_rows(
    plan: Plan, not_run: list[tuple[ArmPlan | CompositePlan, str]]
) -> list[dict[str, Any]]:
    """The ``arms`` rows in their order: the arms, those that cannot run here (and why),
    each composite's parts, the judges."""
    rows = [arm_row(a, None) for a in plan.arms]
    rows += [arm_row(a, why) for a, why in not_run]
    rows += [arm_row(p, None) for a in plan.arms if isinstance(a, CompositePlan) for p in a.parts]
    rows += [arm_row(j, None) for j in plan.judges.values()]
    return rows


def arm_row(a: ArmPlan | CompositePlan, not_run: str | None) -> dict[str, Any]:
    """The arm's row in ``arms``: a composite's provider is its kind (``panel``,
    ``route``) and its model the list of its parts; each part has a row of its own."""
    if isinstance(a, CompositePlan):
        provider, endpoint, model = a.kind, None, a.describe()
        tier = max(p.tier for p in a.parts)
        params = a.arm.model_dump(exclude_none=True, include=set(GenerationParams.model_fields))
    else:
        provider, endpoint, model = a.endpoint_name, a.endpoint.base_url, a.model
        tier, params = a.tier, a.params.model_dump(exclude_none=True)
        params["mode"] = "batch" if a.batch else "live"  # as run: --batch included
    return {
        "arm_id": a.id,
        "provider": provider,
        "endpoint": endpoint,
        "model": model,
        "tier": tier,
        "prompt_name": a.template.name,
        "prompt_version": a.template.version,
        "prompt_hash": a.template.hash,
        "params_json": json.dumps(params),
        "is_baseline": a.is_baseline,
        "role": "arm" if isinstance(a, CompositePlan) else a.role,
        "parent_arm_id": None if isinstance(a, CompositePlan) else a.parent,
        "not_run_reason": not_run,
    }
