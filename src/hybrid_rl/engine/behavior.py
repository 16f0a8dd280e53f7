"""Training the behaviour policies that the dataset factory rolls out (D4RL's recipe).

D4RL (Fu et al. 2020, sec. 5) trained one SAC agent per robot online; "medium" is that
agent stopped at roughly one third of expert return, "expert" a fully trained one, and
"medium-replay" everything in the replay buffer until the medium point. This module runs
that training with the project's SAC, evaluates the *stochastic* policy (the one the data
is collected with) every ``eval_every`` steps, and keeps an actor snapshot at each
evaluation so the medium / expert policies and the replay schedule can be chosen
afterwards (``data.factory.select_and_ship``). Training is the engine's job, so it lives
here and not in ``data/``, which never imports the algorithms.

Training is checkpointed (SAC state, replay buffer, RNG states, and the environment's
exact state and current observation, as the online stage keeps them: ``engine.online.env_state``)
and resumes after an interruption to the same evaluations, snapshots and networks as an
uninterrupted run (on CPU): evaluations logged after the checkpoint are dropped from
``progress.jsonl`` and made again, so every step appears once. Checkpoints written before
the environment's state was kept (earlier versions) resume by restarting the interrupted
episode: a valid SAC run, but not bit-identical to an uninterrupted one.

``update_every`` slows the learner down the way D4RL's medium-replay needs it: one SAC
update every n environment steps (D4RL's SAC took ~200k-400k steps to reach its medium
level; a learner that gets there faster gives a smaller, narrower replay buffer).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..algos.sac import SAC, SACConfig
from .learners import AgentLearner, PopulationLearner
from .online import env_state, set_env_state
from .population import SACPopulation, cpp_compiler
from ..data.replay import ReplayBuffer
from ..data.refs import normalized_score
from ..data.robots import evaluate_actor, make_robot_env
from ..core.fileio import atomic_torch_save, atomic_write_text


@dataclass(frozen=True)
class BehaviorTrainingConfig:
    robot: str
    total_steps: int = 300_000
    seed: int = 0
    random_steps: int = 10_000  # uniform-random warm-up actions, as in SAC's MuJoCo setup
    eval_every: int = 10_000
    eval_episodes: int = 5
    checkpoint_every: int = 25_000
    update_every: int = 1  # one SAC update per this many environment steps (> 1: a slower learner, for medium-replay)
    # v0's 2x128 rather than SAC's 2x256: half the time per update on this CPU
    # (benchmarks/behavior_sac.py); v1 trains 2x256 (SACConfig(hidden=(256, 256)),
    # `train-policy --hidden 256,256`) to reach D4RL's expert level (docs/datasets.md).
    sac: SACConfig = SACConfig(hidden=(128, 128))
    # The update path: "off" is SAC.update; "on" a population of one under torch.compile
    # (engine.population.SACPopulation: the same math, 1.8-1.9x the updates/s at 2x256 on
    # this CPU, benchmarks/behavior_sac.py); "auto" is "on" where a C++ compiler exists.
    compile: str = "auto"

    def __post_init__(self) -> None:
        if self.update_every < 1:
            raise ValueError(f"update_every must be at least 1, got {self.update_every}")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be auto, on or off, got {self.compile!r}")


class _ReplayBatches:
    """The host replay buffer as a learner's batch source (``engine.learners``): torch
    tensors, stacked as a population of one when the learner steps a population."""

    def __init__(self, buffer: ReplayBuffer, stacked: bool) -> None:
        self.buffer, self.stacked = buffer, stacked

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        batch = {key: torch.as_tensor(value) for key, value in self.buffer.sample(batch_size).items()}
        return {key: value[None] for key, value in batch.items()} if self.stacked else batch


def train_behavior_policy(config: BehaviorTrainingConfig, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Train SAC on `config.robot`, writing snapshots, evaluations and checkpoints to out_dir.

    Files: ``progress.jsonl`` (one line per evaluation: step, stochastic/deterministic
    returns and normalized scores), ``snapshots/actor_{step:07d}.pt`` (actor weights),
    ``checkpoint.pt`` (everything needed to resume), ``config.json``.
    """
    from ..core.progress import progress_bar

    out = Path(out_dir)
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(asdict(config), indent=2))
    env = make_robot_env(config.robot)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(config.seed)
    agent = SAC(obs_dim, act_dim, config.sac)
    buffer = ReplayBuffer(obs_dim, act_dim, config.total_steps, seed=config.seed)
    rng = np.random.default_rng(config.seed)
    step = 0
    state = None
    checkpoint_path = out / "checkpoint.pt"
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        if state["step"] > config.total_steps:
            raise ValueError(f"{out} was trained to step {state['step']}, past --steps {config.total_steps}: "
                             f"pass --steps {state['step']} or more to continue it, or another --out to start afresh")
        agent.load_state_dict(state["agent"])
        buffer.load_state_dict(state["buffer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        print(f"resuming behaviour training of {config.robot} at step {step}")
    # From a checkpoint the evaluations after it are made again; from scratch, those of a
    # run that died before its first checkpoint are stale.
    _drop_progress_after(out / "progress.jsonl", step)
    # The compiled path keeps the networks in a population of one: ``agent`` is brought up
    # to date from it (``trained_agent``) for evaluations, snapshots and checkpoints. Both
    # paths draw exploration noise and update randomness from torch's global generator in
    # the same order.
    population = SACPopulation([agent], compile=True) if config.compile == "on" or (config.compile == "auto" and cpp_compiler() is not None) else None
    learner = AgentLearner(agent) if population is None else PopulationLearner(population)
    batches = _ReplayBatches(buffer, learner.stacked_batches)

    def trained_agent() -> SAC:
        if population is not None:
            agent.load_state_dict(learner.member_state(0))
        return agent

    obs, _ = env.reset(seed=config.seed + step)
    if state is not None and "env" in state:  # continue the interrupted episode exactly
        set_env_state(env, state["env"])
        obs = state["observation"]
    bar = progress_bar(total=config.total_steps, initial=step, desc=f"SAC {config.robot}", disable=not progress, mininterval=5)
    started = time.time()
    while step < config.total_steps:
        if step < config.random_steps:
            action = rng.uniform(-1.0, 1.0, size=act_dim).astype(np.float32)
        else:
            noise = torch.randn(1, act_dim).numpy()  # the draw of SAC.act's sample
            action = learner.explore(obs[None].astype(np.float32), noise)[0]
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add_batch(obs[None], action[None], np.array([reward]), next_obs[None], np.array([terminated]), np.array([truncated]))
        obs = next_obs
        step += 1
        if terminated or truncated:
            obs, _ = env.reset()
        if step >= config.random_steps and step % config.update_every == 0:
            learner.train_step(batches, config.sac.batch_size)
        if step % config.eval_every == 0:
            current = trained_agent()
            stochastic = evaluate_actor(current.actor, config.robot, config.eval_episodes, seed=10_000 + step, deterministic=False)
            deterministic = evaluate_actor(current.actor, config.robot, config.eval_episodes, seed=20_000 + step, deterministic=True)
            record = {
                "step": step,
                "stochastic_return": float(np.mean(stochastic)),
                "stochastic_normalized": normalized_score(config.robot, float(np.mean(stochastic))),
                "stochastic_returns": stochastic,
                "deterministic_return": float(np.mean(deterministic)),
                "deterministic_normalized": normalized_score(config.robot, float(np.mean(deterministic))),
                "alpha": float(current.alpha),
                "wall_time_s": time.time() - started,
                "update_step": "eager" if population is None else ("compiled" if population.compiled else "vmap (compile failed)"),
            }
            atomic_torch_save(current.actor.state_dict(), out / "snapshots" / f"actor_{step:07d}.pt")
            with open(out / "progress.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            bar.set_postfix(stoch=f"{record['stochastic_normalized']:.1f}", det=f"{record['deterministic_normalized']:.1f}")
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            atomic_torch_save(
                {
                    "agent": trained_agent().state_dict(),
                    "buffer": buffer.state_dict(),
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "env": env_state(env),
                    "observation": obs.copy(),
                    "step": step,
                },
                checkpoint_path,
            )
        bar.update(1)
    bar.close()
    env.close()
    return out


def _drop_progress_after(path: Path, step: int) -> None:
    """Keep the evaluations up to the checkpoint's ``step`` (those after it are made again)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))

