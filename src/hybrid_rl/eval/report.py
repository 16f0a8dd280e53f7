"""Build the results report (tables + figures) from a directory of run directories.

``build_report(results_dir, plots_dir)`` is the "plot only" entry point: it reads only
run directories (see ``runs.py``), so it works on results copied from any machine, and
rebuilding from the same runs gives byte-identical files.

Outputs:
- ``<results>/summary.csv``: one row per (dataset, algo, corruption level) that has any
  run, machine-readable (a cell whose runs all failed or are still running has a row with
  empty scores, so the grid's shape is never lost).
- ``<results>/summary.md``: the same tables for people, plus an across-datasets table,
  in-progress/failed runs, data-quality notes and the figures.
- ``<plots_dir>/*.png|pdf``: the figures of ``plotting.py`` (completed and diverged runs).

The tables are written before the figures, so a problem while drawing never loses them.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..data.refs import PUBLISHED_SCORES
from ..core.fileio import atomic_write_text
from ..core.naming import format_setting
from ..core.run_format import FAILED, IN_PROGRESS
from .plotting import algo_display_name, plot_all, safe_name
from .runs import (
    CorruptionLevel,
    ResultsDirError,
    RunRecord,
    failed_before_start,
    is_generated_dataset,
    load_runs,
)
from .stats import (
    DEFAULT_REPS,
    DEFAULT_SEED,
    ScoreEstimate,
    interval_estimates,
    iqm_trims_nothing,
)

SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"


@dataclass(frozen=True)
class GroupSummary:
    """Final-score statistics of one (dataset, algo, corruption level) cell.

    ``n_seeds`` counts completed + diverged runs; ``n_no_score`` those of them without a
    final score (e.g. diverged before their first evaluation), which the estimates leave out.
    Failed and in-progress runs are counted apart and never enter the estimates; a cell
    with only such runs has ``n_seeds == 0`` and estimates with ``n == 0``.
    """

    dataset: str
    algo: str  # the group's name: the algorithm, with its non-default settings in a sweep (RunRecord.method)
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
    settings: Mapping[str, Any] = field(default_factory=dict)  # the group's non-default settings

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
    """One ``GroupSummary`` per (dataset, algo, level) that has any run.

    Sorted by dataset, algo, level. Estimates: IQM and mean over the result runs' final
    scores with 95% stratified-bootstrap CIs (``stats.interval_estimates``). A cell whose
    runs all failed (or are in progress) is kept with ``n_seeds == 0``: dropping it would
    hide from the tables that part of the grid produced nothing.
    """
    groups: dict[tuple[str, str, CorruptionLevel], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[(run.dataset, run.method, run.level)].append(run)
    summaries = []
    for (dataset, algo, level), group in sorted(groups.items()):
        results = [r for r in group if r.is_result]
        scores = [r.final_score for r in results]
        estimates = interval_estimates(scores, reps=reps, seed=seed)
        summaries.append(GroupSummary(
            dataset=dataset,
            algo=algo,
            level=level,
            seeds=tuple(r.seed for r in results),
            n_diverged=sum(r.diverged for r in results),
            n_no_score=sum(not math.isfinite(s) for s in scores),
            n_failed=sum(r.status == FAILED for r in group),
            n_in_progress=sum(r.status == IN_PROGRESS for r in group),
            mean=estimates["mean"],
            iqm=estimates["iqm"],
            final_scores=tuple(scores),
            # Behaviour scores describe the data (config.json), whatever became of the run.
            behavior_score=_median_finite(r.behavior_score for r in group),
            corrupted_behavior_score=_median_finite(r.corrupted_behavior_score for r in group),
            # Published scores are for the published settings and budget only.
            published_score=published_score(dataset, algo),
            settings=dict(group[0].settings),
        ))
    return summaries


@dataclass(frozen=True)
class AcrossDatasets:
    """IQM and mean over datasets x seeds for one (algo, level), datasets as strata.

    The estimates' ``n`` counts seeds *per dataset* (rows of the seeds x datasets matrix).
    """

    algo: str
    level: CorruptionLevel
    datasets: tuple[str, ...]
    estimates: dict[str, ScoreEstimate] | None
    reason: str = ""

    @property
    def n_scores(self) -> int:
        """Final scores behind the estimates: seeds per dataset x datasets."""
        return 0 if self.estimates is None else self.estimates["mean"].n * len(self.datasets)


def summarize_across_datasets(summaries: Sequence[GroupSummary], reps: int = DEFAULT_REPS,
                              seed: int = DEFAULT_SEED) -> list[AcrossDatasets]:
    """Aggregate each (algo, level) over the datasets it was run on (at least two, one
    of them with a score).

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
        if not any(len(col) for col in columns):
            continue  # nothing scored yet anywhere (all failed or in progress): nothing to aggregate
        reason = _not_comparable_reason(datasets, [len(col) for col in columns])
        if reason:
            rows.append(AcrossDatasets(algo, level, datasets, None, reason))
            continue
        matrix = np.stack(columns, axis=1)
        rows.append(AcrossDatasets(algo, level, datasets, interval_estimates(matrix, reps=reps, seed=seed)))
    return rows


def _not_comparable_reason(datasets: Sequence[str], counts: Sequence[int]) -> str:
    """Why the datasets' scores cannot form a (seeds x datasets) matrix; '' if they can."""
    empty = [d for d, n in zip(datasets, counts) if n == 0]
    if empty:
        return "no scored seed on " + ", ".join(f"`{d}`" for d in empty)
    if len(set(counts)) > 1:
        return "scored seeds per dataset differ: " + ", ".join(str(n) for n in counts)
    return ""


def across_format(estimate: ScoreEstimate, n_datasets: int, digits: int = 1) -> str:
    """An across-datasets estimate, saying what its n counts (seeds per dataset, not scores)."""
    if estimate.n == 0:
        return "n/a"
    if not estimate.has_interval:
        # One seed per dataset: the stratified bootstrap resamples within a dataset, so
        # there is nothing to resample and no interval.
        return f"{estimate.point:.{digits}f} (1 seed per dataset × {n_datasets} datasets, no CI)"
    return estimate.format(digits)


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


def _ci_fields(estimate: ScoreEstimate) -> list[str]:
    """CI bounds for the CSV; empty without two or more seeds, because one run's "interval"
    would only repeat the point and read as zero uncertainty."""
    if not estimate.has_interval:
        return ["", ""]
    return [_fmt(estimate.low), _fmt(estimate.high)]


def setting_names(summaries: Sequence[GroupSummary]) -> list[str]:
    """Every algorithm setting that some group changes from its default (the swept ones)."""
    return sorted({name for s in summaries for name in (s.settings or {})})


def summary_csv_text(summaries: Sequence[GroupSummary]) -> str:
    """The summary table as CSV text, one row per (dataset, algo and settings, corruption level).

    Empty fields mean "does not exist": no score (no result run), no interval (n < 2), no
    published reference, the default value of a swept setting.
    """
    keys = corruption_keys(s.level for s in summaries)
    settings = setting_names(summaries)
    header = ["dataset", "algo", *settings, "corruption", *keys, "n_seeds", "n_diverged", "n_no_score", "n_failed",
              "n_in_progress", "final_mean", "final_mean_ci_low", "final_mean_ci_high", "final_iqm",
              "final_iqm_ci_low", "final_iqm_ci_high", "behavior_score", "corrupted_data_behavior_score",
              "published_corl_clean", "seeds"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for s in summaries:
        writer.writerow([
            s.dataset, s.algo, *(format_setting(s.settings[name]) if name in (s.settings or {}) else "" for name in settings),
            s.level.label, *(f"{s.level.value_of(k):g}" for k in keys),
            s.n_seeds, s.n_diverged, s.n_no_score, s.n_failed, s.n_in_progress,
            _fmt(s.mean.point), *_ci_fields(s.mean),
            _fmt(s.iqm.point), *_ci_fields(s.iqm),
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


def _group_row(s: GroupSummary, settings: Sequence[str] = ()) -> list[str]:
    notes = []
    if s.n_no_score:
        notes.append(f"{s.n_no_score} without a final score (no evaluation), left out of mean/IQM")
    if s.n_failed:
        notes.append(f"+{s.n_failed} failed")
    if s.n_in_progress:
        notes.append(f"+{s.n_in_progress} in progress")
    return [
        algo_display_name(s.algo),
        *(format_setting(s.settings[name]) if name in s.settings else "default" for name in settings),
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
    generated = _generated_datasets(runs, summaries)
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
        *_conditional_notes(runs, summaries, across, generated),
        "- *data after corruption*: behaviour score (normalized return) of the dataset the agents trained "
        "on; *CORL*: published score on the clean D4RL dataset (CORL, final step).",
        "",
    ]
    swept = setting_names(summaries)
    header = ["algo", *swept, "corruption", "seeds", "diverged", "final mean [95% CI]", "final IQM [95% CI]",
              "data after corruption", "CORL (clean)", "notes"]
    by_dataset: dict[str, list[GroupSummary]] = defaultdict(list)
    for s in summaries:
        by_dataset[s.dataset].append(s)
    figure_stems = [Path(p) for p in figures]
    for dataset, cells in sorted(by_dataset.items()):
        behavior = _median_finite(c.behavior_score for c in cells)
        lines += [f"## {dataset}", ""]
        if dataset in generated:
            lines += [_generated_dataset_line(dataset, runs), ""]
        lines += [f"Behaviour policy (uncorrupted dataset): **{_md_number(behavior)}**.", ""]
        lines += _md_table(header, (_group_row(c, swept) for c in cells))
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
                  "bootstrap resamples seeds within each dataset (stratified), so with one seed per dataset "
                  "there is no interval.", ""]
        rows = []
        for row in across:
            if row.estimates is None:
                rows.append([algo_display_name(row.algo), row.level.label, str(len(row.datasets)), "–", "n/a",
                             "n/a", row.reason])
            else:
                n_datasets = len(row.datasets)
                rows.append([algo_display_name(row.algo), row.level.label, str(n_datasets),
                             str(row.estimates["mean"].n), across_format(row.estimates["mean"], n_datasets),
                             across_format(row.estimates["iqm"], n_datasets), ""])
        lines += _md_table(["algo", "corruption", "datasets", "seeds per dataset", "final mean [95% CI]",
                            "final IQM [95% CI]", "notes"], rows)
        lines.append("")

    lines += _status_sections(runs, early_failures)
    return "\n".join(lines).rstrip("\n") + "\n"


def _generated_datasets(runs: Sequence[RunRecord], summaries: Sequence[GroupSummary]) -> set[str]:
    """Datasets made by hybrid-rl's factory (gen-* ids, or config metadata source "generated")."""
    return ({r.dataset for r in runs if r.generated_dataset}
            | {s.dataset for s in summaries if is_generated_dataset(s.dataset)})


def _generated_dataset_line(dataset: str, runs: Sequence[RunRecord]) -> str:
    """One line under a generated dataset's heading: what it is, and that it is not D4RL."""
    recipes = sorted({str(r.config.get("dataset_metadata", {}).get("recipe")) for r in runs
                      if r.dataset == dataset and isinstance(r.config.get("dataset_metadata"), Mapping)
                      and r.config["dataset_metadata"].get("recipe")})
    recipe = f": {recipes[0]}" if len(recipes) == 1 else ""
    return (f"**Generated data, not D4RL**: made by hybrid-rl's dataset factory following the D4RL "
            f"recipe{recipe}.")


def _conditional_notes(runs: Sequence[RunRecord], summaries: Sequence[GroupSummary],
                       across: Sequence[AcrossDatasets], generated: set[str]) -> list[str]:
    """Header bullets that apply only to some results (generated data, small n, reward scales)."""
    notes = []
    if generated:
        names = ", ".join(f"`{d}`" for d in sorted(generated))
        notes.append(f"- **Generated datasets** ({names}) are made by hybrid-rl's dataset factory following "
                     "the D4RL recipe; they are **not D4RL data**. Their scores use D4RL's normalization but "
                     "are not comparable one-to-one with published D4RL results (no CORL reference is shown "
                     "for them).")
    score_counts = [s.iqm.n for s in summaries] + [row.n_scores for row in across]
    if any(iqm_trims_nothing(n) for n in score_counts):
        notes.append("- Where a cell has fewer than 4 scores, its IQM equals its mean: the 25% trimmed mean "
                     "drops int(n/4) = 0 scores from each end (rliable's definition). This is correct, not a bug.")
    if any(r.is_result and r.reward_scale not in (None, 1.0) for r in runs):
        notes.append("- Some runs trained on scaled rewards (config.json `reward_scale`; IQL's recipe computes "
                     "it on the corrupted data, so it differs between corruption levels). Their Q-values and "
                     "critic losses are logged in scaled units; the figures convert them to the dataset's "
                     "original reward units where the conversion is exact (each figure's note says which panels "
                     "stay in scaled units). Scores are unaffected (they are environment returns).")
    return notes


def _status_sections(runs: Sequence[RunRecord], early_failures: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """In-progress runs, failed runs (also those that died before config.json) and notes."""
    lines: list[str] = []
    in_progress = [r for r in runs if r.status == IN_PROGRESS]
    if in_progress:
        lines += ["## In progress", "",
                  "No summary.json yet (still running, or killed before finishing): counted in the tables' "
                  "notes, not in their scores or the figures.", ""]
        for r in in_progress:
            total = f"/{r.total_steps}" if r.total_steps else ""
            lines.append(f"- `{r.run_id}`: step {r.last_step}{total}")
        lines.append("")
    failed = [r for r in runs if r.status == FAILED]
    if failed or early_failures:
        lines += ["## Failed", "",
                  "Crashed runs (errors, not results): never in the scores or figures; one that wrote its "
                  "config.json is also counted in its cell's notes (+N failed).", ""]
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
class NoRunsError(ResultsDirError):
    """The results directory holds no run at all (nothing to report, not even a failure)."""


def build_report(results_dir: str | Path, plots_dir: str | Path, *, reps: int = DEFAULT_REPS,
                 seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Read every run directory under ``results_dir``; write the tables and all figures.

    The tables (summary.csv, summary.md with its failed and in-progress sections) are
    written whenever the directory holds any run: completed, diverged, failed, in
    progress, or failed before it started. They are written before the figures, so a
    problem while drawing never loses them; summary.md is rewritten with the figure links
    once the figures exist. Figures are drawn from completed and diverged runs only
    (there may be none).

    Args:
        results_dir: directory holding one sub-directory per run.
        plots_dir: where the figures go (created if missing).
        reps: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed (same runs + same seed = identical report).

    Returns:
        ``{"summary_md": path, "summary_csv": path, "figures": [paths], "files": [all paths],
        "n_runs": int, "in_progress": [run ids], "failed": [run ids]}`` (paths as strings).

    Raises:
        ResultsDirError (a HybridRLError; FileNotFoundError / NotADirectoryError for a
        missing path or a file): ``results_dir`` is not a directory of runs, or it holds
        no run at all (``NoRunsError``).
    """
    results_dir = Path(results_dir)
    plots_dir = Path(plots_dir)
    runs = load_runs(results_dir)
    early_failures = failed_before_start(results_dir)
    if not runs and not early_failures:
        raise NoRunsError(
            f"no completed runs in {results_dir}: it holds no run directory at all (none has a config.json "
            "or summary.json); run the experiments first (e.g. `python run_phase1.py`), then build the "
            "report from their results directory"
        )
    summaries = summarize_groups(runs, reps=reps, seed=seed)
    across = summarize_across_datasets(summaries, reps=reps, seed=seed)

    md_path = results_dir / SUMMARY_MD
    csv_path = results_dir / SUMMARY_CSV
    atomic_write_text(csv_path, summary_csv_text(summaries))
    atomic_write_text(md_path, summary_markdown(results_dir, runs, summaries, across, [], reps, seed, early_failures))

    estimates: Mapping[tuple[str, str, CorruptionLevel], dict[str, ScoreEstimate]] = {
        (s.dataset, s.algo, s.level): {"mean": s.mean, "iqm": s.iqm} for s in summaries
    }
    figures = plot_all(runs, plots_dir, estimates=estimates, published=PUBLISHED_SCORES, reps=reps, seed=seed)
    if figures:
        atomic_write_text(md_path, summary_markdown(results_dir, runs, summaries, across, figures, reps, seed,
                                                    early_failures))
    files = [md_path, csv_path, *figures]
    return {
        "summary_md": str(md_path),
        "summary_csv": str(csv_path),
        "figures": [str(p) for p in figures],
        "files": [str(p) for p in files],
        "n_runs": len(runs) + len(early_failures),
        "in_progress": [r.run_id for r in runs if r.status == IN_PROGRESS],
        "failed": sorted([r.run_id for r in runs if r.status == FAILED] + [f["run_id"] for f in early_failures]),
    }
