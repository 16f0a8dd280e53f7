"""The ``hybrid-rl`` command and the Phase I entry point (``run_phase1.py``).

Subcommands: ``grid`` (the Phase I grid, same flags as run_phase1.py), ``train`` (one run),
``report`` (tables and figures from a results directory), ``dataset`` (list, info, make,
train-policy, ship-policy). Bad input ends with one line on stderr and exit status 2;
set HYBRID_RL_DEBUG=1 for the full traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .core.errors import HybridRLError

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (usage is what --help is for), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def comma_list(cast: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list with at least one item")
        try:
            return tuple(cast(item) for item in items)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc}") from None

    return parse


def _whole_number(text: str, minimum: int, what: str) -> int:
    """A whole number >= ``minimum``; accepts 500000, 5e5 and 500_000."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if number < minimum or number != int(number):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return int(number)


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (a UTD of 0 freezes the policy)."""
    return _whole_number(text, 0, "a whole number >= 0")


def setting_axis(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=V1,V2``: an algorithm setting and the values to sweep (checked against the
    algorithms later, when they are known)."""
    name, sep, values = text.partition("=")
    texts = tuple(value.strip() for value in values.split(",") if value.strip())
    if not sep or not name.strip() or not texts:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,VALUE...] (e.g. cql_alpha=1,5,10), got {text!r}")
    return name.strip(), texts


def check_wandb(args: argparse.Namespace) -> None:
    """--wandb without the package is a one-line error before any work."""
    if getattr(args, "wandb", None):
        from .core.trackers import require_wandb

        require_wandb()


def add_settings_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--set", dest="settings", action="append", type=setting_axis, default=[], metavar="NAME=V1[,V2...]",
                        help=f"an algorithm setting and its values, repeatable ({what}); every combination runs, each under its own run id "
                        "(layer sizes as 256x256; see docs/algorithms.md for each algorithm's settings)")


def announce_run(run_dir: str | Path, *, resume: bool) -> None:
    """Say on stderr where a single run's directory is, and whether it is finished (then
    skipped) or resumes, so a log read later says what the command did."""
    from .core.run_format import RESULT_STATUSES, checkpoint_step, read_summary

    run_dir = Path(run_dir)
    summary = read_summary(run_dir) if resume else None
    if summary is not None and summary.get("status") in RESULT_STATUSES:
        print(f"run {run_dir}: already finished ({summary['status']}), skipped; --no-resume trains it again", file=sys.stderr)
    elif resume and checkpoint_step(run_dir):
        print(f"run {run_dir}: resuming from step {checkpoint_step(run_dir):,}", file=sys.stderr)
    else:
        print(f"run {run_dir}", file=sys.stderr)


def json_overrides(text: str | None) -> dict[str, Any]:
    """``--algo_overrides`` as a dict, or a one-line error naming the flag."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HybridRLError(f"--algo_overrides is not valid JSON ({exc.msg} at character {exc.pos}): pass a JSON object such as "
                            "'{\"beta\": 10.0}', or use --set NAME=VALUE") from None
    if not isinstance(value, dict):
        raise HybridRLError(f"--algo_overrides must be a JSON object of settings such as '{{\"beta\": 10.0}}', got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A positive finite number (a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def guarded(main: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected errors (bad input, unavailable data) into one line and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return main(args)
        except (HybridRLError, ValueError, FileNotFoundError, PermissionError) as exc:
            if os.environ.get("HYBRID_RL_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted: completed runs and checkpoints are kept; run the same command again to resume", file=sys.stderr)
            return 130

    return wrapper


def corruption_levels(given: Sequence[tuple[dict, ...]] | None) -> tuple[tuple[dict, ...], ...]:
    """The --corruption axis: the levels given, in order and each once; none given: no further corruption."""
    from .data.corruption import format_corruptions

    levels: list[tuple[dict, ...]] = []
    for level in given or [()]:
        if level in levels:
            raise HybridRLError(f"--corruption {format_corruptions(level)} is given twice")
        levels.append(level)
    return tuple(levels)


def check_level_flags(remove_top_k: Sequence[float], reward_noise_std: Sequence[float]) -> None:
    """--remove_top_k and --reward_noise_std levels, checked by the data layer's one rule."""
    from .data.corruption import check_shorthands

    try:
        for k in remove_top_k:
            check_shorthands(k, 0.0, flags=True)
        for std in reward_noise_std:
            check_shorthands(0.0, std, flags=True)
    except ValueError as exc:
        raise HybridRLError(str(exc)) from None


# ---------------------------------------------------------------------------------------
# grid / run_phase1.py
# ---------------------------------------------------------------------------------------
def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    from .core.grid_options import DEFAULT_SEEDS, GRID_DEFAULT_ALGOS, GRID_DEFAULT_REMOVE_TOP_K, QUICK_EVAL_EVERY, QUICK_STEPS
    from .core.run_options import declared_field, run_option
    from .runs.configs import TrainConfig

    def declared(name: str) -> Any:
        return declared_field(TrainConfig, name)

    # Algorithm names are checked against the registry when the command runs (importing it
    # here would make --help import torch); `hybrid-rl algorithms` lists them.
    add_study_flag(parser, declared("algo"), axis=True, default=GRID_DEFAULT_ALGOS)
    add_study_flag(parser, declared("dataset"), axis=True, default_help="halfcheetah-medium-v2,hopper-medium-v2 if both are in the local D4RL cache, "
                   "else their generated counterparts (the embedded offline default)")
    add_study_flag(parser, declared("remove_top_k"), axis=True, default=GRID_DEFAULT_REMOVE_TOP_K)
    add_study_flag(parser, declared("reward_noise_std"), axis=True, default=(0.0,))
    add_study_flag(parser, declared("extra_corruptions"), levels=True, default_help="none")
    add_study_flag(parser, declared("seed"), axis=True, default_help=seeds_text(DEFAULT_SEEDS), quick=DEFAULT_SEEDS[0])
    add_study_flag(parser, declared("total_steps"), default_help=default_text(declared("total_steps").default), quick=QUICK_STEPS)
    add_run_option_flag(parser, "eval_every", f"{run_option('eval_every').metadata['help']}; {QUICK_EVAL_EVERY:,} with --quick")
    add_run_option_flag(parser, "eval_episodes")
    add_run_option_flag(parser, "log_every")
    add_run_option_flag(parser, "checkpoint_every")
    add_settings_argument(parser, "e.g. --set cql_alpha=1,5,10 --set beta=3,10; a setting applies to the algorithms that have it")
    add_run_option_flag(parser, "wandb")
    add_run_option_flag(parser, "device")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS // 1000}k steps, one seed, evaluations every {QUICK_EVAL_EVERY:,}: a fast look")
    parser.add_argument("--workers", default="auto", help="parallel local runs; auto = one per CPU core (1 on a GPU)")
    add_run_option_flag(parser, "results_dir", dest="results")
    parser.add_argument("--plots", default="plots", help="figures directory")
    parser.add_argument("--plot_only", action="store_true", help="only rebuild figures and tables from --results")
    add_run_option_flag(parser, "cache_dir")
    add_run_option_flag(parser, "mirror")
    add_population_arguments(parser)
    add_run_option_flag(parser, "compile")
    add_launcher_arguments(parser)


def add_population_arguments(parser: argparse.ArgumentParser) -> None:
    from .core.grid_options import DEFAULT_MAX_POPULATION, POPULATION_MODES

    parser.add_argument("--population", choices=POPULATION_MODES, default="auto",
                        help="train runs that differ only in seed and corruption as one vmapped population: auto = on GPUs only (default), on, off")
    parser.add_argument("--max_population", type=positive_int, default=DEFAULT_MAX_POPULATION, help=f"largest population (runs per process); default {DEFAULT_MAX_POPULATION}")


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the runs of a grid or study execute (run_phase1.py and run_phase2.py)."""
    parser.add_argument("--launcher", choices=("local", "ray"), default="local", help="local: worker processes on this machine (default); ray: one Ray task per run or population (docs/cluster.md)")
    parser.add_argument("--ray-address", "--ray_address", dest="ray_address", default=None,
                        help="with --launcher ray: the cluster to use (auto or HEAD_IP:6379); default: start a local Ray instance")
    parser.add_argument("--cpus-per-run", "--cpus_per_run", dest="cpus_per_run", type=float, default=1.0, help="with --launcher ray: CPUs per task, a run or a population (also its torch threads); default 1")
    parser.add_argument("--gpus-per-run", "--gpus_per_run", dest="gpus_per_run", type=float, default=0.0, help="with --launcher ray: GPU share per task, a run or a population (0.25: four per GPU); default 0")


def check_launcher_arguments(args: argparse.Namespace) -> None:
    if args.ray_address and args.launcher != "ray":
        raise HybridRLError("--ray-address is used only with --launcher ray; add --launcher ray")


def default_datasets(cache_dir: str | None) -> tuple[tuple[str, ...], str]:
    """The grid's default datasets and a sentence saying why they were chosen."""
    from .data.factory import DEFAULT_POLICY_VERSION
    from .data.loader import d4rl_cached_path
    from .core.grid_options import D4RL_DEFAULT_ENVS

    if all(d4rl_cached_path(name, cache_dir) is not None for name in D4RL_DEFAULT_ENVS):
        return D4RL_DEFAULT_ENVS, "D4RL files found in the local cache"
    generated = tuple(f"gen-{name.split('-')[0]}-medium-{DEFAULT_POLICY_VERSION}" for name in D4RL_DEFAULT_ENVS)
    return generated, (
        "D4RL halfcheetah-medium-v2 / hopper-medium-v2 are not in the local cache, so the grid runs on the embedded "
        f"generated datasets {', '.join(generated)} (D4RL-recipe data made by hybrid-rl, not D4RL). "
        "Pass --env halfcheetah-medium-v2,hopper-medium-v2 to download and use D4RL"
    )


def resolve_workers(text: str, device: str, runs: int) -> int:
    if text == "auto":
        from .runs.book import resolve_device

        if resolve_device(device).type != "cpu":
            return 1
        return max(1, min(runs, os.cpu_count() or 1))
    try:
        workers = int(text)
    except ValueError:
        raise HybridRLError(f"--workers takes a positive integer or 'auto', got {text!r}") from None
    if workers <= 0:
        raise HybridRLError(f"--workers must be positive, got {workers}")
    return workers


def grid_spec(args: argparse.Namespace, datasets: Sequence[str]) -> Any:
    """The Phase I grid the flags describe (``--quick``: QUICK_STEPS steps, one seed, evaluations every QUICK_EVAL_EVERY)."""
    from .studies.grid import GridSpec
    from .core.grid_options import DEFAULT_SEEDS, DEFAULT_TOTAL_STEPS, QUICK_EVAL_EVERY, QUICK_STEPS

    return GridSpec(
        algos=tuple(args.algo), datasets=tuple(datasets), remove_top_k=tuple(args.remove_top_k), reward_noise_std=tuple(args.reward_noise_std),
        corruptions=corruption_levels(args.extra_corruptions),
        seeds=tuple(args.seed or (DEFAULT_SEEDS[:1] if args.quick else DEFAULT_SEEDS)), total_steps=args.total_steps or (QUICK_STEPS if args.quick else DEFAULT_TOTAL_STEPS),
        eval_every=args.eval_every or (QUICK_EVAL_EVERY if args.quick else None), eval_episodes=args.eval_episodes, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, device=args.device, compile=args.compile, results_dir=args.results, settings=tuple(args.settings),
        wandb=args.wandb, cache_dir=args.cache_dir, mirror=args.mirror,
    )


@guarded
def grid_command(args: argparse.Namespace) -> int:
    from .eval.report import build_report
    from .studies.grid import check_setting_axes, check_writable_dir, run_grid

    check_launcher_arguments(args)
    check_wandb(args)
    check_writable_dir(args.plots, "--plots")  # found now, not after hours of training
    if args.plot_only:
        written = build_report(args.results, args.plots)
        print(f"report rebuilt from {args.results}: {len(written.get('figures', []))} figures in {args.plots}, tables {args.results}/summary.md and summary.csv")
        return 0
    from .algos.registry import available_algorithms

    unknown = [algo for algo in args.algo if algo not in available_algorithms()]
    if unknown:
        raise HybridRLError(f"unknown algorithm(s) {unknown}; choose from {available_algorithms()}")
    check_setting_axes(args.algo, tuple(args.settings))
    check_level_flags(args.remove_top_k, args.reward_noise_std)
    if args.dataset is None:
        datasets, why = default_datasets(args.cache_dir)
        print(f"datasets: {why}")
    else:
        datasets = args.dataset
    spec = grid_spec(args, datasets)
    workers = resolve_workers(args.workers, args.device, len(spec.expand())) if args.launcher == "local" else 1
    status = run_grid(spec, workers=workers, launcher=args.launcher, ray_address=args.ray_address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                      population=args.population, max_population=args.max_population)
    written = build_report(args.results, args.plots)
    print(f"tables: {args.results}/summary.md, {args.results}/summary.csv; figures: {args.plots}/ ({len(written.get('figures', []))} files)")
    return 1 if status["failed"] else 0


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
@guarded
def train_command(args: argparse.Namespace) -> int:
    from .algos.registry import available_algorithms
    from .studies.grid import check_setting_axes, preflight, setting_combinations
    from .runs.configs import TrainConfig
    from .runs.train import train

    if args.algo not in available_algorithms():
        raise HybridRLError(f"unknown algorithm {args.algo!r}; choose from {available_algorithms()}")
    check_wandb(args)
    swept = [name for name, texts in args.settings if len(texts) > 1]
    if swept:
        raise HybridRLError(f"--set {swept[0]} has several values: hybrid-rl train runs one setting; sweep with run_phase1.py --set")
    check_setting_axes([args.algo], tuple(args.settings))
    overrides = {**json_overrides(args.algo_overrides), **setting_combinations(args.algo, tuple(args.settings))[0]}
    config = TrainConfig(**config_values(args, TrainConfig), algo_overrides=overrides, **run_options_from(args, args.total_steps))
    # Bad input fails here, before the run directory exists (an explicit --run_dir is
    # checked against the config by train() itself).
    preflight([config], log=lambda line: None, run_dirs=args.run_dir is None)
    announce_run(args.run_dir or Path(config.results_dir) / config.run_id, resume=not args.no_resume)
    summary = train(config, args.run_dir, resume=not args.no_resume)
    print(json.dumps(summary, indent=2))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .runs.configs import TrainConfig

    add_config_arguments(parser, TrainConfig, overrides_help='JSON dict of algorithm settings, e.g. \'{"beta": 10.0}\' for IQL (or use --set beta=10)')
    add_settings_argument(parser, "one value each here, e.g. --set beta=10")
    parser.add_argument("--run_dir", default=None, help="run directory (default RESULTS/RUN_ID)")


FLAG_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type, *, overrides_help: str, data_note: str = "") -> None:
    """The flags of a single run's command (hybrid-rl train, hybrid-rl finetune), derived from
    its config's declared fields (runs/configs.py): the config's own fields first, then its
    data (``data_note`` leads their help: when they apply), then the options every run takes.
    One flag per field that has one, with the field's spelling, type, default, domain and help."""
    from .core.run_options import declared_fields, run_option_fields

    run_options = {spec.name for spec in run_option_fields()}
    fields = [spec for spec in declared_fields(config_class) if spec.metadata["command_line"]]
    own = [spec for spec in fields if spec.name not in run_options and spec.metadata["group"] != "data"]
    data = [spec for spec in fields if spec.metadata["group"] == "data"]
    for spec in own:
        add_field_flag(parser, spec)
    for spec in data:
        add_field_flag(parser, spec, help=data_note + spec.metadata["help"] if data_note else None)
    for spec in fields:
        if spec.name in run_options:
            add_field_flag(parser, spec)
    parser.add_argument("--no-resume", dest="no_resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--algo_overrides", default=None, help=overrides_help)


def add_run_option_flag(parser: argparse.ArgumentParser, name: str, help: str | None = None, *, dest: str | None = None) -> None:
    """A study's flag for run option ``name``, as a single run's command has it (a setting
    every run of the study shares)."""
    from .core.run_options import run_option

    add_field_flag(parser, run_option(name), help, dest=dest)


def declared_flag_type(spec: Any) -> Callable[[str], Any]:
    """How a declared field's flag reads its text: its ``parse`` (a ValueError becomes the
    flag's own message), else by its type, a whole number checked against its domain."""
    meta = spec.metadata
    if meta["parse"] is not None:
        def parse(text: str) -> Any:
            try:
                return meta["parse"](text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        parse.__name__ = spec.name  # argparse names the flag's type in its errors
        return parse
    kind = str(spec.type).replace(" | None", "")
    if kind == "int" and meta["positive"]:
        return positive_int
    if kind == "int" and meta["minimum"] == 0:
        return non_negative_int
    return FLAG_TYPES[kind]


def default_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def add_field_flag(parser: argparse.ArgumentParser, spec: Any, help: str | None = None, *, dest: str | None = None) -> None:
    """The flag of one declared config field (``core.run_options.option``): ``--<name>`` or
    the declared spelling and aliases, its type, default, domain and help (with the default
    appended where the help does not say it). A schedule interval has no default here:
    ``run_schedule`` fits it to the run's length."""
    meta = spec.metadata
    flags, dest = [meta["flag"] or f"--{spec.name}", *meta["aliases"]], dest or spec.name
    text = help or meta["help"]
    if str(spec.type) == "bool":
        parser.add_argument(*flags, dest=dest, action="store_true", help=text)
        return
    reading = {"type": declared_flag_type(spec), "metavar": meta["metavar"], "choices": meta["choices"]}
    if meta["const"] is not None:
        reading.update(nargs="?", const=meta["const"])
    if meta["required"]:
        parser.add_argument(*flags, dest=dest, required=True, help=text, **reading)
        return
    default = None if meta["schedule"] else (spec.default_factory() if spec.default is dataclasses.MISSING else spec.default)
    if "default" not in text and default not in (None, ()):
        text = f"{text}; default {default_text(default)}"
    parser.add_argument(*flags, dest=dest, default=default, help=text, **reading)


def config_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The values a command's flags (``add_config_arguments``) give ``config_class``'s own
    fields and data: every declared field with a flag, except a run's run options (those
    ``run_options_from`` reads, fitting the schedule to the run's length)."""
    from .core.run_options import RunOptions, declared_fields, run_option_fields

    run_options = {spec.name for spec in run_option_fields()} if issubclass(config_class, RunOptions) else set()
    return {spec.name: getattr(args, spec.name) for spec in declared_fields(config_class) if spec.metadata["command_line"] and spec.name not in run_options}


def seeds_text(seeds: Sequence[int]) -> str:
    return ",".join(str(seed) for seed in seeds)


def add_study_flag(parser: argparse.ArgumentParser, spec: Any, *, axis: bool = False, levels: bool = False, default: Any = None,
                   default_help: str | None = None, quick: Any = None, help: str | None = None, type: Callable[[str], Any] | None = None) -> None:
    """A study's flag (the Phase I grid, the Phase II study) for a declared run field, named,
    read and explained as the single run's flag (``add_field_flag``): the study gives all its
    runs this value, or with ``axis`` several comma-separated values (one run each), or with
    ``levels`` a repeatable flag, each use one level of the axis. ``default``: the study's
    own (None: decided later, ``default_help`` says how; else the field's default);
    ``quick``: the value under --quick; ``help``: when the study's meaning is narrower than
    the field's; ``type``: a narrower domain than the field's."""
    meta = spec.metadata
    read = type or declared_flag_type(spec)
    text = help or meta["help"]
    if axis:
        text += "; one or several, comma-separated"
    if levels:
        text += ("; repeatable: each is one level of the study's corruption axis, crossed with --remove_top_k and --reward_noise_std "
                 "(add --corruption none to keep the runs without it)")
    shown = default_help or (",".join(default_text(value) for value in default) if isinstance(default, tuple) else
                             default_text(default if default is not None else spec.default))
    if "default" not in text:
        text += f"; default {shown}" + (f" ({default_text(quick)} with --quick)" if quick is not None else "")
    flags = [meta["flag"] or f"--{spec.name}", *meta["aliases"]]
    if levels:
        parser.add_argument(*flags, dest=spec.name, action="append", type=read, default=None, metavar=meta["metavar"], help=text)
    else:
        parser.add_argument(*flags, dest=spec.name, type=comma_list(read) if axis else read, default=default, metavar=meta["metavar"], help=text)


def run_options_from(args: argparse.Namespace, total_steps: int) -> dict[str, Any]:
    """The run options of a command's flags (``add_config_arguments``), with the evaluation, log
    and checkpoint steps fitted to a run of ``total_steps`` (``run_schedule``)."""
    from .core.grid_options import run_schedule
    from .core.run_options import run_option_fields

    options = {spec.name: getattr(args, spec.name) for spec in run_option_fields() if spec.metadata["command_line"] and hasattr(args, spec.name)}
    options.update(run_schedule(total_steps, options.pop("eval_every"), options.pop("log_every"), options.pop("checkpoint_every")))
    return options


# ---------------------------------------------------------------------------------------
# finetune (Phase II)
# ---------------------------------------------------------------------------------------
@guarded
def finetune_command(args: argparse.Namespace) -> int:
    from .runs.configs import SCRATCH, FinetuneConfig
    from .runs.finetune import finetune, with_parent
    from .studies.grid import check_writable_dir

    config = FinetuneConfig(**config_values(args, FinetuneConfig), algo_overrides=json_overrides(args.algo_overrides),
                            **run_options_from(args, args.online_steps))
    check_wandb(args)
    # Bad input fails here, before anything is written.
    check_writable_dir(config.results_dir)
    if config.parent == SCRATCH:
        from .data.loader import check_dataset_name

        check_dataset_name(config.dataset)
    elif args.dataset is not None:
        raise HybridRLError("--env is only for --from scratch: a fine-tuning run uses its parent's dataset")
    with_parent(config)
    announce_run(Path(config.results_dir) / config.run_id, resume=not args.no_resume)
    summary = finetune(config, resume=not args.no_resume)
    print(json.dumps(summary, indent=2))
    return 0


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    from .runs.configs import FinetuneConfig

    # The method is checked by FinetuneConfig (its choices come from the registry, which loads torch).
    add_config_arguments(parser, FinetuneConfig, overrides_help="with --from scratch: JSON dict of the algorithm's settings", data_note="with --from scratch: ")


# ---------------------------------------------------------------------------------------
# phase2 / run_phase2.py
# ---------------------------------------------------------------------------------------
def add_phase2_arguments(parser: argparse.ArgumentParser) -> None:
    from .core.grid_options import (DEFAULT_DATASET, DEFAULT_EVAL_EVERY, DEFAULT_SEEDS, PHASE2_DEFAULT_METHODS, PHASE2_DEFAULT_REMOVE_TOP_K,
                                    PHASE2_QUICK_EVAL_EVERY, PHASE2_QUICK_ONLINE_STEPS, PHASE2_QUICK_PRETRAIN_STEPS, PHASE2_QUICK_UTD,
                                    PHASE2_QUICK_WARMUP_STEPS)
    from .core.run_options import declared_field
    from .runs.configs import FinetuneConfig, TrainConfig

    def declared(name: str) -> Any:
        return declared_field(FinetuneConfig, name)

    add_study_flag(parser, declared("method"), axis=True, default=PHASE2_DEFAULT_METHODS,
                   help="a fine-tuning method: one `hybrid-rl algorithms` lists with a Phase II recipe, or the control offline (the parent keeps "
                   "training offline), with variants NAME@utdN or NAME@SAMPLING (iql@utd0: the frozen policy; rlpd@online_only: RLPD without data)")
    add_study_flag(parser, declared("dataset"), axis=True, default=(DEFAULT_DATASET,))
    add_study_flag(parser, declared("remove_top_k"), axis=True, default=PHASE2_DEFAULT_REMOVE_TOP_K)
    add_study_flag(parser, declared("reward_noise_std"), axis=True, default=(0.0,))
    add_study_flag(parser, declared("extra_corruptions"), levels=True, default_help="none")
    add_study_flag(parser, declared("seed"), axis=True, default_help=seeds_text(DEFAULT_SEEDS), quick=DEFAULT_SEEDS[0])
    add_study_flag(parser, declared_field(TrainConfig, "total_steps"), help="gradient steps of each pretrained parent (a Phase I run)",
                   default_help=default_text(declared_field(TrainConfig, "total_steps").default), quick=PHASE2_QUICK_PRETRAIN_STEPS)
    add_study_flag(parser, declared("online_steps"), default_help=default_text(declared("online_steps").default), quick=PHASE2_QUICK_ONLINE_STEPS)
    # A whole study at UTD 0 would freeze every method: the frozen control is the variant NAME@utd0.
    add_study_flag(parser, declared("utd"), type=positive_int, quick=PHASE2_QUICK_UTD,
                   help="gradient steps per environment step for every method without its own @utdN", default_help="each method's")
    add_study_flag(parser, declared("sampling"), help="symmetric, uniform or online_only for every method without its own @SAMPLING",
                   default_help="each method's")
    add_settings_argument(parser, "the parents' algorithm settings, e.g. --set beta=3,10, and the from-scratch methods' that have the field")
    add_run_option_flag(parser, "wandb")
    add_study_flag(parser, declared("eval_every"), help="online steps between evaluations", default_help=default_text(DEFAULT_EVAL_EVERY),
                   quick=PHASE2_QUICK_EVAL_EVERY)
    add_run_option_flag(parser, "eval_episodes")
    add_study_flag(parser, declared("switch_episodes"), default=declared("switch_episodes").default)
    add_run_option_flag(parser, "device")
    add_study_flag(parser, declared("warmup_steps"), help="random warm-up steps of the from-scratch methods (rlpd, sac)", default_help="each method's",
                   quick=PHASE2_QUICK_WARMUP_STEPS)
    parser.add_argument("--quick", action="store_true",
                        help=f"a small CPU budget, one seed: parents of {PHASE2_QUICK_PRETRAIN_STEPS // 1000}k steps (run_phase1.py --quick's runs, reused), "
                        f"{PHASE2_QUICK_ONLINE_STEPS // 1000}k online steps, UTD {PHASE2_QUICK_UTD}")
    parser.add_argument("--workers", default="auto", help="parallel local runs; auto = one per CPU core (1 on a GPU)")
    parser.add_argument("--results", default="results", help="Phase I results directory (the parents; missing ones are trained)")
    parser.add_argument("--results_phase2", default="results_phase2", help="fine-tuning runs and the recovery tables")
    parser.add_argument("--plots", default="plots_phase2", help="recovery figures")
    parser.add_argument("--plot_only", action="store_true", help="only rebuild the recovery figures and tables from --results_phase2")
    add_run_option_flag(parser, "cache_dir")
    add_run_option_flag(parser, "mirror")
    add_population_arguments(parser)
    add_run_option_flag(parser, "compile")
    add_launcher_arguments(parser)


def phase2_spec(args: argparse.Namespace) -> Any:
    """The Phase II study the flags describe. ``--quick``'s parents are the runs that
    ``run_phase1.py --quick`` makes (QUICK_STEPS steps, evaluations every QUICK_EVAL_EVERY), reused when present."""
    from .core.grid_options import (DEFAULT_EVAL_EVERY, DEFAULT_ONLINE_STEPS, DEFAULT_SEEDS, DEFAULT_TOTAL_STEPS, PHASE2_QUICK_EVAL_EVERY,
                                    PHASE2_QUICK_ONLINE_STEPS, PHASE2_QUICK_PRETRAIN_STEPS, PHASE2_QUICK_UTD, PHASE2_QUICK_WARMUP_STEPS,
                                    QUICK_EVAL_EVERY)
    from .studies.phase2 import Phase2Spec

    online_steps = args.online_steps or (PHASE2_QUICK_ONLINE_STEPS if args.quick else DEFAULT_ONLINE_STEPS)
    return Phase2Spec(
        methods=tuple(args.method), datasets=tuple(args.dataset), remove_top_k=tuple(args.remove_top_k), reward_noise_std=tuple(args.reward_noise_std),
        corruptions=corruption_levels(args.extra_corruptions),
        seeds=tuple(args.seed or (DEFAULT_SEEDS[:1] if args.quick else DEFAULT_SEEDS)),
        pretrain_steps=args.total_steps or (PHASE2_QUICK_PRETRAIN_STEPS if args.quick else DEFAULT_TOTAL_STEPS),
        online_steps=online_steps, utd=args.utd or (PHASE2_QUICK_UTD if args.quick else None), sampling=args.sampling,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else (PHASE2_QUICK_WARMUP_STEPS if args.quick else None),
        eval_every=min(args.eval_every or (PHASE2_QUICK_EVAL_EVERY if args.quick else DEFAULT_EVAL_EVERY), online_steps),
        pretrain_eval_every=QUICK_EVAL_EVERY if args.quick else DEFAULT_EVAL_EVERY,
        eval_episodes=args.eval_episodes, switch_episodes=args.switch_episodes, device=args.device, population=args.population,
        max_population=args.max_population, compile=args.compile, results_dir=args.results, phase2_results=args.results_phase2,
        settings=tuple(args.settings), wandb=args.wandb, cache_dir=args.cache_dir, mirror=args.mirror,
    )


@guarded
def phase2_command(args: argparse.Namespace) -> int:
    from .eval.recovery_report import build_recovery_report
    from .studies.grid import check_writable_dir

    check_launcher_arguments(args)
    check_wandb(args)
    check_writable_dir(args.plots, "--plots")
    if args.plot_only:
        written = build_recovery_report(args.results_phase2, args.plots)
        print(f"recovery report rebuilt from {args.results_phase2}: {len(written['figures'])} figure files in {args.plots}, tables {args.results_phase2}/recovery.md and recovery.csv")
        return 0
    from .studies.phase2 import run_phase2

    check_level_flags(args.remove_top_k, args.reward_noise_std)
    spec = phase2_spec(args)
    workers = resolve_workers(args.workers, args.device, len(spec.finetune_configs())) if args.launcher == "local" else 1
    status = run_phase2(spec, workers=workers, launcher=args.launcher, ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                        gpus_per_run=args.gpus_per_run)
    written = build_recovery_report(args.results_phase2, args.plots)
    print(f"tables: {args.results_phase2}/recovery.md, recovery.csv; figures: {args.plots}/ ({len(written['figures'])} files)")
    return 1 if status["failed"] else 0


def phase2_main(argv: Sequence[str] | None = None) -> int:
    """``python run_phase2.py [flags]``: the Phase II study."""
    parser = OneLineParser(
        prog="run_phase2.py",
        description="Phase II: fine-tune agents pretrained on damaged data online (and train from-scratch baselines) and measure how "
        "they recover; resumable; writes results_phase2/ and plots_phase2/.",
    )
    add_phase2_arguments(parser)
    return phase2_command(parser.parse_args(argv))


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
@guarded
def report_command(args: argparse.Namespace) -> int:
    from .eval.recovery_report import build_recovery_report
    from .eval.report import NoRunsError, build_report
    from .eval.runs import finetune_run_dirs
    from .studies.grid import check_writable_dir

    check_writable_dir(args.plots, "--plots")
    written: dict[str, Any] = {}
    # A Phase II results directory gets the recovery report; Phase I runs (in the same
    # directory or alone) get the Phase I report.
    if finetune_run_dirs(args.results):
        written["recovery"] = build_recovery_report(args.results, args.plots)
    try:
        written.update(build_report(args.results, args.plots))
    except NoRunsError:
        if not written:
            raise
    print(json.dumps(written, indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------
def export_command(args: argparse.Namespace) -> int:
    """``hybrid-rl dataset export``: every check before the data are loaded, nothing written on bad input."""
    from .runs.export import data_config_of_run, export_dataset
    from .runs.configs import TrainConfig

    if (args.name is None) == (args.run_dir is None):
        raise HybridRLError("name a dataset or pass --from RESULTS/RUN_ID (one of the two)")
    if args.format == "d4rl":
        out = Path(args.out)
        if out.exists() and not args.force:
            raise HybridRLError(f"{out} exists; pass --force to replace it")
        if not out.parent.exists():
            raise HybridRLError(f"--out {out}: directory {out.parent} does not exist")
    elif "/" not in args.out:
        raise HybridRLError(f"--out {args.out}: a Minari dataset id needs a namespace, e.g. hybrid-rl/{args.out}")
    run_config = None
    if args.run_dir is not None:
        if args.remove_top_k or args.reward_noise_std or args.extra_corruptions or args.seed:
            raise HybridRLError("--from exports exactly the run's data: drop --remove_top_k, --reward_noise_std, --corruption and --seed")
        data, run_config = data_config_of_run(args.run_dir)
        data = TrainConfig(**{**data.__dict__, "cache_dir": args.cache_dir or data.cache_dir, "mirror": args.mirror or data.mirror})
    else:
        from .data.loader import check_dataset_name

        check_dataset_name(args.name)
        data = TrainConfig(dataset=args.name, remove_top_k=args.remove_top_k, reward_noise_std=args.reward_noise_std,
                           extra_corruptions=args.extra_corruptions, seed=args.seed, cache_dir=args.cache_dir, mirror=args.mirror)
    written = export_dataset(data, args.out, fmt=args.format, run_config=run_config)
    print(f"{args.format} data of {args.run_dir or args.name} written to {written}")
    return 0


@guarded
def dataset_command(args: argparse.Namespace) -> int:
    from .data import factory

    if args.dataset_action == "list":
        from .data.loader import known_dataset_ids

        for name in known_dataset_ids():
            print(name)
        return 0
    if args.dataset_action == "info":
        from .data.loader import load_dataset

        dataset = load_dataset(args.name, cache_dir=args.cache_dir, mirror=args.mirror)
        info = dataset.summary()
        info["metadata"] = {k: v for k, v in dataset.metadata.items() if k != "training_config"}
        print(json.dumps(info, indent=2, default=str))
        return 0
    if args.dataset_action == "export":
        return export_command(args)
    if args.dataset_action == "make":
        import time

        name = args.name if args.size is None else f"{factory.parse_generated_id(args.name).base_name}@{factory.parse_size(args.size)}"
        started = time.time()
        path = factory.make_generated(name, cache_dir=args.out, seed=args.seed, force=args.force)
        from .data.hdf5io import read_hdf5

        dataset = read_hdf5(path)
        elapsed = time.time() - started
        meta = dataset.metadata
        print(f"{path}: {len(dataset):,} transitions, {dataset.num_trajectories} episodes, return {meta['return_mean']:.1f} +- {meta['return_std']:.1f}, "
              f"normalized {meta['normalized_score_mean']:.1f} ({elapsed:.0f} s)")
        if args.minari:
            from .data.loader import export_minari

            print(f"Minari dataset: {export_minari(dataset, args.minari)}")
        return 0
    if args.dataset_action == "train-policy":
        import torch

        from .runs.behavior import train_behavior_policy
        from .runs.configs import BehaviorTrainingConfig, behavior_sac

        torch.set_num_threads(args.threads)
        sac = {"hidden": args.hidden, **({"actor_lr": args.lr, "critic_lr": args.lr} if args.lr is not None else {})}
        config = BehaviorTrainingConfig(**config_values(args, BehaviorTrainingConfig),
                                        sac=dataclasses.replace(behavior_sac(), **{key: value for key, value in sac.items() if value is not None}))
        out = train_behavior_policy(config, args.out or f"behavior_training/{args.robot}")
        print(f"training written to {out}; ship it with: hybrid-rl dataset ship-policy --robot {args.robot} --from {out}")
        return 0
    if args.dataset_action == "ship-policy":
        path = factory.select_and_ship(args.source, args.robot, args.out, version=args.version or factory.DEFAULT_POLICY_VERSION, medium_step=args.medium_step,
                                       expert_step=args.expert_step, replay_dir=args.replay_from, replay_step=args.replay_step,
                                       shipping_episodes=args.episodes)
        payload = factory.load_policy_file(path)
        for level in ("medium", "expert"):
            entry = payload["levels"][level]
            shipped = entry.get("shipping_evaluation")
            measured = f", {shipped['stochastic_normalized']:.1f} over {shipped['episodes']} episodes" if shipped else ""
            print(f"{level}: step {entry['step']}, stochastic-policy normalized score {entry['evaluation']['stochastic_normalized']:.1f} in training{measured}")
        replay = factory.replay_source(payload)
        print(f"medium-replay: {replay['step']:,} transitions, {len(payload['replay_schedule'])} snapshots")
        print(f"written {path}")
        return 0
    raise HybridRLError(f"unknown dataset action {args.dataset_action!r}")


@guarded
def policy_command(args: argparse.Namespace) -> int:
    from .runs.policy import load_policy

    out = Path(args.out)
    if out.exists() and not args.force:
        raise HybridRLError(f"{out} exists; pass --force to replace it")
    if not out.parent.exists():
        raise HybridRLError(f"--out {out}: directory {out.parent} does not exist")
    policy = load_policy(args.run_dir)
    policy.save(out)
    print(f"policy of {policy.info['run_id']} ({policy.info['algo']}, step {policy.info['step']}) written to {out}; "
          "load it with hybrid_rl.load_policy")
    return 0


def algorithms_command(args: argparse.Namespace) -> int:
    """The registered algorithms and what they declare (algos/*.py: SPEC)."""
    from .algos.registry import SPECS

    rows = [("name", "shown as", "Phase I", "Phase II recipe", "source")]
    for name, spec in SPECS.items():
        recipe = spec.finetune
        if recipe is None:
            online = "-"
        else:
            start = f"from {'/'.join(recipe.parent_algos)} runs" if recipe.parent_algos else "from scratch"
            warmup = f", {recipe.warmup_steps:,} {'random ' if recipe.random_warmup else ''}warm-up steps" if recipe.warmup_steps else ""
            online = f"{start}, {recipe.sampling} sampling, UTD {recipe.utd}{warmup}"
        rows.append((name, spec.display_name, "yes" if spec.offline else "no", online, spec.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    print("\nPhase II control: offline (the parent keeps training on its offline data, no interaction); "
          "any pretrained method at --utd 0 is the frozen policy. docs/algorithms.md has the settings.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .core.run_options import declared_fields
    from .data.dataspec import DataOptions
    from .runs.configs import BehaviorTrainingConfig

    parser = OneLineParser(prog="hybrid-rl", description="Offline RL (CQL, IQL) under damaged D4RL-style datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    grid = sub.add_parser("grid", help="run the Phase I experiment grid (same flags as run_phase1.py)")
    add_grid_arguments(grid)
    grid.set_defaults(func=grid_command)
    train = sub.add_parser("train", help="train one run")
    add_train_arguments(train)
    train.set_defaults(func=train_command)
    finetune = sub.add_parser("finetune", help="Phase II: fine-tune a Phase I run online (or train from scratch online)")
    add_finetune_arguments(finetune)
    finetune.set_defaults(func=finetune_command)
    phase2 = sub.add_parser("phase2", help="run the Phase II study (same flags as run_phase2.py)")
    add_phase2_arguments(phase2)
    phase2.set_defaults(func=phase2_command)
    policy = sub.add_parser("policy", help="a trained policy outside its run")
    policy_actions = policy.add_subparsers(dest="policy_action", required=True)
    export = policy_actions.add_parser("export", help="write a run's policy as one self-contained file (hybrid_rl.load_policy reads it)")
    export.add_argument("run_dir", help="RESULTS/RUN_ID of a run with a checkpoint")
    export.add_argument("--out", required=True, help="the policy file to write")
    export.add_argument("--force", action="store_true", help="replace an existing file")
    export.set_defaults(func=policy_command)
    algorithms = sub.add_parser("algorithms", help="list the algorithms, their Phase II recipes and sources")
    algorithms.set_defaults(func=algorithms_command)
    report = sub.add_parser("report", help="rebuild tables and figures from a results directory")
    report.add_argument("--results", default="results")
    report.add_argument("--plots", default="plots")
    report.set_defaults(func=report_command)

    dataset = sub.add_parser("dataset", help="dataset ids, info, generation and behaviour policies")
    actions = dataset.add_subparsers(dest="dataset_action", required=True)
    actions.add_parser("list", help="list known dataset ids")
    info = actions.add_parser("info", help="summary and metadata of a dataset")
    info.add_argument("name")
    info.add_argument("--cache_dir", default=None)
    info.add_argument("--mirror", default=None)
    make = actions.add_parser("make", help="generate a D4RL-recipe dataset (gen-ROBOT-LEVEL-VERSION, e.g. gen-hopper-medium-v1)")
    make.add_argument("name", help="e.g. gen-hopper-medium-v1")
    make.add_argument("--size", default=None, help="transitions (e.g. 200000, 200k, 1m); default 1M (medium-replay: the replay size)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", default=None, help="directory (default $HYBRID_RL_DATA_DIR or ~/.hybrid_rl/datasets)")
    make.add_argument("--force", action="store_true", help="regenerate even if a valid copy exists")
    make.add_argument("--minari", default=None, metavar="DATASET_ID", help="also export as a local Minari dataset with this id")
    export = actions.add_parser("export", help="write damaged data (a dataset with corruptions and a seed, or a finished run's exact data) for other libraries")
    export.add_argument("name", nargs="?", default=None, help="dataset id or HDF5 path (or --from RUN_DIR)")
    export.add_argument("--from", dest="run_dir", default=None, help="RESULTS/RUN_ID of a finished run: exactly the data it trained on")
    for spec in declared_fields(DataOptions)[1:]:  # the corruptions (the dataset is NAME)
        add_field_flag(export, spec)
    export.add_argument("--seed", type=int, default=0, help="the corruption's seed (a run's seed gives its data)")
    export.add_argument("--format", choices=("d4rl", "minari"), default="d4rl", help="d4rl: an HDF5 file in D4RL's layout; minari: a local Minari dataset")
    export.add_argument("--out", required=True, help="d4rl: the file to write; minari: the dataset id (namespace/name-v0)")
    export.add_argument("--force", action="store_true", help="replace an existing file")
    export.add_argument("--cache_dir", default=None)
    export.add_argument("--mirror", default=None)
    train_policy = actions.add_parser("train-policy", help="train a SAC behaviour policy (resumable)")
    for spec in declared_fields(BehaviorTrainingConfig):
        if spec.metadata["command_line"]:
            add_field_flag(train_policy, spec)
    # The agent's SAC settings (BehaviorTrainingConfig.sac) that a behaviour training varies.
    train_policy.add_argument("--hidden", type=comma_list(positive_int), default=None,
                              help="actor and critic layer sizes; default 128,128 (the v0 policies'; v1: 256,256)")
    train_policy.add_argument("--lr", type=positive_float, default=None,
                              help="actor and critic learning rate; default SAC's 3e-4 (smaller: a slower learner, for medium-replay)")
    train_policy.add_argument("--threads", type=positive_int, default=1, help="torch threads of the training; default 1")
    train_policy.add_argument("--out", default=None, help="the training's directory; default behavior_training/ROBOT")
    ship = actions.add_parser("ship-policy", help="select medium/expert snapshots of a training and write the shipped policy file")
    ship.add_argument("--robot", required=True)
    ship.add_argument("--from", dest="source", required=True, help="behaviour training directory")
    ship.add_argument("--version", default=None, help="policy version the file ships as (v0, v1; default: the default version)")
    ship.add_argument("--out", default=None, help="policy file (default: the package's policies/ROBOT-VERSION.pt)")
    ship.add_argument("--medium_step", type=int, default=None)
    ship.add_argument("--expert_step", type=int, default=None)
    ship.add_argument("--replay_from", default=None, help="a separate (slower) training whose buffer up to its medium point is medium-replay")
    ship.add_argument("--replay_step", type=int, default=None, help="where that buffer ends (default: its medium point)")
    ship.add_argument("--episodes", type=int, default=30, help="stochastic episodes that measure the chosen policies (0: none)")
    dataset.set_defaults(func=dataset_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def phase1_main(argv: Sequence[str] | None = None) -> int:
    """``python run_phase1.py [flags]``: the Phase I grid."""
    parser = OneLineParser(
        prog="run_phase1.py",
        description="Phase I: train CQL and IQL on D4RL-style datasets with their best trajectories removed (and noisy rewards); "
        "resumable; writes results/ and plots/.",
    )
    add_grid_arguments(parser)
    return grid_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
