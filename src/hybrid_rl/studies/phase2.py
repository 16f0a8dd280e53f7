"""The Phase II study: pretraining algorithm x dataset x corruption level x seed x method.

``run_phase2(spec)`` first makes sure the Phase I parents exist (the Phase I grid over the
algorithms the methods fine-tune, in ``spec.results_dir``: finished runs are reused,
interrupted ones resume, missing ones are trained), then fine-tunes every parent with
every method that starts from its algorithm, and runs the from-scratch methods on the same
(damaged) data and seeds. Fine-tuning runs go to ``spec.phase2_results``, one directory
each, with the Phase I guarantees: bad input stops everything before any work, a killed
study resumes to identical results, one grid per results directory, a failed run never
stops the others, parallel local workers or Ray tasks (``launcher="ray"``: the parents
through the Phase I grid's Ray launcher, then one task per fine-tuning run; see
docs/cluster.md), progress in environment steps. On a GPU (``population="auto"``, or
anywhere with "on") the fine-tuning runs that differ only in seed and corruption train as
populations (``finetune.finetune_population``), like the parents do in the Phase I grid.

Methods are named with optional variants, ``NAME[@OPTION...]`` where an option is a UTD
(``utd0``, ``utd4``) or a sampling mode: ``iql@utd0`` is the frozen-policy control,
``rlpd@online_only`` RLPD without offline data, ``iql@symmetric`` IQL fine-tuning with
symmetric batches; ``offline`` is the continued-offline-training control, from the parents
of the study's other pretrained methods. A method that uses no offline data (SAC from
scratch, any ``@online_only``) cannot be changed by the corruption level: it runs once per
dataset and seed (on the clean level) and is drawn in every panel.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import HybridRLError
from ..runs.configs import SCRATCH, FinetuneConfig, methods
from .grid import GridSpec, SettingAxes, check_datasets, check_setting_axes, check_writable_dir, run_grid, setting_combinations
from ..core.grid_options import (DEFAULT_DATASET, DEFAULT_MAX_POPULATION, DEFAULT_ONLINE_STEPS, DEFAULT_SEEDS, DEFAULT_SWITCH_EPISODES,
                                 DEFAULT_TOTAL_STEPS, PHASE2_DEFAULT_METHODS, PHASE2_DEFAULT_REMOVE_TOP_K, run_schedule)
from .launcher import check_launcher, launch
from ..runs.book import resolve_device


@dataclass(frozen=True)
class MethodSpec:
    """One method of the study, ``NAME[@OPTION...]``: a method and, optionally, its own UTD
    (``utdN``) or sampling mode, which take precedence over the study's."""

    name: str
    utd: int | None = None
    sampling: str | None = None

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        from ..data.replay import SAMPLING_MODES

        name, *options = text.strip().lower().split("@")
        if name not in methods():
            raise HybridRLError(f"unknown fine-tuning method {name!r} in --method {text}; choose from {sorted(methods())} "
                                "(variants: NAME@utdN, NAME@SAMPLING, e.g. iql@utd0, rlpd@online_only)")
        utd, sampling = None, None
        for option in options:
            if option.startswith("utd") and option[3:].isdigit():
                utd = int(option[3:])
            elif option in SAMPLING_MODES:
                sampling = option
            else:
                raise HybridRLError(f"unknown option {option!r} in --method {text}: use utdN (e.g. utd0, the frozen policy) or one of {', '.join(SAMPLING_MODES)}")
        return cls(name, utd, sampling)


@dataclass(frozen=True)
class Phase2Spec:
    methods: tuple[str, ...] = PHASE2_DEFAULT_METHODS
    datasets: tuple[str, ...] = (DEFAULT_DATASET,)
    remove_top_k: tuple[float, ...] = PHASE2_DEFAULT_REMOVE_TOP_K
    reward_noise_std: tuple[float, ...] = (0.0,)
    corruptions: tuple[tuple[dict, ...], ...] = ((),)  # further corruption levels (--corruption): each a list of specs, () = none
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    pretrain_steps: int = DEFAULT_TOTAL_STEPS  # Phase I steps of the parents
    online_steps: int = DEFAULT_ONLINE_STEPS
    utd: int | None = None  # None: each method's (a method's own @utdN wins)
    sampling: str | None = None  # None: each method's (a method's own @SAMPLING wins)
    warmup_steps: int | None = None  # random warm-up of the from-scratch methods; None: theirs (5,000 steps)
    eval_every: int = 5_000  # online environment steps (the parents' Phase I runs use pretrain_eval_every)
    pretrain_eval_every: int = 5_000
    eval_episodes: int = 10
    switch_episodes: int = DEFAULT_SWITCH_EPISODES
    checkpoint_every: int = 10_000
    device: str = "auto"
    population: str = "auto"  # group runs that differ only in seed and corruption: auto (on GPUs), on, off (units.plan_units)
    max_population: int = DEFAULT_MAX_POPULATION
    compile: str = "auto"  # the update path of every run (engine.population.compiled_step_wanted)
    results_dir: str = "results"  # Phase I runs (the parents)
    phase2_results: str = "results_phase2"
    algo_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per pretraining algorithm (the parents' settings)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per from-scratch method (its algorithm's settings)
    settings: SettingAxes = ()  # swept settings (--set): the parents' grid axes, and the from-scratch methods' that have the field
    wandb: str | None = None  # a Weights & Biases project every run (parents included) logs to
    cache_dir: str | None = None
    mirror: str | None = None

    def __post_init__(self) -> None:
        specs = self.method_specs()  # raises for an unknown method or option
        if self.settings:
            check_setting_axes(sorted({*self.parent_algos(), *(s.name for s in specs if not methods()[s.name].parent_algos)}), self.settings)

    def method_specs(self) -> list[MethodSpec]:
        return [MethodSpec.parse(text) for text in self.methods]

    def study_parent_algos(self, spec: MethodSpec) -> tuple[str, ...]:
        """The algorithms whose parents ``spec`` starts from in this study: its recipe's, except
        for the offline control, which continues the parents the other methods fine-tune."""
        recipe = methods()[spec.name]
        if recipe.interacts:
            return recipe.parent_algos
        others = {algo for other in self.method_specs() if methods()[other.name].interacts for algo in methods()[other.name].parent_algos}
        return tuple(sorted(others & set(recipe.parent_algos))) or ("iql",)

    def _parent_settings(self, algo: str) -> list[str]:
        """The non-default settings of ``algo``'s parents in this study (one per swept combination), as keys."""
        from ..algos.registry import non_default_settings

        return [json.dumps(non_default_settings(algo, {**self.algo_overrides.get(algo, {}), **combination}), sort_keys=True)
                for combination in setting_combinations(algo, self.settings)]

    def parent_algos(self) -> tuple[str, ...]:
        return tuple(sorted({algo for spec in self.method_specs() for algo in self.study_parent_algos(spec)}))

    def phase1_spec(self) -> GridSpec:
        """The Phase I grid whose runs are the parents."""
        return GridSpec(
            algos=self.parent_algos(), datasets=self.datasets, remove_top_k=self.remove_top_k, reward_noise_std=self.reward_noise_std,
            corruptions=self.corruptions, seeds=self.seeds, total_steps=self.pretrain_steps, eval_every=self.pretrain_eval_every,
            eval_episodes=self.eval_episodes, checkpoint_every=self.checkpoint_every, device=self.device,
            compile=self.compile, results_dir=self.results_dir, algo_overrides=dict(self.algo_overrides), settings=self.settings,
            wandb=self.wandb, cache_dir=self.cache_dir, mirror=self.mirror,
        )

    def finetune_configs(self) -> list[FinetuneConfig]:
        """Every fine-tuning run, in a stable order (dataset, method, noise, k, further corruption, seed)."""
        common = dict(online_steps=self.online_steps, eval_episodes=self.eval_episodes, switch_episodes=self.switch_episodes,
                      **run_schedule(self.online_steps, self.eval_every, None, self.checkpoint_every), device=self.device, compile=self.compile,
                      results_dir=self.phase2_results, wandb=self.wandb, cache_dir=self.cache_dir, mirror=self.mirror)
        parents = {(c.algo, c.dataset, c.remove_top_k, c.reward_noise_std, json.dumps(c.extra_corruptions), c.seed,
                    json.dumps(c.settings(), sort_keys=True)): c for c in self.phase1_spec().expand()}
        configs = []
        for dataset in self.datasets:
            for spec in self.method_specs():
                method = spec.name
                recipe = methods()[method]
                online = dict(utd=spec.utd if spec.utd is not None else self.utd, sampling=spec.sampling or (self.sampling if recipe.interacts else None))
                data_free = (online["sampling"] or recipe.sampling) == "online_only"
                for noise in self.reward_noise_std:
                    for k, extra in itertools.product(self.remove_top_k, self.corruptions):
                        if data_free and (k or noise or extra):
                            continue
                        for seed in self.seeds:
                            if recipe.parent_algos:
                                for algo in self.study_parent_algos(spec):
                                    for settings in self._parent_settings(algo):
                                        parent = parents[(algo, dataset, float(k), float(noise), json.dumps(tuple(extra)), int(seed), settings)]
                                        configs.append(FinetuneConfig(method=method, parent=str(Path(self.results_dir) / parent.run_id), seed=int(seed),
                                                                      **online, **common))
                            else:
                                for settings in setting_combinations(method, self.settings):
                                    configs.append(FinetuneConfig(method=method, parent=SCRATCH, dataset=dataset, remove_top_k=float(k), reward_noise_std=float(noise),
                                                                  extra_corruptions=tuple(extra),
                                                                  seed=int(seed), warmup_steps=self.warmup_steps,
                                                                  algo_overrides={**self.method_overrides.get(method, {}), **settings}, **online, **common))
        if len({config.run_id for config in configs}) != len(configs):
            raise HybridRLError(f"--method {','.join(self.methods)} names one run twice (a variant equal to its method's recipe?); list each method once")
        return configs


def run_phase2(spec: Phase2Spec, *, workers: int = 1, log: Callable[[str], None] = print, progress: bool = True,
               launcher: str = "local", ray_address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0) -> dict[str, Any]:
    """Train the missing parents (Phase I grid), then every fine-tuning run; writes grid_status.json.

    launcher "local": ``workers`` processes on this machine; "ray": one Ray task per run on the
    cluster at ``ray_address`` (None: a local Ray instance), each declaring ``cpus_per_run``
    CPUs and ``gpus_per_run`` GPU, for the parents and the fine-tuning runs alike. Both
    stages go through the one study launcher (``launcher.launch``).
    """
    check_launcher(launcher)
    check_writable_dir(spec.phase2_results)
    configs = spec.finetune_configs()  # checks methods, utd, sampling ... before any work
    phase1 = spec.phase1_spec()
    if phase1.algos:  # run_grid's preflight checks its input before any work
        log(f"phase 2: Phase I parents ({', '.join(phase1.algos)}) in {spec.results_dir}")
        status = run_grid(phase1, workers=workers, log=log, progress=progress, population=spec.population, max_population=spec.max_population,
                          launcher=launcher, ray_address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
        if status["failed"]:
            log(f"{len(status['failed'])} parent run(s) failed; their fine-tuning runs will fail with the reason")
    else:
        check_datasets(spec.datasets, spec.cache_dir, spec.mirror, log)

    def announce(states: dict[str, str], todo: list[FinetuneConfig]) -> None:
        where = f"{workers} worker(s)" if launcher == "local" else f"Ray, {cpus_per_run:g} CPU(s) and {gpus_per_run:g} GPU per run"
        log(f"phase 2: {len(configs)} fine-tuning runs ({', '.join(spec.methods)}), {spec.online_steps:,} online steps each; "
            f"{len(configs) - len(todo)} complete (skipped), {len(todo)} to run, {where}")

    # As in the Phase I grid: on Ray, 'auto' groups runs when each task holds a GPU share.
    device_type = resolve_device(spec.device).type if launcher == "local" else ("cuda" if gpus_per_run > 0 else "cpu")
    return launch(configs, spec.phase2_results, announce=announce, describe_population="one stacked step, every member in its own environment",
                  workers=workers, launcher=launcher, ray_address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                  population=spec.population, max_population=spec.max_population, device_type=device_type, log=log, progress=progress)
