"""Read, validate and (atomically) write D4RL-layout HDF5 files.

Layout (as the d4rl package writes it): top-level datasets ``observations``, ``actions``,
``rewards``, ``terminals``, ``timeouts`` and usually ``next_observations``; groups
``infos/`` (``qpos``, ``qvel``, ``action_log_probs`` ...) and ``metadata/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.errors import HybridRLError
from ..core.fileio import atomic_path
from .dataset import ARRAY_FIELDS, OfflineDataset, build_next_observations

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
INFO_KEYS_LOADED = ("qpos", "qvel", "action_log_probs")


class DatasetFileError(HybridRLError, ValueError):
    """A dataset file is unreadable, truncated, or does not have the D4RL layout.

    A HybridRLError so the CLI prints the message (which says what to do) without a traceback.
    """


def validate_hdf5(path: str | Path) -> dict[str, Any]:
    """Check a D4RL-format file without loading it whole; raise DatasetFileError if bad.

    Checks: opens as HDF5, required keys present, every per-transition array has the same
    number of rows, 2-D observations/actions, and (cheaply, in chunks) finite values.
    Returns a small description (rows, dims, which optional keys exist).
    """
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetFileError(f"{path} is not a readable HDF5 file ({exc}); delete it and download or generate it again") from exc
    with handle:
        missing = [key for key in REQUIRED_KEYS if key not in handle]
        if missing:
            raise DatasetFileError(f"{path} lacks the required key(s) {missing}; a D4RL-format file needs {list(REQUIRED_KEYS)}")
        not_arrays = [key for key in ARRAY_FIELDS if key in handle and not isinstance(handle[key], h5py.Dataset)]
        if not_arrays:
            raise DatasetFileError(f"{path}: {not_arrays} must be HDF5 datasets (arrays), not groups; this is not a D4RL-format file")
        rows = handle["observations"].shape[0]
        per_row = [key for key in ARRAY_FIELDS if key in handle]
        per_row += [f"infos/{key}" for key in INFO_KEYS_LOADED if f"infos/{key}" in handle]
        for key in per_row:
            if handle[key].shape[0] != rows:
                raise DatasetFileError(f"{path}: '{key}' has {handle[key].shape[0]} rows but 'observations' has {rows}")
        if rows == 0:
            raise DatasetFileError(f"{path} holds no transitions")
        for key in ("observations", "actions"):
            if handle[key].ndim != 2:
                raise DatasetFileError(f"{path}: '{key}' must be 2-D (N, dim), got shape {handle[key].shape}")
        if "next_observations" in handle and handle["next_observations"].shape != handle["observations"].shape:
            raise DatasetFileError(f"{path}: next_observations {handle['next_observations'].shape} != observations {handle['observations'].shape}")
        for key in ("rewards", "terminals", "timeouts"):
            if handle[key].ndim != 1:
                raise DatasetFileError(f"{path}: '{key}' must be 1-D, got shape {handle[key].shape}")
        chunk = 200_000
        for key in ("observations", "actions", "rewards", "next_observations"):
            if key not in handle:
                continue
            data = handle[key]
            for start in range(0, rows, chunk):
                try:
                    block = data[start : start + chunk]
                except OSError as exc:  # truncated file: the data region is missing
                    raise DatasetFileError(f"{path}: cannot read '{key}' rows {start}+ ({exc}); the file is truncated or corrupt") from exc
                if not np.all(np.isfinite(block)):
                    raise DatasetFileError(f"{path}: '{key}' contains NaN or infinite values")
        return {
            "rows": int(rows),
            "obs_dim": int(handle["observations"].shape[1]),
            "act_dim": int(handle["actions"].shape[1]),
            "has_next_observations": "next_observations" in handle,
            "infos": [key for key in INFO_KEYS_LOADED if f"infos/{key}" in handle],
        }


def _read_metadata(group: h5py.Group, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in group.items():
        name = f"{prefix}{key}"
        if isinstance(item, h5py.Group):
            out.update(_read_metadata(item, prefix=f"{name}/"))
            continue
        if item.size > 64:
            # D4RL files store the behaviour policy's weights under metadata/policy/*:
            # describe large arrays instead of copying them into every run config.
            out[name] = f"<array shape={item.shape} dtype={item.dtype}>"
            continue
        value = item[()]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, str) and value.startswith("json:"):
            value = json.loads(value[5:])
        out[name] = value
    return out


def read_hdf5_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata/`` group of a D4RL-format file (``{}`` if it has none), without its arrays."""
    with h5py.File(path, "r") as handle:
        return _read_metadata(handle["metadata"]) if "metadata" in handle else {}


def read_hdf5(path: str | Path, *, name: str | None = None, validate: bool = True) -> OfflineDataset:
    """Load a D4RL-format file as an OfflineDataset.

    If the file has no ``next_observations``, they are built as d4rl's ``qlearning_dataset``
    does (dropping each timed-out episode's final transition and the file's last one) and
    ``metadata['next_observations_built']`` says so.
    """
    path = Path(path)
    if validate:
        validate_hdf5(path)
    try:
        return _read_hdf5(path, name=name)
    except OSError as exc:  # damage that validation does not read (e.g. inside infos/)
        raise DatasetFileError(f"{path}: cannot be read ({exc}); the file is truncated or corrupt - delete it and download or generate it again") from exc


def _read_hdf5(path: Path, *, name: str | None) -> OfflineDataset:
    with h5py.File(path, "r") as handle:
        arrays = {
            "observations": handle["observations"][()].astype(np.float32),
            "actions": handle["actions"][()].astype(np.float32),
            "rewards": handle["rewards"][()].astype(np.float32).reshape(-1),
            "terminals": handle["terminals"][()].astype(bool).reshape(-1),
            "timeouts": handle["timeouts"][()].astype(bool).reshape(-1),
        }
        infos = {key: handle[f"infos/{key}"][()].astype(np.float32) for key in INFO_KEYS_LOADED if f"infos/{key}" in handle}
        metadata = _read_metadata(handle["metadata"]) if "metadata" in handle else {}
        if "next_observations" in handle:
            arrays["next_observations"] = handle["next_observations"][()].astype(np.float32)
        else:
            next_obs, keep = build_next_observations(arrays["observations"], arrays["terminals"], arrays["timeouts"])
            if not keep.any():
                raise DatasetFileError(
                    f"{path} has no next_observations, and building them as d4rl.qlearning_dataset does drops every one of its "
                    f"{len(keep)} transitions (each is a timeout or the file's last); store next_observations in the file"
                )
            # Dropping a timed-out episode's last step makes the step before it the new end:
            # mark it as a timeout so episode boundaries survive.
            kept_timeouts = np.zeros(len(keep), dtype=bool)
            dropped = np.flatnonzero(~keep)
            kept_timeouts[dropped[dropped > 0] - 1] = True
            arrays = {key: value[keep] for key, value in arrays.items()}
            # A terminal already ends its episode: it must not also become a timeout.
            arrays["timeouts"] = arrays["timeouts"] | (kept_timeouts[keep] & ~arrays["terminals"])
            arrays["next_observations"] = next_obs
            infos = {key: value[keep] for key, value in infos.items()}
            metadata["next_observations_built"] = (
                "file had no next_observations; built as d4rl.qlearning_dataset does "
                f"(dropped {int((~keep).sum())} transitions whose successor is unknown)"
            )
    metadata.setdefault("source_path", str(path))
    return OfflineDataset(**arrays, name=name or path.stem, infos=infos, metadata=metadata)


def _write_metadata(group: h5py.Group, metadata: dict[str, Any]) -> None:
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, (dict, list, tuple)):
            value = "json:" + json.dumps(value, sort_keys=True)
        group.create_dataset(key, data=value)


def write_hdf5(dataset: OfflineDataset, path: str | Path, *, compression: str | None = None) -> Path:
    """Write `dataset` in the D4RL layout, atomically (temporary file + rename).

    Deterministic: the same dataset gives the same bytes (no timestamps are stored;
    HDF5 object time tracking is switched off).
    """
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as handle:
        options = {"track_times": False}
        if compression:
            options["compression"] = compression
        for key in ARRAY_FIELDS:
            handle.create_dataset(key, data=getattr(dataset, key), **options)
        infos = handle.create_group("infos")
        for key, value in dataset.infos.items():
            infos.create_dataset(key, data=value, **options)
        _write_metadata(handle.create_group("metadata"), {"name": dataset.name, **dataset.metadata})
    return path
