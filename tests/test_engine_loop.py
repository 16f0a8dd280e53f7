"""The one training loop: schedules of stages, and the device replay buffer a later stage uses.

Phase II adds an online stage to the schedule of a run. These tests drive the loop with a
trivial second stage (gradient steps from a device replay buffer, as an online stage will
sample its buffer) to show that a stage slots in without a second loop: the switch happens
at its step, its state goes into the checkpoint, and a run killed inside it resumes to the
same metrics as an uninterrupted one.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_rl.runs import train as train_module
from hybrid_rl.data.replay import DeviceReplayBuffer
from hybrid_rl.engine.loop import OfflineStage, check_schedule, stage_at
from hybrid_rl.runs.train import TrainConfig, train

from conftest import run_killed


class ReplayStage:
    """Gradient steps on minibatches from a DeviceReplayBuffer (one member)."""

    name = "replay"

    def __init__(self, buffer: DeviceReplayBuffer, batch_size: int) -> None:
        self.buffer, self.batch_size = buffer, batch_size
        self.steps = 0

    def train_step(self, learner):
        self.steps += 1
        return learner.train_step(self.buffer, self.batch_size)

    def member_state(self, member: int) -> dict:
        return self.buffer.state_dict()

    def load_member_state(self, member: int, state: dict) -> None:
        self.buffer.load_state_dict(state)

    def take_records(self, member: int) -> list:
        return []


SWITCH = 60  # the second stage makes steps 61..120


@pytest.fixture
def two_stages(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every run trained while this fixture is active has an offline stage up to SWITCH,
    then a replay stage sampling the first 500 transitions of its own (preprocessed) data."""
    made: list = []

    def build_schedule(sampler, batch_size, total_steps):
        buffer = DeviceReplayBuffer(sampler.tensors["observations"].shape[1], sampler.tensors["actions"].shape[1], 1000, seed=7)
        rows = slice(0, 500)
        buffer.add({
            "observations": sampler.tensors["observations"][rows], "actions": sampler.tensors["actions"][rows],
            "rewards": sampler.tensors["rewards"][rows], "next_observations": sampler.tensors["next_observations"][rows],
            "terminals": sampler.tensors["dones"][rows], "timeouts": torch.zeros(500),
        })
        replay = ReplayStage(buffer, batch_size)
        made.append(replay)
        return [(OfflineStage(sampler, batch_size), SWITCH), (replay, total_steps)]

    monkeypatch.setattr(train_module, "build_schedule", build_schedule)
    return made


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_schedule_checks_and_stage_lookup() -> None:
    a, b = object(), object()
    schedule = [(a, 60), (b, 120)]
    check_schedule(schedule)
    assert [stage_at(schedule, step) for step in (0, 59, 60, 119)] == [a, a, b, b]
    for bad in ([], [(a, 60), (b, 60)], [(a, 0)], [(a, 120), (b, 60)]):
        with pytest.raises(ValueError, match="increasing end steps"):
            check_schedule(bad)


def test_a_second_stage_takes_over_at_its_step(base_config: TrainConfig, two_stages: list) -> None:
    summary = train(base_config)
    (replay,) = two_stages
    assert summary["status"] == "completed" and summary["steps_done"] == base_config.total_steps
    assert replay.steps == base_config.total_steps - SWITCH  # steps 61..120 came from the replay stage
    run_dir = Path(base_config.results_dir) / base_config.run_id
    steps = [record["step"] for record in read_metrics(run_dir) if record["kind"] == "train"]
    assert steps == list(range(base_config.log_every, base_config.total_steps + 1, base_config.log_every))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    (buffer_state,) = checkpoint["stages"]  # the offline sampler's state stays under "sampler"
    assert buffer_state["size"] == 500 and set(checkpoint["sampler"]) == {"generator"}


def test_a_run_killed_in_the_second_stage_resumes_to_the_same_metrics(base_config: TrainConfig, tmp_path: Path,
                                                                        two_stages: list, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train(replace(base_config, results_dir=str(tmp_path / "uninterrupted")))
    # Killed at step 61 + 25 = 86: after the checkpoint at 80, which lies in the second stage.
    run_killed(monkeypatch, DeviceReplayBuffer, "sample", 25, lambda: train(base_config))
    run_dir = Path(base_config.results_dir) / base_config.run_id
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 80
    resumed = train(base_config)
    expected = (tmp_path / "uninterrupted" / base_config.run_id / "metrics.jsonl").read_text()
    assert (run_dir / "metrics.jsonl").read_text() == expected
    assert resumed["final_normalized_return"] == reference["final_normalized_return"]


# ---------------------------------------------------------------------------------------
# DeviceReplayBuffer
# ---------------------------------------------------------------------------------------
def transitions(start: int, n: int) -> dict[str, np.ndarray]:
    """Rows numbered start..start+n-1: observation i = (i, i), reward i, terminal every 4th."""
    index = np.arange(start, start + n, dtype=np.float32)
    return {
        "observations": np.stack([index, index], axis=1), "actions": index[:, None] / 100, "rewards": index,
        "next_observations": np.stack([index + 0.5, index + 0.5], axis=1), "terminals": (index % 4 == 3).astype(np.float32),
        "timeouts": (index % 4 == 1).astype(np.float32),
    }


def test_replay_buffer_is_a_fifo_that_samples_terminals_as_dones() -> None:
    buffer = DeviceReplayBuffer(2, 1, capacity=5, seed=0)
    buffer.add(transitions(0, 3))
    buffer.add(transitions(3, 4))  # wraps: rows 0 and 1 now hold transitions 5 and 6
    assert len(buffer) == 5 and buffer.position == 2
    dataset = buffer.as_dataset("replay")
    np.testing.assert_array_equal(dataset.rewards, [2, 3, 4, 5, 6])  # oldest first
    np.testing.assert_array_equal(dataset.terminals, [False, True, False, False, False])
    np.testing.assert_array_equal(dataset.timeouts, [False, False, False, True, False])
    batch = buffer.sample(64)
    assert set(batch) == {"observations", "actions", "rewards", "next_observations", "dones"}
    np.testing.assert_array_equal(batch["dones"].numpy(), (batch["rewards"].numpy() % 4 == 3).astype(np.float32))
    np.testing.assert_array_equal(batch["observations"][:, 0].numpy(), batch["rewards"].numpy())
    assert set(batch["rewards"].tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}


def test_replay_buffer_state_restores_contents_and_draws_exactly() -> None:
    buffer = DeviceReplayBuffer(2, 1, capacity=8, seed=3)
    buffer.add(transitions(0, 6))
    buffer.sample(4)
    state = buffer.state_dict()
    expected = [buffer.sample(5) for _ in range(3)]
    buffer.add(transitions(100, 2))  # changes after the state was taken must not leak into it
    restored = DeviceReplayBuffer(2, 1, capacity=8, seed=99)
    restored.load_state_dict(state)
    assert (len(restored), restored.position) == (6, 6)
    for batch in expected:
        again = restored.sample(5)
        for key in batch:
            assert torch.equal(batch[key], again[key])
    with pytest.raises(ValueError, match="capacity"):
        DeviceReplayBuffer(2, 1, capacity=4).load_state_dict(state)


def test_replay_buffer_rejects_bad_input() -> None:
    buffer = DeviceReplayBuffer(2, 1, capacity=4)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(1)
    bad = transitions(0, 2)
    bad["observations"] = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="'observations' has shape"):
        buffer.add(bad)
    with pytest.raises(ValueError, match="lack"):
        buffer.add({"rewards": np.zeros(2)})
    with pytest.raises(ValueError, match="capacity 4"):
        buffer.add(transitions(0, 5))
