"""Training the behaviour policies that the dataset factory rolls out (D4RL's recipe).

D4RL (Fu et al. 2020, sec. 5) trained one SAC agent per robot online; "medium" is that
agent stopped at roughly one third of expert return, "expert" a fully trained one, and
"medium-replay" everything in the replay buffer until the medium point. This module runs
that training with the project's SAC, evaluates the *stochastic* policy (the one the data
is collected with) every ``eval_every`` steps, and keeps an actor snapshot at each
evaluation so the medium / expert policies and the replay schedule can be chosen
afterwards (``data.factory.select_and_ship``). Training is the engine's job, so it lives
here and not in ``data/``, which never imports the algorithms.

Training runs through the one training loop (``engine.loop.fit``): ``BehaviorStage`` is its
step (an environment step, then a SAC update), ``BehaviorBook`` its files. It is checkpointed
(SAC state, replay buffer, RNG states, and the environment's exact state and current
observation, as the online stage keeps them: ``engine.online.env_state``) and resumes after
an interruption to the same evaluations, snapshots and networks as an uninterrupted run (on
CPU): evaluations logged after the checkpoint are dropped from ``progress.jsonl`` and made
again, so every step appears once. Checkpoints written before the environment's state was
kept (earlier versions) resume by restarting the interrupted episode: a valid SAC run, but
not bit-identical to an uninterrupted one.

``update_every`` slows the learner down the way D4RL's medium-replay needs it: one SAC
update every n environment steps (D4RL's SAC took ~200k-400k steps to reach its medium
level; a learner that gets there faster gives a smaller, narrower replay buffer).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..algos.sac import SAC, SACConfig
from .learners import AgentLearner, PopulationLearner
from .loop import fit
from .online import env_state, set_env_state
from .population import SACPopulation, cpp_compiler
from ..data.replay import ReplayBuffer
from ..data.refs import normalized_score
from ..data.robots import evaluate_actor, make_robot_env
from ..core.errors import HybridRLError
from ..core.fileio import LockHeld, atomic_torch_save, atomic_write_text, held_exclusively


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


class BehaviorStage:
    """Behaviour training as a stage of the one loop (``engine.loop.fit``): each step is one
    environment step of the SAC agent (uniformly random actions for the first
    ``random_steps``, then its stochastic policy with noise from torch's global generator, the
    draw of ``SAC.act``'s sample), stored in a host replay buffer; after the warm-up, one SAC
    update every ``update_every`` environment steps. Later episodes start from an unseeded
    reset (the env's own generator, which the state keeps)."""

    name = "behavior"

    def __init__(self, env: Any, buffer: ReplayBuffer, config: BehaviorTrainingConfig, batches: _ReplayBatches) -> None:
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


@dataclass(frozen=True)
class _BehaviorSchedule:
    """What the loop reads of a book's config: when to evaluate and checkpoint. A behaviour
    training keeps no train log (its progress is the evaluations), so its log steps are its
    evaluation steps and write nothing; it has no critic-loss statistics to speak of."""

    run_id: str
    eval_every: int
    checkpoint_every: int
    total_steps: int
    loss_variance_window: int = 1

    @property
    def log_every(self) -> int:
        return self.eval_every


class _SnapshotEvaluation:
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


class BehaviorBook:
    """Behaviour training's files, as the loop's book for its one member: ``progress.jsonl``
    (one line per evaluation), ``snapshots/actor_{step:07d}.pt``, ``checkpoint.pt``.

    The loop hands it the deterministic policy's returns (``_SnapshotEvaluation``); the book
    adds the stochastic policy's (env i reset with ``10_000 + step + i``: the policy the data
    is collected with) and keeps the actor's snapshot. The evaluations draw from torch's
    generator in the order the training always has: the deterministic one draws nothing.
    """

    mc_size = 0  # no Q-vs-Monte-Carlo diagnostic

    def __init__(self, config: BehaviorTrainingConfig, out: Path, current_agent: Callable[[], SAC], update_step: Callable[[], str]) -> None:
        self.config = _BehaviorSchedule(run_id=f"behavior-{config.robot}", eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
                                        total_steps=config.total_steps)
        self.robot, self.episodes = config.robot, config.eval_episodes
        self.out, self.current_agent, self.update_step = out, current_agent, update_step
        self.step = 0
        self.loss_window = torch.zeros(1)
        self.evals: list[float] = []
        self.started = time.time()

    def due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.config.total_steps

    def log(self, record: dict[str, Any]) -> None:  # pragma: no cover - the stage makes no records
        raise AssertionError("behaviour training writes no records besides its evaluations")

    def log_train(self, values: dict[str, float], loss_window: torch.Tensor, q_mc: torch.Tensor | None) -> bool:
        return False  # no train log, and SAC's own divergence shows in the evaluations

    def log_eval(self, deterministic: list[float]) -> float:
        current = self.current_agent()
        stochastic = evaluate_actor(current.actor, self.robot, self.episodes, seed=10_000 + self.step, deterministic=False)
        record = {
            "step": self.step,
            "stochastic_return": float(np.mean(stochastic)),
            "stochastic_normalized": normalized_score(self.robot, float(np.mean(stochastic))),
            "stochastic_returns": stochastic,
            "deterministic_return": float(np.mean(deterministic)),
            "deterministic_normalized": normalized_score(self.robot, float(np.mean(deterministic))),
            "alpha": float(current.alpha),
            "wall_time_s": time.time() - self.started,
            "update_step": self.update_step(),
        }
        atomic_torch_save(current.actor.state_dict(), self.out / "snapshots" / f"actor_{self.step:07d}.pt")
        with open(self.out / "progress.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.evals.append(record["stochastic_normalized"])
        return record["stochastic_normalized"]

    def save_checkpoint(self, agent_state: dict[str, Any], stage_states: Sequence[dict[str, Any]], loss_window: torch.Tensor) -> None:
        (stage_state,) = stage_states
        atomic_torch_save({"agent": agent_state, **stage_state, "torch_rng": torch.get_rng_state()}, self.out / "checkpoint.pt")

    def finish(self, agent_state: dict[str, Any], stage_states: Sequence[dict[str, Any]], loss_window: torch.Tensor) -> dict[str, Any]:
        self.save_checkpoint(agent_state, stage_states, loss_window)
        return {"steps_done": self.step, "evaluations": len(self.evals)}


def train_behavior_policy(config: BehaviorTrainingConfig, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Train SAC on `config.robot` through the one training loop, writing snapshots,
    evaluations and checkpoints to out_dir.

    Files: ``progress.jsonl`` (one line per evaluation: step, stochastic/deterministic
    returns and normalized scores), ``snapshots/actor_{step:07d}.pt`` (actor weights),
    ``checkpoint.pt`` (everything needed to resume), ``config.json``.
    """
    out = Path(out_dir)
    (out / "snapshots").mkdir(parents=True, exist_ok=True)

    def busy(exc: LockHeld) -> Exception:
        return BehaviorTrainingError(f"{out} is being trained by another process ({exc}); wait for it to finish or choose another --out")

    with held_exclusively(out / TRAINING_LOCK_FILE, busy, role="behaviour training"):
        check_resumable(out, config)
        atomic_write_text(out / "config.json", json.dumps(asdict(config), indent=2))
        return _train_locked(config, out, progress)


class BehaviorTrainingError(HybridRLError, ValueError):
    """A behaviour training that cannot run as asked (another process has it, or its
    directory holds a training of other settings)."""


TRAINING_LOCK_FILE = ".training.lock"
# Settings a resumed training may change: how far it goes, how often it checkpoints and which
# update path it takes (the same math). Every other setting must be the recorded one.
RESUMABLE_CHANGES = ("total_steps", "checkpoint_every", "compile")


def check_resumable(out: Path, config: BehaviorTrainingConfig) -> None:
    """Raise BehaviorTrainingError if ``out`` holds a checkpoint of a training with other settings."""
    recorded_path = out / "config.json"
    if not (out / "checkpoint.pt").exists() or not recorded_path.exists():
        return
    recorded, wanted = json.loads(recorded_path.read_text()), json.loads(json.dumps(asdict(config)))
    differing = sorted(key for key in set(recorded) | set(wanted) if key not in RESUMABLE_CHANGES and recorded.get(key) != wanted.get(key))
    if differing:
        raise BehaviorTrainingError(f"{out} holds a behaviour training with other settings ({', '.join(differing)}): pass the recorded ones "
                                    "to continue it (config.json), or another --out to start afresh")


def _train_locked(config: BehaviorTrainingConfig, out: Path, progress: bool) -> Path:
    env = make_robot_env(config.robot)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(config.seed)
    agent = SAC(obs_dim, act_dim, config.sac)
    buffer = ReplayBuffer(obs_dim, act_dim, config.total_steps, seed=config.seed)
    checkpoint_path = out / "checkpoint.pt"
    state = torch.load(checkpoint_path, weights_only=False) if checkpoint_path.exists() else None
    if state is not None:
        if state["step"] > config.total_steps:
            raise ValueError(f"{out} was trained to step {state['step']}, past --steps {config.total_steps}: "
                             f"pass --steps {state['step']} or more to continue it, or another --out to start afresh")
        agent.load_state_dict(state["agent"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resuming behaviour training of {config.robot} at step {state['step']}")
    # From a checkpoint the evaluations after it are made again; from scratch, those of a
    # run that died before its first checkpoint are stale.
    _drop_progress_after(out / "progress.jsonl", state["step"] if state is not None else 0)
    # The compiled path keeps the networks in a population of one: ``agent`` is brought up
    # to date from it (``current_agent``) for evaluations, snapshots and checkpoints. Both
    # paths draw exploration noise and update randomness from torch's global generator in
    # the same order.
    population = SACPopulation([agent], compile=True) if config.compile == "on" or (config.compile == "auto" and cpp_compiler() is not None) else None
    learner = AgentLearner(agent) if population is None else PopulationLearner(population)
    stage = BehaviorStage(env, buffer, config, _ReplayBatches(buffer, learner.stacked_batches))

    def current_agent() -> SAC:
        if population is not None:
            agent.load_state_dict(learner.member_state(0))
        return agent

    def update_step() -> str:
        return "eager" if population is None else ("compiled" if population.compiled else "vmap (compile failed)")

    book = BehaviorBook(config, out, current_agent, update_step)
    if state is not None:
        stage.load_member_state(0, state)
        book.step = stage.steps
    try:
        fit(_SnapshotEvaluation(learner, current_agent, config.robot, config.eval_episodes), [book], [(stage, config.total_steps)],
            desc=f"SAC {config.robot}", progress=progress)
    finally:
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
