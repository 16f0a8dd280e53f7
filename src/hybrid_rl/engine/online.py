"""The online stage: act in the environment, store what happens, then learn from it.

One iteration of the loop in this stage is one environment step of every member (the unit
of Phase II's recovery curves): each member's stochastic policy acts in its own environment
(uniform random actions during a random warm-up), the transition goes into the member's
online ``DeviceReplayBuffer`` (observations normalised and rewards scaled as its offline
data were, so both sources mix), and after the warm-up the learner takes ``utd`` gradient
steps on batches from the members' ``MixedSampler``s. A single run is one member; a
population (``engine.population``) acts for all members with one batched actor call and
updates them with one stacked step. Each member's random draws come from its own streams
(the exploration noise from the member's generator, fed to the policy's
``act_from_noise``), so a member's transitions do not depend on the other members.
Episodes end at a termination or at the 1000-step time limit; a truncation is stored as a timeout, not a
terminal, so its value is bootstrapped. Each finished episode is logged as an ``"episode"``
record with its (normalized) return and the calibration of the critic on it: the mean of
Q(s_t, a_t) (the learner's ``q_values``, at the episode's end) minus the discounted
Monte-Carlo return-to-go of the episode from t (``q_minus_mc_mean``, in the run's scaled
reward units, as Phase I's ``q_minus_mc_mean`` on the offline data). An episode cut by the
time limit loses its tail, so only its steps with at least 3 / (1 - gamma) steps left enter
(the missing tail then weighs gamma^300 ~ 5%), as in Phase I's diagnostic batch.

Everything a member's next step depends on is in ``member_state``: the buffer, the sampler's
streams, the environment's exact physics state (``mujoco.mj_getState`` with
``mjSTATE_INTEGRATION``, which includes the solver's warm start), its time-limit counter and
reset generator, the current observation and episode, and the member's own generator. So a
run killed at any step resumes to the metrics of an uninterrupted one (on CPU).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

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


class OnlineMember:
    """One run's side of the online stage: its environment, online buffer, batch sampler,
    preprocessing, score function and random stream (``seed``)."""

    def __init__(self, env: Any, buffer: DeviceReplayBuffer, sampler: MixedSampler, preprocessing: Preprocessing, score: Callable[[float], float],
                 seed: int) -> None:
        self.env, self.buffer, self.sampler, self.preprocessing, self.score = env, buffer, sampler, preprocessing, score
        self.rng = np.random.default_rng(seed)
        self.act_dim = int(np.prod(env.action_space.shape))
        self.episodes = 0
        self.obs, _ = env.reset(seed=int(seed))
        self.episode_return, self.episode_length = 0.0, 0
        # The episode so far (for its Q - MC, and for Cal-QL's buffer insertion at its end).
        self.episode_rows: list[dict[str, np.ndarray]] = []
        self.records: list[dict[str, Any]] = []

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        p = self.preprocessing
        return ((obs - p.obs_mean) / p.obs_std).astype(np.float32) if p.obs_mean is not None else np.asarray(obs, dtype=np.float32)


class _StackedBatches:
    """The members' samplers as one source of ``(P, B, ...)`` batches (a population's step)."""

    def __init__(self, samplers: Sequence[MixedSampler]) -> None:
        self.samplers = list(samplers)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        batches = [sampler.sample(batch_size) for sampler in self.samplers]
        return {key: torch.stack([batch[key] for batch in batches]) for key in batches[0]}


class OnlineStage:
    """Environment interaction of every member plus ``utd`` gradient steps per environment step."""

    name = "online"

    def __init__(
        self,
        members: Sequence[OnlineMember],
        *,
        utd: int,
        batch_size: int,
        warmup_steps: int = 0,
        random_warmup: bool = False,
        exploration_noise: float = 0.0,
        discount: float = 0.99,
        returns_in_buffer: bool = False,
    ) -> None:
        if not members:
            raise ValueError("an online stage needs at least one member")
        # utd 0 is the frozen-policy control: it acts, stores and is evaluated, never updated.
        if utd < 0 or warmup_steps < 0 or exploration_noise < 0:
            raise ValueError(f"need utd >= 0, warmup_steps >= 0 and exploration_noise >= 0, got {utd}, {warmup_steps}, {exploration_noise}")
        self.members = list(members)
        self.utd, self.batch_size, self.warmup_steps, self.random_warmup = int(utd), int(batch_size), int(warmup_steps), bool(random_warmup)
        self.exploration_noise = float(exploration_noise)
        self.discount = float(discount)
        # With returns_in_buffer (Cal-QL), an episode's transitions enter the buffer when it
        # ends, each with its Monte-Carlo return-to-go ("mc_returns"), as the reference code
        # does; a time-limit cut is summed to the cut, like the offline data's. Otherwise each
        # transition enters at once.
        self.returns_in_buffer = bool(returns_in_buffer)
        self.act_low, self.act_high = -1.0, 1.0
        self.env_steps = 0  # shared: every member steps once per iteration
        self._stacked = _StackedBatches([member.sampler for member in self.members])

    def _actions(self, learner: Learner, observations: np.ndarray) -> np.ndarray:
        """``(P, act_dim)``: uniform random during a random warm-up, else each member's policy
        driven by standard-normal noise from the member's stream (plus Gaussian action noise
        for a deterministic actor, TD3-style)."""
        members = self.members
        if self.random_warmup and self.env_steps < self.warmup_steps:
            return np.stack([m.rng.uniform(self.act_low, self.act_high, size=m.act_dim).astype(np.float32) for m in members])
        noise = np.stack([m.rng.standard_normal(m.act_dim).astype(np.float32) for m in members])
        actions = learner.explore(observations, noise)
        if self.exploration_noise > 0:
            actions = actions + self.exploration_noise * np.stack([m.rng.standard_normal(m.act_dim).astype(np.float32) for m in members])
        return np.clip(actions, self.act_low, self.act_high).astype(np.float32)

    def train_step(self, learner: Learner) -> Mapping[str, torch.Tensor]:
        observations = np.stack([member.normalize(member.obs) for member in self.members])
        actions = self._actions(learner, observations)
        for index, member in enumerate(self.members):
            self._env_step(learner, index, member, observations[index], actions[index])
        self.env_steps += 1
        metrics: Mapping[str, torch.Tensor] = {}
        if self.env_steps > self.warmup_steps:
            source = self._stacked if learner.stacked_batches else self.members[0].sampler
            for _ in range(self.utd):
                metrics = learner.train_step(source, self.batch_size)
        return metrics

    def _env_step(self, learner: Learner, index: int, member: OnlineMember, obs: np.ndarray, action: np.ndarray) -> None:
        next_obs, reward, terminated, truncated, _ = member.env.step(action)
        transition = {
            "observations": obs[None], "actions": action[None], "rewards": np.array([reward * member.preprocessing.reward_scale], np.float32),
            "next_observations": member.normalize(next_obs)[None], "terminals": np.array([float(terminated)], np.float32),
            "timeouts": np.array([float(truncated and not terminated)], np.float32),
        }
        if not self.returns_in_buffer:
            member.buffer.add(transition)
        member.episode_rows.append(transition)
        member.episode_return += float(reward)
        member.episode_length += 1
        if not (terminated or truncated):
            member.obs = next_obs
            return
        member.episodes += 1
        episode = {key: np.concatenate([row[key] for row in member.episode_rows]) for key in member.episode_rows[0]}
        mc_returns = discounted_returns_to_go(episode["rewards"], np.array([[0, len(episode["rewards"])]]), self.discount).astype(np.float32)
        if self.returns_in_buffer:
            member.buffer.add({**episode, "mc_returns": mc_returns})
        member.records.append({
            "kind": "episode", "episode": member.episodes, "return": member.episode_return, "normalized_return": member.score(member.episode_return),
            "length": member.episode_length, "terminated": bool(terminated),
            **q_calibration(learner, index, episode, mc_returns, self.discount, bool(terminated), member.buffer.device),
        })
        member.episode_rows = []
        member.obs, _ = member.env.reset()
        member.episode_return, member.episode_length = 0.0, 0

    def take_records(self, member: int) -> list[dict[str, Any]]:
        records, self.members[member].records = self.members[member].records, []
        return records

    def member_state(self, member: int) -> dict[str, Any]:
        m = self.members[member]
        return {
            "buffer": m.buffer.state_dict(),
            "sampler": m.sampler.state_dict(),
            "env": env_state(m.env),
            "obs": np.array(m.obs, copy=True),
            "episode": {"return": m.episode_return, "length": m.episode_length, "count": m.episodes},
            "env_steps": self.env_steps,
            "rng": m.rng.bit_generator.state,
            "records": list(m.records),
            "episode_rows": list(m.episode_rows),
        }

    def load_member_state(self, member: int, state: dict[str, Any]) -> None:
        m = self.members[member]
        m.buffer.load_state_dict(state["buffer"])
        m.sampler.load_state_dict(state["sampler"])
        set_env_state(m.env, state["env"])
        m.obs = np.array(state["obs"], copy=True)
        episode = state["episode"]
        m.episode_return, m.episode_length, m.episodes = float(episode["return"]), int(episode["length"]), int(episode["count"])
        self.env_steps = int(state["env_steps"])  # the same in every member's state
        m.rng.bit_generator.state = state["rng"]
        m.records = list(state["records"])
        m.episode_rows = list(state.get("episode_rows", state.get("pending", [])))  # older checkpoints: "pending" (Cal-QL only)


def soft_rewards(rewards: np.ndarray, bonus: np.ndarray, discount: float) -> np.ndarray:
    """Per-step rewards whose discounted sum is a soft-Q method's Monte-Carlo target: the soft
    backup Q(s_t, a_t) = r_t + gamma (Q(s_t+1, a_t+1) + b_t+1), with the entropy bonus
    b = -alpha log pi(a|s), unrolls to the return of r_t + gamma b_t+1 (nothing after the
    episode's last step)."""
    following = np.append(np.asarray(bonus, dtype=np.float64)[1:], 0.0)
    return np.asarray(rewards, dtype=np.float64) + discount * following


def q_calibration(learner: Learner, member: int, episode: Mapping[str, np.ndarray], mc_returns: np.ndarray, discount: float, terminated: bool,
                  device: torch.device) -> dict[str, float | int]:
    """Member ``member``'s critic Q on its finished episode's transitions against their Monte-Carlo returns.

    Q is the learner's ``q_values``: the estimator the method bootstraps with. For a soft-Q
    method (the learner's ``entropy_bonus`` is not None: SAC, RLPD) the Monte-Carlo return
    includes the entropy bonus of the episode's later actions under the current policy and
    temperature (``soft_rewards``), so both sides estimate the same soft return; the mean
    bonus is logged as ``entropy_bonus_mean``. ``{"q_mean", "mc_return_mean",
    "q_minus_mc_mean", "q_mc_transitions"}`` over the episode's steps whose return is a fair
    target: all of a terminated episode, the steps of a time-limit cut with at least
    3 / (1 - discount) steps left. ``{}`` when none is fair (a short cut episode).
    """
    fair = len(mc_returns) if terminated else max(0, len(mc_returns) - truncated_tail_steps(discount))
    if fair == 0:
        return {}
    extra: dict[str, float] = {}
    mc = mc_returns.astype(np.float64)
    with torch.no_grad():
        obs = torch.as_tensor(episode["observations"][:fair], device=device)
        actions = torch.as_tensor(episode["actions"][:fair], device=device)
        q = learner.q_values(member, obs, actions).double().cpu().numpy()
        bonus = learner.entropy_bonus(member, torch.as_tensor(episode["observations"], device=device), torch.as_tensor(episode["actions"], device=device))
    if bonus is not None:
        bonus = bonus.double().cpu().numpy()
        rewards = soft_rewards(episode["rewards"], bonus, discount)
        mc = discounted_returns_to_go(rewards, np.array([[0, len(rewards)]]), discount)
        extra["entropy_bonus_mean"] = float(bonus[:fair].mean())
    mc = mc[:fair]
    return {"q_mean": float(q.mean()), "mc_return_mean": float(mc.mean()), "q_minus_mc_mean": float((q - mc).mean()), "q_mc_transitions": int(fair), **extra}
