"""Behaviour-policy training's step in the one training loop: an environment step of the
SAC agent, then a SAC update (D4RL's recipe, Fu et al. 2020, sec. 5: one SAC agent per robot
trained online; "medium" is that agent stopped at roughly one third of expert return,
"expert" a fully trained one, "medium-replay" its replay buffer until the medium point).

``BehaviorStage`` is the loop's stage (``engine.loop.fit``), ``ReplayBatches`` the learner's
batches from the host replay buffer, ``SnapshotEvaluation`` the deterministic evaluation
of the trained agent's own actor. The training itself, its files, lock and resume check,
stands on the run layer with the other runs: ``runs.behavior.train_behavior_policy``.

``update_every`` slows the learner down the way D4RL's medium-replay needs it: one SAC
update every n environment steps (D4RL's SAC took ~200k-400k steps to reach its medium
level; a learner that gets there faster gives a smaller, narrower replay buffer).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..algos.sac import SAC
from .online import env_state, set_env_state
from ..data.replay import ReplayBuffer
from ..data.robots import evaluate_actor


class ReplayBatches:
    """The host replay buffer as a learner's batch source (``engine.learners``): torch
    tensors, stacked as a population of one when the learner steps a population."""

    def __init__(self, buffer: ReplayBuffer, stacked: bool) -> None:
        self.buffer, self.stacked = buffer, stacked

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        batch = {key: torch.as_tensor(value) for key, value in self.buffer.sample(batch_size).items()}
        return {key: value[None] for key, value in batch.items()} if self.stacked else batch


class BehaviorStage:
    """Behaviour training as a stage of the one loop (``engine.loop.fit``): each step is one
    environment step of the SAC agent (uniformly random actions for the first
    ``random_steps``, then its stochastic policy with noise from torch's global generator, the
    draw of ``SAC.act``'s sample), stored in a host replay buffer; after the warm-up, one SAC
    update every ``update_every`` environment steps. Later episodes start from an unseeded
    reset (the env's own generator, which the state keeps)."""

    name = "behavior"

    def __init__(self, env: Any, buffer: ReplayBuffer, config: Any, batches: ReplayBatches) -> None:
        self.env, self.buffer, self.config, self.batches = env, buffer, config, batches
        self.act_dim = env.action_space.shape[0]
        self.rng = np.random.default_rng(config.seed)  # the warm-up's random actions
        self.steps = 0
        self.obs, _ = env.reset(seed=config.seed)

    def train_step(self, learner: Any) -> Mapping[str, torch.Tensor]:
        config = self.config
        if self.steps < config.random_steps:
            action = self.rng.uniform(-1.0, 1.0, size=self.act_dim).astype(np.float32)
        else:
            noise = torch.randn(1, self.act_dim).numpy()
            action = learner.explore(self.obs[None].astype(np.float32), noise)[0]
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.buffer.add_batch(self.obs[None], action[None], np.array([reward]), next_obs[None], np.array([terminated]), np.array([truncated]))
        self.obs = next_obs
        self.steps += 1
        if terminated or truncated:
            self.obs, _ = self.env.reset()
        if self.steps >= config.random_steps and self.steps % config.update_every == 0:
            return learner.train_step(self.batches, config.sac.batch_size)
        return {}

    def member_state(self, member: int) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "rng": self.rng.bit_generator.state, "env": env_state(self.env),
                "observation": self.obs.copy(), "step": self.steps}

    def load_member_state(self, member: int, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.rng.bit_generator.state = state["rng"]
        self.steps = int(state["step"])
        self.obs, _ = self.env.reset(seed=self.config.seed + self.steps)
        if "env" in state:  # continue the interrupted episode exactly
            set_env_state(self.env, state["env"])
            self.obs = state["observation"]

    def take_records(self, member: int) -> list[dict[str, Any]]:
        return []


class SnapshotEvaluation:
    """The learner as behaviour training evaluates it: the deterministic policy is the trained
    agent's own actor (what the snapshots hold) in fresh robot envs, env i reset with
    ``20_000 + step + i``, on either update path (a population's vmapped actor would round
    differently, and a MuJoCo episode amplifies that). Everything else is the learner's."""

    def __init__(self, learner: Any, current_agent: Callable[[], SAC], robot: str, episodes: int) -> None:
        self.learner, self.current_agent, self.robot, self.episodes = learner, current_agent, robot, episodes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.learner, name)

    def evaluate(self, members: Sequence[int], books: Sequence[Any]) -> list[list[float]]:
        (book,) = books
        return [evaluate_actor(self.current_agent().actor, self.robot, self.episodes, seed=20_000 + book.step, deterministic=True)]
