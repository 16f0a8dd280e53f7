"""The online stage: act in the environment, store what happens, then learn from it.

One iteration of the loop in this stage is one environment step (the unit of Phase II's
recovery curves): the member's stochastic policy acts (uniform random actions during a
random warm-up), the transition goes into the online ``DeviceReplayBuffer`` (observations
normalised and rewards scaled as the offline data were, so both sources mix), and after the
warm-up the learner takes ``utd`` gradient steps from a ``MixedSampler``. Episodes end at a
termination or at the 1000-step time limit; a truncation is stored as a timeout, not a
terminal, so its value is bootstrapped. Each finished episode is logged as an ``"episode"``
record with its (normalized) return and the calibration of the critic on it: the mean of
Q(s_t, a_t) (the learner's ``q_values``, at the episode's end) minus the discounted
Monte-Carlo return-to-go of the episode from t (``q_minus_mc_mean``, in the run's scaled
reward units, as Phase I's ``q_minus_mc_mean`` on the offline data). An episode cut by the
time limit loses its tail, so only its steps with at least 3 / (1 - gamma) steps left enter
(the missing tail then weighs gamma^300 ~ 5%), as in Phase I's diagnostic batch.

Everything the next step depends on is in ``member_state``: the buffer, the sampler's
streams, the environment's exact physics state (``mujoco.mj_getState`` with
``mjSTATE_INTEGRATION``, which includes the solver's warm start), its time-limit counter and
reset generator, the current observation and episode, and the stage's own generator. So a
run killed at any step resumes to the metrics of an uninterrupted one (on CPU).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..data.dataset import discounted_returns_to_go, truncated_tail_steps
from ..data.replay import DeviceReplayBuffer, MixedSampler
from ..data.views import Preprocessing
from .learners import Learner


def _time_limit(env: Any) -> Any:
    wrapper = env
    while not hasattr(wrapper, "_elapsed_steps"):
        if not hasattr(wrapper, "env"):
            raise ValueError(f"{env} has no time limit: online episodes must be capped (gymnasium.make(..., max_episode_steps=1000))")
        wrapper = wrapper.env
    return wrapper


def env_state(env: Any) -> dict[str, Any]:
    """A MuJoCo Gymnasium env's exact state: physics, time-limit counter, reset generator."""
    import mujoco

    base = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    physics = np.empty(mujoco.mj_stateSize(base.model, spec))
    mujoco.mj_getState(base.model, base.data, physics, spec)
    return {"physics": physics, "elapsed_steps": int(_time_limit(env)._elapsed_steps), "np_random": base.np_random.bit_generator.state}


def set_env_state(env: Any, state: Mapping[str, Any]) -> None:
    """Restore ``env_state`` into an env of the same kind that has been reset once."""
    import mujoco

    base = env.unwrapped
    mujoco.mj_setState(base.model, base.data, np.asarray(state["physics"], dtype=np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
    _time_limit(env)._elapsed_steps = int(state["elapsed_steps"])
    base.np_random.bit_generator.state = state["np_random"]


class OnlineStage:
    """Environment interaction plus ``utd`` gradient steps per environment step (one member)."""

    name = "online"

    def __init__(
        self,
        env: Any,
        buffer: DeviceReplayBuffer,
        sampler: MixedSampler,
        preprocessing: Preprocessing,
        score: Callable[[float], float],
        *,
        utd: int,
        batch_size: int,
        warmup_steps: int = 0,
        random_warmup: bool = False,
        exploration_noise: float = 0.0,
        discount: float = 0.99,
        returns_in_buffer: bool = False,
        seed: int = 0,
    ) -> None:
        if utd < 1 or warmup_steps < 0 or exploration_noise < 0:
            raise ValueError(f"need utd >= 1, warmup_steps >= 0 and exploration_noise >= 0, got {utd}, {warmup_steps}, {exploration_noise}")
        self.env, self.buffer, self.sampler, self.preprocessing, self.score = env, buffer, sampler, preprocessing, score
        self.utd, self.batch_size, self.warmup_steps, self.random_warmup = int(utd), int(batch_size), int(warmup_steps), bool(random_warmup)
        self.exploration_noise = float(exploration_noise)
        self.discount = float(discount)
        # With returns_in_buffer (Cal-QL), an episode's transitions enter the buffer when it
        # ends, each with its Monte-Carlo return-to-go ("mc_returns"), as the reference code
        # does; a time-limit cut is summed to the cut, like the offline data's. Otherwise each
        # transition enters at once. Either way the episode so far is kept (``episode_rows``)
        # for its Q - MC diagnostic.
        self.returns_in_buffer = bool(returns_in_buffer)
        self.episode_rows: list[dict[str, np.ndarray]] = []
        self.rng = np.random.default_rng(seed)
        self.act_low, self.act_high = -1.0, 1.0
        self.act_dim = int(np.prod(env.action_space.shape))
        self.env_steps = 0
        self.episodes = 0
        self.obs, _ = env.reset(seed=int(seed))
        self.episode_return, self.episode_length = 0.0, 0
        self.records: list[dict[str, Any]] = []

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        p = self.preprocessing
        return ((obs - p.obs_mean) / p.obs_std).astype(np.float32) if p.obs_mean is not None else np.asarray(obs, dtype=np.float32)

    def _action(self, learner: Learner, obs: np.ndarray) -> np.ndarray:
        if self.random_warmup and self.env_steps < self.warmup_steps:
            return self.rng.uniform(self.act_low, self.act_high, size=self.act_dim).astype(np.float32)
        action = learner.act(0, obs[None], deterministic=False)[0]
        if self.exploration_noise > 0:  # a deterministic actor explores with Gaussian noise (TD3-style)
            action = action + self.exploration_noise * self.rng.standard_normal(self.act_dim).astype(np.float32)
        return np.clip(action, self.act_low, self.act_high).astype(np.float32)

    def train_step(self, learner: Learner) -> Mapping[str, torch.Tensor]:
        obs = self._normalize(self.obs)
        action = self._action(learner, obs)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        transition = {
            "observations": obs[None], "actions": action[None], "rewards": np.array([reward * self.preprocessing.reward_scale], np.float32),
            "next_observations": self._normalize(next_obs)[None], "terminals": np.array([float(terminated)], np.float32),
            "timeouts": np.array([float(truncated and not terminated)], np.float32),
        }
        if not self.returns_in_buffer:
            self.buffer.add(transition)
        self.episode_rows.append(transition)
        self.env_steps += 1
        self.episode_return += float(reward)
        self.episode_length += 1
        if terminated or truncated:
            self.episodes += 1
            episode = {key: np.concatenate([row[key] for row in self.episode_rows]) for key in self.episode_rows[0]}
            mc_returns = discounted_returns_to_go(episode["rewards"], np.array([[0, len(episode["rewards"])]]), self.discount).astype(np.float32)
            if self.returns_in_buffer:
                self.buffer.add({**episode, "mc_returns": mc_returns})
            self.records.append({
                "kind": "episode", "episode": self.episodes, "return": self.episode_return, "normalized_return": self.score(self.episode_return),
                "length": self.episode_length, "terminated": bool(terminated),
                **q_calibration(learner, episode, mc_returns, self.discount, bool(terminated), self.buffer.device),
            })
            self.episode_rows = []
            self.obs, _ = self.env.reset()
            self.episode_return, self.episode_length = 0.0, 0
        else:
            self.obs = next_obs
        metrics: Mapping[str, torch.Tensor] = {}
        if self.env_steps > self.warmup_steps:
            for _ in range(self.utd):
                metrics = learner.train_step(self.sampler, self.batch_size)
        return metrics

    def take_records(self, member: int) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records

    def member_state(self, member: int) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "env": env_state(self.env),
            "obs": np.array(self.obs, copy=True),
            "episode": {"return": self.episode_return, "length": self.episode_length, "count": self.episodes},
            "env_steps": self.env_steps,
            "rng": self.rng.bit_generator.state,
            "records": list(self.records),
            "episode_rows": list(self.episode_rows),
        }

    def load_member_state(self, member: int, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.sampler.load_state_dict(state["sampler"])
        set_env_state(self.env, state["env"])
        self.obs = np.array(state["obs"], copy=True)
        episode = state["episode"]
        self.episode_return, self.episode_length, self.episodes = float(episode["return"]), int(episode["length"]), int(episode["count"])
        self.env_steps = int(state["env_steps"])
        self.rng.bit_generator.state = state["rng"]
        self.records = list(state["records"])
        self.episode_rows = list(state.get("episode_rows", state.get("pending", [])))  # older checkpoints: "pending" (Cal-QL only)


def q_calibration(learner: Learner, episode: Mapping[str, np.ndarray], mc_returns: np.ndarray, discount: float, terminated: bool,
                  device: torch.device) -> dict[str, float | int]:
    """The critic's Q on a finished episode's transitions against their Monte-Carlo returns.

    ``{"q_mean", "mc_return_mean", "q_minus_mc_mean", "q_mc_transitions"}`` over the
    episode's steps whose return is a fair target: all of a terminated episode, the steps of
    a time-limit cut with at least 3 / (1 - discount) steps left. ``{}`` when none is fair
    (a short cut episode).
    """
    fair = len(mc_returns) if terminated else max(0, len(mc_returns) - truncated_tail_steps(discount))
    if fair == 0:
        return {}
    with torch.no_grad():
        obs = torch.as_tensor(episode["observations"][:fair], device=device)
        actions = torch.as_tensor(episode["actions"][:fair], device=device)
        q = learner.q_values(0, obs, actions).double().cpu().numpy()
    mc = mc_returns[:fair].astype(np.float64)
    return {"q_mean": float(q.mean()), "mc_return_mean": float(mc.mean()), "q_minus_mc_mean": float((q - mc).mean()), "q_mc_transitions": int(fair)}
