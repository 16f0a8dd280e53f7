"""Statistics on hand-checkable inputs: final scores (a run's, defined with its format), IQM/mean CIs, curve bands, variance."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from hybrid_rl.eval.stats import (
    align_curves,
    interval_estimates,
    iqm,
    iqm_trims_nothing,
    mean_ci_over_seeds,
    rolling_variance,
    to_original_reward_units,
)
from hybrid_rl.core.run_format import final_score


# ----------------------------------------------------------------------------- final_score
def test_final_score_uses_last_tenth_of_evaluations():
    assert final_score(np.arange(1.0, 11.0)) == 10.0  # 10 evals -> last 1
    assert final_score(np.arange(1.0, 21.0)) == pytest.approx(19.5)  # 20 evals -> last 2
    assert final_score(np.arange(1.0, 15.0)) == 14.0  # 14 evals -> round(1.4) = 1
    assert final_score(np.arange(1.0, 17.0)) == pytest.approx(15.5)  # 16 evals -> round(1.6) = 2
    assert final_score([5.0, 7.0]) == 7.0  # at least one evaluation
    assert final_score(np.arange(1.0, 11.0), fraction=0.5) == pytest.approx(8.0)  # 6..10


def test_final_score_edge_cases():
    assert math.isnan(final_score([]))
    assert math.isnan(final_score([1.0, float("nan")]))  # no finite value in the tail
    assert final_score(np.r_[np.ones(18), 4.0, np.nan]) == 4.0  # tail of 2, NaN ignored
    with pytest.raises(ValueError, match="fraction"):
        final_score([1.0], fraction=0.0)


# ----------------------------------------------------------------------------- IQM / CIs
def test_iqm_of_known_arrays():
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # middle half of 1..8: 3,4,5,6
    assert iqm([0.0, 10.0, 10.0, 1000.0]) == pytest.approx(10.0)  # outliers trimmed
    assert iqm(np.arange(1.0, 9.0).reshape(4, 2)) == pytest.approx(4.5)  # over runs and tasks


def test_identical_seeds_give_zero_width_intervals():
    est = interval_estimates([42.0, 42.0, 42.0, 42.0], reps=200)
    for name in ("iqm", "mean"):
        assert est[name].point == est[name].low == est[name].high == pytest.approx(42.0)
        assert est[name].n == 4 and est[name].n_dropped == 0


def test_interval_contains_point_and_is_deterministic():
    scores = [10.0, 20.0, 35.0, 50.0, 51.0, 80.0]
    first = interval_estimates(scores, reps=500, seed=3)
    again = interval_estimates(scores, reps=500, seed=3)
    other = interval_estimates(scores, reps=500, seed=4)
    assert first == again
    assert first != other  # the seed matters, so it is really used
    assert first["mean"].point == pytest.approx(np.mean(scores))
    assert first["iqm"].point == pytest.approx(scipy.stats.trim_mean(scores, 0.25))
    for est in first.values():
        assert est.low <= est.point <= est.high
        assert min(scores) <= est.low and est.high <= max(scores)
    # The confidence level is used: with the same resamples the 95% interval strictly
    # contains the 50% one (on these scores, both ends).
    half = interval_estimates(scores, reps=500, seed=3, confidence=0.5)
    for name in ("iqm", "mean"):
        assert first[name].low < half[name].low <= half[name].high < first[name].high, name


def reference_percentile_bootstrap(matrix: np.ndarray, reps: int, seed: int, confidence: float) -> dict[str, tuple[float, float]]:
    """The documented procedure written out: rliable's stratified bootstrap draws, for each
    replicate, a (runs x tasks) matrix of run indices with ``np.random.choice`` from NumPy's
    legacy RNG seeded with ``seed`` (each task's runs resampled within the task); the
    interval is the (1 - c)/2 and (1 + c)/2 percentiles of the replicates' statistic."""
    rng = np.random.RandomState(seed)
    runs, tasks = matrix.shape
    replicates: dict[str, list[float]] = {"iqm": [], "mean": []}
    for _ in range(reps):
        sample = matrix[rng.choice(runs, (runs, tasks), replace=True), np.arange(tasks)[None, :]]
        replicates["iqm"].append(scipy.stats.trim_mean(sample, 0.25, axis=None))
        replicates["mean"].append(sample.mean(axis=0).mean())
    tail = 100.0 * (1.0 - confidence) / 2.0
    return {name: tuple(np.percentile(values, [tail, 100.0 - tail])) for name, values in replicates.items()}


@pytest.mark.parametrize("confidence", [0.95, 0.5])
@pytest.mark.parametrize(
    "scores",
    [[10.0, 20.0, 35.0, 50.0, 51.0, 80.0], [[10.0, 50.0], [20.0, 55.0], [30.0, 45.0], [12.0, 70.0], [90.0, 52.0]]],
    ids=["one-task", "runs-x-tasks"],
)
def test_interval_is_the_percentile_bootstrap_at_the_requested_level(scores, confidence):
    est = interval_estimates(scores, reps=400, seed=7, confidence=confidence)
    expected = reference_percentile_bootstrap(np.asarray(scores, dtype=float).reshape(len(scores), -1), 400, 7, confidence)
    for name, (low, high) in expected.items():
        assert (est[name].low, est[name].high) == pytest.approx((low, high), rel=1e-9, abs=1e-9), (name, confidence)


def test_bootstrap_leaves_the_global_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    interval_estimates([1.0, 2.0, 3.0], reps=100)
    assert np.random.rand() == expected


def test_single_seed_collapses_and_is_flagged():
    est = interval_estimates([float("nan"), 17.5], reps=100)
    assert est["iqm"].single_run and est["mean"].single_run
    assert est["iqm"].point == est["iqm"].low == est["iqm"].high == 17.5
    assert est["iqm"].n_dropped == 1
    assert est["iqm"].format() == "17.5 (n=1)"


def test_nan_scores_are_dropped_but_counted():
    est = interval_estimates([1.0, float("nan"), 3.0, float("inf")], reps=100)
    assert est["mean"].n == 2 and est["mean"].n_dropped == 2
    assert est["mean"].point == pytest.approx(2.0)
    empty = interval_estimates([float("nan")], reps=100)
    assert empty["iqm"].n == 0 and math.isnan(empty["iqm"].point)
    assert empty["iqm"].format() == "n/a"


def test_stratified_matrix_runs_x_tasks():
    # Task 1 varies, task 2 is constant: the bootstrap resamples runs within each task.
    matrix = np.array([[10.0, 50.0], [20.0, 50.0], [30.0, 50.0]])
    est = interval_estimates(matrix, reps=300)
    assert est["mean"].point == pytest.approx(35.0)
    assert 30.0 <= est["mean"].low <= 35.0 <= est["mean"].high <= 40.0


def test_iqm_is_bitwise_scipy_trim_mean():
    rng = np.random.default_rng(1)
    for size in (1, 2, 3, 4, 7, 10, 33):
        values = rng.normal(size=size) * 100
        assert iqm(values) == scipy.stats.trim_mean(values, 0.25, axis=None)


def test_iqm_trims_nothing_below_four_scores():
    assert [iqm_trims_nothing(n) for n in (0, 1, 2, 3, 4, 7)] == [False, True, True, True, False, False]
    for n in (1, 2, 3):  # and then it really is the mean
        values = np.arange(1.0, n + 1.0) ** 2
        assert iqm(values) == pytest.approx(np.mean(values))


def test_has_interval_needs_two_runs():
    assert not interval_estimates([5.0], reps=50)["mean"].has_interval
    assert not interval_estimates([], reps=50)["mean"].has_interval
    assert interval_estimates([5.0, 6.0], reps=50)["mean"].has_interval


# ----------------------------------------------------------------------------- units
def test_reward_scale_conversion_puts_runs_on_one_axis():
    """Q learned on rewards x 2 is logged x 2; its loss variance x 2**4. Converted, a run at
    scale 2 and a run at scale 1 with the same Q in dataset units give the same values."""
    q_in_dataset_units = np.array([-3.0, 0.0, 12.5, 250.0, np.nan])
    np.testing.assert_array_equal(to_original_reward_units(q_in_dataset_units * 2.0, 2.0),
                                  to_original_reward_units(q_in_dataset_units, 1.0))
    loss_variance = np.array([0.01, 4.0])
    np.testing.assert_allclose(to_original_reward_units(loss_variance * 2.0**4, 2.0, power=4), loss_variance)
    # IQL's hopper scales: a k=60% run (scale 1.95) no longer looks 5x a clean one (0.366).
    np.testing.assert_allclose(to_original_reward_units([1.95 * 80.0], 1.95),
                               to_original_reward_units([0.366 * 80.0], 0.366))
    for bad in (0.0, -1.0, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="reward_scale"):
            to_original_reward_units([1.0], bad)


# ----------------------------------------------------------------------------- curves
def test_mean_ci_over_identical_seeds_has_zero_width():
    steps = np.array([0, 10, 20])
    band = mean_ci_over_seeds([(steps, [1.0, 2.0, 3.0])] * 3)
    np.testing.assert_array_equal(band.steps, steps)
    np.testing.assert_allclose(band.mean, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(band.low, band.mean)
    np.testing.assert_allclose(band.high, band.mean)
    np.testing.assert_array_equal(band.n_seeds, [3, 3, 3])


def test_mean_ci_t_interval_by_hand():
    # Two seeds 0 and 2: mean 1, sd sqrt(2), se 1, t(0.975, df=1) = 12.706.
    band = mean_ci_over_seeds([([5], [0.0]), ([5], [2.0])])
    t = scipy.stats.t.ppf(0.975, 1)
    assert band.mean[0] == pytest.approx(1.0)
    assert band.low[0] == pytest.approx(1.0 - t) and band.high[0] == pytest.approx(1.0 + t)


def test_mean_ci_single_seed_and_ragged_curves():
    single = mean_ci_over_seeds([([0, 1], [4.0, 5.0])])
    np.testing.assert_allclose(single.low, single.mean)
    np.testing.assert_allclose(single.high, single.mean)
    # A diverged seed stops early (and logged NaN at the end): later steps use the others.
    band = mean_ci_over_seeds([([0, 1, 2], [1.0, 2.0, 3.0]), ([0, 1], [3.0, float("nan")])])
    np.testing.assert_array_equal(band.n_seeds, [2, 1, 1])
    np.testing.assert_allclose(band.mean, [2.0, 2.0, 3.0])
    assert band.low[2] == band.high[2] == 3.0


def test_align_curves_union_grid():
    steps, grid = align_curves([([0, 2], [1.0, 2.0]), ([1, 2], [5.0, 6.0])])
    np.testing.assert_array_equal(steps, [0, 1, 2])
    np.testing.assert_allclose(grid, [[1.0, np.nan, 2.0], [np.nan, 5.0, 6.0]])
    with pytest.raises(ValueError, match="steps but"):
        align_curves([([0, 1], [1.0])])


def test_rolling_variance():
    np.testing.assert_allclose(rolling_variance(np.full(6, 3.0), 3)[1:], 0.0)
    out = rolling_variance([0.0, 2.0, 4.0, 6.0], window=2)
    assert math.isnan(out[0])
    np.testing.assert_allclose(out[1:], [1.0, 1.0, 1.0])
    # Window 3 over [0, 2, 4]: var = 8/3; the prefix [0, 2] uses what there is.
    np.testing.assert_allclose(rolling_variance([0.0, 2.0, 4.0], 3)[1:], [1.0, 8.0 / 3.0])
    # Huge values keep full precision (no running sums of squares).
    big = rolling_variance([1e12, 1e12 + 2.0, 1e12 + 4.0], 3)
    assert big[-1] == pytest.approx(8.0 / 3.0)
    with pytest.raises(ValueError):
        rolling_variance([1.0, 2.0], 1)


