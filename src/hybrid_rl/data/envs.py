"""Gymnasium environments that reproduce what a D4RL dataset was recorded in.

D4RL's Ant data (gym Ant-v2/v3 under mujoco-py with MuJoCo 2.x) has 111-dim observations
whose last 84 entries, the contact forces, are all zero: MuJoCo 2.0 stopped computing
``cfrc_ext`` unless asked (openai/gym#1541, Farama-Foundation/D4RL#143). The same missing
forces made the contact cost in its reward zero. Gymnasium's Ant-v4 with
``use_contact_forces=True`` computes real forces, so its observations leave the data's
distribution and its reward subtracts a contact cost the data never had. ``D4RLAnt-v4``
is Ant-v4 without contact forces (27-dim observations, no contact cost) padded with 84
zeros: the observations and rewards D4RL recorded.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

D4RL_ANT_ID = "hybrid_rl/D4RLAnt-v4"
ANT_CONTACT_DIMS = 84  # 14 bodies x 6 force/torque components


class ZeroContactForces(gym.ObservationWrapper):
    """Appends D4RL's all-zero contact-force block to a contact-free Ant observation."""

    def __init__(self, env: gym.Env, dims: int = ANT_CONTACT_DIMS) -> None:
        super().__init__(env)
        self.dims = dims
        base = env.observation_space
        # Unbounded like the rest (and like gym's Ant): the bound is not what makes them zero.
        low = np.concatenate([base.low, np.full(dims, -np.inf, base.dtype)])
        high = np.concatenate([base.high, np.full(dims, np.inf, base.dtype)])
        self.observation_space = gym.spaces.Box(low, high, dtype=base.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([observation, np.zeros(self.dims, observation.dtype)])


def make_d4rl_ant(**kwargs: Any) -> gym.Env:
    from gymnasium.envs.mujoco.ant_v4 import AntEnv

    if kwargs.pop("use_contact_forces", False):
        raise ValueError(f"{D4RL_ANT_ID} reproduces D4RL's zero contact forces; use Ant-v4 for real ones")
    return ZeroContactForces(AntEnv(use_contact_forces=False, **kwargs))


def register_envs() -> None:
    """Register this module's envs with Gymnasium (idempotent)."""
    if D4RL_ANT_ID not in gym.registry:
        gym.register(id=D4RL_ANT_ID, entry_point=make_d4rl_ant, max_episode_steps=1000)
