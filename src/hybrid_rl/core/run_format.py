"""The run directory's format: file names, statuses and the questions everyone asks of a run.

One home for what a run directory is (docs/run_format.md). The trainer writes it, the grid
and the launchers ask whether a run is finished or where it resumes, and the analysis reads
it; all of them take the names and rules from here. This module imports nothing of the
training code (and torch only inside ``checkpoint_step``), so the analysis stays independent
of training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RUN_FORMAT_VERSION = 1

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
RUN_LOCK_FILE = ".run.lock"
GRID_LOCK_FILE = ".grid.lock"
GRID_STATUS_FILE = "grid_status.json"

COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
RESULT_STATUSES = (COMPLETED, DIVERGED)
"""Final statuses whose score is a result: such a run is finished and never trained again."""
KNOWN_STATUSES = (COMPLETED, DIVERGED, FAILED)
IN_PROGRESS = "in_progress"
"""What the analysis calls a run without summary.json (still training, or interrupted)."""

# Run states as the grid plans them.
STATE_COMPLETE, STATE_PARTIAL, STATE_NEW = "complete", "partial", "new"


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of a run, or None if it has none (or an unreadable one)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def finished_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The summary of a finished run (status completed or diverged), else None."""
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("status") in RESULT_STATUSES else None


def run_state(run_dir: str | Path) -> str:
    """"complete" (a final summary), "partial" (a checkpoint to resume from) or "new"."""
    if finished_summary(run_dir) is not None:
        return STATE_COMPLETE
    return STATE_PARTIAL if (Path(run_dir) / CHECKPOINT_FILE).exists() else STATE_NEW


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step an unfinished run resumes from (its checkpoint's), or None: no checkpoint,
    an unreadable one (the trainer reports that properly), or a run with a summary."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    if not path.exists() or (run_dir / SUMMARY_FILE).exists():
        return None
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
    except Exception:
        return None


def final_score(eval_values: Sequence[float] | np.ndarray, fraction: float = 0.1) -> float:
    """Final score of one run: mean of the last ``fraction`` of its evaluations.

    The trainer's ``summary.json`` uses this function, so a score recomputed from
    metrics.jsonl matches the one the run reported: the last
    ``max(1, round(fraction * n))`` evaluations, NaN evaluations among them ignored; NaN
    when there is no finite evaluation in that tail (or no evaluation at all).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = np.asarray(eval_values, dtype=float)
    if values.size == 0:
        return math.nan
    tail = values[-max(1, int(round(values.size * fraction))):]
    finite = tail[np.isfinite(tail)]
    return float(finite.mean()) if finite.size else math.nan
