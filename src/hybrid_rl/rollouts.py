"""Running whole episodes of a policy in a batch of environments (evaluation)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def episode_returns(envs: Sequence, policy: Callable[[np.ndarray], np.ndarray], seed: int) -> list[float]:
    """Undiscounted return of one episode in each env, all envs stepped together.

    `policy` maps a ``(num_envs, obs_dim)`` float32 batch of raw observations to a
    ``(num_envs, act_dim)`` batch of actions, so inference is batched. Env ``i`` is reset
    with seed ``seed + i``: the same seed gives the same start states, so successive
    evaluations compare policies rather than luck. Finished envs are no longer stepped.
    """
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    returns = np.zeros(len(envs))
    active = np.ones(len(envs), dtype=bool)
    while active.any():
        actions = policy(obs)
        for i in np.flatnonzero(active):
            next_obs, reward, terminated, truncated, _ = envs[i].step(actions[i])
            returns[i] += reward
            obs[i] = next_obs
            active[i] = not (terminated or truncated)
    return returns.tolist()
