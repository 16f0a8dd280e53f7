"""Small statistics for offline-RL results: final scores, IQM/mean CIs, curve bands.

Aggregate scores follow Agarwal et al. (2021), "Deep RL at the Edge of the Statistical
Precipice": interquartile mean (IQM) and mean over runs, with 95% *stratified bootstrap*
confidence intervals (runs are resampled with replacement within each task), computed
with rliable (``rly.get_interval_estimates``, percentile method).

rliable draws its bootstrap indices from NumPy's *global* legacy RNG
(``np.random.choice`` in ``StratifiedBootstrap.update_indices``) and ignores its own
``random_state`` argument for that, so we seed the global RNG inside a context that
restores the caller's RNG state afterwards: same inputs, same CIs, no side effects.

rliable imports ``arch``, whose releases for Python 3.11 do not import under pandas >= 3;
the package pins pandas < 3 for that reason.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

# scipy.stats and rliable are imported where they are used: together they take ~2 s to import.

DEFAULT_REPS = 2000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95


def _trimmed_mean_last_axis(values: np.ndarray, proportion: float = 0.25) -> np.ndarray:
    """25% trimmed mean over the last axis, computed exactly as ``scipy.stats.trim_mean``.

    Same cut points (``int(proportion * n)``), same ``np.partition`` and mean, hence the
    same bits as rliable's ``aggregate_iqm``, without scipy's per-call overhead (which
    dominates a bootstrap that calls it thousands of times).
    """
    n = values.shape[-1]
    if n == 0:
        return np.full(values.shape[:-1], np.nan)
    low = int(proportion * n)
    high = n - low
    part = np.partition(values, (low, high - 1), axis=-1)
    return np.mean(part[..., low:high], axis=-1)


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores (25% trimmed mean)."""
    return float(_trimmed_mean_last_axis(np.asarray(scores, dtype=float).ravel()))


def iqm_trims_nothing(n_scores: int) -> bool:
    """True when the IQM of ``n_scores`` values equals their mean by construction.

    The 25% trimmed mean drops ``int(0.25 * n)`` values from each end (scipy's and
    rliable's rule), which is none for n < 4: correct behaviour, worth saying in a report.
    """
    return n_scores > 0 and int(0.25 * n_scores) == 0


def to_original_reward_units(values: Sequence[float] | np.ndarray, reward_scale: float,
                             power: int = 1) -> np.ndarray:
    """Convert a statistic logged in an algorithm's scaled reward units back to the dataset's.

    A run that trains on rewards ``r * c`` (IQL's recipe: c = 1000 / (max - min trajectory
    return)) logs Q-values, their spread and Q - MC in units of c (power 1: they are
    discounted sums of rewards), a squared TD error in c**2, and that loss's variance in
    c**4 (power 4). Dividing by ``c ** power`` puts runs with different c on one axis.
    """
    if not (isinstance(reward_scale, (int, float)) and math.isfinite(reward_scale) and reward_scale > 0):
        raise ValueError(f"reward_scale must be a positive finite number, got {reward_scale!r}")
    return np.asarray(values, dtype=float) / float(reward_scale) ** power


@dataclass(frozen=True)
class ScoreEstimate:
    """A point estimate with its confidence interval.

    ``n`` is the number of finite scores used, ``n_dropped`` the number of NaN/inf scores
    left out. With ``n == 1`` the interval collapses to the point (``single_run``).
    """

    point: float
    low: float
    high: float
    n: int
    n_dropped: int = 0

    @property
    def single_run(self) -> bool:
        """True when the estimate rests on one run, so it has no real uncertainty band."""
        return self.n == 1

    @property
    def has_interval(self) -> bool:
        """True when a confidence interval exists (two or more runs); ``low``/``high`` of a
        single run only repeat the point and must not be reported as an interval."""
        return self.n >= 2

    def format(self, digits: int = 1) -> str:
        """'47.3 [44.1, 50.2]'; 'n/a' without data; '47.3 (n=1)' for a single run."""
        if self.n == 0:
            return "n/a"
        if self.single_run:
            return f"{self.point:.{digits}f} (n=1)"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@contextlib.contextmanager
def seeded_global_numpy_rng(seed: int) -> Iterator[None]:
    """Seed NumPy's global legacy RNG for the block, then restore the caller's state."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _mean_statistic(scores: np.ndarray) -> np.ndarray:
    # Same as rliable's aggregate_mean: mean over runs per task, then over tasks.
    return np.array([np.mean(np.mean(scores, axis=0))])


def _iqm_statistic(scores: np.ndarray) -> np.ndarray:
    return np.array([iqm(scores)])


# name -> statistic of one (runs x tasks) score matrix, as rliable calls it
_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _mean_statistic,
    "iqm": _iqm_statistic,
}


def _as_score_matrix(scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, int]:
    """(runs x tasks) matrix of finite scores, plus how many non-finite runs were dropped."""
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise ValueError(f"scores must be 1-D (runs) or 2-D (runs x tasks), got shape {matrix.shape}")
    # A run with any non-finite task score is dropped whole, keeping tasks stratified.
    finite_rows = np.all(np.isfinite(matrix), axis=1)
    return matrix[finite_rows], int((~finite_rows).sum())


def interval_estimates(
    scores: Sequence[float] | np.ndarray,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, ScoreEstimate]:
    """IQM and mean of final scores with stratified-bootstrap CIs (rliable).

    Args:
        scores: final scores, shape ``(n_runs,)`` for one task or ``(n_runs, n_tasks)``
            for several tasks (e.g. datasets) whose runs are resampled within each task.
            Runs with a non-finite score are dropped and counted in ``n_dropped``.
        reps: bootstrap replicates.
        seed: seed of the bootstrap; the same seed gives the same intervals.
        confidence: coverage of the two-sided percentile interval.

    Returns:
        ``{"iqm": ScoreEstimate, "mean": ScoreEstimate}``. With one run the interval is
        the point itself; with none, everything is NaN and ``n == 0``.
    """
    matrix, n_dropped = _as_score_matrix(scores)
    n_runs = matrix.shape[0]
    if n_runs == 0:
        nan = ScoreEstimate(math.nan, math.nan, math.nan, 0, n_dropped)
        return {"iqm": nan, "mean": nan}
    if n_runs == 1:
        # Bootstrapping one run can only return that run: say so instead of pretending.
        points = {name: float(stat(matrix)[0]) for name, stat in _STATISTICS.items()}
        return {name: ScoreEstimate(p, p, p, 1, n_dropped) for name, p in points.items()}

    from rliable import library as rly

    estimates: dict[str, ScoreEstimate] = {}
    for name, statistic in _STATISTICS.items():
        point = float(statistic(matrix)[0])
        with seeded_global_numpy_rng(seed):
            _, intervals = rly.get_interval_estimates(
                {name: matrix}, statistic, reps=reps, confidence_interval_size=confidence
            )
        low, high = (float(v) for v in np.asarray(intervals[name]).ravel()[:2])
        estimates[name] = ScoreEstimate(point, low, high, n_runs, n_dropped)
    return estimates


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> ScoreEstimate:
    """Mean with its Student-t interval ``mean ± t_{(1+c)/2, n-1} sd / sqrt(n)`` (ddof 1).

    The interval for few seeds: unlike a percentile bootstrap, which over 3 seeds can only
    return [min, max] of the seeds, it widens with the t quantile as n shrinks. Non-finite
    values are dropped (``n_dropped``); one value gives the point alone, none gives NaN.
    """
    import scipy.stats

    array = np.asarray(values, dtype=float).ravel()
    finite = array[np.isfinite(array)]
    n, dropped = int(finite.size), int(array.size - finite.size)
    if n == 0:
        return ScoreEstimate(math.nan, math.nan, math.nan, 0, dropped)
    mean = float(finite.mean())
    if n == 1:
        return ScoreEstimate(mean, mean, mean, 1, dropped)
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2.0, n - 1) * finite.std(ddof=1) / math.sqrt(n))
    return ScoreEstimate(mean, mean - half, mean + half, n, dropped)


def paired_difference(treated: dict, control: dict, confidence: float = DEFAULT_CONFIDENCE) -> ScoreEstimate:
    """Mean of ``treated[key] - control[key]`` over the keys both have (e.g. seeds), with a
    Student-t interval (``t_interval``): pairing removes what the two share (the seed's
    parent, data and evaluation episodes), which an unpaired comparison counts as noise."""
    keys = sorted(set(treated) & set(control))
    return t_interval([treated[key] - control[key] for key in keys], confidence)


def align_curves(
    curves: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Put per-seed curves on one step grid.

    Args:
        curves: one ``(steps, values)`` pair per seed; seeds may log different steps.

    Returns:
        ``(steps, grid)``: the sorted union of all steps ``(n_steps,)`` and a
        ``(n_curves, n_steps)`` array with NaN where a seed has no value at a step.
    """
    if not curves:
        return np.array([], dtype=np.int64), np.zeros((0, 0))
    all_steps = np.unique(np.concatenate([np.asarray(s, dtype=np.int64).ravel() for s, _ in curves]))
    grid = np.full((len(curves), all_steps.size), np.nan)
    for row, (steps, values) in enumerate(curves):
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=float)
        if steps.shape != values.shape:
            raise ValueError(f"curve {row}: {steps.size} steps but {values.size} values")
        grid[row, np.searchsorted(all_steps, steps)] = values
    return all_steps, grid


@dataclass(frozen=True, eq=False)
class CurveBand:
    """Per-step mean and confidence band of a learning curve across seeds.

    All arrays have one entry per step in ``steps``; ``n_seeds[i]`` counts the seeds with
    a finite value at ``steps[i]`` (runs that diverged or are shorter drop out).
    """

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: np.ndarray


def mean_ci_over_seeds(
    curves: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]],
    confidence: float = DEFAULT_CONFIDENCE,
) -> CurveBand:
    """Mean learning curve over seeds with a Student-t confidence interval per step.

    Args:
        curves: one ``(steps, values)`` pair per seed. Seeds may log different steps
            (a diverged run stops early); curves are aligned on the union of steps, and
            each step uses the seeds that have a finite value there.
        confidence: coverage of the two-sided interval.

    The band is ``mean ± t_{(1+c)/2, n-1} * sd / sqrt(n)`` (sample sd, ddof=1): cheap,
    deterministic, and for the 3-10 seeds of a typical grid wider (more honest) than a
    bootstrap band, which cannot exceed the range of the seeds. Where only one seed has a
    value the band collapses to the line.
    """
    import scipy.stats

    all_steps, grid = align_curves(curves)
    finite = np.isfinite(grid)
    n_seeds = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(finite, grid, 0.0).sum(axis=0)
        mean = np.where(n_seeds > 0, total / np.maximum(n_seeds, 1), np.nan)
        squares = np.where(finite, (grid - mean) ** 2, 0.0).sum(axis=0)
        sd = np.sqrt(squares / np.maximum(n_seeds - 1, 1))
        t_quantile = scipy.stats.t.ppf(0.5 + confidence / 2.0, np.maximum(n_seeds - 1, 1))
        half_width = np.where(n_seeds > 1, t_quantile * sd / np.sqrt(np.maximum(n_seeds, 1)), 0.0)
    return CurveBand(all_steps, mean, mean - half_width, mean + half_width, n_seeds)


def rolling_variance(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing-window variance (ddof=0) of a series, same length as the input.

    Entry ``i`` is the variance of ``values[max(0, i - window + 1) : i + 1]``; the first
    entry (a single value) is NaN. A NaN inside a window makes that entry NaN, so a
    diverged loss stays visible as a gap rather than being averaged away.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 to have a variance, got {window}")
    series = np.asarray(values, dtype=float)
    out = np.full(series.shape, np.nan)
    if series.size < 2:
        return out
    # Computed window by window (not with running sums): a diverging critic loss spans
    # many orders of magnitude, where sum-of-squares formulas lose all precision.
    for i in range(1, series.size):
        out[i] = np.var(series[max(0, i - window + 1) : i + 1])
    return out
