"""Learners: what the training loop drives, for one agent or a vmapped population alike.

A learner is P >= 1 members (runs) that take gradient steps in lockstep. The loop
(``engine.loop.fit``) asks it for a step on batches from a source, for its metrics as
host values when it logs, for Q-values on the diagnostic batch, for evaluation returns and
for each member's state in the single-run checkpoint format; the online stage also asks it
for the members' exploratory actions. Two learners satisfy it:

``AgentLearner``
    one algorithm object (``algos/``) with its eager ``update``: the reference path of a
    single run.
``PopulationLearner``
    a vmapped population (``engine.population``): P runs in one stacked, optionally
    compiled step; each member still writes a single run's files.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from ..data.views import PopulationSampler
from ..core.rollouts import episode_returns


class Learner(Protocol):
    """The interface ``engine.loop.fit`` drives (members are indexed 0..num_members-1)."""

    num_members: int
    stacked_batches: bool  # whether train_step's source must yield (P, B, ...) batches, one per member (else (B, ...))

    def train_step(self, source: Any, batch_size: int) -> Mapping[str, torch.Tensor]:
        """One gradient step of every member on a batch each from ``source`` (a sampler);
        metrics as device tensors (0-d for one agent, ``(P,)`` for a population)."""

    def metric_rows(self, metrics: Mapping[str, torch.Tensor]) -> list[dict[str, float]]:
        """Every member's metrics as Python floats (the one host sync of a log step)."""

    def q_values(self, member: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The member's critic estimate at ``(B, .)`` inputs, ``(B,)``: the algorithm's ``q_values``."""

    def entropy_bonus(self, member: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        """The member's ``Algorithm.entropy_bonus``: ``(B,)`` for soft-Q methods, else None."""

    def evaluate(self, members: Sequence[int], books: Sequence[Any]) -> list[list[float]]:
        """Episode returns of the members' deterministic policies in their books' envs."""

    def member_state(self, member: int) -> dict[str, Any]:
        """The member's algorithm state in the single-run format (``Algorithm.state_dict``)."""

    def explore(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Every member's stochastic action for its own normalised observation: ``obs``
        ``(P, obs_dim)`` and standard-normal ``noise`` ``(P, act_dim)`` -> ``(P, act_dim)`` in [-1, 1]."""


def deterministic_returns(act: Any, envs: Sequence, obs_mean: np.ndarray | None, obs_std: np.ndarray | None, seed: int) -> list[float]:
    """Undiscounted returns of one episode per env, actions from ``act(normalised obs)``."""

    def policy(obs: np.ndarray) -> np.ndarray:
        return act((obs - obs_mean) / obs_std if obs_mean is not None else obs)

    return episode_returns(envs, policy, seed)


class AgentLearner:
    """One algorithm object, updated eagerly: ``algorithm.update(sampler.sample(B))``."""

    num_members = 1
    stacked_batches = False

    def __init__(self, algorithm: Any) -> None:
        self.algorithm = algorithm

    def train_step(self, source: Any, batch_size: int) -> Mapping[str, torch.Tensor]:
        return self.algorithm.update(source.sample(batch_size))

    def metric_rows(self, metrics: Mapping[str, torch.Tensor]) -> list[dict[str, float]]:
        return [{key: float(value.item()) if isinstance(value, torch.Tensor) else float(value) for key, value in metrics.items()}]

    @torch.no_grad()
    def q_values(self, member: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.algorithm.q_values(obs, actions)

    def entropy_bonus(self, member: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        return self.algorithm.entropy_bonus(obs, actions)

    def evaluate(self, members: Sequence[int], books: Sequence[Any]) -> list[list[float]]:
        algorithm = self.algorithm
        algorithm.train_mode(False)
        try:
            return [
                deterministic_returns(lambda obs: algorithm.act(obs, deterministic=True), book.envs, book.obs_mean, book.obs_std, book.eval_seed)
                for book in books
            ]
        finally:
            algorithm.train_mode(True)

    def member_state(self, member: int) -> dict[str, Any]:
        return self.algorithm.state_dict()

    def explore(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.algorithm.explore(obs, noise)


class PopulationLearner:
    """A vmapped population (``engine.population``): one stacked step for all members."""

    stacked_batches = True

    def __init__(self, population: Any) -> None:
        self.population = population
        self.num_members = population.num_agents

    def train_step(self, source: Any, batch_size: int) -> Mapping[str, torch.Tensor]:
        """From a ``PopulationSampler`` (rows drawn here, gathered inside the step) or any
        source whose ``sample`` returns the members' batches stacked (the online stage's)."""
        if isinstance(source, PopulationSampler):
            return self.population.train_step(source, batch_size)
        return self.population.update(source.sample(batch_size))

    def metric_rows(self, metrics: Any) -> list[dict[str, float]]:
        if not metrics:  # no update yet (an online stage's warm-up)
            return [{} for _ in range(self.num_members)]
        table = metrics.stacked.T.tolist()  # one host sync for every member's metrics
        return [dict(zip(metrics.names, row)) for row in table]

    def q_values(self, member: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.population.agent_q_values(member, obs, actions)

    def entropy_bonus(self, member: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        return self.population.agent_entropy_bonus(member, obs, actions)

    def evaluate(self, members: Sequence[int], books: Sequence[Any]) -> list[list[float]]:
        """All evaluated members' envs stepped together, every member's actions from one
        vmapped actor call per env step. Each member sees its own envs, reset seeds and
        observation normalisation, as in its single run."""
        population = self.population
        num_agents, obs_dim = population.num_agents, population.obs_dim
        episodes = len(books[0].envs)
        mean = np.zeros((num_agents, 1, obs_dim), dtype=np.float32)
        std = np.ones((num_agents, 1, obs_dim), dtype=np.float32)
        for member, book in zip(members, books):
            if book.obs_mean is not None:
                mean[member, 0], std[member, 0] = book.obs_mean, book.obs_std
        members = list(members)

        def policy(obs: np.ndarray) -> np.ndarray:
            full = np.zeros((num_agents, episodes, obs_dim), dtype=np.float32)  # members not evaluated act on zeros
            full[members] = obs.reshape(len(members), episodes, obs_dim)
            actions = population.act((full - mean) / std)
            return actions[members].reshape(len(members) * episodes, -1).cpu().numpy()

        envs = [env for book in books for env in book.envs]
        seeds = [book.eval_seed + i for book in books for i in range(episodes)]
        returns = episode_returns(envs, policy, seeds)
        return [returns[k * episodes:(k + 1) * episodes] for k in range(len(members))]

    def member_state(self, member: int) -> dict[str, Any]:
        return self.population.member(member).state_dict()

    def explore(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.population.explore(obs, noise).cpu().numpy()
