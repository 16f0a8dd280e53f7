"""Units of work: how the runs of a grid are grouped, and how one unit is trained safely.

A unit is one run (a Phase I run, or a fine-tuning run of Phase II), or a population of
runs that differ only in seed and corruption (Phase I: ``train.population_key``; Phase II
fine-tuning runs: ``finetune.population_key``). The local launcher (``grid``: worker processes) and the Ray
launcher (``ray_launcher``: one task per unit) both plan units here and train each with
``train_unit_safely``, which never raises: a failure becomes a result. What differs
between the launchers is passed in, not set as module state: how long to wait for a run's
lock, and where step progress goes.
"""
from __future__ import annotations

import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from ..core.errors import HybridRLError
from ..core.grid_options import DEFAULT_MAX_POPULATION, POPULATION_MODES
from ..core.run_format import STATE_COMPLETE, read_summary
from ..core.run_format import run_state as run_dir_state
from .configs import FinetuneConfig, TrainConfig
from .finetune import finetune, finetune_population
from .finetune import population_key as finetune_population_key
from .book import ProgressCallback
from .train import population_key, train, train_population

RunConfig = TrainConfig | FinetuneConfig  # a Phase I run, or a run with an online stage


class RunKind(NamedTuple):
    """How one kind of run trains alone and as a population, and what groups it into one."""

    single: Callable[..., dict[str, Any]]
    population: Callable[..., dict[str, dict[str, Any]]]
    population_key: Callable[[Any], str | None]


RUN_KINDS: dict[type, RunKind] = {
    TrainConfig: RunKind(train, train_population, population_key),
    FinetuneConfig: RunKind(finetune, finetune_population, finetune_population_key),
}


def run_kind(config: RunConfig) -> RunKind:
    if type(config) not in RUN_KINDS:
        raise TypeError(f"a work unit holds TrainConfig or FinetuneConfig runs, got {type(config).__name__}")
    return RUN_KINDS[type(config)]


def run_state(config: RunConfig) -> str:
    """'complete' (summary with a final status), 'partial' (checkpoint) or 'new'."""
    return run_dir_state(Path(config.results_dir) / config.run_id)


def plan_units(configs: Sequence[RunConfig], population: str, device_type: str, max_size: int = DEFAULT_MAX_POPULATION) -> list[list[RunConfig]]:
    """Group runs into work units: populations of runs that differ only in seed and
    corruption (each kind's ``population_key``), at most ``max_size`` each, and single runs.

    ``population``: "off" never groups; "on" groups wherever possible; "auto" groups on
    accelerators only: on a GPU a population turns P small kernels into one wide one, while
    on a CPU the grid already keeps every core busy with one run per core (populations on
    CPUs are measured in docs/performance.md).
    """
    if population not in POPULATION_MODES:
        raise HybridRLError(f"unknown population mode {population!r}; use one of {', '.join(POPULATION_MODES)}")
    if max_size < 1:
        raise HybridRLError(f"the largest population must be at least 1, got {max_size}")
    if population == "off" or (population == "auto" and device_type == "cpu"):
        return [[config] for config in configs]
    groups: dict[str, list[RunConfig]] = {}
    units: list[list[RunConfig]] = []
    for config in configs:
        key = run_kind(config).population_key(config)
        if key is None:
            units.append([config])
        else:
            groups.setdefault(key, []).append(config)
    for members in groups.values():
        units.extend(members[i:i + max_size] for i in range(0, len(members), max_size))
    return units


def train_unit_safely(unit: Sequence[RunConfig], threads: int, *, lock_wait_s: float = 0.0,
                      on_progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Run one work unit (a run, or a population of runs) in a worker process or a Ray task;
    never raises: a failure is returned for every run of the unit that did not finish
    (members that finished before it keep their result)."""
    import torch

    torch.set_num_threads(threads)
    configs = [replace(config, threads=threads, progress=False) for config in unit]
    try:
        summaries = _train_unit(configs, dict(lock_wait_s=lock_wait_s, on_progress=on_progress))
        return [{"run_id": run_id, "ok": True, "summary": summary} for run_id, summary in summaries.items()]
    except BaseException as exc:  # noqa: BLE001 - a run's failure must not stop the grid
        error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
        return [{**unit_result(config, error), "traceback": trace} for config in configs]


def _train_unit(configs: Sequence[RunConfig], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Train a unit; a population that does not fit in GPU memory is split in halves (each
    resumes from the checkpoints the larger one left), down to single runs."""
    import torch

    kind = run_kind(configs[0])
    if len(configs) == 1:
        return {configs[0].run_id: kind.single(configs[0], **options)}
    try:
        return kind.population(list(configs), **options)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        half = len(configs) // 2
        print(f"population of {len(configs)} ran out of GPU memory: continuing as two of {half} and {len(configs) - half}", file=sys.stderr)
        return {**_train_unit(configs[:half], options), **_train_unit(configs[half:], options)}


def unit_result(config: RunConfig, error: str) -> dict[str, Any]:
    """A run's result after its unit failed: its summary if it finished before, else the error."""
    if run_state(config) == STATE_COMPLETE:
        return {"run_id": config.run_id, "ok": True, "summary": read_summary(Path(config.results_dir) / config.run_id)}
    return {"run_id": config.run_id, "ok": False, "error": error}
