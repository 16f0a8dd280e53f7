"""One offline training run, start to finish: dataset -> corruption -> algorithm -> evaluation -> run dir.

The run directory is self-describing (see docs/run_format.md):
- ``config.json``: everything needed to rerun it (dataset id and checksum, corruption
  records, algorithm config, package versions, device);
- ``metrics.jsonl``: one JSON object per logged step (``kind`` "train" diagnostics or
  "eval" returns);
- ``summary.json``: final status (completed / diverged / failed) and scores, written last;
- ``checkpoint.pt``: written atomically every ``checkpoint_every`` steps; ``resume``
  continues from it, and on CPU the resumed run's metrics equal an uninterrupted run's
  (RNG states are restored and metrics written after the checkpoint are discarded).

File names and statuses come from ``core.run_format``; the run layer every run stands on
(the ``RunBook`` that writes the directory, the run lock, the compatibility check, failure
records) is ``runs.book``. Here: a Phase I run's configuration, its set-up (data,
corruption, algorithm) and the choice of learner: one agent, or several runs that differ
only in seed and corruption as one vmapped population. The gradient steps themselves, and
the schedule of logs, evaluations and checkpoints, are ``engine.loop.fit``'s, the same loop
for both.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.dataset import OfflineDataset, TransitionSampler
from ..data.views import is_view_corruption
from ..engine.loop import OfflineStage, Schedule, fit, load_stage_states
from .book import (ProgressCallback, RunBook, finished_summary_for, mc_extra, record_failure, resolve_device,
                   restore_rng, run_lock, run_population)
from .configs import TrainConfig  # the run's configuration (its fields and flags are declared there)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def prepare_dataset(config: TrainConfig, original: OfflineDataset | None = None) -> tuple[OfflineDataset, OfflineDataset, list[dict]]:
    """Load the dataset (unless given) and apply the configured corruptions with the run's
    seed: (original, corrupted, records)."""
    return config.data.prepare(config.seed, config.cache_dir, config.mirror, original)


def algorithm_overrides(config: TrainConfig) -> dict[str, Any]:
    """The run's overrides of its algorithm's settings; raises ValueError (naming the valid
    fields) for an unknown algorithm or field, without building anything."""
    from ..algos.registry import make_config
    from ..data.loader import dataset_task

    overrides = dict(config.algo_overrides)
    if hasattr(make_config(config.algo, dataset_task(config.dataset), overrides), "max_steps"):
        overrides.setdefault("max_steps", config.total_steps)  # LR schedules span the run
    return overrides


def build_algorithm(config: TrainConfig, dataset: OfflineDataset, device: torch.device):
    """The run's algorithm, initialised from ``config.seed`` (seeds torch and numpy first)."""
    from ..algos.registry import algorithm_spec, make_algorithm
    from ..data.loader import dataset_task

    if not algorithm_spec(config.algo).offline:
        raise ValueError(f"{config.algo} learns online only, not from a dataset alone: train it with "
                         f"hybrid-rl finetune --method {config.algo} --from scratch --env {config.dataset}")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    return make_algorithm(config.algo, dataset.obs_dim, dataset.act_dim, device, task=dataset_task(config.dataset),
                          overrides=algorithm_overrides(config))


def train(config: TrainConfig, run_dir: str | Path | None = None, *, resume: bool = True, lock_wait_s: float = 0.0,
          on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one training run; returns its summary.

    A run that is already complete (summary.json present) is returned as is. A failure
    writes summary.json with status "failed" and re-raises, so a grid can record it and
    go on with the other runs. ``lock_wait_s``: how long to wait for another process's
    lock on the run (see ``run_lock``); ``on_progress(run_id, step)`` is called at every
    train log.
    """
    run_dir = Path(run_dir or Path(config.results_dir) / config.run_id)
    finished = finished_summary_for(run_dir, config, resume)
    if finished is not None:
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, lock_wait_s):
        finished = finished_summary_for(run_dir, config, resume)  # finished while we waited for the lock
        if finished is not None:
            return finished
        return _train_locked([config], [run_dir], resume=resume, on_progress=on_progress)[config.run_id]


def _train_locked(configs: Sequence[TrainConfig], run_dirs: Sequence[Path], *, resume: bool,
                  on_progress: ProgressCallback | None = None) -> dict[str, dict[str, Any]] | None:
    """Train runs whose run locks are held: one run alone, several as one population.

    Set-up is the same for every run (data, algorithm, RunBook, checkpoint); then the
    learner is the single agent, or the population of all of them, and ``engine.loop.fit``
    trains it. Returns ``{run_id: summary}``, or None (and writes nothing more) if the runs
    of a population are not all at the same step. A failure marks every run that had not
    finished as failed, then is raised.
    """
    first = configs[0]
    started = time.time()
    books: list[RunBook] = []
    try:
        device = resolve_device(first.device)
        if first.threads:
            torch.set_num_threads(first.threads)
        agents, states, original = [], [], None
        for config, run_dir in zip(configs, run_dirs):
            original, dataset, records = prepare_dataset(config, original)  # the base dataset is loaded once
            agent = build_algorithm(config, dataset, device)
            book = RunBook(config, run_dir, device, original, dataset, records, agent.config, started, on_progress)
            books.append(book)
            state = book.resume_state(resume)
            if state is not None:
                agent.load_state_dict(state["algorithm"])
            agents.append(agent)
            states.append(state)
        if len({book.step for book in books}) != 1:
            return None  # (the books are closed below)

        learner, sampler, run_extra, desc = _learner(agents, books, original, device)
        schedule = build_schedule(sampler, agents[0].config.batch_size, first.total_steps)
        for member, state in enumerate(states):
            if state is not None:
                load_stage_states(schedule, member, [state["sampler"], *state.get("stages", [])])
        if states[0] is not None:
            restore_rng(states[0], device)  # saved together: every member's copy is the same
        for book in books:
            book.write_config(**run_extra)
            book.open_log()
        return fit(learner, books, schedule, desc=desc, progress=first.progress)
    except Exception as exc:
        for index, (config, run_dir) in enumerate(zip(configs, run_dirs)):
            if index >= len(books) or not books[index].done:
                record_failure(run_dir, config, exc, started)
        raise
    finally:
        for book in books:
            book.close()


def _learner(agents: list, books: list[RunBook], original: OfflineDataset, device: torch.device):
    """(learner, offline sampler, extra config.json fields, progress-bar label) for the runs.

    Several runs are one population. A single run is its algorithm object updated eagerly
    (the reference path), or, where ``compiled_step_wanted`` says the compiled step pays, a
    compiled population of one: the same losses, batches and random draws, equal to the
    eager run up to floating-point rounding (tests/test_update_paths.py).
    """
    from ..engine.learners import AgentLearner, PopulationLearner
    from ..engine.population import compiled_step_wanted, population_class

    first = books[0]
    config = first.config
    compiled = compiled_step_wanted(config.algo, config.compile, device, config.total_steps)
    if len(agents) == 1 and not compiled:
        sampler = TransitionSampler(first.dataset, first.device, obs_mean=first.obs_mean, obs_std=first.obs_std,
                                    reward_scale=first.reward_scale, seed=config.seed, extra=mc_extra(first))
        return AgentLearner(agents[0]), sampler, {"update_step": "eager"}, config.run_id
    from ..data.views import DatasetView, PopulationSampler

    population = population_class(config.algo)(agents, compile=compiled)
    views = [DatasetView.for_run(original, book.dataset, book.records, book.algo_config, name=book.config.run_id) for book in books]
    sampler = PopulationSampler(original, views, [book.config.seed for book in books], first.device,
                                extras=[mc_extra(book) or {} for book in books])
    extra: dict[str, Any] = {"update_step": "compiled" if compiled else "vmapped"}
    if len(agents) == 1:
        return PopulationLearner(population), sampler, extra, config.run_id
    members = [book.config.run_id for book in books]
    extra["population"] = {"size": len(books), "members": members, "compile": population.compile_mode}
    return PopulationLearner(population), sampler, extra, f"{config.algo} x{len(books)} {config.dataset}"


def build_schedule(sampler: Any, batch_size: int, total_steps: int) -> Schedule:
    """The stages of a run: today one, offline gradient steps from its sampler up to total_steps."""
    return [(OfflineStage(sampler, batch_size), total_steps)]


# ---------------------------------------------------------------------------------------
# Populations: runs that differ only in seed and corruption, trained as one vmapped model
# ---------------------------------------------------------------------------------------
# Fields in which members of one population may differ (everything else must be equal).
POPULATION_FREE_FIELDS = ("seed", "remove_top_k", "reward_noise_std", "extra_corruptions", "threads", "progress")


def population_key(config: TrainConfig) -> str | None:
    """Configs with equal keys can train as one population (``train_population``); None if
    this one cannot: its algorithm has no population, or a corruption is not a view of the
    base dataset (observation, action or dynamics corruptions)."""
    from ..engine.population import population_class

    if population_class(config.algo) is None or not all(is_view_corruption(spec) for spec in config.extra_corruptions):
        return None
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in POPULATION_FREE_FIELDS}
    return json.dumps(shared, sort_keys=True, default=str)


def train_population(configs: list[TrainConfig], *, resume: bool = True, lock_wait_s: float = 0.0,
                     on_progress: ProgressCallback | None = None) -> dict[str, dict[str, Any]]:
    """Train runs that differ only in seed and corruption as ONE population (stacked,
    vmapped parameters on one device-resident base dataset; see ``engine.population``).

    Each member writes its own run directory exactly as ``train`` would (config.json,
    metrics.jsonl, checkpoints in the single-run format, summary.json), so a member can be
    resumed alone, reported and plotted like any run. Finished members are skipped; if
    the rest are not all at the same step (some resumed alone), or only one is left, they
    run one by one with ``train``. A diverged member is finished with status diverged and
    drops out of logging and evaluation (its parameters cannot affect the others). If the
    population fails, every unfinished member's summary says so, and the error is raised.
    Returns ``{run_id: summary}``.
    """
    keys = {population_key(config) for config in configs}
    if None in keys or len(keys) != 1:
        raise ValueError("a population needs configs of one population-capable algorithm that differ only in "
                         f"{', '.join(POPULATION_FREE_FIELDS)} (and only view corruptions)")
    return run_population(configs, _train_locked, train, resume=resume, lock_wait_s=lock_wait_s, on_progress=on_progress)


