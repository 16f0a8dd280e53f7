"""The ``hybrid-rl`` command and the Phase I entry point (``run_phase1.py``).

Subcommands: ``grid`` (the Phase I grid, same flags as run_phase1.py), ``train`` (one run),
``report`` (tables and figures from a results directory), ``dataset`` (list, info, make,
train-policy, ship-policy). Bad input ends with one line on stderr and exit status 2;
set HYBRID_RL_DEBUG=1 for the full traceback.
"""
from __future__ import annotations

import argparse
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


def add_wandb_argument(parser: argparse.ArgumentParser) -> None:
    from .core.run_options import run_option

    parser.add_argument("--wandb", default=None, metavar="PROJECT", help=run_option("wandb").metadata["help"])


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


def corruption_specs(text: str) -> tuple[dict, ...]:
    """argparse type of --corruption: ``none`` or KIND:NAME=VALUE[:NAME=VALUE...][+KIND:...]."""
    from .data.corruption import parse_corruptions

    try:
        return parse_corruptions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


CORRUPTION_HELP = ("KIND:NAME=VALUE[:NAME=VALUE...], several joined by + (applied in order), or none: e.g. "
                   "corrupt_transitions:target=observations:rate=0.3:scale=1 (RIQL's random observation corruption); the kinds and their "
                   "parameters are in docs/data.md, and an unknown kind's error lists them")


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
    from .core.grid_options import DEFAULT_SEEDS, DEFAULT_TOTAL_STEPS, QUICK_EVAL_EVERY, QUICK_STEPS
    from .core.run_options import run_option

    # Names are checked against the registry when the command runs (importing it here would
    # make --help import torch); `hybrid-rl algorithms` lists them.
    parser.add_argument("--algo", type=comma_list(str.lower), default=("cql", "iql"),
                        help="Phase I algorithms, comma-separated (`hybrid-rl algorithms` lists them); default cql,iql")
    parser.add_argument(
        "--env", type=comma_list(str), default=None,
        help="datasets, comma-separated: D4RL ids (halfcheetah-medium-v2), generated ids (gen-hopper-medium-v1[@SIZE]), "
        "Minari ids or HDF5 paths. Default: halfcheetah-medium-v2,hopper-medium-v2 if both are in the local D4RL cache, "
        "else their generated counterparts (the embedded offline default)",
    )
    parser.add_argument("--remove_top_k", type=comma_list(float), default=(0.0, 30.0, 60.0), help="percent of best trajectories removed, comma-separated; default 0,30,60")
    parser.add_argument("--reward_noise_std", type=comma_list(float), default=(0.0,), help="Gaussian reward-noise std levels (reward units); default 0")
    parser.add_argument("--corruption", action="append", type=corruption_specs, default=None, metavar="SPEC",
                        help="a further corruption level, repeatable: each is one level of the grid's corruption axis, crossed with --remove_top_k "
                        "and --reward_noise_std (add --corruption none to keep the runs without it); SPEC = " + CORRUPTION_HELP + "; default none")
    parser.add_argument("--seed", type=comma_list(int), default=None, help=f"seeds, comma-separated; default {seeds_text(DEFAULT_SEEDS)} ({DEFAULT_SEEDS[0]} with --quick)")
    parser.add_argument("--total_steps", type=positive_int, default=None, help=f"gradient steps per run; default {DEFAULT_TOTAL_STEPS} ({QUICK_STEPS} with --quick)")
    add_run_option_flag(parser, "eval_every", f"{run_option('eval_every').metadata['help']}; {QUICK_EVAL_EVERY:,} with --quick")
    add_run_option_flag(parser, "eval_episodes")
    add_run_option_flag(parser, "log_every")
    add_run_option_flag(parser, "checkpoint_every")
    add_settings_argument(parser, "e.g. --set cql_alpha=1,5,10 --set beta=3,10; a setting applies to the algorithms that have it")
    add_wandb_argument(parser)
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
    add_compile_argument(parser)
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
        corruptions=corruption_levels(args.corruption),
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
    if args.env is None:
        datasets, why = default_datasets(args.cache_dir)
        print(f"datasets: {why}")
    else:
        datasets = args.env
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
    from .runs.train import TrainConfig, train

    if args.algo not in available_algorithms():
        raise HybridRLError(f"unknown algorithm {args.algo!r}; choose from {available_algorithms()}")
    check_wandb(args)
    swept = [name for name, texts in args.settings if len(texts) > 1]
    if swept:
        raise HybridRLError(f"--set {swept[0]} has several values: hybrid-rl train runs one setting; sweep with run_phase1.py --set")
    check_setting_axes([args.algo], tuple(args.settings))
    overrides = {**json_overrides(args.algo_overrides), **setting_combinations(args.algo, tuple(args.settings))[0]}
    config = TrainConfig(
        algo=args.algo, dataset=args.env, remove_top_k=args.remove_top_k, reward_noise_std=args.reward_noise_std, extra_corruptions=args.corruption,
        total_steps=args.total_steps, algo_overrides=overrides, **run_options_from(args, args.total_steps),
    )
    # Bad input fails here, before the run directory exists (an explicit --run_dir is
    # checked against the config by train() itself).
    preflight([config], log=lambda line: None, run_dirs=args.run_dir is None)
    announce_run(args.run_dir or Path(config.results_dir) / config.run_id, resume=not args.no_resume)
    summary = train(config, args.run_dir, resume=not args.no_resume)
    print(json.dumps(summary, indent=2))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .core.grid_options import DEFAULT_DATASET, DEFAULT_TOTAL_STEPS
    from .core.run_options import RunOptions

    parser.add_argument("--algo", default="iql", type=str.lower, help="a Phase I algorithm (`hybrid-rl algorithms` lists them); default iql")
    parser.add_argument("--env", "--dataset", dest="env", default=DEFAULT_DATASET, help=f"dataset id or HDF5 path; default {DEFAULT_DATASET}")
    parser.add_argument("--remove_top_k", type=float, default=0.0, help="percent of best trajectories removed from the data; default 0")
    parser.add_argument("--reward_noise_std", type=float, default=0.0, help="std of Gaussian noise added to the rewards (reward units); default 0")
    parser.add_argument("--corruption", type=corruption_specs, default=(), metavar="SPEC", help="further corruption of the data: " + CORRUPTION_HELP)
    parser.add_argument("--total_steps", type=positive_int, default=DEFAULT_TOTAL_STEPS, help=f"gradient steps of the run; default {DEFAULT_TOTAL_STEPS:,}")
    add_run_arguments(parser, RunOptions, overrides_help='JSON dict of algorithm settings, e.g. \'{"beta": 10.0}\' for IQL (or use --set beta=10)')
    add_settings_argument(parser, "one value each here, e.g. --set beta=10")
    parser.add_argument("--run_dir", default=None, help="run directory (default RESULTS/RUN_ID)")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    from .core.run_options import run_option

    declared = run_option("compile")
    parser.add_argument("--compile", nargs="?", const="on", choices=declared.metadata["choices"], default=declared.default, help=declared.metadata["help"])


# Run options whose flags are more than a typed value: a bare --compile means on, --wandb is
# checked for its package (check_wandb).
SPECIAL_RUN_FLAGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {"compile": add_compile_argument, "wandb": add_wandb_argument}
FLAG_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def add_run_arguments(parser: argparse.ArgumentParser, options_class: type, *, overrides_help: str) -> None:
    """The flags every single run takes (hybrid-rl train and hybrid-rl finetune), derived
    from the run options ``options_class`` declares (core/run_options.py): one flag per
    option that has one, with the option's type, default, help and domain."""
    import dataclasses

    for spec in dataclasses.fields(options_class):
        if spec.metadata.get("command_line"):
            add_run_option_flag(parser, spec.name, options_class=options_class)
    parser.add_argument("--no-resume", dest="no_resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--algo_overrides", default=None, help=overrides_help)


def add_run_option_flag(parser: argparse.ArgumentParser, name: str, help: str | None = None, *, dest: str | None = None,
                        options_class: type | None = None) -> None:
    """The flag of run option ``name`` as declared (core/run_options.py), for a single run's
    command or a study's shared setting: ``--<name>`` or the declared spelling, its type
    (a positive whole number where it must be positive), default, domain and help. A
    schedule interval has no default here: ``run_schedule`` fits it to the run's length."""
    import dataclasses

    from .core.run_options import RunOptions

    spec = next(field for field in dataclasses.fields(options_class or RunOptions) if field.name == name)
    if name in SPECIAL_RUN_FLAGS:
        SPECIAL_RUN_FLAGS[name](parser)
        return
    meta = spec.metadata
    flag, kind, dest = meta["flag"] or f"--{name}", str(spec.type).replace(" | None", ""), dest or name
    if kind == "bool":
        parser.add_argument(flag, dest=dest, action="store_true", help=help or meta["help"])
        return
    default = None if meta["schedule"] else spec.default
    text = help or meta["help"]
    if "default" not in text and default is not None:
        text = f"{text}; default {default}"
    parser.add_argument(flag, dest=dest, type=positive_int if kind == "int" and meta["positive"] else FLAG_TYPES[kind], default=default,
                        choices=meta["choices"], help=text)


def seeds_text(seeds: Sequence[int]) -> str:
    return ",".join(str(seed) for seed in seeds)


def run_options_from(args: argparse.Namespace, total_steps: int) -> dict[str, Any]:
    """The run options of a command's flags (``add_run_arguments``), with the evaluation, log
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
    from .runs.finetune import SCRATCH, FinetuneConfig, finetune, with_parent
    from .studies.grid import check_writable_dir

    config = FinetuneConfig(
        method=args.method, parent=args.parent, dataset=args.env, remove_top_k=args.remove_top_k, reward_noise_std=args.reward_noise_std,
        extra_corruptions=args.corruption,
        online_steps=args.online_steps, utd=args.utd, sampling=args.sampling, switch_episodes=args.switch_episodes,
        online_fraction=args.online_fraction, warmup_steps=args.warmup_steps, buffer_size=args.buffer_size,
        exploration_noise=args.exploration_noise, algo_overrides=json_overrides(args.algo_overrides), **run_options_from(args, args.online_steps),
    )
    check_wandb(args)
    # Bad input fails here, before anything is written.
    check_writable_dir(config.results_dir)
    if config.parent == SCRATCH:
        from .data.loader import check_dataset_name

        check_dataset_name(config.dataset)
    elif args.env is not None:
        raise HybridRLError("--env is only for --from scratch: a fine-tuning run uses its parent's dataset")
    with_parent(config)
    announce_run(Path(config.results_dir) / config.run_id, resume=not args.no_resume)
    summary = finetune(config, resume=not args.no_resume)
    print(json.dumps(summary, indent=2))
    return 0


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    from .core.grid_options import DEFAULT_ONLINE_STEPS, DEFAULT_SWITCH_EPISODES
    from .core.run_options import FinetuneRunOptions

    # Choices are checked by FinetuneConfig (importing it here would make --help import torch).
    parser.add_argument("--from", dest="parent", required=True, help="RESULTS/RUN_ID of a finished Phase I run, or 'scratch' (then --env)")
    parser.add_argument("--method", required=True, type=str.lower, help="fine-tuning method: one `hybrid-rl algorithms` lists with a Phase II recipe "
                        "(from a Phase I run of that algorithm, or from scratch), or the control offline (the parent keeps training offline); see docs/recovery.md")
    parser.add_argument("--env", "--dataset", dest="env", default=None, help="with --from scratch: the dataset whose environment (and, for rlpd, data) to use")
    parser.add_argument("--remove_top_k", type=float, default=0.0, help="with --from scratch: percent of best trajectories removed from that data")
    parser.add_argument("--reward_noise_std", type=float, default=0.0, help="with --from scratch: Gaussian reward noise of that data")
    parser.add_argument("--corruption", type=corruption_specs, default=(), metavar="SPEC", help="with --from scratch: further corruption of that data: " + CORRUPTION_HELP)
    parser.add_argument("--online_steps", type=positive_int, default=DEFAULT_ONLINE_STEPS, help=f"online environment steps; default {DEFAULT_ONLINE_STEPS}")
    parser.add_argument("--utd", type=non_negative_int, default=None, help="gradient steps per environment step (0: a frozen policy, evaluated only); default: the method's")
    parser.add_argument("--sampling", default=None, help="symmetric, uniform or online_only: how batches mix offline and online data; default: the method's")
    parser.add_argument("--switch_episodes", type=positive_int, default=DEFAULT_SWITCH_EPISODES,
                        help=f"episodes of the starting policy's evaluation at step 0 (the switch score); default {DEFAULT_SWITCH_EPISODES}")
    parser.add_argument("--online_fraction", type=float, default=0.5, help="online share of a symmetric batch; default 0.5")
    parser.add_argument("--warmup_steps", type=int, default=None, help="environment steps before the first update; default: the method's")
    parser.add_argument("--buffer_size", type=positive_int, default=None, help="online replay capacity; default: --online_steps")
    parser.add_argument("--exploration_noise", type=float, default=None, help="Gaussian action noise; default 0.1 for a deterministic actor, else 0")
    add_run_arguments(parser, FinetuneRunOptions, overrides_help="with --from scratch: JSON dict of the algorithm's settings")


# ---------------------------------------------------------------------------------------
# phase2 / run_phase2.py
# ---------------------------------------------------------------------------------------
def add_phase2_arguments(parser: argparse.ArgumentParser) -> None:
    from .core.grid_options import (DEFAULT_DATASET, DEFAULT_EVAL_EVERY, DEFAULT_ONLINE_STEPS, DEFAULT_SEEDS, DEFAULT_SWITCH_EPISODES, DEFAULT_TOTAL_STEPS,
                                    PHASE2_DEFAULT_METHODS, PHASE2_QUICK_EVAL_EVERY, PHASE2_QUICK_ONLINE_STEPS, PHASE2_QUICK_PRETRAIN_STEPS,
                                    PHASE2_QUICK_UTD, PHASE2_QUICK_WARMUP_STEPS)

    parser.add_argument("--method", type=comma_list(str.lower), default=PHASE2_DEFAULT_METHODS,
                        help="methods, comma-separated: those `hybrid-rl algorithms` lists with a Phase II recipe, the control offline, with variants NAME@utdN or NAME@SAMPLING "
                        f"(iql@utd0: the frozen policy; rlpd@online_only: RLPD without data); default {','.join(PHASE2_DEFAULT_METHODS)}")
    parser.add_argument("--env", type=comma_list(str), default=(DEFAULT_DATASET,), help=f"datasets, comma-separated; default {DEFAULT_DATASET}")
    parser.add_argument("--remove_top_k", type=comma_list(float), default=(0.0, 60.0), help="percent of best trajectories removed; default 0,60")
    parser.add_argument("--reward_noise_std", type=comma_list(float), default=(0.0,), help="Gaussian reward-noise std levels; default 0")
    parser.add_argument("--corruption", action="append", type=corruption_specs, default=None, metavar="SPEC",
                        help="a further corruption level, repeatable (crossed with --remove_top_k and --reward_noise_std; add --corruption none to keep "
                        "the runs without it); SPEC = " + CORRUPTION_HELP + "; default none")
    parser.add_argument("--seed", type=comma_list(int), default=None, help=f"seeds; default {seeds_text(DEFAULT_SEEDS)} ({DEFAULT_SEEDS[0]} with --quick)")
    parser.add_argument("--total_steps", type=positive_int, default=None, help=f"Phase I steps of the pretrained parents; default {DEFAULT_TOTAL_STEPS} ({PHASE2_QUICK_PRETRAIN_STEPS} with --quick)")
    parser.add_argument("--online_steps", type=positive_int, default=None, help=f"online environment steps; default {DEFAULT_ONLINE_STEPS} ({PHASE2_QUICK_ONLINE_STEPS} with --quick)")
    parser.add_argument("--utd", type=positive_int, default=None,
                        help=f"gradient steps per environment step for every method without its own @utdN; default: each method's ({PHASE2_QUICK_UTD} with --quick)")
    parser.add_argument("--sampling", default=None, help="symmetric, uniform or online_only for every method; default: each method's")
    add_settings_argument(parser, "the parents' algorithm settings, e.g. --set beta=3,10, and the from-scratch methods' that have the field")
    add_wandb_argument(parser)
    parser.add_argument("--eval_every", type=positive_int, default=None,
                        help=f"online steps between evaluations; default {DEFAULT_EVAL_EVERY:,} ({PHASE2_QUICK_EVAL_EVERY} with --quick)")
    add_run_option_flag(parser, "eval_episodes")
    parser.add_argument("--switch_episodes", type=positive_int, default=DEFAULT_SWITCH_EPISODES,
                        help=f"episodes of each run's starting-policy evaluation at step 0; default {DEFAULT_SWITCH_EPISODES}")
    add_run_option_flag(parser, "device")
    parser.add_argument("--warmup_steps", type=int, default=None,
                        help=f"random warm-up steps of the from-scratch methods (rlpd, sac); default: each method's ({PHASE2_QUICK_WARMUP_STEPS:,} with --quick)")
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
    add_compile_argument(parser)
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
        methods=tuple(args.method), datasets=tuple(args.env), remove_top_k=tuple(args.remove_top_k), reward_noise_std=tuple(args.reward_noise_std),
        corruptions=corruption_levels(args.corruption),
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
    from .runs.train import TrainConfig

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
        if args.remove_top_k or args.reward_noise_std or args.corruption or args.seed:
            raise HybridRLError("--from exports exactly the run's data: drop --remove_top_k, --reward_noise_std, --corruption and --seed")
        data, run_config = data_config_of_run(args.run_dir)
        data = TrainConfig(**{**data.__dict__, "cache_dir": args.cache_dir or data.cache_dir, "mirror": args.mirror or data.mirror})
    else:
        from .data.loader import check_dataset_name

        check_dataset_name(args.name)
        data = TrainConfig(dataset=args.name, remove_top_k=args.remove_top_k, reward_noise_std=args.reward_noise_std, extra_corruptions=args.corruption,
                           seed=args.seed,
                           cache_dir=args.cache_dir, mirror=args.mirror)
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

        from .algos.sac import SACConfig
        from .engine.behavior import BehaviorTrainingConfig, train_behavior_policy

        torch.set_num_threads(args.threads)
        config = BehaviorTrainingConfig(robot=args.robot, total_steps=args.steps, seed=args.seed, update_every=args.update_every,
                                        sac=SACConfig(hidden=args.hidden, actor_lr=args.lr, critic_lr=args.lr), compile=args.compile)
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
    export.add_argument("--remove_top_k", type=float, default=0.0, help="percent of best trajectories removed")
    export.add_argument("--reward_noise_std", type=float, default=0.0, help="Gaussian reward noise (reward units)")
    export.add_argument("--corruption", type=corruption_specs, default=(), metavar="SPEC", help="further corruption: " + CORRUPTION_HELP)
    export.add_argument("--seed", type=int, default=0, help="the corruption's seed (a run's seed gives its data)")
    export.add_argument("--format", choices=("d4rl", "minari"), default="d4rl", help="d4rl: an HDF5 file in D4RL's layout; minari: a local Minari dataset")
    export.add_argument("--out", required=True, help="d4rl: the file to write; minari: the dataset id (namespace/name-v0)")
    export.add_argument("--force", action="store_true", help="replace an existing file")
    export.add_argument("--cache_dir", default=None)
    export.add_argument("--mirror", default=None)
    train_policy = actions.add_parser("train-policy", help="train a SAC behaviour policy (resumable)")
    train_policy.add_argument("--robot", required=True)
    train_policy.add_argument("--steps", type=positive_int, default=300_000)
    train_policy.add_argument("--seed", type=int, default=0)
    train_policy.add_argument("--threads", type=int, default=1)
    train_policy.add_argument("--update_every", type=positive_int, default=1, help="one SAC update per N environment steps (N > 1: a slower learner, for medium-replay)")
    train_policy.add_argument("--hidden", type=comma_list(positive_int), default=(128, 128), help="actor and critic layer sizes (v0: 128,128; v1: 256,256)")
    train_policy.add_argument("--lr", type=positive_float, default=3e-4, help="actor and critic learning rate (SAC's 3e-4; smaller: a slower learner, for medium-replay)")
    train_policy.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                              help="SAC's update as a compiled population of one (auto: where a C++ compiler exists; off: SAC.update)")
    train_policy.add_argument("--out", default=None)
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
