"""The Phase I experiment grid: algo x algorithm settings x dataset x corruption level x seed.

Expansion, a pre-flight check (every dataset loadable before any work starts), resumable
scheduling on local worker processes, and the report at the end. A run is the unit of
work: completed runs (summary.json) are skipped, interrupted ones resume from their
checkpoint, so killing the grid at any moment and starting it again loses and duplicates
nothing. One failing run never stops the others; failures are listed at the end.
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import tempfile
import threading
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .algos.registry import algorithm_spec
from .errors import HybridRLError
from .fileio import LockHeld, atomic_write_text, held_exclusively
from .grid_options import D4RL_DEFAULT_ENVS, DEFAULT_MAX_POPULATION, DEFAULT_TOTAL_STEPS, run_schedule
from .run_format import GRID_LOCK_FILE, GRID_STATUS_FILE, STATE_COMPLETE, STATE_NEW, STATE_PARTIAL, checkpoint_step
from .train import TrainConfig, algorithm_overrides, check_compatible, record_failure
from .units import plan_units, run_state, train_unit_safely, unit_result


SettingAxes = tuple[tuple[str, tuple[str, ...]], ...]  # --set NAME=V1,V2 ...: (name, value texts) per axis


def check_setting_axes(algorithms: Sequence[str], axes: SettingAxes) -> None:
    """One-line HybridRLError for a --set axis no algorithm of ``algorithms`` has, a value that
    is not of its field's type or outside its domain, or a setting given twice."""
    from .algos.registry import parse_setting, setting_fields

    names = [name for name, _ in axes]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise HybridRLError(f"--set {twice[0]} is given twice; list all its values in one --set {twice[0]}=V1,V2")
    for name, texts in axes:
        owners = [algo for algo in algorithms if name in setting_fields(algo)]
        if not owners:
            valid = "; ".join(f"{algo}: {', '.join(setting_fields(algo))}" for algo in algorithms)
            raise HybridRLError(f"--set {name}: no algorithm here ({', '.join(algorithms)}) has that setting; valid settings are {valid}")
        for algo in owners:
            for text in texts:
                try:
                    parse_setting(algo, name, text)
                except ValueError as exc:
                    raise HybridRLError(f"--set {exc}") from None


def setting_combinations(algo: str, axes: SettingAxes) -> list[dict[str, Any]]:
    """Every combination of the axes that ``algo`` has (``[{}]`` when it has none): the
    cartesian product, values typed as its config holds them, in the order given."""
    from .algos.registry import parse_setting, setting_fields

    own = [(name, [parse_setting(algo, name, text) for text in texts]) for name, texts in axes if name in setting_fields(algo)]
    return [dict(zip([name for name, _ in own], values)) for values in itertools.product(*[values for _, values in own])]


@dataclass(frozen=True)
class GridSpec:
    algos: tuple[str, ...] = ("cql", "iql")
    datasets: tuple[str, ...] = D4RL_DEFAULT_ENVS
    remove_top_k: tuple[float, ...] = (0.0, 30.0, 60.0)
    reward_noise_std: tuple[float, ...] = (0.0,)
    corruptions: tuple[tuple[dict, ...], ...] = ((),)  # further corruption levels (--corruption): each a list of specs, () = none
    seeds: tuple[int, ...] = (0, 1, 2)
    total_steps: int = DEFAULT_TOTAL_STEPS
    eval_every: int | None = None  # None: grid_options.run_schedule's defaults, as hybrid-rl train
    eval_episodes: int = 10
    log_every: int | None = None
    checkpoint_every: int | None = None
    device: str = "auto"
    compile: str = "auto"  # update path of every run (TrainConfig.compile)
    results_dir: str = "results"
    algo_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # fixed settings per algorithm
    settings: SettingAxes = ()  # swept settings (--set): every combination an algorithm has
    wandb: str | None = None  # a Weights & Biases project every run logs to
    cache_dir: str | None = None
    mirror: str | None = None

    def expand(self) -> list[TrainConfig]:
        """Every run of the grid, in a stable order (dataset, algo, settings, noise, k, further corruption, seed)."""
        schedule = run_schedule(self.total_steps, self.eval_every, self.log_every, self.checkpoint_every)
        configs = []
        for dataset in self.datasets:
            for algo in self.algos:
                for settings in setting_combinations(algo, self.settings):
                    for noise in self.reward_noise_std:
                        for k, extra, seed in itertools.product(self.remove_top_k, self.corruptions, self.seeds):
                                configs.append(
                                    TrainConfig(
                                        algo=algo, dataset=dataset, remove_top_k=float(k), reward_noise_std=float(noise), extra_corruptions=tuple(extra),
                                        seed=int(seed),
                                        total_steps=self.total_steps, eval_episodes=self.eval_episodes, **schedule, device=self.device,
                                        compile=self.compile, results_dir=self.results_dir,
                                        algo_overrides={**self.algo_overrides.get(algo, {}), **settings}, wandb=self.wandb, cache_dir=self.cache_dir,
                                        mirror=self.mirror,
                                    )
                                )
        return configs


def estimate_seconds(configs: Sequence[TrainConfig], workers: int, device_type: str, threads: int = 1) -> float | None:
    """Rough wall-time estimate on CPU from the algorithms' declared CPU rates (None on accelerators).

    Those rates keep both cores of a 2-core machine busy, so splitting the same cores among
    workers adds nothing; only cores beyond two (``workers x threads`` of them in use) do.
    """
    if device_type != "cpu":
        return None
    total = 0.0
    for config in configs:
        rate = algorithm_spec(config.algo).cpu_updates_per_second or 100.0
        evals = config.total_steps // config.eval_every
        total += config.total_steps / rate + evals * 1.5  # ~1.5 s per 10-episode evaluation
    cores_in_use = min(os.cpu_count() or 1, max(1, workers) * max(1, threads))
    return total / max(1.0, cores_in_use / 2)


def _name_list(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h'."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_datasets(datasets: Sequence[str], cache_dir: str | None, mirror: str | None, log: Callable[[str], None]) -> dict[str, dict]:
    """Load every dataset once before any run starts (downloads or generates on first use)
    and build its evaluation env once (which checks their sizes agree).

    Raises the loader's one-line error if a dataset is unavailable or its env does not
    fit, so a grid never starts half its work and then fails. Returns each dataset's summary.
    """
    from .data.loader import load_dataset, make_env

    summaries = {}
    for name in datasets:
        log(f"checking dataset {name} ...")
        dataset = load_dataset(name, cache_dir=cache_dir, mirror=mirror)
        make_env(dataset).close()
        summaries[name] = dataset.summary()
        score = summaries[name].get("normalized_return_mean")
        log(f"  {name}: {len(dataset):,} transitions, {dataset.num_trajectories} trajectories" + (f", behaviour score {score:.1f}" if score is not None else ""))
    return summaries


def check_writable_dir(directory: str, flag: str = "--results") -> None:
    """Raise a one-line error unless `directory` exists and is writable or can be created.

    Creates nothing: the probe file goes into the deepest existing folder on the way and is
    removed at once, so bad input found later leaves no empty folder behind.
    """
    path = Path(directory).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write_probe_"):
            pass
    except OSError as exc:
        raise HybridRLError(f"cannot write to {flag} {path} ({exc.strerror} at {existing}); choose another with {flag} DIR") from None


def preflight(configs: Sequence[TrainConfig], log: Callable[[str], None], *, run_dirs: bool = True) -> dict[str, dict]:
    """Every check that can fail on bad input, before anything is written, cheapest first:
    results directories, dataset names, algorithm settings, (with `run_dirs`) clashes with
    existing run directories of another configuration, and only then the datasets and
    their envs (which may download or generate data). Returns each dataset's summary."""
    from .data.loader import check_dataset_name

    for results_dir in sorted({config.results_dir for config in configs}):
        check_writable_dir(results_dir)
    groups = _group_datasets(configs)
    for names in groups.values():
        for name in names:
            check_dataset_name(name)
    for config in configs:
        algorithm_overrides(config)
        if run_dirs:
            check_compatible(Path(config.results_dir) / config.run_id, config)
    summaries: dict[str, dict] = {}
    for (cache_dir, mirror), names in groups.items():
        summaries.update(check_datasets(names, cache_dir, mirror, log))
    return summaries


def _group_datasets(configs: Sequence[TrainConfig]) -> dict[tuple[str | None, str | None], list[str]]:
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    for config in configs:
        names = groups.setdefault((config.cache_dir, config.mirror), [])
        if config.dataset not in names:
            names.append(config.dataset)
    return groups


def threads_per_run(workers: int) -> int:
    """Torch threads per run: $OMP_NUM_THREADS when set, else the cores shared among workers."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // max(1, workers))




def run_grid(
    spec: GridSpec, *, workers: int = 1, log: Callable[[str], None] = print, progress: bool = True,
    launcher: str = "local", ray_address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
    population: str = "auto", max_population: int = DEFAULT_MAX_POPULATION,
) -> dict[str, Any]:
    """Run every incomplete run of the grid; returns {run_id: result} and writes grid_status.json.

    The runs are grouped into work units (single runs or populations, see ``plan_units``).
    launcher "local": `workers` processes on this machine, each taking units; "ray": one Ray
    task per unit on the cluster at `ray_address` (None: a local Ray instance), see
    ray_launcher and docs/cluster.md.
    """
    from .train import resolve_device

    if launcher == "ray":
        from .ray_launcher import require_ray

        require_ray()  # the one-line install hint, before any work
    elif launcher != "local":
        raise HybridRLError(f"unknown launcher {launcher!r}; use local or ray")
    # On Ray each run resolves its device on its own node (the driver may have no GPU).
    device = resolve_device(spec.device) if launcher == "local" else None
    configs = spec.expand()
    preflight(configs, log)
    Path(spec.results_dir).mkdir(parents=True, exist_ok=True)
    # One grid per results directory from here on (run states, training, grid_status.json).
    with grid_lock(spec.results_dir):
        states = {config.run_id: run_state(config) for config in configs}
        todo = [config for config in configs if states[config.run_id] != STATE_COMPLETE]
        counts = {state: sum(1 for s in states.values() if s == state) for state in (STATE_COMPLETE, STATE_PARTIAL, STATE_NEW)}
        log(
            f"grid: {len(configs)} runs = {len(spec.algos)} algos x {len(spec.datasets)} datasets x "
            f"{len(spec.remove_top_k)} top-k levels x {len(spec.reward_noise_std)} noise levels x {len(spec.seeds)} seeds, "
            f"{spec.total_steps:,} steps each"
        )
        log(f"      {counts[STATE_COMPLETE]} complete (skipped), {counts[STATE_PARTIAL]} interrupted (resume), {counts[STATE_NEW]} new; "
            + (f"device {device}, {workers} worker(s)" if device is not None else f"Ray, {cpus_per_run:g} CPU(s) and {gpus_per_run:g} GPU per run"))
        for state, label in ((STATE_COMPLETE, "complete, skipped"), (STATE_PARTIAL, "interrupted, resume")):
            names = [run_id for run_id, s in states.items() if s == state]
            if names:
                log(f"      {label}: {_name_list(names)}")
        estimate = estimate_seconds(todo, workers, device.type, threads_per_run(workers)) if device is not None else None
        if estimate is not None and todo:
            log(f"      rough estimate: {format_duration(estimate)} of training on this CPU if it is otherwise idle "
                "(datasets not yet generated come on top; the progress bar's ETA is measured)")
        # On Ray, 'auto' groups runs when each task holds a GPU share (the nodes decide the rest).
        unit_device = device.type if device is not None else ("cuda" if gpus_per_run > 0 else "cpu")
        units = plan_units(todo, population, unit_device, max_population)
        grouped = [unit for unit in units if len(unit) > 1]
        if grouped:
            where = "one process each" if launcher == "local" else "one Ray task each"
            log(f"      {sum(len(u) for u in grouped)} runs in {len(grouped)} population(s) of up to {max(len(u) for u in grouped)} (vmapped, {where})"
                + (f", compile {spec.compile}" if spec.compile != "auto" else ""))
        started = time.time()
        threads = threads_per_run(workers)
        if launcher == "ray":  # reports each run itself, as it finishes
            from .ray_launcher import run_units_on_ray

            results = run_units_on_ray(units, address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, log=log)
        else:
            results = run_units_locally(configs, states, units, workers, threads, log, progress)
        failed = {run_id: r["error"] for run_id, r in results.items() if not r["ok"]}
        status = {
            "runs": len(configs),
            "skipped_complete": counts[STATE_COMPLETE],
            "ran": len(todo),
            "failed": failed,
            "wall_time_s": time.time() - started,
        }
        atomic_write_text(Path(spec.results_dir) / GRID_STATUS_FILE, json.dumps(status, indent=2))
        if failed:
            log(f"{len(failed)} run(s) failed (details in {spec.results_dir}/<run>/summary.json):")
            for run_id, error in failed.items():
                log(f"  {run_id}: {error}")
        return status


def run_units_locally(configs: Sequence[Any], states: dict[str, str], units: Sequence[Sequence[Any]], workers: int, threads: int,
                      log: Callable[[str], None], progress: bool) -> dict[str, Any]:
    """Train the units here (``workers`` processes, or this one), with the step progress bar
    over ``configs`` and one line per finished run; returns ``{run_id: result}``."""
    results: dict[str, Any] = {}
    with StepProgress(configs, states, enabled=progress) as bar:
        say = bar.write if progress and log is print else log  # printed lines must not break the bar

        def finished(unit_results: list[dict[str, Any]]) -> None:
            for result in unit_results:
                results[result["run_id"]] = result
                bar.run_finished(result["run_id"])
                _report(result, say)

        if workers <= 1:
            for unit in units:
                finished(train_unit_safely(unit, threads, on_progress=bar.step))
        else:
            run_on_local_workers(units, workers, threads, finished, bar, log)
    return results


def _report(result: dict[str, Any], log: Callable[[str], None]) -> None:
    """One line per finished run."""
    if result["ok"]:
        summary = result["summary"]
        log(f"done {result['run_id']}: {summary['status']}, final normalized return {summary.get('final_normalized_return', float('nan')):.1f}")
    else:
        log(f"FAILED {result['run_id']}: {result['error']}")
        if os.environ.get("HYBRID_RL_DEBUG"):
            print(result.get("traceback", ""), file=sys.stderr)


# ---------------------------------------------------------------------------------------
# Local worker processes
# ---------------------------------------------------------------------------------------
# Fresh pools after a worker process dies (out of memory, a segfault): the units it left
# unfinished restart and resume from their checkpoints, at most this many times each.
WORKER_RESTARTS = 2


def run_on_local_workers(units: Sequence[Sequence[TrainConfig]], workers: int, threads: int,
                         finished: Callable[[list[dict[str, Any]]], None], bar: "StepProgress", log: Callable[[str], None]) -> None:
    """Train the units on `workers` spawned processes; each unit's results go to `finished`.

    A worker process that dies breaks Python's process pool and with it every unit not yet
    finished, including ones that never started. Those units run again in a fresh pool
    (resuming from their checkpoints); a unit that has broken the pool more than
    WORKER_RESTARTS times is recorded as failed, with a summary saying so.
    """
    # spawn: a fresh interpreter per worker (forking a process that holds torch threads and
    # MuJoCo state is unsafe).
    context = multiprocessing.get_context("spawn")
    steps = context.Queue()
    listener = threading.Thread(target=_relay_steps, args=(steps, bar), daemon=True)
    listener.start()
    restarts = {index: 0 for index in range(len(units))}
    remaining = list(restarts)
    try:
        while remaining:
            broken: list[int] = []
            reason = ""
            with futures.ProcessPoolExecutor(max_workers=min(workers, len(remaining)), mp_context=context,
                                             initializer=_init_worker, initargs=(os.getpid(), steps)) as pool:
                pending = {pool.submit(_train_unit_in_worker, units[index], threads): index for index in remaining}
                for future in futures.as_completed(pending):
                    try:
                        finished(future.result())
                    except futures.process.BrokenProcessPool as exc:
                        broken.append(pending[future])
                        reason = f"{type(exc).__name__}: {exc}"
            remaining = []
            for index in broken:
                restarts[index] += 1
                if restarts[index] > WORKER_RESTARTS:
                    error = f"worker process died {restarts[index]} times while training this unit ({reason})"
                    for config in units[index]:
                        if run_state(config) != STATE_COMPLETE:
                            record_failure(Path(config.results_dir) / config.run_id, config, error)
                    finished([unit_result(config, error) for config in units[index]])
                else:
                    remaining.append(index)
            if remaining:
                log(f"a worker process died ({reason}); {sum(len(units[i]) for i in remaining)} unfinished run(s) start again "
                    "in fresh workers and resume from their checkpoints")
    finally:
        steps.put(None)
        listener.join(timeout=5)


# In a worker process: the queue its runs' step progress goes to (set by _init_worker;
# a multiprocessing queue reaches a worker only through the pool's initializer).
_worker_steps = None


def _init_worker(parent_pid: int, steps) -> None:
    """Worker process set-up: die with the grid, and keep the queue for step progress."""
    global _worker_steps
    _die_with_parent(parent_pid)
    _worker_steps = steps


def _train_unit_in_worker(unit: Sequence[TrainConfig], threads: int) -> list[dict[str, Any]]:
    """``train_unit_safely`` in a worker process, its progress sent to the grid's bar."""
    steps = _worker_steps
    return train_unit_safely(unit, threads, on_progress=None if steps is None else lambda run_id, step: steps.put((run_id, step)))


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the grid process dies, SIGKILL included: a worker left running would go on
    writing runs that a rerun of the grid trains again. Linux: the kernel's parent-death
    signal; elsewhere a thread that watches the parent."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _relay_steps(steps, bar: "StepProgress") -> None:
    while True:
        item = steps.get()
        if item is None:
            return
        bar.step(*item)


@contextlib.contextmanager
def grid_lock(results_dir: str) -> Iterator[None]:
    """Only one grid at a time per results directory: two would train the same unfinished
    runs. Released when the grid's process exits, however it exits."""
    def busy(exc: LockHeld) -> Exception:
        return HybridRLError(f"another grid is running on {results_dir} ({exc}); wait for it, or use another --results DIR")

    with held_exclusively(Path(results_dir) / GRID_LOCK_FILE, busy, role="grid"):
        yield


class StepProgress:
    """The grid's progress bar in gradient steps over all runs (so its rate and ETA are
    measured, not guessed); the postfix counts finished runs."""

    def __init__(self, configs: Sequence[TrainConfig], states: dict[str, str], enabled: bool) -> None:
        from .progress import progress_bar

        self.total_steps = {config.run_id: config.total_steps for config in configs}
        self.done = {config.run_id: self._steps_done(config, states[config.run_id]) for config in configs}
        self.runs_done = sum(state == STATE_COMPLETE for state in states.values())
        self.lock = threading.Lock()
        self.bar = progress_bar(total=sum(self.total_steps.values()), initial=sum(self.done.values()), desc="grid", unit="step",
                        unit_scale=True, disable=not enabled, smoothing=0.05)
        self._postfix()

    @staticmethod
    def _steps_done(config: TrainConfig, state: str) -> int:
        if state == STATE_COMPLETE:
            return config.total_steps
        if state == STATE_PARTIAL:  # it resumes from its checkpoint
            return checkpoint_step(Path(config.results_dir) / config.run_id) or 0
        return 0

    def step(self, run_id: str, step: int) -> None:
        with self.lock:
            if run_id in self.done and step > self.done[run_id]:
                self.bar.update(step - self.done[run_id])
                self.done[run_id] = step

    def run_finished(self, run_id: str) -> None:
        self.step(run_id, self.total_steps.get(run_id, 0))  # a diverged run ends early
        with self.lock:
            self.runs_done += 1
            self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"runs {self.runs_done}/{len(self.total_steps)}")

    def write(self, line: str) -> None:
        self.bar.write(line)

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.bar.close()
