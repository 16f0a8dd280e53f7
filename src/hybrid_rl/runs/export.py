"""Damaged data out to other libraries: the exact data a run trained on (or any dataset
with the grid's corruptions and a seed) as a D4RL-format HDF5 file or a local Minari
dataset, with its provenance.

The written data carry, in their metadata: ``source_dataset_id`` (the dataset they were made
from, so hybrid-rl's per-dataset presets and loaders recognise them), ``source_checksum``
(SHA-256 of the source arrays: a run's ``dataset_checksum``), ``checksum`` (SHA-256 of the
exported arrays), ``corruption`` (the corruption parameters and seed), ``corruption_records``
(exactly what was removed or perturbed) and, from a run, ``run_id``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.errors import HybridRLError
from ..core.run_format import CONFIG_FILE, RESULT_STATUSES, read_summary
from .configs import TrainConfig
from .train import prepare_dataset

FORMATS = ("d4rl", "minari")


def data_config_of_run(run_dir: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The data settings of a finished run (a fine-tuning run: its parent's data) and its
    config.json; one-line HybridRLError for a directory that is no finished run."""
    from .finetune import train_config_from

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise HybridRLError(f"--from {run_dir}: no run directory there (no {CONFIG_FILE}); pass RESULTS/RUN_ID of a finished run")
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") not in RESULT_STATUSES:
        status = "no summary yet" if summary is None else f"status {summary.get('status')!r}"
        raise HybridRLError(f"--from {run_dir} is not finished ({status}); export the data of a finished run")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    return train_config_from({**config, **(config.get("parent_identity") or {})}), config


def export_dataset(data: TrainConfig, out: str | Path, *, fmt: str = "d4rl", run_config: dict[str, Any] | None = None) -> str:
    """Write the data ``data`` describes (its dataset with its corruptions and seed) to ``out``
    (a file path for d4rl, a Minari id for minari); returns what was written. From a run
    (``run_config``) the source data must still have the checksum the run recorded."""
    original, corrupted, records = prepare_dataset(data)
    if run_config is not None and run_config.get("dataset_checksum") and original.checksum() != run_config["dataset_checksum"]:
        raise HybridRLError(f"the data of {run_config.get('run_id')} changed since it was trained (checksum differs): it cannot be exported as that run's data")
    provenance = {
        "source_dataset_id": data.dataset, "source_checksum": original.checksum(), "checksum": corrupted.checksum(),
        "corruption": {"remove_top_k": data.remove_top_k, "reward_noise_std": data.reward_noise_std, "extra": list(data.extra_corruptions), "seed": data.seed},
        "corruption_records": json.loads(json.dumps(records, default=str)), "exported_by": "hybrid-rl",
        **({"run_id": run_config.get("run_id")} if run_config else {}),
    }
    if fmt == "minari":
        from ..data.loader import export_minari

        return export_minari(corrupted, str(out), provenance=provenance)
    from ..data.hdf5io import write_hdf5

    keep = {key: value for key, value in original.metadata.items() if key in ("env_name", "gym_env_id", "gym_env_kwargs", "gym_env_spec", "source", "recipe")}
    write_hdf5(corrupted.replace(metadata={**keep, **provenance}), Path(out))
    return str(out)
