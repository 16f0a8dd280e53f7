"""Recovery metrics of fine-tuning runs: hand-computed answers, the no-change property on many
synthetic noisy curves, and metrics read from hand-made run directories."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hybrid_rl.eval.recovery import (Evaluations, Measured, area_under_curve, binned_means, dip_measure, final_measure, kaplan_meier_median,
                                     late_mean, load_recoveries, step_weighted_regret, steps_to_reach)


def write_run(root: Path, name: str, config: dict, records: list[dict], summary: dict | None = None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def evaluations(steps, scores, variance: float = 1.0) -> Evaluations:
    return Evaluations(np.asarray(steps, dtype=np.int64), np.asarray(scores, dtype=float), np.full(len(scores), variance))


def test_metric_formulas_on_hand_computed_curves() -> None:
    evals = evaluations([10, 20, 50, 100], [30.0, 45.0, 70.0, 80.0], variance=4.0)
    # Dip: the mean of the first 10% (steps <= 10: one evaluation) minus the switch, signed, with
    # the standard errors of both added in quadrature.
    assert dip_measure(evals, Measured(50.0, 3.0), 100) == Measured(-20.0, pytest.approx(math.hypot(2.0, 3.0)))
    assert dip_measure(evals, Measured(20.0, 0.0), 100).value == 10.0  # a rise reads as a rise, not as 0
    assert dip_measure(evaluations([50], [40.0]), Measured(45.0), 100).value == -5.0  # the first evaluation stands in
    assert math.isnan(dip_measure(evals, Measured(math.nan), 100).value)
    # Final: the last max(3, 10%) evaluations.
    assert final_measure(evals) == Measured(pytest.approx(65.0), pytest.approx(math.sqrt(12.0) / 3))
    assert final_measure(evaluations(range(1, 41), np.arange(40.0))).value == pytest.approx(np.mean(np.arange(36.0, 40.0)))  # 10% of 40 = 4
    # Recovery: the first of two consecutive evaluations at or above the reference.
    steps, scores = np.array([0, 10, 20, 50, 100]), np.array([50.0, 71.0, 60.0, 70.0, 80.0])
    assert steps_to_reach(steps, scores, 70.0) == 50  # 71 at step 10 alone does not count
    assert steps_to_reach(steps, scores, 90.0) is None and steps_to_reach(steps, scores, math.nan) is None
    assert steps_to_reach(steps, scores, 40.0) == 0
    # Kaplan-Meier: 2 of 4 reached (at 10 and 30), 2 censored at 100 -> S = 0.75 after 10, 0.5 after 30.
    assert kaplan_meier_median([10, 30, None, None], [100, 100, 100, 100]) == 30.0
    assert math.isnan(kaplan_meier_median([10, None, None], [100, 100, 100]))  # S never reaches 0.5: beyond the budget
    assert math.isnan(kaplan_meier_median([None, None], [100, 100]))
    # Regret weighted by steps: a 900-step episode at 80 and a 100-step one at 0.
    assert step_weighted_regret(np.array([80.0, 0.0]), np.array([900.0, 100.0])) == pytest.approx((900 * 0.2 + 100 * 1.0) / 1000)
    assert math.isnan(step_weighted_regret(np.zeros(0), np.zeros(0)))
    # From 50 at step 0: trapezoids (50+30)/2*10 + (30+45)/2*10 + (45+70)/2*30 + (70+80)/2*50 = 400 + 375 + 1725 + 3750.
    assert area_under_curve(evals.steps, evals.scores, 50.0) == pytest.approx(6250 / 100)
    # Q - MC: the last 10% of online steps (>= 90 of 100), else the last value.
    assert late_mean(np.array([10.0, 95.0, 100.0]), np.array([5.0, 1.0, 3.0]), 100) == 2.0
    assert late_mean(np.array([10.0, 50.0]), np.array([5.0, 1.0]), 100) == 1.0
    assert math.isnan(late_mean(np.zeros(0), np.zeros(0), 100))
    centres, means = binned_means(np.array([1.0, 4.0, 12.0, 13.0, 19.0]), np.array([1.0, 3.0, 10.0, 20.0, 6.0]), 20, bins=4)
    assert centres.tolist() == [2.5, 12.5, 17.5] and means.tolist() == [2.0, 15.0, 6.0]  # the empty bin (5, 10] left out


def test_every_metric_reads_no_change_for_a_policy_that_does_not_change() -> None:
    """5,000 runs of a policy whose true score stays at 40: the switch over 50 episodes, then
    50 evaluations of 10 episodes, each episode N(40, 15). The mean dip and gain are 0 within
    0.1 points (their standard error over the draws is ~0.03), the final and AUC are the
    level, a reference 2 evaluation standard errors above the level is reached in under 5% of
    the runs and its Kaplan-Meier median is "beyond the budget", and the regret is that of
    the level. The metrics these replace fail the same test (shown at the end)."""
    rng = np.random.default_rng(0)
    level, episode_sd, runs, n_evals, online_steps = 40.0, 15.0, 5_000, 50, 50_000
    steps = np.arange(1, n_evals + 1) * (online_steps // n_evals)
    switch_scores = rng.normal(level, episode_sd, size=(runs, 50)).mean(axis=1)
    eval_scores = rng.normal(level, episode_sd, size=(runs, n_evals, 10)).mean(axis=2)
    eval_se = episode_sd / math.sqrt(10)
    reference = level + 2 * eval_se
    dips, gains, finals, aucs, reached = [], [], [], [], []
    for switch, scores in zip(switch_scores, eval_scores):
        evals = evaluations(steps, scores, eval_se**2)
        start = Measured(float(switch), episode_sd / math.sqrt(50))
        dips.append(dip_measure(evals, start, online_steps).value)
        final = final_measure(evals)
        finals.append(final.value)
        gains.append(final.value - start.value)
        aucs.append(area_under_curve(evals.steps, evals.scores, start.value))
        reached.append(steps_to_reach(np.concatenate([[0], steps]), np.concatenate([[switch], scores]), reference))
    assert abs(np.mean(dips)) < 0.1 and abs(np.mean(gains)) < 0.1
    assert abs(np.mean(finals) - level) < 0.1 and abs(np.mean(aucs) - level) < 0.1
    assert np.mean([r is not None for r in reached]) < 0.05
    assert math.isnan(kaplan_meier_median(reached, [online_steps] * runs))
    # Training episodes of the unchanged (stochastic) policy: regret 1 - 40/100 in expectation.
    episode_scores = rng.normal(level, episode_sd, size=20_000)
    assert step_weighted_regret(episode_scores, rng.integers(100, 1000, size=20_000).astype(float)) == pytest.approx(0.6, abs=0.005)
    # The replaced definitions: the lowest early evaluation minus the switch, clipped at 0, is
    # biased low; the first single crossing "recovers" most of the unchanged runs.
    old_dips = [min(0.0, scores[: n_evals // 10].min() - switch) for switch, scores in zip(switch_scores, eval_scores)]
    assert np.mean(old_dips) < -4.0
    assert np.mean([(scores >= reference).any() for scores in eval_scores]) > 0.5


def test_recoveries_from_run_directories(tmp_path: Path) -> None:
    phase1, phase2 = tmp_path / "results", tmp_path / "results_phase2"
    identity = {"algo": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "total_steps": 1000, "remove_top_k": 60.0, "reward_noise_std": 0.0, "extra_corruptions": []}
    clean = {**identity, "remove_top_k": 0.0}
    clean_dir = write_run(phase1, "clean", {"algo": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "identity": clean}, [],
                          {"status": "completed", "final_normalized_return": 55.0})
    damaged = write_run(phase1, "damaged", {"algo": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "identity": identity}, [],
                        {"status": "completed", "final_normalized_return": 30.0})
    config = {
        "algo": "iql", "method": "iql", "variant": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "online_steps": 100,
        "online": {"utd": 1, "sampling": "uniform", "warmup_steps": 0}, "corruption": {"remove_top_k": 60.0, "reward_noise_std": 0.0, "extra": []},
        "parent_identity": identity, "parent": {"run_id": "damaged", "run_dir": str(damaged), "switch_score": 30.0},
        "dataset_summary": {"normalized_return_mean": 50.0}, "reward_scale": 2.0,  # Q and MC were logged in scaled units: divided out
    }
    # The switch: 4 episodes with normalized scores 26, 28, 32, 34 (population std sqrt(10)).
    switch = {"step": 0, "kind": "eval", "switch": True, "episodes": 4, "normalized_return_mean": 30.0, "normalized_return_std": math.sqrt(10.0),
              "episode_returns": [1.0, 2.0, 3.0, 4.0]}
    evals = [{"step": s, "kind": "eval", "normalized_return_mean": v} for s, v in ((10, 20.0), (50, 56.0), (100, 58.0))]
    episodes = [{"step": 5, "kind": "episode", "normalized_return": 10.0, "length": 5, "q_minus_mc_mean": 8.0},
                {"step": 60, "kind": "episode", "normalized_return": 50.0, "length": 30},
                {"step": 95, "kind": "episode", "normalized_return": 70.0, "length": 35, "q_minus_mc_mean": -2.0}]
    write_run(phase2, "ft", config, [switch, *evals[:1], *episodes[:1], *evals[1:2], *episodes[1:], *evals[2:]],
              {"status": "completed", "final_normalized_return": 58.0})
    write_run(phase2, "not-a-finetune-run", {"algo": "iql", "dataset": "x", "seed": 1}, [])
    (recovery,) = load_recoveries(phase2)
    assert (recovery.method, recovery.variant, recovery.corruption, recovery.switch_episodes) == ("iql", "iql", "k=60%", 4)
    assert recovery.switch == Measured(30.0, pytest.approx(math.sqrt(10.0 / 3)))  # the measurement, not the parent's Phase I score
    assert recovery.dip.value == -10.0 and recovery.final.value == pytest.approx(134 / 3) and recovery.gain.value == pytest.approx(134 / 3 - 30)
    # No fine-tuning run of the clean parent here: the clean reference is its Phase I score.
    assert recovery.references == {"clean_offline": 55.0, "behavior": 50.0}
    assert recovery.steps_to == {"clean_offline": 50, "behavior": 50} and recovery.censored == {"clean_offline": False, "behavior": False}
    assert recovery.regret == pytest.approx((5 * 0.9 + 30 * 0.5 + 35 * 0.3) / 70) and recovery.episodes == 3
    assert math.isnan(recovery.warmup_regret)
    # Only the calibrated episodes (with q_minus_mc_mean) enter the Q - MC series.
    assert recovery.q_steps.tolist() == [5.0, 95.0] and recovery.q_minus_mc.tolist() == [4.0, -1.0] and recovery.q_minus_mc_final == -1.0

    # A fine-tuning run of the clean parent: its switch measurement becomes the clean reference,
    # for the damaged run and for a from-scratch run of the same dataset and seed.
    clean_config = dict(config, corruption={"remove_top_k": 0.0, "reward_noise_std": 0.0, "extra": []}, parent_identity=clean,
                        parent={"run_id": "clean", "run_dir": str(clean_dir)})
    write_run(phase2, "ft-clean", clean_config, [{**switch, "normalized_return_mean": 57.0}, *evals], {"status": "completed"})
    scratch = dict(config, method="sac", variant="sac", algo="sac", parent={"run_id": None}, parent_identity={},
                   corruption={"remove_top_k": 0.0, "reward_noise_std": 0.0, "extra": []},
                   online={"utd": 1, "sampling": "online_only", "warmup_steps": 20, "random_warmup": True})
    write_run(phase2, "ft-sac", scratch, [{**switch, "normalized_return_mean": 1.0}, *evals, *episodes], {"status": "completed"})
    by_id = {r.run_id: r for r in load_recoveries(phase2)}
    assert by_id["ft"].references["clean_offline"] == 57.0 and by_id["ft"].steps_to["clean_offline"] is None and by_id["ft"].censored["clean_offline"]
    assert by_id["ft-sac"].references == {"clean_offline": 57.0, "behavior": 50.0} and by_id["ft-sac"].censored["clean_offline"]
    assert not by_id["ft-sac"].uses_offline_data and not by_id["ft-sac"].pretrained
    # The first episode started inside the random warm-up (steps 0-20): its regret is kept apart.
    assert by_id["ft-sac"].warmup_regret == pytest.approx(0.9) and by_id["ft-sac"].regret == pytest.approx((30 * 0.5 + 35 * 0.3) / 65)

    late = dict(config, parent={**config["parent"], "run_dir": str(tmp_path / "elsewhere" / "damaged")})
    write_run(tmp_path / "other", "ft", late, [{"step": 100, "kind": "eval", "normalized_return_mean": 45.0}], {"status": "completed"})
    (never,) = load_recoveries(tmp_path / "other")
    assert never.switch.value == 30.0  # a run from before the switch was measured: the parent's recorded score
    assert never.steps_to == {"clean_offline": None, "behavior": None}
    assert never.censored == {"clean_offline": False, "behavior": True}  # no clean run to compare with: unknown, not censored
