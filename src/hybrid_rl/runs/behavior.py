"""Training the behaviour policies that the dataset factory rolls out, as a run of the run layer.

``train_behavior_policy(config, out)`` trains SAC on a robot through the one training loop
(``engine.loop.fit``, with ``engine.behavior.BehaviorStage`` as its step), evaluates the
*stochastic* policy (the one the data is collected with) every ``eval_every`` steps, and keeps
an actor snapshot at each evaluation, so the medium / expert policies and the replay schedule
can be chosen afterwards (``data.factory.select_and_ship``). Like every run, it holds its
directory's run lock while it trains (``runs.book.run_lock``) and continues a directory only
under the recorded identity (``runs.book.check_compatible``: every setting but the length, the
checkpoint interval and the update path, which are declared as not changing what it computes).

Its files are the factory's (``BehaviorBook``): ``progress.jsonl``, ``snapshots/``,
``checkpoint.pt`` (SAC state, replay buffer, RNG states, and the environment's exact state and
current observation, as the online stage keeps them: ``engine.online.env_state``) and
``config.json``. It resumes after an interruption to the same evaluations, snapshots and
networks as an uninterrupted run (on CPU): evaluations logged after the checkpoint are dropped
from ``progress.jsonl`` and made again, so every step appears once. Checkpoints written before
the environment's state was kept (earlier versions) resume by restarting the interrupted
episode: a valid SAC run, but not bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..algos.sac import SAC
from ..core.fileio import atomic_torch_save, atomic_write_text
from ..core.run_format import CONFIG_FILE
from ..data.refs import normalized_score
from ..data.replay import ReplayBuffer
from ..data.robots import evaluate_actor, make_robot_env
from ..engine.behavior import BehaviorStage, ReplayBatches, SnapshotEvaluation
from ..engine.learners import AgentLearner, PopulationLearner
from ..engine.loop import fit
from ..engine.population import SACPopulation, cpp_compiler
from .book import check_compatible, run_lock
from .configs import BehaviorTrainingConfig, identity_of_recorded


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


class BehaviorBook:
    """Behaviour training's files, as the loop's book for its one member: ``progress.jsonl``
    (one line per evaluation), ``snapshots/actor_{step:07d}.pt``, ``checkpoint.pt``.

    The loop hands it the deterministic policy's returns (``engine.behavior.SnapshotEvaluation``); the book
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
    evaluations and checkpoints to out_dir (continued from its checkpoint if it has one).

    Files: ``progress.jsonl`` (one line per evaluation: step, stochastic/deterministic
    returns and normalized scores), ``snapshots/actor_{step:07d}.pt`` (actor weights),
    ``checkpoint.pt`` (everything needed to resume), ``config.json`` (the settings).
    Raises RunBusyError while another process trains ``out_dir``, ConfigMismatchError if
    it holds a training of other settings.
    """
    out = Path(out_dir)
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        # config.json records the settings themselves (the factory reads them), not an identity entry.
        check_compatible(out, config, identity_of=lambda recorded: identity_of_recorded(BehaviorTrainingConfig, recorded),
                         remedy="pass the recorded settings (config.json) to continue it, or another --out to start afresh")
        atomic_write_text(out / CONFIG_FILE, json.dumps(asdict(config), indent=2))
        return _train_locked(config, out, progress)


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
    stage = BehaviorStage(env, buffer, config, ReplayBatches(buffer, learner.stacked_batches))

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
        fit(SnapshotEvaluation(learner, current_agent, config.robot, config.eval_episodes), [book], [(stage, config.total_steps)],
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
