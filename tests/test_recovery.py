"""Recovery metrics of fine-tuning runs, from hand-made run directories with known answers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hybrid_rl.eval.recovery import area_under_curve, binned_means, dip, late_mean, load_recoveries, regret, steps_to_reach


def write_run(root: Path, name: str, config: dict, records: list[dict], summary: dict | None = None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_metric_formulas_on_hand_computed_curves() -> None:
    steps = np.array([10, 20, 50, 100])
    scores = np.array([30.0, 45.0, 70.0, 80.0])
    assert dip(steps, scores, switch=50.0, online_steps=100) == -20.0  # lowest in steps <= 10: 30 - 50
    assert dip(steps, scores, switch=20.0, online_steps=100) == 0.0  # never below the switch
    assert dip(np.array([50]), np.array([40.0]), switch=45.0, online_steps=100) == -5.0  # first evaluation stands in
    assert math.isnan(dip(steps, scores, switch=math.nan, online_steps=100))
    assert steps_to_reach(steps, scores, 70.0) == 50 and steps_to_reach(steps, scores, 90.0) is None
    assert regret(np.array([100.0, 50.0, 0.0])) == pytest.approx(0.5)
    # From 50 at step 0: trapezoids (50+30)/2*10 + (30+45)/2*10 + (45+70)/2*30 + (70+80)/2*50 = 400 + 375 + 1725 + 3750.
    assert area_under_curve(steps, scores, 50.0, 100) == pytest.approx(6250 / 100)
    # Q - MC: the last 10% of online steps (>= 90 of 100), else the last value.
    assert late_mean(np.array([10.0, 95.0, 100.0]), np.array([5.0, 1.0, 3.0]), 100) == 2.0
    assert late_mean(np.array([10.0, 50.0]), np.array([5.0, 1.0]), 100) == 1.0
    assert math.isnan(late_mean(np.zeros(0), np.zeros(0), 100))
    centres, means = binned_means(np.array([1.0, 4.0, 12.0, 13.0, 19.0]), np.array([1.0, 3.0, 10.0, 20.0, 6.0]), 20, bins=4)
    assert centres.tolist() == [2.5, 12.5, 17.5] and means.tolist() == [2.0, 15.0, 6.0]  # the empty bin (5, 10] left out


def test_recoveries_from_run_directories(tmp_path: Path) -> None:
    phase1, phase2 = tmp_path / "results", tmp_path / "results_phase2"
    identity = {"algo": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "total_steps": 1000, "remove_top_k": 60.0, "reward_noise_std": 0.0, "extra_corruptions": []}
    clean = {**identity, "remove_top_k": 0.0}
    write_run(phase1, "clean", {"algo": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "identity": clean}, [],
              {"status": "completed", "final_normalized_return": 55.0})
    damaged = write_run(phase1, "damaged", {"algo": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "identity": identity}, [],
                        {"status": "completed", "final_normalized_return": 30.0})
    config = {
        "algo": "iql", "method": "iql", "dataset": "gen-hopper-medium-v0", "seed": 0, "online_steps": 100, "online": {"utd": 1},
        "corruption": {"remove_top_k": 60.0, "reward_noise_std": 0.0, "extra": []}, "parent_identity": identity,
        "parent": {"run_id": "damaged", "run_dir": str(damaged), "switch_score": 30.0},
        "dataset_summary": {"normalized_return_mean": 50.0},
    }
    evals = [{"step": s, "kind": "eval", "normalized_return_mean": v} for s, v in ((10, 20.0), (50, 52.0), (100, 58.0))]
    episodes = [{"step": 5, "kind": "episode", "normalized_return": 10.0, "q_minus_mc_mean": 8.0},
                {"step": 60, "kind": "episode", "normalized_return": 50.0}, {"step": 95, "kind": "episode", "normalized_return": 70.0, "q_minus_mc_mean": -2.0}]
    config["reward_scale"] = 2.0  # Q and MC were logged in scaled units: the metrics divide it out
    write_run(phase2, "ft", config, evals[:1] + episodes[:1] + evals[1:2] + episodes[1:] + evals[2:], {"status": "completed", "final_normalized_return": 58.0})
    write_run(phase2, "not-a-finetune-run", {"algo": "iql", "dataset": "x", "seed": 1}, [])
    (recovery,) = load_recoveries(phase2)
    assert (recovery.method, recovery.corruption, recovery.switch_score) == ("iql", "k=60%", 30.0)
    assert recovery.dip == -10.0 and recovery.final_score == 58.0 and recovery.best_score == 58.0
    assert recovery.references == {"clean_offline": 55.0, "behavior": 50.0}
    assert recovery.steps_to == {"clean_offline": 100, "behavior": 50} and recovery.censored == {"clean_offline": False, "behavior": False}
    assert recovery.regret == pytest.approx((0.9 + 0.5 + 0.3) / 3) and recovery.episodes == 3
    # Only the calibrated episodes (with q_minus_mc_mean) enter the Q - MC series.
    assert recovery.q_steps.tolist() == [5.0, 95.0] and recovery.q_minus_mc.tolist() == [4.0, -1.0] and recovery.q_minus_mc_final == -1.0

    late = dict(config, parent={**config["parent"], "run_dir": str(tmp_path / "elsewhere" / "damaged")})
    write_run(tmp_path / "other", "ft", late, [{"step": 100, "kind": "eval", "normalized_return_mean": 45.0}], {"status": "completed"})
    (never,) = load_recoveries(tmp_path / "other")
    assert never.steps_to == {"clean_offline": None, "behavior": None}
    assert never.censored == {"clean_offline": False, "behavior": True}  # no clean run to compare with: unknown, not censored
