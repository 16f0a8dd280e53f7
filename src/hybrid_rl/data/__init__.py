"""Data layer: sources -> OfflineDataset -> corruption -> sampler.

The names below load on first use (PEP 562), so that the layer's torch-free modules
(``dataspec``, ``refs``, ...) can be imported without loading torch: the command line
builds its flags, and ``--help`` answers, from the configs' declarations alone.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..core import errors as _errors

_HOMES = {
    "corruption": ("CORRUPTION_KINDS", "add_reward_noise", "apply_corruptions", "corrupt_transitions", "flip_reward_sign", "remove_top_k_trajectories",
                   "replace_rewards", "spec_from_record"),
    "dataset": ("OfflineDataset", "TransitionSampler", "concatenate_datasets"),
    "hdf5io": ("DatasetFileError", "read_hdf5", "validate_hdf5", "write_hdf5"),
    "loader": ("known_dataset_ids", "load_dataset", "make_env", "make_vector_env"),
    "refs": ("normalized_score",),
    "replay": ("DeviceReplayBuffer", "ReplayBuffer"),
}
_ERRORS = ("DatasetEnvMismatchError", "DatasetUnavailableError", "HybridRLError", "MissingDependencyError", "UnknownDatasetError")
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted([*_HOME_OF, *_ERRORS])


def __getattr__(name: str) -> Any:
    if name in _ERRORS:
        return getattr(_errors, name)
    if name in _HOME_OF:
        return getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
