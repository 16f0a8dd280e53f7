"""Name -> (algorithm class, config class), and the one way the trainer builds an algorithm.

Config resolution, lowest to highest precedence:
1. the config dataclass defaults (the paper's / CORL's settings),
2. ``reference_overrides(task)`` of the algorithm's module (CORL's per-dataset settings,
   e.g. IQL on hopper-medium; ``task`` is ``"<robot>-<level>"``, which the caller resolves
   from the dataset with ``data.loader.dataset_task`` so every form of an id agrees),
3. the user's ``overrides``.

The trainer should build the config first (``make_config``) to read the preprocessing
fields every config has (``batch_size``, ``normalize_observations``, ``reward_scaling``),
record ``dataclasses.asdict(config)`` in the run's config.json, then build the algorithm.
"""
from __future__ import annotations

import dataclasses
import typing
from types import ModuleType
from typing import Any

import torch

from . import bc, calql, cql, iql, td3bc
from .base import Algorithm

# name -> (Algorithm subclass, config dataclass, module with ``reference_overrides``)
_REGISTRY: dict[str, tuple[type[Algorithm], type, ModuleType]] = {
    "iql": (iql.IQL, iql.IQLConfig, iql),
    "cql": (cql.CQL, cql.CQLConfig, cql),
    "calql": (calql.CalQL, calql.CalQLConfig, calql),
    "bc": (bc.BC, bc.BCConfig, bc),
    "td3bc": (td3bc.TD3BC, td3bc.TD3BCConfig, td3bc),
}

ALGORITHMS: dict[str, tuple[type[Algorithm], type]] = {name: (cls, config) for name, (cls, config, _) in _REGISTRY.items()}


def available_algorithms() -> list[str]:
    """Names accepted by ``make_algorithm``, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[type[Algorithm], type, ModuleType]:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}: available algorithms are {available_algorithms()}")
    return _REGISTRY[key]


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
    return _lookup(name)[2].reference_overrides(task)


def make_config(name: str, task: str | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """The algorithm's frozen config: defaults, then dataset reference overrides, then ``overrides``.

    Raises ValueError for an unknown algorithm or an unknown config field (listing the
    valid ones), and whatever the config's own validation raises for bad values.
    """
    _, config_cls, module = _lookup(name)
    config = config_cls()
    config = apply_overrides(config, module.reference_overrides(task), f"reference overrides for {task!r}")
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
    algorithm_cls = _lookup(name)[0]
    return algorithm_cls(obs_dim, act_dim, make_config(name, task, overrides), device)
