"""Runs into the experiment trackers researchers use. TensorBoard (``--tensorboard``) writes
event files into the run directory; Weights & Biases (``--wandb PROJECT``, the optional
``hybrid-rl[wandb]`` extra) gets the same scalars, the run's config.json, and a group per
results directory, so a grid or a study is browsed side by side. ``WANDB_MODE=offline``
keeps everything local (``wandb sync`` uploads it later)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError


def require_wandb() -> Any:
    """The ``wandb`` module, or the one-line error naming the extra that installs it."""
    try:
        import wandb
    except ImportError:
        raise MissingDependencyError("--wandb needs the optional 'wandb' package: pip install 'hybrid-rl[wandb]' (or drop --wandb)") from None
    return wandb


def start_wandb_run(project: str, run_dir: Path, run_id: str, config: dict[str, Any], job_type: str) -> Any:
    """A W&B run for one run directory: named by its run id, grouped by its results directory,
    with an id derived from the directory's path, so a resumed run continues its W&B run."""
    wandb = require_wandb()
    stable_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=project, name=run_id, id=stable_id, group=Path(run_dir).resolve().parent.name, job_type=job_type,
                      config=config, dir=str(run_dir), resume="allow", reinit="create_new")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record's numbers as tracker keys ``<kind>/<name>`` (step left out)."""
    return {f"{record['kind']}/{key}": value for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
