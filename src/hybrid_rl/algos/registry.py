"""The algorithms the toolkit knows (one line each), and the one way the trainer builds one.

Each algorithm module declares itself in ``SPEC`` (``algos/spec.py``); everything here is
derived from those declarations. Config resolution, lowest to highest precedence:
1. the config dataclass defaults (the paper's / CORL's settings),
2. the declaration's ``reference_overrides(task)`` (CORL's per-dataset settings, e.g. IQL on
   hopper-medium; ``task`` is ``"<robot>-<level>"``, which the caller resolves from the
   dataset with ``data.loader.dataset_task`` so every form of an id agrees),
3. the user's ``overrides``.

The trainer should build the config first (``make_config``) to read the preprocessing
fields every config has (``batch_size``, ``normalize_observations``, ``reward_scaling``),
record ``dataclasses.asdict(config)`` in the run's config.json, then build the algorithm.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import torch

from . import bc, calql, cql, iql, rlpd, sac, td3bc
from .base import Algorithm
from .spec import AlgorithmSpec, FinetuneRecipe

# The algorithms the toolkit knows: adding one is its module plus its name in this line.
SPECS: dict[str, AlgorithmSpec] = {module.SPEC.name: module.SPEC for module in (iql, cql, calql, bc, td3bc, sac, rlpd)}


def register(spec: AlgorithmSpec) -> None:
    """Add an algorithm declared outside the package (a plug-in, or one defined in a test)."""
    SPECS[spec.name] = spec


def available_algorithms() -> list[str]:
    """Phase I algorithms (those that learn from a dataset alone), sorted."""
    return sorted(name for name, spec in SPECS.items() if spec.offline)


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The declaration of an algorithm or from-scratch method (ValueError for an unknown name)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in SPECS:
        online = sorted(set(SPECS) - set(available_algorithms()))
        raise ValueError(f"unknown algorithm {name!r}: available algorithms are {available_algorithms()} (online methods: {online})")
    return SPECS[key]


def is_known(name: str) -> bool:
    return isinstance(name, str) and name.strip().lower() in SPECS


def finetune_recipes() -> dict[str, FinetuneRecipe]:
    """The Phase II recipe of every algorithm that has one, by name."""
    return {name: spec.finetune for name, spec in SPECS.items() if spec.finetune is not None}


def _coerce(value: Any, annotation: Any) -> Any:
    """JSON/CLI values -> the field's type: lists become tuples for tuple fields."""
    if isinstance(value, list) and (annotation is tuple or typing.get_origin(annotation) is tuple):
        return tuple(value)
    return value


def apply_overrides(config: Any, changes: dict[str, Any], source: str) -> Any:
    """``config`` with ``changes`` (ValueError naming the valid fields for an unknown one)."""
    if not changes:
        return config
    hints = typing.get_type_hints(type(config))
    unknown = sorted(set(changes) - set(hints))
    if unknown:
        raise ValueError(f"{source}: unknown {type(config).__name__} field(s) {unknown}; valid fields are {sorted(hints)}")
    return dataclasses.replace(config, **{key: _coerce(value, hints[key]) for key, value in changes.items()})


def reference_overrides(name: str, task: str | None) -> dict[str, Any]:
    """The per-task reference settings ``make_config`` applies for this algorithm."""
    return algorithm_spec(name).reference_overrides(task)


def make_config(name: str, task: str | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """The algorithm's frozen config: defaults, then dataset reference overrides, then ``overrides``.

    Raises ValueError for an unknown algorithm or an unknown config field (listing the
    valid ones), and whatever the config's own validation raises for bad values.
    """
    spec = algorithm_spec(name)
    config = apply_overrides(spec.config(), spec.reference_overrides(task), f"reference overrides for {task!r}")
    return apply_overrides(config, dict(overrides or {}), "overrides")


def make_algorithm(
    name: str,
    obs_dim: int,
    act_dim: int,
    device: torch.device | str = "cpu",
    task: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Algorithm:
    """Build algorithm ``name`` for ``obs_dim``/``act_dim`` on ``device``.

    ``task`` (``"<robot>-<level>"`` of the source dataset, e.g. ``"hopper-medium"``) selects
    CORL's per-dataset settings; ``overrides`` (e.g.
    ``{"max_steps": 500_000}`` for IQL's LR schedule) are applied last.
    """
    return algorithm_spec(name).algorithm(obs_dim, act_dim, make_config(name, task, overrides), device)


# ---------------------------------------------------------------------------------------
# Settings: algorithm config fields as the command line names them (--set NAME=V1,V2)
# ---------------------------------------------------------------------------------------
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def algorithm_class(name: str) -> type[Algorithm]:
    """The class of an algorithm or from-scratch method (sac, rlpd)."""
    return algorithm_spec(name).algorithm


def config_from_dict(name: str, values: dict[str, Any]) -> Any:
    """An algorithm's config from its recorded fields (config.json's ``algo_config``)."""
    defaults = default_config(name)
    names = {f.name for f in dataclasses.fields(defaults)}
    return apply_overrides(defaults, {key: value for key, value in values.items() if key in names}, "recorded algo_config")


def default_config(name: str) -> Any:
    """The published defaults of an algorithm (or from-scratch method: sac, rlpd)."""
    return algorithm_spec(name).config()


def setting_fields(name: str) -> list[str]:
    """The config fields of ``name`` that --set can change, sorted."""
    return sorted(f.name for f in dataclasses.fields(default_config(name)))


def parse_setting(name: str, field_name: str, text: str) -> Any:
    """The value of config field ``field_name`` of algorithm ``name`` written as ``text``:
    numbers, true/false, none (where the field allows it), layer sizes as ``256x256``.
    ValueError (naming the field and what it takes) for text that is not such a value, or a
    value the config itself refuses (its own domain checks)."""
    defaults = default_config(name)
    hints = typing.get_type_hints(type(defaults))
    if field_name not in hints:
        raise ValueError(f"{name} has no setting {field_name!r}; its settings are {setting_fields(name)}")
    annotation = hints[field_name]
    options = [a for a in typing.get_args(annotation)] if typing.get_origin(annotation) in (typing.Union, types.UnionType) else [annotation]
    raw = text.strip()
    if raw.lower() in ("none", "null") and type(None) in options:
        value: Any = None
    else:
        kind = next(option for option in options if option is not type(None))
        try:
            value = _parse_as(kind, raw)
        except ValueError:
            what = {bool: "true or false", int: "a whole number", float: "a number", str: "a word"}.get(kind, "layer sizes like 256x256")
            raise ValueError(f"{field_name}={raw}: {name}'s {field_name} takes {what}") from None
    try:
        dataclasses.replace(defaults, **{field_name: value})  # the config's own domain checks
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{field_name}={raw}: {exc}") from None
    return value


def _parse_as(kind: Any, text: str) -> Any:
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.lower() in _TRUE
    if kind is int:
        number = float(text)
        if number != int(number):
            raise ValueError(text)
        return int(number)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    if kind is tuple or typing.get_origin(kind) is tuple:
        return tuple(int(part) for part in text.lower().split("x"))
    raise ValueError(text)


def non_default_settings(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that change ``name``'s published defaults, typed as the config holds them
    (sorted by field): what names a run with other settings."""
    defaults = default_config(name)
    changed = apply_overrides(defaults, {k: v for k, v in overrides.items() if k in typing.get_type_hints(type(defaults))}, "settings")
    return {key: getattr(changed, key) for key in sorted(overrides) if hasattr(changed, key) and getattr(changed, key) != getattr(defaults, key)}
