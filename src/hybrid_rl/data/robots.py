"""The robots of the dataset factory: their Gymnasium envs, target levels and training records.

What the data layer needs to know about behaviour policies without training them: the env
a robot's data is collected in (D4RL's v4 envs, 1000-step episodes), the normalized-score
window a generated medium dataset should land in, and how to read the evaluation records
that a behaviour training (``hybrid_rl.runs.behavior``) writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ..core.rollouts import episode_returns
from .envs import register_envs
from .refs import GYM_ENV_IDS

# Normalized-score windows of D4RL's medium data that a generated medium dataset should
# land in (from the dataset-factory spec).
MEDIUM_TARGET_RANGE: dict[str, tuple[float, float]] = {
    "halfcheetah": (38.0, 45.0),
    "hopper": (40.0, 60.0),
    "walker2d": (55.0, 75.0),
}
FACTORY_ROBOTS = tuple(MEDIUM_TARGET_RANGE)
EPISODE_LIMIT = 1000


def make_robot_env(robot: str, **kwargs: Any) -> gym.Env:
    """The Gymnasium env D4RL data of this robot is evaluated in (v4, 1000-step limit)."""
    if robot not in GYM_ENV_IDS:
        raise ValueError(f"unknown robot {robot!r}; choose one of {sorted(GYM_ENV_IDS)}")
    register_envs()
    return gym.make(GYM_ENV_IDS[robot], max_episode_steps=EPISODE_LIMIT, **kwargs)


def robot_dimensions(robot: str) -> tuple[int, int]:
    """(observation size, action size) of the robot's env."""
    env = make_robot_env(robot)
    try:
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    finally:
        env.close()


@torch.no_grad()
def evaluate_actor(actor: torch.nn.Module, robot: str, episodes: int, seed: int, deterministic: bool) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes of a behaviour actor (``TanhGaussianPolicy``)
    in the robot's env, env ``i`` reset with ``seed + i``, inference batched."""
    envs = [make_robot_env(robot) for _ in range(episodes)]

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs)
        return (actor.deterministic(obs_t) if deterministic else actor.sample(obs_t)).numpy()

    try:
        return episode_returns(envs, policy, seed)
    finally:
        for env in envs:
            env.close()


def read_progress(out_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation records of a behaviour training, deduplicated by step (last wins)."""
    records: dict[int, dict[str, Any]] = {}
    path = Path(out_dir) / "progress.jsonl"
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["step"]] = record
    return [records[step] for step in sorted(records)]
