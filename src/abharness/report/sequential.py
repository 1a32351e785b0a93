"""Always-valid comparisons for online runs: look every day, claim no more often.

An online run (`abharness serve`, SPEC §16) assigns each *subject* (a user, hashed) to
one arm and keeps collecting. Its report is read again and again while data arrive,
and a fixed-sample test re-read daily for 30 days claims a difference between equal
arms in about a third of experiments, not 5% (docs/online-statistics.md measures
it). So every figure here is *always valid*: the p-value is valid at any stopping time
(P(p_τ ≤ α) ≤ α for every stopping rule τ, however it depends on the data seen) and the
interval covers the truth at every look at once with probability ≥ 1 − α — in the
large-sample sense below, checked by simulation down to 20 subjects per arm.

**The unit is the subject.** A subject's values (a request's feedback, a scorer's
score, latency, cost) are averaged first; each arm's mean is the mean over its subjects
and its variance the spread across subjects, so a heavy user's hundreds of correlated
requests count as one unit, not as hundreds of independent ones. The estimand is the
difference between the arms' means over subjects (each subject weighs the same).
The arms are compared unpaired: Welch's variance V = s²_arm/n_arm + s²_control/n_control,
except that no arm's s² is taken below the pooled one (both arms' squared deviations
from their own means over n_arm + n_control − 2). With skewed values — a 10% rate
whose subjects are mostly at 0 — a small arm's s² falls with its mean, and Welch's z
is then too large exactly when the mean is low: with 200 subjects against 1,800, A/A
experiments claimed a difference in 10% of 400 runs with Welch's own variances, 0.25%
with the pooled floor. The floor is conservative when the arms' spreads differ (the
narrower arm's variance is raised), never anti-conservative.

**The boundary** is the normal-mixture boundary, which is two papers' answer at once:

- the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis &
  Walsh, "Peeking at A/B tests" (KDD 2017) and Johari, Pekelis & Walsh, "Always valid
  inference: continuous monitoring of A/B tests" (Operations Research 70(3), 2022):
  with a N(0, τ²) mixture over the effect, the likelihood ratio for H0: θ = θ0 is
  Λ = √(V/(V+τ²)) · exp(τ²(d−θ0)² / (2V(V+τ²))), a martingale under H0, so by Ville's
  inequality P(sup_t Λ_t ≥ 1/α) ≤ α. The always-valid p-value at time t is
  min(1, min over looks s ≤ t of 1/Λ_s(0)).
- the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas,
  "Time-uniform central limit theory and asymptotic confidence sequences" (arXiv
  2103.06476, 2021): with the variance *estimated* (not known, as the mSPRT
  assumes), μ̂_t ± σ̂_t·√(2(tρ² + 1)/(t²ρ²) · log(√(tρ² + 1)/α)) covers μ at all
  t ≥ m at once with a probability that tends to 1 − α as m grows. With V = σ²/t and
  τ² = ρ²σ² = tρ²V the mSPRT interval {θ0 : Λ(θ0) < 1/α} is exactly this interval,
  and that theorem is what licenses the plug-in variance, and non-normal (binary,
  skewed) values through the central limit theorem.

Here t is the subjects seen in both arms together and σ̂² = t·V (Welch's variance on
the per-subject scale), so with z = (d − θ0)/√V

    log Λ = −½·log(1 + tρ²) + tρ²/(1 + tρ²) · z²/2,
    half-width = √V · √((1 + tρ²)/(tρ²) · (2·log(1/α) + log(1 + tρ²))).

**The mixture parameter ρ** is chosen for a planned number of subjects t* (keyword
`planned_subjects`, default `PLANNED_SUBJECTS` = 4,000: 2,000 per arm): ρ² =
(2·log(1/α) + log(1 + 2·log(1/α)))/t* (nearly) minimises the interval's width at
t = t* (the approximate optimiser of Howard, Ramdas, McAuliffe & Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of
Statistics 2021, which Waudby-Smith et al.'s software uses). It is scale-free
(τ = ρ·σ̂ follows the metric's own spread, so one choice serves a 0/1 rate and log
latency). At t* the 95% interval is 1.55× as wide as a fixed-sample one; at t*/10
1.97×, at 10·t* 1.65× (`width_factor`): that is the price of being allowed to look
at any time, and guessing the size wrong by a factor 10 costs little. For a 0/1
feedback at 50%, τ ≈ 4.5 points: the mixture puts its weight on effects of the size
worth detecting, as the mSPRT papers advise.

**Looks.** The statistic is evaluated after every arrival time (each distinct `at`),
once both arms have `min_subjects` subjects: the p-value is the minimum over all of
them, so it is valid whoever looked whenever (a subset of looks — daily — only gives a
larger p). Subjects' means change as their later requests arrive; each look uses the
data up to it. The interval is the *running intersection* of the intervals at all
looks so far (as Johari et al. 2022 define it): an intersection of intervals that all
cover at once still covers, it never widens, and 0 lies outside it exactly when
p ≤ α, so the interval and the p-value always agree. If the intersection is empty (the estimate has
moved — a novelty effect, a changing population), the current interval is reported
with a caveat saying so. The point estimate is the current one. The 90% sequence
(2α) gives `ci90_*` for the equivalence ("no difference") rule of `stats.decide`.

**Metrics.** `pass_rate`, `mean_score`, `feedback`: values in [0, 1], the difference
arm − control. A subject-level SD below 1/(2√(n+1)) of the scale is raised to it
(what one subject at the far end of the scale would add), so an arm whose early
subjects all agree (a 5% rate's first zeros) does not look certain. `latency`,
`cost`: positive values compared on the log scale — each subject's mean log, the
difference of the arms' means of those, exponentiated: the ratio of geometric means
(arm ÷ control), as `stats.compare_ratio` does offline; values ≤ 0 (a cached call at
no cost) cannot be logged and are counted in `excluded`. A subject present in both
arms (per-request assignment) is a separate unit in each, with a caveat: the arms
are then not independent.

**Counts.** `n_units` is the subjects with a value in both arms together; `n_pairs`
is the smaller arm's subjects (there are no pairs: it is the number that limits the
comparison). wins/ties/losses are 0 (nothing is paired), `sd` is None (the fixed-sample
power of `stats.decide` does not apply; `sequential_power` does). The verdict is
`stats.decide`'s rule at m = 1; for several arms, pass the comparisons to
`stats.compare_arms`, which Holm-adjusts the p-values (valid for any valid p-values,
always-valid ones included) and decides again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from .stats import ALPHA, RATIO_METRICS, Comparison, decide, not_compared

BOUNDED_METRICS = ("pass_rate", "mean_score", "feedback")
METRICS = BOUNDED_METRICS + RATIO_METRICS
PLANNED_SUBJECTS = 4_000  # both arms together: 2,000 per arm
# Per arm. The boundary is asymptotic (a central limit theorem for the subjects' means):
# below this the variance estimate is too rough to be used, and a 0/1 rate has too few
# ones. The A/A simulations (tests/test_sequential.py) hold at 5% from here.
MIN_SUBJECTS = 20
POWER_SEED = 20261202
PATH_COLUMNS = [
    "at",
    "n_arm",
    "n_control",
    "diff",
    "p_fixed",
    "se",
    "p",
    "low",
    "high",
    "low_running",
    "high_running",
    "low90",
    "high90",
    "low90_running",
    "high90_running",
]


def mixture_rho2(planned_subjects: int = PLANNED_SUBJECTS, alpha: float = ALPHA) -> float:
    """ρ² that makes the (1 − α) boundary (nearly) narrowest at `planned_subjects`
    (Howard et al. 2021's approximation; `width_factor` checks it)."""
    k = 2 * math.log(1 / alpha)
    return (k + math.log(1 + k)) / planned_subjects


def boundary_z(
    subjects: np.ndarray | float, alpha: float = ALPHA, rho2: float | None = None
) -> np.ndarray:
    """Half-width of the always-valid interval in standard errors (√V) at `subjects`:
    |z| beyond it means Λ ≥ 1/α."""
    r = mixture_rho2(alpha=alpha) if rho2 is None else rho2
    tr = np.asarray(subjects, dtype=float) * r
    return np.sqrt((1 + tr) / tr * (2 * math.log(1 / alpha) + np.log1p(tr)))


def width_factor(subjects: float, planned_subjects: int = PLANNED_SUBJECTS) -> float:
    """The always-valid 95% interval's width ÷ the fixed-sample one's (1.96 SE)."""
    rho2 = mixture_rho2(planned_subjects)
    return float(boundary_z(subjects, ALPHA, rho2)) / 1.959963984540054


def log_mixture_ratio(z: np.ndarray, subjects: np.ndarray, rho2: float) -> np.ndarray:
    """log Λ of the normal-mixture SPRT for a standardised difference z."""
    tr = subjects * rho2
    return -0.5 * np.log1p(tr) + tr / (1 + tr) * z * z / 2


# -- running per-subject means ----------------------------------------------------------


@dataclass
class _Path:
    """Each arm's subjects, mean of subject means and their variance at every look."""

    n: np.ndarray  # (2, looks): subjects of arm, control
    mean: np.ndarray  # (2, looks)
    var: np.ndarray  # (2, looks), ddof = 1 (NaN below 2 subjects)
    at: np.ndarray  # (looks,): each distinct arrival time


def _times(at: pd.Series) -> np.ndarray:
    """Arrival times as numbers (timestamps: ns since the epoch, UTC)."""
    if not pd.api.types.is_numeric_dtype(at) and not pd.api.types.is_datetime64_any_dtype(at):
        at = pd.to_datetime(at, utc=True)  # datetime objects or ISO strings
    if pd.api.types.is_datetime64_any_dtype(at):
        if isinstance(at.dtype, pd.DatetimeTZDtype):
            at = at.dt.tz_convert("UTC").dt.tz_localize(None)
        return at.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(float)
    return pd.to_numeric(at).to_numpy(dtype=float)


def _running(unit: np.ndarray, group: np.ndarray, x: np.ndarray, at: np.ndarray) -> _Path:
    """Every arm's running subject-level figures after each distinct arrival time
    (`unit`: an integer per subject and arm; `group`: 1 arm, 0 control).

    In arrival order, a value of subject i moves i's mean from m_old to m_new; the sums
    Σm and Σm² over the arm's subjects change by m_new − m_old and m_new² − m_old², and
    the subject count by one at i's first value. Cumulative sums of those changes give
    every look's figures in O(N log N), vectorised."""
    if np.any(at[1:] < at[:-1]):
        order = np.argsort(at, kind="stable")  # ties keep their order
        unit, group, x, at = unit[order], group[order], x[order], at[order]
    by_unit = np.argsort(unit, kind="stable")  # each unit's values, in time order
    u, xs = unit[by_unit], x[by_unit]
    starts = np.append(True, u[1:] != u[:-1])
    start_at = np.maximum.accumulate(np.where(starts, np.arange(u.size), 0))
    running = np.cumsum(xs)
    before = np.where(start_at > 0, running[start_at - 1], 0.0)  # the unit's earlier rows
    count = np.empty(u.size)
    total = np.empty(u.size)
    count[by_unit] = np.arange(u.size) - start_at + 1
    total[by_unit] = running - before
    m_new = total / count
    m_old = np.where(count > 1, (total - x) / np.maximum(count - 1, 1), 0.0)
    steps = ((count == 1).astype(float), m_new - m_old, m_new * m_new - m_old * m_old)
    ends = np.flatnonzero(np.append(at[1:] != at[:-1], True))  # last row of each time
    own = group == 1
    n, s1, s2 = (
        np.stack(
            [np.cumsum(np.where(own, step, 0.0))[ends], np.cumsum(np.where(own, 0.0, step))[ends]]
        )
        for step in steps
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = np.maximum(s2 - s1 * mean, 0.0) / (n - 1)
    return _Path(n, mean, var, at[ends])


# -- the comparison -----------------------------------------------------------------------


def _values(frame: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The frame's usable rows (value on the compared scale; `at` as a number), and
    what was left out."""
    missing = [c for c in ("subject", "value", "at") if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    value = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    keep = np.isfinite(value)
    excluded: dict[str, int] = {}
    if (~keep).sum():
        excluded["no value"] = int((~keep).sum())
    if metric in RATIO_METRICS:
        positive = keep & (value > 0)
        if (keep & ~positive).sum():
            excluded["not positive"] = int((keep & ~positive).sum())
        keep = positive
        value = np.log(value, where=keep, out=np.zeros_like(value))
    out = pd.DataFrame(
        {"subject": frame["subject"][keep], "value": value[keep], "at": _times(frame["at"])[keep]}
    )
    return out, excluded


@dataclass
class _Data:
    """Both arms' usable values, pooled: an integer unit per (subject, arm)."""

    unit: np.ndarray
    group: np.ndarray  # 1 arm, 0 control
    x: np.ndarray  # on the compared scale (logs for ratios), centred
    at: np.ndarray
    counts: tuple[int, int]  # subjects with a value: arm, control
    shared: int  # subjects with values in both arms
    excluded: dict[str, int]


def _prepare(arm: pd.DataFrame, control: pd.DataFrame, metric: str) -> _Data:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
    a, excluded_a = _values(arm, metric)
    c, excluded_c = _values(control, metric)
    excluded = {
        k: excluded_a.get(k, 0) + excluded_c.get(k, 0) for k in {**excluded_a, **excluded_c}
    }
    both = pd.concat([a, c], ignore_index=True)
    group = np.repeat(np.array([1, 0], dtype=np.int64), [len(a), len(c)])
    subject = pd.factorize(both["subject"])[0].astype(np.int64)
    unit = subject * 2 + group
    per_unit = np.bincount(unit, minlength=2 * (int(subject.max(initial=-1)) + 1))
    in_arm, in_control = per_unit[1::2] > 0, per_unit[0::2] > 0
    x = both["value"].to_numpy(dtype=float)
    if x.size:
        x = x - float(np.median(x))  # centred: the running sums of squares stay exact
    return _Data(
        unit,
        group,
        x,
        both["at"].to_numpy(dtype=float),
        (int(in_arm.sum()), int(in_control.sum())),
        int((in_arm & in_control).sum()),
        excluded,
    )


def _too_few(data: _Data, metric: str, min_subjects: int) -> Comparison | None:
    if min(data.counts) >= min_subjects:
        return None
    short = [
        f"{name} has {'no subject' if k == 0 else f'{k} subject' + ('s' if k > 1 else '')}"
        for name, k in zip(("the arm", "the control"), data.counts, strict=True)
        if k < min_subjects
    ]
    return not_compared(
        metric,
        f"{' and '.join(short)} with a value; at least {min_subjects} per arm are needed",
        data.excluded,
    )


def _path(
    data: _Data,
    metric: str,
    alpha: float,
    min_subjects: int,
    planned_subjects: int,
    fixed: bool = True,
) -> dict[str, np.ndarray]:
    """Every look's figures (see `sequential_path`), from the first look at which both
    arms have `min_subjects` subjects; Welch's fixed-sample p only if `fixed`."""
    run = _running(data.unit, data.group, data.x, data.at)
    ready = (run.n >= min_subjects).all(axis=0)
    n, mean, var, at = run.n[:, ready], run.mean[:, ready], run.var[:, ready], run.at[ready]
    d = mean[0] - mean[1]
    figures: dict[str, np.ndarray] = {
        "at": at,
        "n_arm": n[0].astype(np.int64),
        "n_control": n[1].astype(np.int64),
        "diff": d,
    }
    if fixed:
        v_raw = var / n
        with np.errstate(invalid="ignore", divide="ignore"):
            df = v_raw.sum(axis=0) ** 2 / (v_raw**2 / (n - 1)).sum(axis=0)  # Welch–Satterthwaite
            figures["p_fixed"] = 2 * special.stdtr(df, -np.abs(d) / np.sqrt(v_raw.sum(axis=0)))
    pooled = ((n - 1) * var).sum(axis=0) / (n.sum(axis=0) - 2)  # see the module's doc
    var = np.maximum(var, pooled)
    if metric in BOUNDED_METRICS:
        var = np.maximum(var, 1.0 / (4 * (n + 1)))
    se = np.sqrt((var / n).sum(axis=0))
    t = n.sum(axis=0)
    rho2 = mixture_rho2(planned_subjects, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        se_ok = np.where(se > 0, se, np.nan)  # a look without spread says nothing
        log_lambda = log_mixture_ratio(d / se_ok, t, rho2)
        half = boundary_z(t, alpha, rho2) * se_ok
        half90 = boundary_z(t, 2 * alpha, mixture_rho2(planned_subjects, 2 * alpha)) * se_ok
    best = np.fmax.accumulate(np.nan_to_num(log_lambda, nan=-np.inf))
    return figures | {
        "se": se,
        "p": np.minimum(1.0, np.exp(-best)),
        "low": d - half,
        "high": d + half,
        "low_running": np.fmax.accumulate(np.nan_to_num(d - half, nan=-np.inf)),
        "high_running": np.fmin.accumulate(np.nan_to_num(d + half, nan=np.inf)),
        "low90": d - half90,
        "high90": d + half90,
        "low90_running": np.fmax.accumulate(np.nan_to_num(d - half90, nan=-np.inf)),
        "high90_running": np.fmin.accumulate(np.nan_to_num(d + half90, nan=np.inf)),
    }


def sequential_path(
    arm: pd.DataFrame,
    control: pd.DataFrame,
    metric: str,
    *,
    alpha: float = ALPHA,
    min_subjects: int = MIN_SUBJECTS,
    planned_subjects: int = PLANNED_SUBJECTS,
) -> pd.DataFrame:
    """The comparison at every look (each distinct `at`, once both arms have
    `min_subjects` subjects), on the compared scale (log ratio for latency and cost):
    `at` (as a number: ns since the epoch for timestamps), `n_arm`, `n_control`,
    `diff`, `se` (Welch, with the bounded metrics' floor), `p` (always-valid: the
    running minimum), `low`/`high` (this look's interval) and `low_running`/
    `high_running` (their running intersection), the same at 90%, and `p_fixed` —
    Welch's fixed-sample t-test, valid only at one look fixed in advance, kept for
    contrast (and a chart of how it wanders). Empty when the arms never both have
    `min_subjects` subjects."""
    data = _prepare(arm, control, metric)
    if min(data.counts) < min_subjects:
        return pd.DataFrame(columns=PATH_COLUMNS)
    return pd.DataFrame(_path(data, metric, alpha, min_subjects, planned_subjects))


def sequential_compare(
    arm: pd.DataFrame,
    control: pd.DataFrame,
    metric: str,
    *,
    alpha: float = ALPHA,
    min_subjects: int = MIN_SUBJECTS,
    planned_subjects: int = PLANNED_SUBJECTS,
) -> Comparison:
    """Always-valid comparison of `arm` with `control` on `metric`, the subject as the
    unit (the module's docstring says how). Each frame has columns `subject`, `value`
    (NaN: none) and `at` (a timestamp or a number: the arrival order). Bounded metrics
    give the difference arm − control, `latency` and `cost` the ratio arm ÷ control.
    Not compared (with a reason) while an arm has fewer than `min_subjects` subjects
    with a value."""
    data = _prepare(arm, control, metric)
    few = _too_few(data, metric, min_subjects)
    if few is not None:
        return few
    path = _path(data, metric, alpha, min_subjects, planned_subjects, fixed=False)
    last = {k: v[-1] for k, v in path.items()}
    caveats: list[str] = []
    if last["se"] <= 0:  # no spread in either arm (only on the log scale: see above)
        p = 1.0 if last["diff"] == 0 else 0.0
        low = high = low90 = high90 = float(last["diff"])
        caveats.append("every subject has the same value in each arm: nothing varies")
    else:
        p = float(last["p"])
        low, high = float(last["low_running"]), float(last["high_running"])
        low90, high90 = float(last["low90_running"]), float(last["high90_running"])
        if low > high:
            low, high = float(last["low"]), float(last["high"])
            caveats.append(
                "the always-valid intervals of earlier looks do not overlap the current "
                "one: the difference has changed over time (a novelty effect, a changing "
                "population)"
            )
        if low90 > high90:
            low90, high90 = float(last["low90"]), float(last["high90"])
    if data.shared:
        caveats.append(
            f"{data.shared} subject(s) have values in both arms: each counts once in each, "
            "and the arms are not independent"
        )
    figures = [float(last["diff"]), low, high, low90, high90]
    if metric in RATIO_METRICS:
        figures = [math.exp(f) for f in figures]
    result = Comparison(
        metric,
        min(data.counts),
        0,
        0,
        0,
        figures[0],
        figures[1],
        figures[2],
        p,
        figures[3],
        figures[4],
        n_units=sum(data.counts),
    )
    result.excluded = data.excluded
    result.caveats = caveats
    return decide(result, m=1, alpha=alpha, power=False)


# -- power ----------------------------------------------------------------------------


def sequential_power(
    effect: float,
    sd: float,
    subjects_per_arm: int,
    *,
    days: int = 30,
    alpha: float = ALPHA,
    planned_subjects: int = PLANNED_SUBJECTS,
    sd_control: float | None = None,
    looks_per_day: int = 24,
    reps: int = 20_000,
    seed: int = POWER_SEED,
) -> float:
    """Probability that the always-valid test rejects "no difference" by the end of
    `days`, for a true difference `effect` (on the compared scale: a log ratio for
    latency and cost) between subject means with SD `sd` (`sd_control` for the
    control, default the same), when `subjects_per_arm` subjects arrive per arm,
    evenly over the days. The report's p is the minimum over every arrival; here the
    path is looked at `looks_per_day` times a day (hourly by default: 64% power at
    daily looks and 67% hourly for +5 points on a 50% rate with 2,000 subjects per arm,
    69% measured with every arrival, tests/test_sequential.py).

    Under the normal limit the Welch statistic is a Brownian motion with drift in the
    information I = 1/V: S(I) = B(I) + effect·I; it is simulated at the looks (`reps`
    seeded paths) and rejects where the mixture ratio reaches 1/α. Looking at the looks
    only, not after every arrival, makes it a slight underestimate; subjects' means are
    taken as complete when they arrive."""
    if subjects_per_arm <= 0 or days <= 0:
        return 0.0
    sd_c = sd if sd_control is None else sd_control
    looks = days * looks_per_day
    per_arm = np.ceil(subjects_per_arm * np.arange(1, looks + 1) / looks)
    per_arm = per_arm[per_arm >= MIN_SUBJECTS]
    if per_arm.size == 0:
        return 0.0
    v = (sd * sd + sd_c * sd_c) / per_arm
    info = 1 / v
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((reps, info.size)) * np.sqrt(np.diff(info, prepend=0.0))
    score = np.cumsum(steps, axis=1) + effect * info
    z = score / np.sqrt(info)
    rho2 = mixture_rho2(planned_subjects, alpha)
    crossed = (log_mixture_ratio(z, 2 * per_arm, rho2) >= math.log(1 / alpha)).any(axis=1)
    return float(crossed.mean())


def sequential_detectable(
    sd: float,
    subjects_per_arm: int,
    *,
    days: int = 30,
    alpha: float = ALPHA,
    planned_subjects: int = PLANNED_SUBJECTS,
    power: float = 0.8,
    looks_per_day: int = 4,
    reps: int = 4_000,
) -> float | None:
    """The smallest difference `sequential_power` finds with `power` (same model;
    fewer paths and looks, so a report can afford it: the search takes a few tenths of a
    second, the paths shared across it so it is monotone). None when the
    subjects are too few ever to compare, or no difference up to 20 SDs would do."""
    if subjects_per_arm < MIN_SUBJECTS or sd <= 0:
        return None

    def enough(effect: float) -> bool:
        return (
            sequential_power(
                effect,
                sd,
                subjects_per_arm,
                days=days,
                alpha=alpha,
                planned_subjects=planned_subjects,
                looks_per_day=looks_per_day,
                reps=reps,
            )
            >= power
        )

    high = 20 * sd
    if not enough(high):
        return None
    low = 0.0
    while high - low > 1e-3 * sd:
        mid = (low + high) / 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
