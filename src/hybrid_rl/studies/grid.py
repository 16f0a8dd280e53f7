"""The Phase I experiment grid: algo x algorithm settings x dataset x corruption level x seed.

Expansion and a pre-flight check (every dataset loadable before any work starts); the
training itself is the study launcher's (``launcher.launch``: local workers or Ray). A run
is the unit of work: completed runs (summary.json) are skipped, interrupted ones resume from
their checkpoint, so killing the grid at any moment and starting it again loses and
duplicates nothing. One failing run never stops the others; failures are listed at the end.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..algos.registry import algorithm_spec
from ..core.errors import HybridRLError
from ..core.grid_options import (D4RL_DEFAULT_ENVS, DEFAULT_MAX_POPULATION, DEFAULT_SEEDS, DEFAULT_TOTAL_STEPS, GRID_DEFAULT_ALGOS,
                                 GRID_DEFAULT_REMOVE_TOP_K, run_schedule)
from .launcher import check_launcher, launch, threads_per_run
from ..core.run_format import STATE_COMPLETE, STATE_NEW, STATE_PARTIAL
from ..runs.book import check_compatible
from ..runs.configs import TrainConfig
from ..runs.train import algorithm_overrides


SettingAxes = tuple[tuple[str, tuple[str, ...]], ...]  # --set NAME=V1,V2 ...: (name, value texts) per axis


def check_setting_axes(algorithms: Sequence[str], axes: SettingAxes) -> None:
    """One-line HybridRLError for a --set axis no algorithm of ``algorithms`` has, a value that
    is not of its field's type or outside its domain, or a setting given twice."""
    from ..algos.registry import parse_setting, setting_fields

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
    from ..algos.registry import parse_setting, setting_fields

    own = [(name, [parse_setting(algo, name, text) for text in texts]) for name, texts in axes if name in setting_fields(algo)]
    return [dict(zip([name for name, _ in own], values)) for values in itertools.product(*[values for _, values in own])]


@dataclass(frozen=True)
class GridSpec:
    algos: tuple[str, ...] = GRID_DEFAULT_ALGOS
    datasets: tuple[str, ...] = D4RL_DEFAULT_ENVS
    remove_top_k: tuple[float, ...] = GRID_DEFAULT_REMOVE_TOP_K
    reward_noise_std: tuple[float, ...] = (0.0,)
    corruptions: tuple[tuple[dict, ...], ...] = ((),)  # further corruption levels (--corruption): each a list of specs, () = none
    seeds: tuple[int, ...] = DEFAULT_SEEDS
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
    from ..data.loader import load_dataset, make_env

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
    from ..data.loader import check_dataset_name

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


def run_grid(
    spec: GridSpec, *, workers: int = 1, log: Callable[[str], None] = print, progress: bool = True,
    launcher: str = "local", ray_address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
    population: str = "auto", max_population: int = DEFAULT_MAX_POPULATION,
) -> dict[str, Any]:
    """Run every incomplete run of the grid; returns the status and writes grid_status.json.

    The runs are grouped into work units (single runs or populations, see ``plan_units``).
    launcher "local": `workers` processes on this machine, each taking units; "ray": one Ray
    task per unit on the cluster at `ray_address` (None: a local Ray instance), see
    ray_launcher and docs/cluster.md. Everything after planning is ``launcher.launch``.
    """
    from ..runs.book import resolve_device

    check_launcher(launcher)
    # On Ray each run resolves its device on its own node (the driver may have no GPU).
    device = resolve_device(spec.device) if launcher == "local" else None
    configs = spec.expand()
    preflight(configs, log)

    def announce(states: dict[str, str], todo: list[TrainConfig]) -> None:
        counts = {state: sum(1 for s in states.values() if s == state) for state in (STATE_COMPLETE, STATE_PARTIAL, STATE_NEW)}
        extra = f" x {len(spec.corruptions)} further corruption levels" if spec.corruptions != ((),) else ""
        log(
            f"grid: {len(configs)} runs = {len(spec.algos)} algos x {len(spec.datasets)} datasets x "
            f"{len(spec.remove_top_k)} top-k levels x {len(spec.reward_noise_std)} noise levels{extra} x {len(spec.seeds)} seeds, "
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
    return launch(configs, spec.results_dir, announce=announce,
                  describe_population="vmapped" + (f", compile {spec.compile}" if spec.compile != "auto" else ""),
                  workers=workers, launcher=launcher, ray_address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                  population=population, max_population=max_population, device_type=unit_device, log=log, progress=progress)
