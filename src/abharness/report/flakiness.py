"""Flaky cases: an arm's repeats of one case that disagree, and the chance that k tries
pass at least once (pass@k) or every time (pass^k), estimated without bias from the c
of n repeats of each case that passed (`figures.Flakiness`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import comb

from .figures import Flakiness


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Per case, 1 − C(n−c, k)/C(n, k): at least one of k tries drawn from the n passes
    (Chen et al. 2021). Cases need n ≥ k."""
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_pow_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Per case, C(c, k)/C(n, k): all of k tries drawn from the n pass (τ-bench)."""
    return comb(c, k) / comb(n, k)


def flakiness(cases: pd.DataFrame) -> Flakiness | None:
    """From one arm's case rows (`build.case_level`: calls made and mean pass); None when
    no case has two calls made (nothing can disagree)."""
    if len(cases) == 0:
        return None
    n = cases["calls"].to_numpy(dtype=float)
    c = np.rint(cases["passed"].to_numpy(dtype=float) * n)
    repeated = n >= 2
    if not repeated.any():
        return None
    flaky = repeated & (c > 0) & (c < n)
    top = int(n.max())
    at, pow_ = {}, {}
    for k in range(1, top + 1):
        keep = n >= k
        at[k] = float(pass_at_k(n[keep], c[keep], k).mean())
        pow_[k] = float(pass_pow_k(n[keep], c[keep], k).mean())
    cases_with = int(repeated.sum())
    return Flakiness(
        repeats=top,
        cases=cases_with,
        flaky_cases=int(flaky.sum()),
        flaky_share=float(flaky.sum()) / cases_with,
        pass_at_k=at,
        pass_pow_k=pow_,
    )
