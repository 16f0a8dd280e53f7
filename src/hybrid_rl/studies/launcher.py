"""The one study launcher: plan work units, train them here or on Ray, write the status file.

The Phase I grid (``grid.run_grid``) and the Phase II study (``phase2.run_phase2``) differ in
what runs they plan and what they announce; everything after that is ``launch``: one study
per results directory at a time (a lock), each run's state (complete runs are skipped,
interrupted ones resume), the work units (single runs or populations, ``units.plan_units``),
the local worker processes or one Ray task per unit, a progress bar over all gradient steps,
one line per finished run, and ``grid_status.json``. One failing run never stops the others.
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..core.errors import HybridRLError
from ..core.fileio import LockHeld, atomic_write_text, held_exclusively
from ..core.grid_options import DEFAULT_MAX_POPULATION
from ..core.run_format import GRID_LOCK_FILE, GRID_STATUS_FILE, STATE_COMPLETE, STATE_PARTIAL, checkpoint_step
from ..runs.book import record_failure
from ..runs.units import plan_units, run_state, train_unit_safely, unit_result

LAUNCHERS = ("local", "ray")


def check_launcher(launcher: str) -> None:
    """A known launcher, and Ray importable when asked for (the one-line install hint), before any work."""
    if launcher == "ray":
        from .ray_launcher import require_ray

        require_ray()
    elif launcher not in LAUNCHERS:
        raise HybridRLError(f"unknown launcher {launcher!r}; use local or ray")


def launch(configs: Sequence[Any], results_dir: str | Path, *, announce: Callable[[dict[str, str], list[Any]], None],
           describe_population: str, workers: int = 1, launcher: str = "local", ray_address: str | None = None,
           cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, population: str = "auto", max_population: int = DEFAULT_MAX_POPULATION,
           device_type: str = "cpu", log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Train every run of ``configs`` that is not complete; write and return the status.

    ``announce(states, todo)`` says what the study is about to do (its own words) once the
    lock is held and the states are known; ``describe_population`` ends the line about
    grouped runs. ``device_type`` is where the units train (on Ray: "cuda" when each task
    holds a GPU share), which decides how ``population="auto"`` groups them.
    """
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    with grid_lock(str(results_dir)):
        states = {config.run_id: run_state(config) for config in configs}
        todo = [config for config in configs if states[config.run_id] != STATE_COMPLETE]
        announce(states, todo)
        units = plan_units(todo, population, device_type, max_population)
        grouped = [unit for unit in units if len(unit) > 1]
        if grouped:
            log(f"      {sum(len(u) for u in grouped)} runs in {len(grouped)} population(s) of up to {max(len(u) for u in grouped)} "
                f"({describe_population}, {'one process each' if launcher == 'local' else 'one Ray task each'})")
        started = time.time()
        if launcher == "ray":  # reports each run itself, as it finishes
            from .ray_launcher import run_units_on_ray

            results = run_units_on_ray(units, address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, log=log)
        else:
            results = run_units_locally(configs, states, units, workers, threads_per_run(workers), log, progress)
        failed = {run_id: r["error"] for run_id, r in results.items() if not r["ok"]}
        status = {"runs": len(configs), "skipped_complete": len(configs) - len(todo), "ran": len(todo), "failed": failed,
                  "wall_time_s": time.time() - started}
        atomic_write_text(Path(results_dir) / GRID_STATUS_FILE, json.dumps(status, indent=2))
        if failed:
            log(f"{len(failed)} run(s) failed (details in {results_dir}/<run>/summary.json):")
            for run_id, error in failed.items():
                log(f"  {run_id}: {error}")
        return status


def threads_per_run(workers: int) -> int:
    """Torch threads per run: $OMP_NUM_THREADS when set, else the cores shared among workers."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // max(1, workers))


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


def run_on_local_workers(units: Sequence[Sequence[Any]], workers: int, threads: int,
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


def _train_unit_in_worker(unit: Sequence[Any], threads: int) -> list[dict[str, Any]]:
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

    def __init__(self, configs: Sequence[Any], states: dict[str, str], enabled: bool) -> None:
        from ..core.progress import progress_bar

        self.total_steps = {config.run_id: config.total_steps for config in configs}
        self.done = {config.run_id: self._steps_done(config, states[config.run_id]) for config in configs}
        self.runs_done = sum(state == STATE_COMPLETE for state in states.values())
        self.lock = threading.Lock()
        self.bar = progress_bar(total=sum(self.total_steps.values()), initial=sum(self.done.values()), desc="grid", unit="step",
                        unit_scale=True, disable=not enabled, smoothing=0.05)
        self._postfix()

    @staticmethod
    def _steps_done(config: Any, state: str) -> int:
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
