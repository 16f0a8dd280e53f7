"""Phase II: fine-tune online from a Phase I run (or from scratch) and record how it recovers.

``finetune(config)`` starts from a finished Phase I run directory (its final checkpoint:
networks, optimizer state, the normalisation of the damaged data it trained on, found again
through its config and checked against its checksum), or from fresh networks
(``parent="scratch"``), and trains online with ``engine.online.OnlineStage`` in the one
training loop (``engine.loop.fit``). The new run directory has the Phase I format
(docs/run_format.md); its step axis is online environment steps, its config.json names the
parent (run id, checkpoint SHA-256, status and final score: the score at the switch), and
its metrics.jsonl adds an ``"episode"`` record for every finished online episode.

Methods (``methods()``, from the algorithms' declarations; docs/recovery.md has the recipes and their sources):

``iql``  IQL fine-tuning (Kostrikov et al. 2022): the same losses online, UTD 1, one buffer
         (offline data plus online transitions, sampled uniformly). The actor's cosine LR
         schedule ended with pretraining (it reaches 0 at the switch); online the actor LR is
         the constant ``actor_lr`` again, as in the official fine-tuning configuration (no
         decay) and d3rlpy, not CORL's periodic scheduler, which climbs back by accident.
``cql``  CQL kept online with the offline alpha (CORL's fine-tuning), UTD 1, one buffer.
``calql`` Cal-QL (Nakamoto et al. 2023) from a Cal-QL run: CQL with the policy proposals' Q
         floored at the Monte-Carlo return-to-go, online too (each finished online episode
         enters the buffer with its returns-to-go; CORL switches the floor off online, the
         paper does not), symmetric 50/50 batches, UTD 1.
``rlpd`` RLPD (Ball et al. 2023) from scratch with the (damaged) offline data: SAC with 10
         LayerNorm critics, target = min over a random 2, symmetric 50/50 batches, UTD 20
         (the paper's; pass a lower --utd on a CPU), 5,000 random warm-up steps.
``sac``  SAC from scratch without offline data (the floor every method must beat): 5,000
         uniformly random warm-up steps, then UTD 1 on the online buffer alone.

Controls that make causes separable (docs/recovery.md):

``offline`` the parent keeps training on its own (damaged) offline data, with the fine-tuning
         recipe's optimizer settings, for the same gradient steps on the same evaluation
         schedule (one step = ``utd`` gradient steps) and no interaction: recovery against
         more training.
``--utd 0`` any pretrained method as a frozen policy: it acts and is evaluated, never
         updated (the metrics' noise floor).

Every run first measures its starting policy over ``switch_episodes`` episodes at step 0,
before any update (the switch score of every recovery metric).

Update paths as in Phase I (``compile``): runs long enough for their algorithm's declared
``compile_min_steps`` (every method here has one) take the compiled step of a population of
one. ``finetune_population`` trains runs whose parents
differ only in seed and corruption as one population (every member in its own environment,
one stacked update): the Phase II study does so on GPUs (``--population``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..algos.registry import algorithm_spec, make_config
from ..data.refs import normalized_score
from ..data.robots import EPISODE_LIMIT
from ..core.errors import HybridRLError
from ..core.fileio import sha256_of_file
from ..core.run_format import CHECKPOINT_FILE, CONFIG_FILE, RESULT_STATUSES, read_summary
from .book import (ProgressCallback, RunBook, finished_summary_for, mc_extra, record_failure, resolve_device, restore_rng,
                   run_lock, run_population)
from .configs import SCRATCH, FinetuneConfig, TrainConfig, methods  # the run's configuration (fields and flags declared there)
# Phase I's own: its data and its algorithm (the parent's).
from .train import POPULATION_FREE_FIELDS as PARENT_POPULATION_FREE_FIELDS
from .train import build_algorithm, prepare_dataset

# ---------------------------------------------------------------------------------------
# The parent run
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parent:
    run_dir: Path
    config: TrainConfig
    summary: dict[str, Any]
    checkpoint_sha256: str
    dataset_checksum: str


def train_config_from(recorded: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a Phase I run recorded in its config.json."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {key: value for key, value in recorded.items() if key in names}
    values["extra_corruptions"] = tuple(dict(spec) for spec in values.get("extra_corruptions", ()))
    return TrainConfig(**values)


def load_parent(path: str | Path, method: str) -> Parent:
    """A finished Phase I run to fine-tune from; one-line HybridRLError for anything else."""
    run_dir = Path(path)
    if not (run_dir / CONFIG_FILE).exists():
        raise HybridRLError(f"--from {run_dir}: no Phase I run directory there (no {CONFIG_FILE}); pass RESULTS/RUN_ID of a finished run")
    recorded = json.loads((run_dir / CONFIG_FILE).read_text())
    if "method" in recorded:
        raise HybridRLError(f"--from {run_dir} is a fine-tuning run; fine-tune from a Phase I run directory")
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") not in RESULT_STATUSES:
        status = "no summary yet" if summary is None else f"status {summary.get('status')!r}"
        raise HybridRLError(f"--from {run_dir} is not finished ({status}); finish it first with hybrid-rl train (same flags) or the Phase I grid")
    if not (run_dir / CHECKPOINT_FILE).exists():
        raise HybridRLError(f"--from {run_dir} has no {CHECKPOINT_FILE}; it cannot be fine-tuned")
    config = train_config_from(recorded)
    allowed = methods()[method].parent_algos
    if config.algo not in allowed:
        raise HybridRLError(f"method {method} fine-tunes {', '.join(allowed) or 'nothing'} runs, but {run_dir.name} was trained with {config.algo}; "
                            f"use --method {config.algo}" if config.algo in methods() else f"method {method} cannot start from a {config.algo} run")
    return Parent(run_dir, config, summary, sha256_of_file(run_dir / CHECKPOINT_FILE), str(recorded.get("dataset_checksum", "")))


def with_parent(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with ``parent_identity`` filled from its parent (checks the parent first)."""
    if config.parent == SCRATCH:
        if methods()[config.method].parent_algos:
            raise HybridRLError(f"method {config.method} fine-tunes a pretrained agent: pass --from RESULTS/RUN_ID")
        return config
    if not methods()[config.method].parent_algos:
        raise HybridRLError(f"method {config.method} starts from scratch: pass --from scratch --env DATASET")
    parent = load_parent(config.parent, config.method)
    if config.parent_identity:  # filled in before
        if config.parent_identity != parent.config.identity():
            raise HybridRLError(f"--from {parent.run_dir} now holds another run than this fine-tuning run started from; use another --results directory")
        return config
    if config.remove_top_k or config.reward_noise_std or config.extra_corruptions:
        raise HybridRLError("corruption flags are for --from scratch runs: a fine-tuning run uses its parent's (damaged) data")
    return dataclasses.replace(config, parent_identity=parent.config.identity(), dataset=parent.config.dataset, remove_top_k=parent.config.remove_top_k,
                               reward_noise_std=parent.config.reward_noise_std, extra_corruptions=parent.config.extra_corruptions)


def _finite(state: Any) -> bool:
    if isinstance(state, torch.Tensor):
        return bool(torch.isfinite(state).all()) if state.is_floating_point() else True
    if isinstance(state, dict):
        return all(_finite(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return all(_finite(value) for value in state)
    return True


# ---------------------------------------------------------------------------------------
# The run, and populations of runs
# ---------------------------------------------------------------------------------------
# Fields in which the runs of one population may differ (besides the parent's seed and data).
POPULATION_FREE_FIELDS = ("seed", "parent", "parent_identity", "remove_top_k", "reward_noise_std", "extra_corruptions", "threads", "progress")


def finetune(config: FinetuneConfig, *, resume: bool = True, lock_wait_s: float = 0.0, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one fine-tuning run; returns its summary."""
    config = with_parent(config)
    run_dir = Path(config.results_dir) / config.run_id
    finished = finished_summary_for(run_dir, config, resume)
    if finished is not None:
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, lock_wait_s):
        finished = finished_summary_for(run_dir, config, resume)
        if finished is not None:
            return finished
        return _finetune_locked([config], [run_dir], resume=resume, on_progress=on_progress)[config.run_id]


def population_key(config: FinetuneConfig) -> str | None:
    """Fine-tuning runs with equal keys can train as one population (``finetune_population``):
    the same method and online settings from parents of one population-capable algorithm
    that differ only in seed and corruption and stopped at the same step, or from-scratch
    runs of one method (``sac``, ``rlpd``) on one dataset that differ only in seed and
    corruption. None if this run cannot (a parent that is missing or not finished: it then
    runs alone and fails with the reason)."""
    from ..engine.population import population_class

    if not config.recipe.interacts:
        return None  # the offline control trains alone
    if config.parent == SCRATCH:
        if population_class(config.method) is None:
            return None
        shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in POPULATION_FREE_FIELDS}
        return json.dumps({"run": shared, "scratch": True}, sort_keys=True, default=str)
    try:
        parent = load_parent(config.parent, config.method)
    except HybridRLError:
        return None
    if population_class(parent.config.algo) is None:
        return None
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in POPULATION_FREE_FIELDS}
    parent_shared = {k: v for k, v in parent.config.identity().items() if k not in PARENT_POPULATION_FREE_FIELDS}
    return json.dumps({"run": shared, "parent": parent_shared, "parent_steps": parent.summary.get("steps_done")}, sort_keys=True, default=str)


def finetune_population(configs: list[FinetuneConfig], *, resume: bool = True, lock_wait_s: float = 0.0,
                        on_progress: ProgressCallback | None = None) -> dict[str, dict[str, Any]]:
    """Fine-tune runs with one ``population_key`` as ONE population: every member acts in
    its own environment, stores into its own buffer and samples its own batches, and one
    stacked (vmapped, optionally compiled) step updates them all (``engine.population``).

    Each member writes its own run directory exactly as ``finetune`` would, so it can be
    resumed alone, reported and plotted like any run. Finished members are skipped; if the
    rest are not all at the same step, or only one is left, they run one by one. Returns
    ``{run_id: summary}``.
    """
    configs = [with_parent(config) for config in configs]
    keys = {population_key(config) for config in configs}
    if None in keys or len(keys) != 1:
        raise ValueError("a fine-tuning population needs runs of one method and online settings, from parents of one population-capable "
                         f"algorithm that stopped at the same step or from scratch, that differ only in {', '.join(POPULATION_FREE_FIELDS)}")
    return run_population(configs, _finetune_locked, finetune, resume=resume, lock_wait_s=lock_wait_s, on_progress=on_progress)


def scratch_algorithm(config: FinetuneConfig, obs_dim: int, act_dim: int, device: torch.device):
    """Fresh networks for a from-scratch method, its config's defaults under ``algo_overrides``."""
    # A method whose actor steps once per environment step learns at actor_every = UTD.
    recipe_fields = {"actor_every": config.resolved_utd} if config.recipe.actor_every_env_step else {}
    algo_config = make_config(config.method, None, {**recipe_fields, **config.algo_overrides})
    return algorithm_spec(config.method).algorithm(obs_dim, act_dim, algo_config, device)


@dataclass
class _Prepared:
    """One run ready to go online: its book, agent, checkpoint (None when new), online side."""

    book: RunBook
    algorithm: Any
    state: dict[str, Any] | None
    member: Any  # engine.online.OnlineMember; None for the offline control
    offline: Any  # the parent's offline data as a TransitionSampler (None: online_only)
    parent_info: dict[str, Any]


def _finetune_locked(configs: Sequence[FinetuneConfig], run_dirs: Sequence[Path], *, resume: bool,
                     on_progress: ProgressCallback | None) -> dict[str, dict[str, Any]] | None:
    """Fine-tune runs whose run locks are held: one run alone, several as one population.

    Set-up is the same for every run (data, agent, book, online member, checkpoint); then the
    learner is the single agent or the population of all of them, the online stage holds
    every member, and ``engine.loop.fit`` trains it. Returns ``{run_id: summary}``, or None
    (and writes nothing more) if the runs are not all at the same step. A failure marks
    every run that had not finished as failed, then is raised.
    """
    from ..engine.loop import OfflineStage, fit, load_stage_states
    from ..engine.online import OnlineStage

    first = configs[0]
    started = time.time()
    prepared: list[_Prepared] = []
    try:
        device = resolve_device(first.device)
        if first.threads:
            torch.set_num_threads(first.threads)
        for config, run_dir in zip(configs, run_dirs):
            prepared.append(_prepare(config, run_dir, resume, started, on_progress, device))
        if len({p.book.step for p in prepared}) != 1:
            return None  # (the books are closed below)
        learner, run_extra = _online_learner([p.algorithm for p in prepared], configs, device)
        algo_config = prepared[0].algorithm.config
        if first.recipe.interacts:
            stage = OnlineStage(
                [p.member for p in prepared], utd=first.resolved_utd, batch_size=algo_config.batch_size, warmup_steps=first.resolved_warmup_steps,
                random_warmup=first.recipe.random_warmup, exploration_noise=exploration_noise(first, prepared[0].algorithm),
                discount=algo_config.discount, returns_in_buffer=algorithm_spec(prepared[0].algorithm.name).uses_mc_returns,
            )
        else:  # the offline control runs alone (population_key): one sampler of its parent's data
            source = _StackedOfOne(prepared[0].offline) if learner.stacked_batches else prepared[0].offline
            stage = OfflineStage(source, algo_config.batch_size, updates_per_step=first.resolved_utd)
        schedule = [(stage, first.online_steps)]
        for member, p in enumerate(prepared):
            if p.state is not None:
                load_stage_states(schedule, member, [p.state["sampler"], *p.state.get("stages", [])])
        if prepared[0].state is not None:
            restore_rng(prepared[0].state, device)  # saved together: every member's copy is the same
        for p in prepared:
            p.book.write_config(algo=p.book.config.algo, variant=p.book.config.variant, parent=p.parent_info, online=_online_info(p), **run_extra)
            p.book.open_log()
        if prepared[0].state is None:  # a fresh start (a resumed run keeps its measurement in metrics.jsonl)
            measure_switch(learner, [p.book for p in prepared], first.switch_episodes)
        desc = first.run_id if len(configs) == 1 else f"ft-{first.method} x{len(configs)} {prepared[0].book.config.dataset}"
        return fit(learner, [p.book for p in prepared], schedule, desc=desc, progress=first.progress)
    except Exception as exc:
        for index, (config, run_dir) in enumerate(zip(configs, run_dirs)):
            if index >= len(prepared) or not prepared[index].book.done:
                record_failure(run_dir, config, exc, started)
        raise
    finally:
        for p in prepared:
            p.book.close()


def exploration_noise(config: FinetuneConfig, algorithm: Any) -> float:
    """Gaussian action noise on top of the policy: the config's, else 0.1 for a deterministic actor (TD3), else 0."""
    from ..core.networks import DeterministicPolicy

    if config.exploration_noise is not None:
        return float(config.exploration_noise)
    return 0.1 if isinstance(getattr(algorithm, "actor", None), DeterministicPolicy) else 0.0


def _online_learner(algorithms: list, configs: Sequence[FinetuneConfig], device: torch.device):
    """(learner, extra config.json fields): the agent updated eagerly, or, for several runs or
    where ``compiled_step_wanted`` says the compiled step pays (counted in
    ``FinetuneConfig.gradient_steps``), a population (of one) of them."""
    from ..engine.learners import AgentLearner, PopulationLearner
    from ..engine.population import compiled_step_wanted, population_class

    first = configs[0]
    compiled = compiled_step_wanted(first.algo, first.compile, device, first.gradient_steps)
    if len(algorithms) == 1 and not compiled:
        return AgentLearner(algorithms[0]), {"update_step": "eager"}
    population = population_class(first.algo)(algorithms, compile=compiled)
    extra: dict[str, Any] = {"update_step": "compiled" if compiled else "vmapped"}
    if len(algorithms) > 1:
        extra["population"] = {"size": len(configs), "members": [config.run_id for config in configs], "compile": population.compile_mode}
    return PopulationLearner(population), extra


def measure_switch(learner: Any, books: Sequence[RunBook], episodes: int) -> None:
    """Evaluate every member's starting policy over ``episodes`` episodes and log it at step 0
    as the switch measurement (an "eval" record with ``"switch": true``).

    The episodes start from the run's evaluation seeds (``eval_seed + i``), so the first
    ``eval_episodes`` of them are the episodes every later evaluation plays: a paired design.
    Deterministic actions draw no random numbers, so the training that follows is unchanged.
    """
    from ..data.loader import make_env

    views = [_EvaluationEnvs([make_env(book.dataset) for _ in range(episodes)], book.obs_mean, book.obs_std, book.eval_seed) for book in books]
    try:
        returns = learner.evaluate(range(len(books)), views)
    finally:
        for view in views:
            for env in view.envs:
                env.close()
    for book, member_returns in zip(books, returns):
        book.log({**book.eval_record(member_returns), "switch": True, "episodes": len(member_returns)})


class _StackedOfOne:
    """One run's ``TransitionSampler`` as the ``(1, B, ...)`` batch source of a compiled
    population of one (what the online stage's stacked samplers give it)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        return {key: value[None] for key, value in self.sampler.sample(batch_size).items()}

    def member_state_dict(self, member: int) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_member_state_dict(self, member: int, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


@dataclass
class _EvaluationEnvs:
    """What ``Learner.evaluate`` reads of a run's book: its envs, normalisation and seeds."""

    envs: list
    obs_mean: Any
    obs_std: Any
    eval_seed: int


def _online_info(p: _Prepared) -> dict[str, Any]:
    config = p.book.config
    if not config.recipe.interacts:
        return {"utd": config.resolved_utd, "sampling": config.resolved_sampling, "interacts": False, "warmup_steps": 0, "random_warmup": False,
                "method_source": config.recipe.source, "step_unit": f"schedule steps of {config.resolved_utd} offline gradient step(s), as an online run's environment steps"}
    return {"utd": config.resolved_utd, "sampling": config.resolved_sampling, "online_fraction": config.online_fraction,
            "warmup_steps": config.resolved_warmup_steps, "random_warmup": config.recipe.random_warmup,
            "exploration_noise": exploration_noise(config, p.algorithm), "buffer_size": p.member.buffer.capacity, "episode_limit": EPISODE_LIMIT,
            "method_source": config.recipe.source, "step_unit": "online environment steps"}


def _prepare(config: FinetuneConfig, run_dir: Path, resume: bool, started: float, on_progress: ProgressCallback | None,
             device: torch.device) -> _Prepared:
    """Data, agent, book and online member of one run, restored from its checkpoint if there is one."""
    from ..data.dataset import TransitionSampler
    from ..data.loader import make_env
    from ..data.replay import DeviceReplayBuffer, MixedSampler
    from ..engine.online import OnlineMember

    parent_info: dict[str, Any] = {"run_id": None}
    if config.parent == SCRATCH:
        original, dataset, records = config.data.prepare(config.seed, config.cache_dir, config.mirror)  # as a Phase I run with this seed
        torch.manual_seed(config.seed)
        algorithm = scratch_algorithm(config, dataset.obs_dim, dataset.act_dim, device)
    else:
        parent = load_parent(config.parent, config.method)
        parent_config = dataclasses.replace(parent.config, cache_dir=config.cache_dir, mirror=config.mirror)
        original, dataset, records = prepare_dataset(parent_config)
        if original.checksum() != parent.dataset_checksum:
            raise HybridRLError(f"the data of {parent.config.dataset} changed since {parent.run_dir.name} was trained on it (checksum differs); "
                                "restore the original dataset file, or retrain the parent")
        algorithm = build_algorithm(parent_config, dataset, device)
        checkpoint = torch.load(parent.run_dir / CHECKPOINT_FILE, map_location=device, weights_only=False)
        if not _finite(checkpoint["algorithm"]):
            raise HybridRLError(f"{parent.run_dir.name} diverged and its last checkpoint holds non-finite weights: there is no finite agent to fine-tune")
        algorithm.load_state_dict(checkpoint["algorithm"])
        algorithm.start_online()  # the algorithm's own switch (IQL: a constant actor LR from here)
        recorded = run_dir / CONFIG_FILE
        if resume and recorded.exists() and (run_dir / CHECKPOINT_FILE).exists():
            before = json.loads(recorded.read_text()).get("parent", {}).get("checkpoint_sha256")
            if before not in (None, parent.checkpoint_sha256):
                raise HybridRLError(f"the checkpoint of {parent.run_dir.name} changed since this fine-tuning run started from it; "
                                    "delete this run directory to start again from the new one")
        parent_info = {
            "run_id": parent.run_dir.name, "run_dir": str(parent.run_dir.resolve()), "checkpoint_sha256": parent.checkpoint_sha256,
            "status": parent.summary.get("status"), "steps_done": parent.summary.get("steps_done"),
            "switch_score": parent.summary.get("final_normalized_return"), "last_score": parent.summary.get("last_normalized_return"),
        }
        torch.manual_seed(config.seed)  # the online random stream (CQL's sampled actions)
    book = RunBook(config, run_dir, device, original, dataset, records, algorithm.config, started, on_progress)
    state = book.resume_state(resume)
    if state is not None:
        algorithm.load_state_dict(state["algorithm"])

    preprocessing = book.preprocessing
    offline = None
    if config.resolved_sampling != "online_only":
        offline = TransitionSampler(dataset, device, obs_mean=preprocessing.obs_mean, obs_std=preprocessing.obs_std,
                                    reward_scale=preprocessing.reward_scale, seed=config.seed, extra=mc_extra(book))
    if not config.recipe.interacts:
        return _Prepared(book, algorithm, state, None, offline, parent_info)
    uses_mc = algorithm_spec(algorithm.name).uses_mc_returns
    buffer = DeviceReplayBuffer(dataset.obs_dim, dataset.act_dim, config.buffer_size or config.online_steps, device, seed=config.seed + 1,
                                extra_fields=("mc_returns",) if uses_mc else ())
    member = OnlineMember(make_env(dataset, max_episode_steps=EPISODE_LIMIT), buffer,
                          MixedSampler(offline, buffer, config.resolved_sampling, config.online_fraction, seed=config.seed + 2),
                          preprocessing, lambda episode_return: normalized_score(book.env_name, episode_return), seed=config.seed)
    return _Prepared(book, algorithm, state, member, offline, parent_info)
