"""Build the results report (tables + figures) from a directory of run directories.

``build_report(results_dir, plots_dir)`` is the "plot only" entry point: it reads only
run directories (see ``runs.py``), so it works on results copied from any machine, and
rebuilding from the same runs gives byte-identical files.

Outputs:
- ``<results>/summary.csv``: one row per (dataset, algo, corruption level), machine-readable.
- ``<results>/summary.md``: the same tables for people, plus an across-datasets table,
  in-progress/failed runs, data-quality notes and the figures.
- ``<plots_dir>/*.png|pdf``: the figures of ``plotting.py``.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..data.refs import PUBLISHED_SCORES
from ..fileio import atomic_write_text
from .plotting import algo_display_name, plot_all, safe_name
from .runs import IN_PROGRESS, CorruptionLevel, RunRecord, failed_before_start, load_runs
from .stats import (
    DEFAULT_REPS,
    DEFAULT_SEED,
    ScoreEstimate,
    interval_estimates,
)

SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"


@dataclass(frozen=True)
class GroupSummary:
    """Final-score statistics of one (dataset, algo, corruption level) cell.

    ``n_seeds`` counts completed + diverged runs; ``n_no_score`` those of them without a
    final score (e.g. diverged before their first evaluation), which the estimates leave out.
    Failed and in-progress runs are counted apart and never enter the estimates.
    """

    dataset: str
    algo: str
    level: CorruptionLevel
    seeds: tuple[int, ...]
    n_diverged: int
    n_no_score: int
    n_failed: int
    n_in_progress: int
    mean: ScoreEstimate
    iqm: ScoreEstimate
    final_scores: tuple[float, ...]
    behavior_score: float
    corrupted_behavior_score: float
    published_score: float

    @property
    def n_seeds(self) -> int:
        """Number of result runs (completed or diverged)."""
        return len(self.seeds)


def published_score(dataset: str, algo: str) -> float:
    """CORL's published final score for a D4RL dataset id and algo, NaN if there is none."""
    return PUBLISHED_SCORES.get(dataset, {}).get(algo, math.nan)


def _median_finite(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def summarize_groups(runs: Sequence[RunRecord], reps: int = DEFAULT_REPS,
                     seed: int = DEFAULT_SEED) -> list[GroupSummary]:
    """One ``GroupSummary`` per (dataset, algo, level) that has at least one result run.

    Sorted by dataset, algo, level. Estimates: IQM and mean over seeds with 95%
    stratified-bootstrap CIs (``stats.interval_estimates``).
    """
    groups: dict[tuple[str, str, CorruptionLevel], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[(run.dataset, run.algo, run.level)].append(run)
    summaries = []
    for (dataset, algo, level), group in sorted(groups.items()):
        results = [r for r in group if r.is_result]
        if not results:
            continue
        scores = [r.final_score for r in results]
        estimates = interval_estimates(scores, reps=reps, seed=seed)
        summaries.append(GroupSummary(
            dataset=dataset,
            algo=algo,
            level=level,
            seeds=tuple(r.seed for r in results),
            n_diverged=sum(r.diverged for r in results),
            n_no_score=sum(not math.isfinite(s) for s in scores),
            n_failed=sum(r.status == "failed" for r in group),
            n_in_progress=sum(r.status == IN_PROGRESS for r in group),
            mean=estimates["mean"],
            iqm=estimates["iqm"],
            final_scores=tuple(scores),
            behavior_score=_median_finite(r.behavior_score for r in results),
            corrupted_behavior_score=_median_finite(r.corrupted_behavior_score for r in results),
            published_score=published_score(dataset, algo),
        ))
    return summaries


@dataclass(frozen=True)
class AcrossDatasets:
    """IQM and mean over datasets x seeds for one (algo, level), datasets as strata."""

    algo: str
    level: CorruptionLevel
    datasets: tuple[str, ...]
    estimates: dict[str, ScoreEstimate] | None
    reason: str = ""


def summarize_across_datasets(summaries: Sequence[GroupSummary], reps: int = DEFAULT_REPS,
                              seed: int = DEFAULT_SEED) -> list[AcrossDatasets]:
    """Aggregate each (algo, level) over the datasets it was run on (at least two).

    The stratified bootstrap resamples seeds within each dataset, which needs a
    (seeds x datasets) matrix: cells with unequal numbers of scored seeds are reported
    as not comparable rather than silently truncated.
    """
    by_key: dict[tuple[str, CorruptionLevel], list[GroupSummary]] = defaultdict(list)
    for summary in summaries:
        by_key[(summary.algo, summary.level)].append(summary)
    rows = []
    for (algo, level), cells in sorted(by_key.items()):
        if len(cells) < 2:
            continue
        datasets = tuple(c.dataset for c in cells)
        columns = [np.array([s for s in c.final_scores if math.isfinite(s)]) for c in cells]
        counts = sorted({len(col) for col in columns})
        if len(counts) > 1 or counts[0] == 0:
            reason = "scored seeds per dataset differ: " + ", ".join(str(len(c)) for c in columns)
            rows.append(AcrossDatasets(algo, level, datasets, None, reason))
            continue
        matrix = np.stack(columns, axis=1)
        rows.append(AcrossDatasets(algo, level, datasets, interval_estimates(matrix, reps=reps, seed=seed)))
    return rows


# ----------------------------------------------------------------------------- CSV
def _fmt(value: float, digits: int = 4) -> str:
    """CSV number: fixed digits so rebuilds are byte-identical; empty for NaN/missing."""
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def corruption_keys(levels: Iterable[CorruptionLevel]) -> list[str]:
    """All corruption parameters active at some level, in canonical order."""
    keys: dict[str, tuple] = {}
    for level in sorted(set(levels)):
        for key in level.active_keys():
            keys.setdefault(key)
    return list(keys)


def summary_csv_text(summaries: Sequence[GroupSummary]) -> str:
    """The summary table as CSV text, one row per (dataset, algo, corruption level)."""
    keys = corruption_keys(s.level for s in summaries)
    header = ["dataset", "algo", "corruption", *keys, "n_seeds", "n_diverged", "n_no_score", "n_failed",
              "n_in_progress", "final_mean", "final_mean_ci_low", "final_mean_ci_high", "final_iqm",
              "final_iqm_ci_low", "final_iqm_ci_high", "behavior_score", "corrupted_data_behavior_score",
              "published_corl_clean", "seeds"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for s in summaries:
        writer.writerow([
            s.dataset, s.algo, s.level.label, *(f"{s.level.value_of(k):g}" for k in keys),
            s.n_seeds, s.n_diverged, s.n_no_score, s.n_failed, s.n_in_progress,
            _fmt(s.mean.point), _fmt(s.mean.low), _fmt(s.mean.high),
            _fmt(s.iqm.point), _fmt(s.iqm.low), _fmt(s.iqm.high),
            _fmt(s.behavior_score), _fmt(s.corrupted_behavior_score), _fmt(s.published_score),
            ";".join(str(seed) for seed in s.seeds),
        ])
    return buffer.getvalue()


# ----------------------------------------------------------------------------- Markdown
def _md_number(value: float, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _group_row(s: GroupSummary) -> list[str]:
    notes = []
    if s.n_no_score:
        notes.append(f"{s.n_no_score} without a final score (no evaluation), left out of mean/IQM")
    if s.n_failed:
        notes.append(f"+{s.n_failed} failed")
    if s.n_in_progress:
        notes.append(f"+{s.n_in_progress} in progress")
    return [
        algo_display_name(s.algo),
        s.level.label,
        str(s.n_seeds),
        str(s.n_diverged),
        s.mean.format(),
        s.iqm.format(),
        _md_number(s.corrupted_behavior_score),
        _md_number(s.published_score),
        "; ".join(notes),
    ]


def _relative_link(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _bootstrap_note(reps: int, seed: int) -> str:
    return (f"95% confidence intervals: stratified bootstrap over seeds (percentile method, {reps} "
            f"resamples, seed {seed}; computed with rliable, Agarwal et al. 2021).")


def summary_markdown(
    results_dir: Path,
    runs: Sequence[RunRecord],
    summaries: Sequence[GroupSummary],
    across: Sequence[AcrossDatasets],
    figures: Sequence[Path],
    reps: int,
    seed: int,
    early_failures: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The human-readable report (no timestamps or absolute paths: rebuilds are identical)."""
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[run.status] += 1
    lines = [
        f"# Results summary: `{results_dir.name}`",
        "",
        f"{len(runs) + len(early_failures)} run directories: {counts['completed']} completed, "
        f"{counts['diverged']} diverged, {counts['failed'] + len(early_failures)} failed, "
        f"{counts[IN_PROGRESS]} in progress.",
        "",
        "- Scores are D4RL normalized returns (0 = random policy, 100 = expert).",
        "- A run's **final score** is the mean of its last 10% of evaluations; a diverged run is scored "
        "at its last evaluation before divergence (it stays in the table and is counted under *diverged*).",
        "- **mean** and **IQM** (interquartile mean) are over seeds. " + _bootstrap_note(reps, seed)
        + " `(n=1)`: a single seed, no interval.",
        "- *data after corruption*: behaviour score (normalized return) of the dataset the agents trained "
        "on; *CORL*: published score on the clean D4RL dataset (CORL, final step).",
        "",
    ]
    header = ["algo", "corruption", "seeds", "diverged", "final mean [95% CI]", "final IQM [95% CI]",
              "data after corruption", "CORL (clean)", "notes"]
    by_dataset: dict[str, list[GroupSummary]] = defaultdict(list)
    for s in summaries:
        by_dataset[s.dataset].append(s)
    figure_stems = [Path(p) for p in figures]
    for dataset, cells in sorted(by_dataset.items()):
        behavior = _median_finite(c.behavior_score for c in cells)
        lines += [f"## {dataset}", "", f"Behaviour policy (uncorrupted dataset): **{_md_number(behavior)}**.", ""]
        lines += _md_table(header, (_group_row(c) for c in cells))
        lines.append("")
        # Figure stems are "<kind>__<dataset>[__<axis>]".
        pngs = [p for p in figure_stems if p.suffix == ".png" and p.stem.split("__")[1:2] == [safe_name(dataset)]]
        for png in pngs:
            lines.append(f"![{png.stem}]({_relative_link(png, results_dir)})")
        if pngs:
            lines.append("")

    if across:
        lines += ["## Across datasets", "",
                  "IQM and mean over all (dataset, seed) final scores of an (algo, corruption) cell; the "
                  "bootstrap resamples seeds within each dataset (stratified).", ""]
        rows = []
        for row in across:
            if row.estimates is None:
                rows.append([algo_display_name(row.algo), row.level.label, str(len(row.datasets)), "n/a", "n/a",
                             row.reason])
            else:
                rows.append([algo_display_name(row.algo), row.level.label, str(len(row.datasets)),
                             row.estimates["mean"].format(), row.estimates["iqm"].format(), ""])
        lines += _md_table(["algo", "corruption", "datasets", "final mean [95% CI]", "final IQM [95% CI]",
                            "notes"], rows)
        lines.append("")

    lines += _status_sections(runs, early_failures)
    return "\n".join(lines).rstrip("\n") + "\n"


def _status_sections(runs: Sequence[RunRecord], early_failures: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """In-progress runs, failed runs (also those that died before config.json) and notes."""
    lines: list[str] = []
    in_progress = [r for r in runs if r.status == IN_PROGRESS]
    if in_progress:
        lines += ["## In progress", "",
                  "No summary.json yet (still running, or killed before finishing); not in the tables or figures.", ""]
        for r in in_progress:
            total = f"/{r.total_steps}" if r.total_steps else ""
            lines.append(f"- `{r.run_id}`: step {r.last_step}{total}")
        lines.append("")
    failed = [r for r in runs if r.status == "failed"]
    if failed or early_failures:
        lines += ["## Failed", "", "Crashed runs (errors, not results); not in the tables or figures.", ""]
        for r in failed:
            lines.append(f"- `{r.run_id}` at step {r.last_step}: {_last_line((r.summary or {}).get('error'))}")
        for failure in early_failures:
            lines.append(f"- `{failure['run_id']}` before it started (no config.json): "
                         f"{_last_line(failure['error'])}")
        lines.append("")
    notes = _data_notes(runs)
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return lines


def _last_line(error: Any) -> str:
    """Last line of an error message (a traceback's last line names the exception)."""
    lines = str(error or "no error message").strip().splitlines()
    return lines[-1] if lines else "no error message"


def _data_notes(runs: Sequence[RunRecord]) -> list[str]:
    notes = []
    for r in runs:
        if r.metrics_truncated:
            notes.append(f"`{r.run_id}`: the last line of metrics.jsonl was cut off (killed process) and was skipped.")
    checksums: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        if r.config.get("dataset_checksum"):
            checksums[r.dataset].add(str(r.config["dataset_checksum"]))
    for dataset, values in sorted(checksums.items()):
        if len(values) > 1:
            notes.append(f"dataset `{dataset}` appears with {len(values)} different checksums: its runs did not "
                         "all train on the same data.")
    return notes


# ----------------------------------------------------------------------------- entry point
def build_report(results_dir: str | Path, plots_dir: str | Path, *, reps: int = DEFAULT_REPS,
                 seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Read every run directory under ``results_dir``; write the tables and all figures.

    Args:
        results_dir: directory holding one sub-directory per run.
        plots_dir: where the figures go (created if missing).
        reps: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed (same runs + same seed = identical report).

    Returns:
        ``{"summary_md": path, "summary_csv": path, "figures": [paths], "files": [all paths],
        "n_runs": int, "in_progress": [run ids], "failed": [run ids]}`` (paths as strings).

    Raises:
        FileNotFoundError: ``results_dir`` does not exist.
        ValueError: no completed or diverged run to report on.
    """
    results_dir = Path(results_dir)
    plots_dir = Path(plots_dir)
    runs = load_runs(results_dir)
    early_failures = failed_before_start(results_dir)
    if not any(r.is_result for r in runs):
        others = ""
        if runs or early_failures:
            n_failed = sum(r.status == "failed" for r in runs) + len(early_failures)
            others = f" ({sum(r.status == IN_PROGRESS for r in runs)} in progress, {n_failed} failed)"
        raise ValueError(
            f"no completed runs in {results_dir}{others}; run the experiments first "
            "(e.g. `python run_phase1.py`), then build the report from their results directory"
        )
    summaries = summarize_groups(runs, reps=reps, seed=seed)
    across = summarize_across_datasets(summaries, reps=reps, seed=seed)
    estimates: Mapping[tuple[str, str, CorruptionLevel], dict[str, ScoreEstimate]] = {
        (s.dataset, s.algo, s.level): {"mean": s.mean, "iqm": s.iqm} for s in summaries
    }
    figures = plot_all(runs, plots_dir, estimates=estimates, published=PUBLISHED_SCORES, reps=reps, seed=seed)

    md_path = results_dir / SUMMARY_MD
    csv_path = results_dir / SUMMARY_CSV
    atomic_write_text(csv_path, summary_csv_text(summaries))
    atomic_write_text(md_path, summary_markdown(results_dir, runs, summaries, across, figures, reps, seed, early_failures))
    files = [md_path, csv_path, *figures]
    return {
        "summary_md": str(md_path),
        "summary_csv": str(csv_path),
        "figures": [str(p) for p in figures],
        "files": [str(p) for p in files],
        "n_runs": len(runs) + len(early_failures),
        "in_progress": [r.run_id for r in runs if r.status == IN_PROGRESS],
        "failed": sorted([r.run_id for r in runs if r.status == "failed"] + [f["run_id"] for f in early_failures]),
    }
