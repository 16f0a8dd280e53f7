"""OfflineDataset, TransitionSampler, ReplayBuffer and concatenate_datasets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hybrid_rl.data.dataset import OfflineDataset, TransitionSampler, concatenate_datasets
from hybrid_rl.data.replay import ReplayBuffer

from conftest import d4rl_normalized, returns_by_hand


# --- trajectories ----------------------------------------------------------------------
def test_bounds_and_returns_with_trailing_partial_trajectory(make_dataset):
    ds = make_dataset([[1, 2], [3], [4, 5, 6]], ends=["terminal", "timeout", "none"])
    np.testing.assert_array_equal(ds.trajectory_bounds(), [[0, 2], [2, 3], [3, 6]])
    np.testing.assert_allclose(ds.trajectory_returns(), [3.0, 3.0, 15.0])
    np.testing.assert_array_equal(ds.trajectory_lengths(), [2, 1, 3])
    np.testing.assert_array_equal(ds.trajectory_ids(), [0, 0, 1, 2, 2, 2])
    assert ds.num_trajectories == 3


def test_flag_on_last_row_adds_no_empty_trajectory(make_dataset):
    ds = make_dataset([[1], [2, 3]], ends=["timeout", "terminal"])
    np.testing.assert_array_equal(ds.trajectory_bounds(), [[0, 1], [1, 3]])


def test_one_step_trajectories(make_dataset):
    ds = make_dataset([[1], [2], [3]], ends=["terminal", "timeout", "terminal"])
    np.testing.assert_array_equal(ds.trajectory_lengths(), [1, 1, 1])
    np.testing.assert_allclose(ds.trajectory_returns(), [1, 2, 3])


def test_real_rollout_is_consistent(hopper_dataset):
    ds = hopper_dataset
    bounds = ds.trajectory_bounds()
    assert bounds[0, 0] == 0 and bounds[-1, 1] == len(ds)
    np.testing.assert_array_equal(bounds[1:, 0], bounds[:-1, 1])
    np.testing.assert_allclose(ds.trajectory_returns().sum(), ds.rewards.astype(np.float64).sum(), rtol=1e-9)
    # Inside an episode the next observation is the following row's observation.
    ends = ds.terminals | ds.timeouts
    inside = np.flatnonzero(~ends[:-1])
    np.testing.assert_array_equal(ds.next_observations[inside], ds.observations[inside + 1])


def test_select_trajectories_keeps_boundaries_and_file_order(make_dataset):
    ds = make_dataset([[1, 1], [2], [3, 3, 3], [4, 4]], ends=["terminal", "timeout", "terminal", "none"])
    out = ds.select_trajectories(np.array([3, 0, 2]))
    np.testing.assert_array_equal(out.observations[:, 0], [0, 1, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(out.terminals, [0, 1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(out.timeouts, [0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.trajectory_bounds(), [[0, 2], [2, 5], [5, 7]])
    np.testing.assert_allclose(out.trajectory_returns(), [2, 9, 8])
    # The input is untouched and shares nothing that could be written through.
    assert ds.num_trajectories == 4 and len(ds) == 8
    with pytest.raises(ValueError, match="empty"):
        ds.select_trajectories(np.array([], dtype=np.int64))


def test_discounted_returns_to_go_stop_at_boundaries(make_dataset):
    ds = make_dataset([[1, 1, 1], [2, 4]], ends=["timeout", "terminal"])
    np.testing.assert_allclose(ds.discounted_returns_to_go(0.5), [1.75, 1.5, 1.0, 4.0, 4.0])
    np.testing.assert_allclose(ds.discounted_returns_to_go(1.0), [3, 2, 1, 6, 4])


def test_dataset_rejects_inconsistent_arrays(make_dataset):
    ds = make_dataset([[1, 2, 3]])
    with pytest.raises(ValueError, match="rows"):
        ds.replace(rewards=ds.rewards[:2])
    with pytest.raises(ValueError, match="empty"):
        ds.select_transitions(np.array([], dtype=np.int64))


def test_summary_and_checksum(make_dataset):
    ds = make_dataset([[1, 2], [10]]).replace(metadata={"env_name": "hopper-medium-v2"})
    info = ds.summary()
    assert info["trajectories"] == 2 and info["return_max"] == 10.0
    # Returns 3 and 10: D4RL's normalization of their mean with hopper's reference returns.
    assert info["return_mean"] == pytest.approx(6.5)
    assert info["normalized_return_mean"] == pytest.approx(d4rl_normalized("hopper", 6.5), rel=1e-9)
    assert info["normalized_return_mean"] == pytest.approx(100.0 * (6.5 + 20.272305) / (3234.3 + 20.272305), rel=1e-9)
    assert "normalized_return_mean" not in make_dataset([[1, 2], [10]], name="pendulum-swingup").summary()  # no reference scores
    changed = ds.replace(rewards=ds.rewards + 1)
    assert ds.checksum() != changed.checksum()
    assert ds.checksum() == make_dataset([[1, 2], [10]]).checksum()
    assert ds.iql_reward_scale() == pytest.approx(1000.0 / 7.0)


# --- sampler ---------------------------------------------------------------------------
def test_sampler_is_a_function_of_the_seed_and_resumable(hopper_dataset):
    a = TransitionSampler(hopper_dataset, seed=7)
    b = TransitionSampler(hopper_dataset, seed=7)
    c = TransitionSampler(hopper_dataset, seed=8)
    first_a, first_b, first_c = a.sample(64), b.sample(64), c.sample(64)
    for key in first_a:
        torch.testing.assert_close(first_a[key], first_b[key])
    assert not torch.equal(first_a["observations"], first_c["observations"])

    state = a.state_dict()
    expected = [a.sample(32) for _ in range(3)]
    a.load_state_dict(state)
    replayed = [a.sample(32) for _ in range(3)]
    for batch, again in zip(expected, replayed):
        for key in batch:
            torch.testing.assert_close(batch[key], again[key])


def test_sampler_dones_are_terminals_only_and_transforms_apply(make_dataset):
    ds = make_dataset([[1, 2], [3, 4]], ends=["timeout", "terminal"])
    mean, std = np.full(3, 1.0, np.float32), np.full(3, 2.0, np.float32)
    sampler = TransitionSampler(ds, obs_mean=mean, obs_std=std, reward_scale=10.0, reward_bias=-1.0)
    t = sampler.tensors
    torch.testing.assert_close(t["dones"], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(t["rewards"], torch.tensor([9.0, 19.0, 29.0, 39.0]))
    torch.testing.assert_close(t["observations"][:, 0], torch.tensor([-0.5, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(t["next_observations"][:, 0], torch.tensor([-0.25, 0.25, 0.75, 1.25]))
    batch = sampler.sample(5)
    assert batch["observations"].shape == (5, 3) and batch["actions"].shape == (5, 2)


# --- replay buffer ---------------------------------------------------------------------
def _add_rows(buffer: ReplayBuffer, start: int, count: int) -> None:
    values = np.arange(start, start + count, dtype=np.float32)
    buffer.add_batch(
        obs=np.repeat(values[:, None], 2, axis=1),
        actions=np.repeat(values[:, None], 1, axis=1),
        rewards=values,
        next_obs=np.repeat(values[:, None] + 0.5, 2, axis=1),
        terminals=np.zeros(count, bool),
        timeouts=(values % 4 == 3),
    )


def test_replay_buffer_wraps_around_and_keeps_insertion_order():
    buffer = ReplayBuffer(obs_dim=2, act_dim=1, capacity=5, seed=0)
    _add_rows(buffer, 0, 3)
    np.testing.assert_array_equal(buffer.as_dataset("partial").rewards, [0, 1, 2])
    _add_rows(buffer, 3, 4)  # overwrites rows 0 and 1
    assert len(buffer) == 5 and buffer.position == 2
    ds = buffer.as_dataset("replay", metadata={"source": "test"})
    np.testing.assert_array_equal(ds.rewards, [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(ds.observations[:, 0], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(ds.timeouts, [0, 1, 0, 0, 0])
    assert ds.metadata == {"source": "test"}


def test_replay_buffer_sampling_is_seeded():
    batches = []
    for _ in range(2):
        buffer = ReplayBuffer(obs_dim=2, act_dim=1, capacity=50, seed=3)
        _add_rows(buffer, 0, 40)
        batches.append(buffer.sample(16))
    np.testing.assert_array_equal(batches[0]["rewards"], batches[1]["rewards"])
    assert batches[0]["rewards"].max() < 40
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(obs_dim=2, act_dim=1, capacity=0)


# --- concatenation ---------------------------------------------------------------------
def test_concatenate_separates_partial_trajectories(make_dataset):
    first = make_dataset([[1, 2], [3]], ends=["terminal", "none"])
    second = make_dataset([[4, 5]], ends=["none"])
    second = second.replace(infos={"qpos": np.zeros((2, 4), np.float32)})
    out = concatenate_datasets([first, second], name="both", metadata={"recipe": "first+second"})
    assert len(out) == 5 and out.name == "both" and out.metadata == {"recipe": "first+second"}
    np.testing.assert_array_equal(out.trajectory_bounds(), [[0, 2], [2, 3], [3, 5]])
    np.testing.assert_allclose(out.trajectory_returns(), [3, 3, 9])
    assert out.timeouts[2]  # first's partial end became a timeout, so it cannot merge with second's
    assert out.infos == {}  # qpos is not in both: dropped rather than misaligned
    assert not first.timeouts[2]  # inputs untouched
    with pytest.raises(ValueError):
        concatenate_datasets([], name="none")


def test_summary_normalizes_the_mean_trajectory_return_of_real_data(hopper_dataset: OfflineDataset):
    returns = returns_by_hand(hopper_dataset.rewards, hopper_dataset.terminals, hopper_dataset.timeouts)
    info = hopper_dataset.summary()  # named hopper-random-rollout: hopper's reference returns
    assert info["trajectories"] == len(returns) > 2
    assert info["return_mean"] == pytest.approx(returns.mean(), rel=1e-6)
    assert info["normalized_return_mean"] == pytest.approx(d4rl_normalized("hopper", returns.mean()), rel=1e-6)
    # The environment name in the metadata decides the robot, not the dataset's name.
    as_walker = hopper_dataset.replace(metadata={**hopper_dataset.metadata, "env_name": "walker2d-medium-v2"}).summary()
    assert as_walker["normalized_return_mean"] == pytest.approx(d4rl_normalized("walker2d", returns.mean()), rel=1e-6)


def test_offline_dataset_shapes(hopper_dataset: OfflineDataset):
    assert hopper_dataset.obs_dim == 11 and hopper_dataset.act_dim == 3
    assert hopper_dataset.infos["qpos"].shape == (len(hopper_dataset), 6)
