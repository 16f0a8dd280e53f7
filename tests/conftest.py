"""Shared fixtures: small D4RL-format data from real MuJoCo rollouts and hand-built datasets.

Kept small so the whole data test set runs in seconds on two CPU cores.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

from hybrid_rl.data.dataset import OfflineDataset
from hybrid_rl.data.hdf5io import write_hdf5

HOPPER_STEPS = 300
HOPPER_HORIZON = 30  # short time limit: random Hopper both falls (terminal) and times out


def rollout_hopper(steps: int = HOPPER_STEPS, horizon: int = HOPPER_HORIZON, seed: int = 0) -> OfflineDataset:
    """A uniform-random policy in Hopper-v4, recorded the way D4RL records its data.

    terminals = the env's termination (Hopper fell), timeouts = truncation by the time limit
    (and not a termination), next_observations = the observation after the step (the true
    final state even at a timeout), infos/qpos and infos/qvel = simulator state before the
    step. The file may stop mid-episode, as D4RL files do.
    """
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "Hopper-v4 is out of date"
        env = gym.make("Hopper-v4", max_episode_steps=horizon)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {key: [] for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "qpos", "qvel")}
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
        rows["qpos"].append(env.unwrapped.data.qpos.copy())
        rows["qvel"].append(env.unwrapped.data.qvel.copy())
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows["observations"].append(obs)
        rows["actions"].append(action)
        rows["rewards"].append(reward)
        rows["next_observations"].append(next_obs)
        rows["terminals"].append(terminated)
        rows["timeouts"].append(truncated and not terminated)
        obs = env.reset()[0] if (terminated or truncated) else next_obs
    env.close()
    arrays = {key: np.asarray(value) for key, value in rows.items()}
    return OfflineDataset(
        observations=arrays["observations"].astype(np.float32),
        actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"].astype(np.float32),
        next_observations=arrays["next_observations"].astype(np.float32),
        terminals=arrays["terminals"].astype(bool),
        timeouts=arrays["timeouts"].astype(bool),
        name="hopper-random-rollout",
        infos={"qpos": arrays["qpos"].astype(np.float32), "qvel": arrays["qvel"].astype(np.float32)},
        metadata={"algorithm": "uniform-random", "horizon": horizon, "gym_env_id": "Hopper-v4"},
    )


@pytest.fixture(scope="session")
def hopper_dataset(tmp_path_factory: pytest.TempPathFactory) -> OfflineDataset:
    """A few hundred real Hopper-v4 transitions (terminals, timeouts, trailing partial episode)."""
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("mujoco_cwd"))  # MuJoCo may write MUJOCO_LOG.TXT into the cwd
    try:
        dataset = rollout_hopper()
    finally:
        os.chdir(cwd)
    assert dataset.terminals.any() and dataset.timeouts.any(), "fixture must exercise both episode ends"
    return dataset


@pytest.fixture(scope="session")
def hopper_file(hopper_dataset: OfflineDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`hopper_dataset` written as a D4RL-format file, under d4rl's name for hopper-medium-v2.

    Tests must not modify it (session-scoped): copy it first.
    """
    return write_hdf5(hopper_dataset, tmp_path_factory.mktemp("d4rl_files") / "hopper_medium-v2.hdf5")


DatasetBuilder = Callable[..., OfflineDataset]


def build_dataset(
    trajectory_rewards: Sequence[Sequence[float]],
    ends: Sequence[str] | None = None,
    *,
    obs_dim: int = 3,
    act_dim: int = 2,
    name: str = "synthetic",
) -> OfflineDataset:
    """A hand-built dataset with one trajectory per entry of `trajectory_rewards`.

    `ends[i]` is how trajectory i ends: "terminal", "timeout" or "none" (no flag; only
    meaningful for the last one). Default: all "timeout". Every row is traceable:
    ``observations[i] = i`` (all dims), ``next_observations[i] = i + 0.5``,
    ``actions[i] = (i % 7) / 10``.
    """
    ends = list(ends) if ends is not None else ["timeout"] * len(trajectory_rewards)
    assert len(ends) == len(trajectory_rewards)
    rewards = np.concatenate([np.asarray(r, dtype=np.float32) for r in trajectory_rewards])
    n = len(rewards)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    position = 0
    for rewards_i, end in zip(trajectory_rewards, ends):
        position += len(rewards_i)
        if end == "terminal":
            terminals[position - 1] = True
        elif end == "timeout":
            timeouts[position - 1] = True
        else:
            assert end == "none", end
    index = np.arange(n, dtype=np.float32)
    return OfflineDataset(
        observations=np.repeat(index[:, None], obs_dim, axis=1),
        actions=np.repeat(((np.arange(n) % 7) / 10.0).astype(np.float32)[:, None], act_dim, axis=1),
        rewards=rewards,
        next_observations=np.repeat((index + 0.5)[:, None], obs_dim, axis=1),
        terminals=terminals,
        timeouts=timeouts,
        name=name,
    )


# D4RL's reference returns (d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE of the v2 locomotion
# datasets), written out here so tests check hybrid_rl.data.refs against the published numbers.
D4RL_REFERENCE_RETURNS = {"halfcheetah": (-280.178953, 12135.0), "hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3)}


def d4rl_normalized(robot: str, episode_return: float) -> float:
    """D4RL normalized score, 100 * (return - random) / (expert - random)."""
    random_return, expert_return = D4RL_REFERENCE_RETURNS[robot]
    return 100.0 * (episode_return - random_return) / (expert_return - random_return)


def returns_by_hand(rewards: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Undiscounted return of every trajectory: rewards summed up to each terminal or timeout
    flag, plus a trailing trajectory without a flag (written out, not OfflineDataset's code)."""
    returns, total, open_trajectory = [], 0.0, False
    for reward, terminal, timeout in zip(rewards.astype(np.float64), terminals, timeouts):
        total += reward
        open_trajectory = True
        if terminal or timeout:
            returns.append(total)
            total, open_trajectory = 0.0, False
    if open_trajectory:
        returns.append(total)
    return np.asarray(returns)


@pytest.fixture
def make_dataset() -> DatasetBuilder:
    """The `build_dataset` builder, as a fixture (tests are not a package)."""
    return build_dataset


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    """Tests use tiny networks: one intra-op thread is fastest, and a second thread that
    spins against other processes on a busy 2-core machine makes each op 10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def generated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of generated datasets for the whole session (generation takes seconds)."""
    return tmp_path_factory.mktemp("generated_datasets")


TINY_DATASET = "gen-hopper-random-v0@3000"  # needs no behaviour policy file


@pytest.fixture
def base_config(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny IQL run on generated data: 120 steps, evaluations at 60 and 120, checkpoints every 40."""
    from hybrid_rl.runs.train import TrainConfig

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    return TrainConfig(
        algo="iql", dataset=TINY_DATASET, seed=3, total_steps=120, eval_every=60, eval_episodes=2,
        log_every=20, checkpoint_every=40, device="cpu", progress=False, results_dir=str(tmp_path / "results"),
        cache_dir=str(generated_cache), algo_overrides={"hidden": [32, 32], "batch_size": 64},
    )


def run_killed(monkeypatch: pytest.MonkeyPatch, owner: type, method: str, calls_before_kill: int, work: Callable[[], object]) -> None:
    """Run ``work()`` with ``owner.method`` raising KeyboardInterrupt on call number
    ``calls_before_kill + 1`` (like SIGINT/SIGKILL: no summary is written), then restore it."""
    original = getattr(owner, method)
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > calls_before_kill:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, dying)
    with pytest.raises(KeyboardInterrupt):
        work()
    monkeypatch.setattr(owner, method, original)
