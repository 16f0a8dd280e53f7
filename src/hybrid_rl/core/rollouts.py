"""Running whole episodes of a policy in a batch of environments (evaluation)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def episode_returns(envs: Sequence, policy: Callable[[np.ndarray], np.ndarray], seed: int | Sequence[int]) -> list[float]:
    """Undiscounted return of one episode in each env, all envs stepped together.

    `policy` maps a ``(num_envs, obs_dim)`` float32 batch of raw observations to a
    ``(num_envs, act_dim)`` batch of actions, so inference is batched. Env ``i`` is reset
    with seed ``seed + i`` (or ``seed[i]`` when a sequence is given, as when several runs'
    envs are stepped together): the same seed gives the same start states, so successive
    evaluations compare policies rather than luck. Finished envs are no longer stepped.
    """
    seeds = [seed + i for i in range(len(envs))] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != len(envs):
        raise ValueError(f"{len(envs)} envs but {len(seeds)} reset seeds")
    obs = np.stack([env.reset(seed=s)[0] for s, env in zip(seeds, envs)]).astype(np.float32)
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
