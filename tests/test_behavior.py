"""Behaviour-policy training (the dataset factory's SAC runs): files, a slower learner for
medium-replay, and a resume that logs every evaluation once."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hybrid_rl.algos.sac import SAC, SACConfig
from hybrid_rl.engine.behavior import BehaviorTrainingConfig, train_behavior_policy

from conftest import run_killed

TINY = BehaviorTrainingConfig(robot="hopper", total_steps=300, seed=0, random_steps=100, eval_every=100, eval_episodes=1, checkpoint_every=100,
                              sac=SACConfig(hidden=(16, 16), batch_size=32))


def progress_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "progress.jsonl").read_text().splitlines()]


def test_training_writes_snapshots_and_update_every_slows_the_learner(tmp_path: Path) -> None:
    for update_every, updates in ((1, 201), (4, 51)):  # updates at steps 100..300 (every step, every 4th)
        out = train_behavior_policy(replace(TINY, update_every=update_every), tmp_path / f"every{update_every}", progress=False)
        assert progress_steps(out) == [100, 200, 300]
        assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["actor_0000100.pt", "actor_0000200.pt", "actor_0000300.pt"]
        assert torch.load(out / "checkpoint.pt", weights_only=False)["agent"]["total_updates"] == updates
        assert json.loads((out / "config.json").read_text())["update_every"] == update_every
    with pytest.raises(ValueError, match="update_every"):
        replace(TINY, update_every=0)


def test_a_killed_training_resumes_with_each_evaluation_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Killed at update 150 (step 250): the checkpoint is at step 200, the evaluation at 200 is kept.
    run_killed(monkeypatch, SAC, "update", 150, lambda: train_behavior_policy(TINY, tmp_path, progress=False))
    assert progress_steps(tmp_path) == [100, 200]
    with open(tmp_path / "progress.jsonl", "a") as handle:  # as if killed between an evaluation and the next checkpoint
        handle.write(json.dumps({"step": 250, "stochastic_normalized": 0.0}) + "\n")
    train_behavior_policy(TINY, tmp_path, progress=False)
    assert progress_steps(tmp_path) == [100, 200, 300]
