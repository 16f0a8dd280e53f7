"""The declaration of a config field (``option``), and the options every run takes.

Every config field is declared with ``option``: its default, help text, check and flag.
``RunOptions`` is the base of ``runs.configs.TrainConfig`` and ``FinetuneConfig``, as
``data.dataspec.DataOptions`` is; the command line derives the flags of ``hybrid-rl train``,
``hybrid-rl finetune``, ``dataset train-policy`` and the studies' axes from the declared
fields (``cli.add_config_arguments``, ``cli.add_study_flag``), so a default or a help text is
written in one place. The fields stay flat in the configs (and in every config.json).
Importable without torch, so that building the command line (and ``--help``) does not load
the trainer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import HybridRLError
from .grid_options import COMPILE_HELP, COMPILE_MODES, DEFAULT_CHECKPOINT_EVERY, DEFAULT_EVAL_EVERY, DEFAULT_LOG_EVERY


class RunOptionError(HybridRLError, ValueError):
    """A run option outside its domain."""


def option(default: Any, help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (), parse: Callable[[str], Any] | None = None,
           metavar: str | None = None, const: Any = None, required: bool = False, positive: bool = False, minimum: float | None = None, maximum: float | None = None,
           choices: tuple[str, ...] | None = None, command_line: bool = True, schedule: bool = False, identity: bool = True, group: str = "",
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field's declaration: its default, help text, check and command-line flag.

    The flag: ``flag`` is its spelling when it is not ``--<name>`` (``aliases``: further
    spellings), ``parse`` reads its text when the field's type is not a plain int, float or
    str (a ValueError becomes the flag's one-line error), ``const``: the value of the bare
    flag (``--compile`` alone means on), ``required``: the command needs it (a field
    without a default, ``dataclasses.MISSING``, is required from Python too). ``command_line=False``: a Python-only
    field (no flag). ``schedule``: a step interval that the command line leaves unset by
    default, so that ``grid_options.run_schedule`` fits it to the run's length.
    The check (``check_options``, when a config is made): ``positive`` (> 0), ``minimum``
    and ``maximum`` (inclusive), ``choices``. ``identity=False``: the field does not change
    what the run computes (where it runs, how it is watched, where its files go), so a run
    resumes under another value. ``group``: fields a command may introduce together (the
    data's, ``"data"``).
    """
    metadata = {"help": help, "flag": flag, "aliases": aliases, "parse": parse, "metavar": metavar, "const": const,
                "required": required or (default is dataclasses.MISSING and default_factory is dataclasses.MISSING), "positive": positive,
                "minimum": minimum, "maximum": maximum, "choices": choices, "command_line": command_line, "schedule": schedule, "identity": identity,
                "group": group}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata, kw_only=True)
    return field(default=default, metadata=metadata, kw_only=True)


def redeclared(owner: type, name: str, default: Any) -> Any:
    """Field ``name`` of ``owner`` as declared there (help, check, flag), with another default:
    for a config whose default differs from its base's (a Phase I run has a default dataset)."""
    metadata = dict(declared_field(owner, name).metadata)
    return field(default=default, metadata=metadata, kw_only=True)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How a run is trained, logged and stored (not what it learns: that is its config's own
    fields and ``algo_overrides``)."""

    seed: int = option(0, "random seed of the run: network initialisation, batches, corruption and exploration draws")
    eval_every: int = option(DEFAULT_EVAL_EVERY, f"steps between evaluations; default {DEFAULT_EVAL_EVERY:,} (at most the run's length)",
                             positive=True, schedule=True)
    eval_episodes: int = option(10, "episodes per evaluation; default 10", positive=True)
    log_every: int = option(DEFAULT_LOG_EVERY, f"steps between train logs; default {DEFAULT_LOG_EVERY:,} (20 logs in runs under 20k steps)",
                            positive=True, schedule=True)
    checkpoint_every: int = option(DEFAULT_CHECKPOINT_EVERY, f"steps between checkpoints; default {DEFAULT_CHECKPOINT_EVERY:,}", positive=True,
                                   schedule=True, identity=False)
    loss_variance_window: int = option(1_000, "updates in the rolling critic-loss variance", positive=True, command_line=False)
    q_divergence_factor: float = option(100.0, "a run has diverged when |Q| > factor * max|r| / (1 - discount)", positive=True, command_line=False)
    algo_overrides: dict[str, Any] = option(None, "the algorithm's settings that differ from its defaults", default_factory=dict,
                                            command_line=False)
    device: str = option("auto", "auto, cpu, cuda (cuda:N) or mps; default auto", identity=False)
    threads: int | None = option(None, "torch threads of the run; default: torch's choice", positive=True, identity=False)
    # The update path: the same math either way (compiled_step_wanted).
    compile: str = option("auto", COMPILE_HELP, choices=COMPILE_MODES, const="on", identity=False)
    tensorboard: bool = option(False, "also write TensorBoard event files into the run directory", identity=False)
    # A command checks that the package is there before any work (cli.check_wandb).
    wandb: str | None = option(None, "also log to this Weights & Biases project (pip install 'hybrid-rl[wandb]'; WANDB_MODE=offline keeps it local)",
                               metavar="PROJECT", identity=False)
    progress: bool = option(True, "show a progress bar", command_line=False, identity=False)
    results_dir: str = option("results", "results directory (one sub-directory per run)", flag="--results", identity=False)
    cache_dir: str | None = option(None, "dataset cache directory; default ~/.d4rl/datasets for D4RL files ($D4RL_DATASET_DIR) and "
                                   "~/.hybrid_rl/datasets for generated data ($HYBRID_RL_DATA_DIR)", identity=False)
    mirror: str | None = option(None, "base URL of a D4RL mirror (or set HYBRID_RL_D4RL_MIRROR)", identity=False)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True, kw_only=True)
class FinetuneRunOptions(RunOptions):
    """A fine-tuning run's options: a run's, with the runs in their own results directory."""

    results_dir: str = option("results_phase2", "results directory of fine-tuning runs (one sub-directory per run)", flag="--results", identity=False)


def run_option_fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(RunOptions)


def declared_fields(config_class: type) -> tuple[dataclasses.Field, ...]:
    """The fields of ``config_class`` declared with ``option`` (each with its help and check)."""
    return tuple(spec for spec in dataclasses.fields(config_class) if "help" in spec.metadata)


def declared_field(config_class: type, name: str) -> dataclasses.Field:
    """One declared field of ``config_class`` (its default, ``metadata["help"]``, ...)."""
    found = [spec for spec in declared_fields(config_class) if spec.name == name]
    if not found:
        raise KeyError(f"{config_class.__name__} declares no field {name!r}")
    return found[0]


def run_option(name: str) -> dataclasses.Field:
    """One run option's declaration (its default, ``metadata["help"]``, ...)."""
    return declared_field(RunOptions, name)


def non_identity_options(config_class: type | None = None) -> tuple[str, ...]:
    """The declared fields of ``config_class`` (default: the run options) that do not change
    what a run computes: left out of its identity, so a run resumes under other values."""
    return tuple(spec.name for spec in declared_fields(config_class or RunOptions) if not spec.metadata["identity"])


def check_options(config: Any) -> None:
    """Every declared field's check (``positive``, ``minimum``, ``maximum``, ``choices``) on ``config``."""
    for spec in declared_fields(type(config)):
        value = getattr(config, spec.name)
        if value is None:
            continue
        meta = spec.metadata
        if meta["positive"] and not value > 0:
            raise RunOptionError(f"{spec.name} must be positive, got {value}")
        if meta["minimum"] is not None and not value >= meta["minimum"]:
            raise RunOptionError(f"{spec.name} must be >= {meta['minimum']:g}, got {value}")
        if meta["maximum"] is not None and not value <= meta["maximum"]:
            raise RunOptionError(f"{spec.name} must be <= {meta['maximum']:g}, got {value}")
        if meta["choices"] is not None and value not in meta["choices"]:
            raise RunOptionError(f"{spec.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
