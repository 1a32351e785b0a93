"""Always-valid comparisons for online runs (`report.sequential`): the running
subject-level figures against pandas, scipy and statsmodels; the mixture boundary
against its closed forms; the edge cases; and, by seeded simulation
(tests/simulation_online.py), that reading the report after every arrival claims a
difference between equal arms in at most 5% of experiments while a fixed-sample test
read daily claims one in about a third of them, that the interval covers the truth at every
look at once, and that the power helper predicts the power measured."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.weightstats import ttest_ind as sm_ttest_ind

from abharness.report.sequential import (
    MIN_SUBJECTS,
    PATH_COLUMNS,
    boundary_z,
    log_mixture_ratio,
    mixture_rho2,
    sequential_compare,
    sequential_detectable,
    sequential_path,
    sequential_power,
    width_factor,
)
from abharness.report.stats import compare_arms

from .simulation_online import AA, EFFECTS, Scenario, experiment, run

ALPHA = 0.05


def _frame(subjects: list[str], values: list[float], at: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"subject": subjects, "value": values, "at": at})


def _random_arms(seed: int, n_obs: int = 3_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Messy data: heavy subjects, NaNs, tied arrival times, unsorted rows."""
    rng = np.random.default_rng(seed)
    frames = []
    for prefix in ("a", "c"):
        who = rng.zipf(1.6, n_obs) % 400
        value = rng.random(n_obs) + 0.1 * (who % 7)
        value[rng.random(n_obs) < 0.2] = np.nan
        at = rng.integers(0, 600, n_obs).astype(float)  # ties
        frames.append(_frame([f"{prefix}{w}" for w in who], list(value), list(at)))
    return frames[0], frames[1]


def _by_hand(frame: pd.DataFrame, until: float) -> pd.Series:
    """Each subject's mean of its values up to `until`."""
    seen = frame[(frame["at"] <= until) & frame["value"].notna()]
    return seen.groupby("subject")["value"].mean()


# -- the fixed-sample pieces against the references ---------------------------------------


def test_running_subject_means_match_pandas_scipy_and_statsmodels() -> None:
    arm, control = _random_arms(1)
    path = sequential_path(arm, control, "mean_score", min_subjects=2)
    assert list(path.columns) == PATH_COLUMNS
    looks = path.iloc[np.linspace(0, len(path) - 1, 12).astype(int)]
    for _, look in looks.iterrows():
        a, c = _by_hand(arm, look["at"]), _by_hand(control, look["at"])
        assert (look["n_arm"], look["n_control"]) == (a.size, c.size)
        assert look["diff"] == pytest.approx(a.mean() - c.mean(), abs=1e-10)
        welch = sps.ttest_ind(a, c, equal_var=False)
        assert look["p_fixed"] == pytest.approx(welch.pvalue, rel=1e-7)
        _, p_sm, _ = sm_ttest_ind(a, c, usevar="unequal")
        assert look["p_fixed"] == pytest.approx(p_sm, rel=1e-7)
        # each arm's variance at least the pooled one and the 0..1 floor
        pooled = ((a.size - 1) * a.var() + (c.size - 1) * c.var()) / (a.size + c.size - 2)
        v = sum(max(g.var(), pooled, 0.25 / (g.size + 1)) / g.size for g in (a, c))
        assert look["se"] == pytest.approx(math.sqrt(v), rel=1e-9)


def test_the_logs_of_latency_are_compared_per_subject() -> None:
    arm, control = _random_arms(2)
    arm["value"] = np.exp(arm["value"] * 3)
    control["value"] = np.exp(control["value"] * 3)
    path = sequential_path(arm, control, "latency")
    end = path.iloc[-1]
    a, c = (
        f.dropna().assign(value=lambda g: np.log(g["value"])).groupby("subject")["value"].mean()
        for f in (arm, control)
    )
    assert end["diff"] == pytest.approx(a.mean() - c.mean(), abs=1e-10)
    pooled = ((a.size - 1) * a.var() + (c.size - 1) * c.var()) / (a.size + c.size - 2)
    se = math.sqrt(max(a.var(), pooled) / a.size + max(c.var(), pooled) / c.size)
    assert end["se"] == pytest.approx(se, rel=1e-9)  # no 0..1 floor on the log scale
    result = sequential_compare(arm, control, "latency")
    assert result.diff == pytest.approx(math.exp(end["diff"]))


def test_timestamps_and_numbers_give_the_same_comparison() -> None:
    arm, control = _random_arms(3)
    start = pd.Timestamp("2026-11-01", tz="Europe/Paris")
    as_time = [f.assign(at=start + pd.to_timedelta(f["at"], unit="min")) for f in (arm, control)]
    by_number = sequential_compare(arm, control, "feedback")
    by_time = sequential_compare(*as_time, "feedback")
    as_text = [f.assign(at=f["at"].map(lambda t: t.isoformat())) for f in as_time]
    for other in (by_time, sequential_compare(*as_text, "feedback")):
        assert (other.diff, other.ci_low, other.ci_high, other.p_value) == pytest.approx(
            (by_number.diff, by_number.ci_low, by_number.ci_high, by_number.p_value)
        )


# -- the boundary ---------------------------------------------------------------------------


def test_the_boundary_is_the_asymptotic_confidence_sequence() -> None:
    """Waudby-Smith et al. (arXiv 2103.06476): σ̂·√(2(tρ²+1)/(t²ρ²)·log(√(tρ²+1)/α)) with
    σ̂ = √(tV); and Λ equals 1/α exactly on it (so p ≤ α ⇔ 0 outside the interval)."""
    rho2 = mixture_rho2(4_000)
    for t in (40, 400, 4_000, 40_000):
        v = 0.25 / t
        sigma = math.sqrt(t * v)
        wsr = sigma * math.sqrt(
            2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / ALPHA)
        )
        half = float(boundary_z(t, ALPHA, rho2)) * math.sqrt(v)
        assert half == pytest.approx(wsr, rel=1e-12)
        z = float(boundary_z(t, ALPHA, rho2))
        log_lambda = float(log_mixture_ratio(np.array(z), np.array(float(t)), rho2))
        assert log_lambda == pytest.approx(math.log(1 / ALPHA), rel=1e-12)


def test_the_mixture_is_tightest_at_the_planned_size() -> None:
    widths = {t: width_factor(t) for t in (400, 2_000, 4_000, 8_000, 40_000)}
    assert min(widths, key=widths.__getitem__) == 4_000
    assert widths[4_000] == pytest.approx(1.55, abs=0.01)
    assert widths[400] < 2.0 and widths[40_000] < 1.7  # a factor 10 off costs little


def test_p_and_the_interval_agree_and_only_tighten() -> None:
    rng = np.random.default_rng(5)
    for i in range(40):
        s = Scenario("agree", subjects=300, effect=0.05 * (i % 3))
        arm, control = experiment(rng, s)
        path = sequential_path(arm, control, "feedback")
        assert np.all(np.diff(path["p"]) <= 0)
        assert np.all(np.diff(path["low_running"]) >= 0)
        assert np.all(np.diff(path["high_running"]) <= 0)
        outside = (path["low_running"] > 0) | (path["high_running"] < 0)
        crossed = path["p"] <= ALPHA * (1 + 1e-9)
        assert np.array_equal(outside.to_numpy(), crossed.to_numpy())


# -- what is not compared, and odd data -----------------------------------------------------


def test_too_few_subjects_are_not_compared_with_a_reason() -> None:
    few = _frame([f"a{i % 5}" for i in range(200)], [1.0] * 200, list(range(200)))
    many = _frame([f"c{i}" for i in range(50)], [0.0] * 50, list(range(50)))
    c = sequential_compare(few, many, "pass_rate")
    assert not c.compared and c.verdict == "inconclusive"
    assert c.reason == (
        f"the arm has 5 subjects with a value; at least {MIN_SUBJECTS} per arm are needed"
    )
    empty = many.assign(value=np.nan)
    c = sequential_compare(many, empty, "feedback")
    assert not c.compared and "the control has no subject" in (c.reason or "")
    assert c.excluded == {"no value": 50}
    assert sequential_path(many, empty, "feedback").empty


def test_all_values_equal() -> None:
    ones = _frame([f"a{i}" for i in range(100)], [1.0] * 100, list(range(100)))
    also = ones.assign(subject="c" + ones["subject"])
    c = sequential_compare(ones, also, "pass_rate")
    assert c.diff == 0 and c.p_value == 1.0
    assert c.ci_low is not None and c.ci_high is not None
    assert c.ci_low < 0 < c.ci_high  # the floor: agreement among 100 is not certainty
    cost = sequential_compare(ones, also, "cost")
    assert cost.diff == 1.0 and cost.p_value == 1.0 and cost.ci_low == cost.ci_high == 1.0
    assert cost.caveats == ["every subject has the same value in each arm: nothing varies"]


def test_nans_and_non_positive_values_are_left_out_and_counted() -> None:
    rng = np.random.default_rng(7)
    arm = _frame(
        [f"a{i % 60}" for i in range(300)], list(rng.lognormal(6, 0.5, 300)), list(range(300))
    )
    control = arm.assign(subject="c" + arm["subject"], value=rng.lognormal(6, 0.5, 300))
    arm.loc[:9, "value"] = np.nan
    arm.loc[10:14, "value"] = 0.0
    c = sequential_compare(arm, control, "cost")
    assert c.compared and c.excluded == {"no value": 10, "not positive": 5}
    assert c.n_units == 120 and c.n_pairs == 60


def test_a_heavy_user_counts_once() -> None:
    """One subject with 5,000 requests at 1.0 among 100 at 0/1: by request it would
    move the arm's mean to ~0.98; by subject it moves it by half a point."""
    rng = np.random.default_rng(8)
    light = [f"a{i}" for i in range(100)]
    arm = _frame(
        light + ["heavy"] * 5_000, list(rng.random(100) < 0.5) + [1.0] * 5_000, list(range(5_100))
    )
    control = _frame([f"c{i}" for i in range(101)], list(rng.random(101) < 0.5), list(range(101)))
    arm["value"] = arm["value"].astype(float)
    control["value"] = control["value"].astype(float)
    c = sequential_compare(arm, control, "feedback")
    by_subject = arm.groupby("subject")["value"].mean().mean() - control["value"].mean()
    assert c.diff == pytest.approx(by_subject)
    assert c.n_units == 202 and c.verdict == "inconclusive"


def test_subjects_in_both_arms_are_flagged() -> None:
    arm = _frame([f"s{i}" for i in range(40)], [1.0, 0.0] * 20, list(range(40)))
    c = sequential_compare(arm, arm.assign(value=[0.0, 1.0] * 20), "feedback")
    assert c.compared and any("40 subject(s) have values in both arms" in x for x in c.caveats)


def test_unknown_metric_and_missing_columns_are_errors() -> None:
    frame = _frame(["a"], [1.0], [0.0])
    with pytest.raises(ValueError, match="unknown metric"):
        sequential_compare(frame, frame, "accuracy")
    with pytest.raises(ValueError, match="missing column"):
        sequential_compare(frame.drop(columns="at"), frame, "feedback")


def test_holm_across_arms_keeps_the_sequential_figures() -> None:
    rng = np.random.default_rng(9)
    control_s = Scenario("holm", subjects=1_500, extra_requests=0)
    _, control = experiment(rng, control_s)
    comparisons = {}
    for name, effect in (("good", 0.1), ("same", 0.0)):
        arm, _ = experiment(rng, Scenario("holm", subjects=1_500, extra_requests=0, effect=effect))
        comparisons[name] = sequential_compare(arm, control, "feedback")
    before = {k: (c.ci_low, c.ci_high, c.p_value) for k, c in comparisons.items()}
    compare_arms(comparisons)
    assert {k: (c.ci_low, c.ci_high, c.p_value) for k, c in comparisons.items()} == before
    assert comparisons["good"].verdict == "better"
    assert comparisons["good"].p_adjusted == pytest.approx(2 * before["good"][2])
    assert comparisons["same"].verdict != "better" and comparisons["same"].mde is None


def test_a_million_observations_take_well_under_a_second() -> None:
    rng = np.random.default_rng(10)
    n = 500_000
    arms = [
        pd.DataFrame(
            {
                "subject": np.char.add(p, rng.integers(0, 50_000, n).astype(str)),
                "value": (rng.random(n) < 0.5).astype(float),
                "at": rng.random(n) * 30,
            }
        )
        for p in ("a", "c")
    ]
    sequential_compare(arms[0], arms[1], "feedback")  # warm
    started = time.perf_counter()
    c = sequential_compare(arms[0], arms[1], "feedback")
    elapsed = time.perf_counter() - started
    assert c.n_units > 99_900  # 50,000 possible subjects per arm, nearly all drawn
    assert elapsed < 2.0, elapsed  # ~0.5 s on one core of the shared 2-core machine


# -- power ---------------------------------------------------------------------------------


def test_sequential_power_is_alpha_at_no_effect_and_grows() -> None:
    def power(effect: float, subjects: int) -> float:
        return sequential_power(effect, 0.5, subjects, looks_per_day=4, reps=4_000)

    assert power(0.0, 2_000) <= ALPHA
    powers = [power(e, 2_000) for e in (0.02, 0.04, 0.06, 0.08)]
    assert powers == sorted(powers) and powers[-1] > 0.95
    assert power(0.05, 1_000) < power(0.05, 4_000)
    assert power(0.05, 10) == 0.0  # never MIN_SUBJECTS per arm


# -- the guarantee, by simulation ---------------------------------------------------------


def _at_most(k: int, n: int, rate: float) -> bool:
    """k in n is consistent with a true rate ≤ `rate` (one-sided binomial, p > 0.001)."""
    return sps.binomtest(k, n, rate, alternative="greater").pvalue > 0.001


def _at_least(k: int, n: int, rate: float) -> bool:
    return sps.binomtest(k, n, rate, alternative="less").pvalue > 0.001


def test_aa_claims_at_most_alpha_where_a_daily_t_test_inflates() -> None:
    s = Scenario("A/A fast", subjects=300, missing=0.5)
    out = run(s, 150)
    claims = sum(o.claimed for o in out)
    naive = sum(o.naive_claimed for o in out)
    assert _at_most(claims, len(out), ALPHA), claims
    assert naive / len(out) > 0.12, naive  # 30–37% at 1,000 experiments (docs)
    assert _at_least(sum(o.covered for o in out), len(out), 1 - ALPHA)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", AA, ids=[s.name for s in AA])
def test_aa_over_30_days_claims_at_most_alpha(scenario: Scenario) -> None:
    out = run(scenario, 1_000)
    claims = sum(o.claimed for o in out)
    assert _at_most(claims, len(out), ALPHA), claims
    assert _at_least(sum(o.covered for o in out), len(out), 1 - ALPHA)
    naive = sum(o.naive_claimed for o in out) / len(out)
    # ~30% measured; 8% for 60 subjects per arm, whose looks begin around day 10
    assert naive > (0.15 if scenario.subjects >= 1_000 else ALPHA)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", EFFECTS, ids=[s.name for s in EFFECTS])
def test_the_interval_covers_the_truth_at_every_look(scenario: Scenario) -> None:
    out = run(scenario, 1_000)
    assert _at_least(sum(o.covered for o in out), len(out), 1 - ALPHA)


@pytest.mark.slow
@pytest.mark.parametrize("effect", [0.03, 0.05])
def test_power_helper_predicts_the_measured_power(effect: float) -> None:
    """One request per subject, so the subject-level SD is the Bernoulli one (0.5);
    the helper looks daily, the report after every arrival: it may underestimate a
    little, never overestimate."""
    s = Scenario("power", subjects=2_000, extra_requests=0, effect=effect)
    out = run(s, 1_000)
    measured = sum(o.claimed for o in out) / len(out)
    predicted = sequential_power(effect, 0.5, s.subjects, days=s.days)
    assert predicted - 0.05 <= measured <= predicted + 0.08, (measured, predicted)


def test_a_novelty_effect_that_reverses_is_flagged() -> None:
    """Arm loved for the first days (+40 points), then disliked (−40): the early
    intervals exclude what the later data say, their intersection is empty, and the
    report shows the current interval with a caveat instead of an empty one."""
    rng = np.random.default_rng(11)
    n = 4_000
    at = np.sort(rng.random(n) * 30)
    early = at < 5
    rate = np.where(early, 0.9, 0.1)
    arm = _frame([f"a{i}" for i in range(n)], list((rng.random(n) < rate).astype(float)), list(at))
    control = _frame(
        [f"c{i}" for i in range(n)], list((rng.random(n) < 0.5).astype(float)), list(at)
    )
    c = sequential_compare(arm, control, "feedback")
    assert any("changed over time" in x for x in c.caveats)
    assert c.ci_low is not None and c.ci_high is not None and c.ci_low < c.diff < c.ci_high
    assert c.p_value is not None and c.p_value < 1e-6  # the early effect was real


def test_a_slower_arm_is_worse_on_latency_and_cheaper_is_better_on_cost() -> None:
    rng = np.random.default_rng(12)
    s = Scenario("slow arm", kind="latency", subjects=1_000, effect=math.log(1.5))
    arm, control = experiment(rng, s)
    latency = sequential_compare(arm, control, "latency")
    assert latency.verdict == "worse" and latency.ci_low is not None and latency.ci_low > 1
    assert latency.ci_high is not None and latency.ci_low < 1.5 < latency.ci_high
    cost = sequential_compare(arm.assign(value=arm["value"] / 3), control, "cost")
    assert cost.verdict == "better" and cost.diff is not None and cost.diff < 1


def test_the_detectable_difference_has_the_stated_power() -> None:
    started = time.perf_counter()
    mde = sequential_detectable(0.5, 2_000)
    assert time.perf_counter() - started < 3.0
    assert mde is not None
    # +5 points has ~67% power (docs): 80% needs a little more; a single fixed look
    # would need 2.8 standard errors (0.044)
    assert 0.05 < mde < 0.07
    assert sequential_power(mde, 0.5, 2_000, looks_per_day=4, reps=4_000) >= 0.8
    assert sequential_detectable(0.5, 10) is None
