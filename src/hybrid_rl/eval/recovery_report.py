"""The Phase II report: recovery tables and figures from fine-tuning run directories.

Reads only run directories (``eval.recovery``), so ``run_phase2.py --plot_only`` works on
results made anywhere. Writes to the results directory ``recovery.csv`` (one row per
dataset, corruption level and method) and ``recovery.md`` (CORL's before -> after format,
with rliable IQM and 95% stratified-bootstrap CIs of the final score), and to the plots
directory, per dataset:

- ``recovery_curves_<dataset>``: normalized return against online environment steps, one
  panel per corruption level, methods as lines (mean over seeds, Student-t band), the
  switch at step 0 (each curve starts at its parents' mean switch score), dashed: the
  clean-data offline score of the same algorithm, dotted: the clean data's behaviour score;
- ``recovery_bars_<dataset>``: dip and steps to recover the clean-data offline score by
  pretrained method and corruption level (hatched: some seeds never recovered, right-censored; the
  bar then shows the budget as a lower bound and the label says how many);
- ``recovery_q_<dataset>``: Q minus the Monte-Carlo return on the online episodes'
  own transitions against online steps (per seed in 20 bins of steps, then mean over seeds
  with a Student-t band), one panel per corruption level; 0 = calibrated.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..fileio import atomic_write_text
from .recovery import Recovery, binned_means, load_recoveries
from .stats import interval_estimates, mean_ci_over_seeds

CSV_FIELDS = ("dataset", "corruption", "method", "algo", "utd", "sampling", "n", "switch_mean", "final_iqm", "final_low", "final_high", "final_mean", "best_mean",
              "dip_mean", "steps_to_clean_offline_median", "censored_clean_offline", "steps_to_behavior_median", "censored_behavior",
              "regret_mean", "auc_mean", "q_minus_mc_final_mean")


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _steps_summary(runs: Sequence[Recovery], reference: str) -> tuple[float, int]:
    """Median steps to reach ``reference`` over the runs that did, and how many never did."""
    reached = [r.steps_to[reference] for r in runs if r.steps_to.get(reference) is not None]
    return (float(np.median(reached)) if reached else math.nan), sum(bool(r.censored.get(reference)) for r in runs)


def group(recoveries: Sequence[Recovery]) -> dict[tuple[str, str, str, str], list[Recovery]]:
    groups: dict[tuple[str, str, str, str], list[Recovery]] = defaultdict(list)
    for recovery in recoveries:
        groups[(recovery.dataset, recovery.corruption, recovery.method, recovery.algo)].append(recovery)
    return dict(sorted(groups.items()))


def table_rows(recoveries: Sequence[Recovery]) -> list[dict[str, Any]]:
    rows = []
    for (dataset, corruption, method, algo), runs in group(recoveries).items():
        final = interval_estimates([r.final_score for r in runs])
        to_clean, censored_clean = _steps_summary(runs, "clean_offline")
        to_behavior, censored_behavior = _steps_summary(runs, "behavior")
        rows.append({
            "dataset": dataset, "corruption": corruption, "method": method, "algo": algo, "n": len(runs),
            "utd": "/".join(sorted({str(r.utd) for r in runs})), "sampling": "/".join(sorted({r.sampling for r in runs})),
            "switch_mean": _mean([r.switch_score for r in runs]), "final_iqm": final["iqm"].point,
            "final_low": final["iqm"].low if final["iqm"].has_interval else math.nan,
            "final_high": final["iqm"].high if final["iqm"].has_interval else math.nan,
            "final_mean": final["mean"].point, "best_mean": _mean([r.best_score for r in runs]), "dip_mean": _mean([r.dip for r in runs]),
            "steps_to_clean_offline_median": to_clean, "censored_clean_offline": censored_clean,
            "steps_to_behavior_median": to_behavior, "censored_behavior": censored_behavior,
            "regret_mean": _mean([r.regret for r in runs]), "auc_mean": _mean([r.auc for r in runs]),
            "q_minus_mc_final_mean": _mean([r.q_minus_mc_final for r in runs]),
        })
    return rows


def _cell(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else ""


def write_tables(rows: Sequence[dict[str, Any]], results_dir: Path) -> list[Path]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value, 4) if isinstance(value, float) else value for key, value in row.items()})
    atomic_write_text(results_dir / "recovery.csv", buffer.getvalue())

    lines = ["# Recovery by online fine-tuning", "",
             "Normalized return (D4RL: 0 random, 100 expert). *switch -> final*: the parents' final offline score, then the mean of the "
             "last 10% of online evaluations (IQM [95% stratified-bootstrap CI] over seeds; IQM = mean below 4 seeds). *dip*: the lowest "
             "evaluation in the first 10% of online steps minus the switch score. *steps to recover*: median first online step reaching the "
             "clean-data offline score (same algorithm and seed) / the clean data's behaviour score, over the seeds that did; "
             "'(c N)': N seeds never did (right-censored). *regret*: mean over online episodes of 1 - score/100. "
             "*Q - MC (end)*: the critic's Q minus the discounted Monte-Carlo return on the online episodes of the last 10% of steps "
             "(original reward units; > 0: overestimation). "
             "Generated `gen-*` datasets follow the D4RL recipe but are not D4RL data.", ""]
    lines.append("| dataset | corruption | method (pretrained) | UTD, sampling | n | switch -> final | dip | steps to clean offline | steps to behaviour | regret | Q - MC (end) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        final = _cell(row["final_iqm"]) + (f" [{_cell(row['final_low'])}, {_cell(row['final_high'])}]" if math.isfinite(row["final_low"]) else "")
        switch = _cell(row["switch_mean"]) or "scratch"
        to_clean = (_cell(row["steps_to_clean_offline_median"], 0) or "-") + (f" (c {row['censored_clean_offline']})" if row["censored_clean_offline"] else "")
        to_behavior = (_cell(row["steps_to_behavior_median"], 0) or "-") + (f" (c {row['censored_behavior']})" if row["censored_behavior"] else "")
        method = row["method"] if row["algo"] == row["method"] else f"{row['method']} ({row['algo']})"
        lines.append(f"| {row['dataset']} | {row['corruption']} | {method} | {row['utd']}, {row['sampling']} | {row['n']} | {switch} -> {final} | {_cell(row['dip_mean']) or '-'} | "
                     f"{to_clean} | {to_behavior} | {_cell(row['regret_mean'], 3)} | {_cell(row['q_minus_mc_final_mean']) or '-'} |")
    atomic_write_text(results_dir / "recovery.md", "\n".join(lines) + "\n")
    return [results_dir / "recovery.csv", results_dir / "recovery.md"]


def _eval_curve(run: Recovery) -> tuple[np.ndarray, np.ndarray]:
    """A run's evaluation curve, starting at its switch score at step 0 when it has one."""
    if not math.isfinite(run.switch_score):
        return run.eval_steps, run.eval_scores
    return np.concatenate([[0], run.eval_steps]), np.concatenate([[run.switch_score], run.eval_scores])


def _q_curve(run: Recovery) -> tuple[np.ndarray, np.ndarray]:
    """A run's Q - MC per online episode, averaged in bins of online steps."""
    return binned_means(run.q_steps, run.q_minus_mc, run.online_steps)


def _panel(runs: Sequence[Recovery], level: str) -> list[Recovery]:
    """The runs drawn in a corruption level's panel: that level's, plus the runs of methods
    without offline data (SAC from scratch ran on the clean level only: the corruption
    cannot touch them, so they appear in every panel)."""
    return [r for r in runs if r.corruption == level or not r.uses_offline_data]


def _method_panels(plt: Any, runs: Sequence[Recovery], levels: Sequence[str], colors: dict[str, Any], curve: Any, height: float) -> tuple[Any, Any]:
    """One panel per corruption level (``_panel``), one line per method: the mean over seeds
    of ``curve(run)`` with a Student-t band."""
    fig, axes = plt.subplots(1, len(levels), figsize=(4.4 * len(levels), height), squeeze=False, sharey=True, layout="constrained")
    for ax, level in zip(axes[0], levels):
        panel = _panel(runs, level)
        for method in sorted({r.method for r in panel}):
            members = [r for r in panel if r.method == method]
            band = mean_ci_over_seeds([curve(r) for r in members])
            label = f"{method.upper()} (n={len(members)})" + ("" if members[0].uses_offline_data else ", no offline data")
            sparse = len(band.steps) < 5  # a marker, or a lone point would not show
            ax.plot(band.steps, band.mean, color=colors[method], label=label, lw=1.6, marker="o" if sparse else None, ms=3)
            ax.fill_between(band.steps, band.low, band.high, color=colors[method], alpha=0.15, lw=0)
        ax.set_title(level)
        ax.set_xlabel("online environment steps")
        ax.grid(alpha=0.3)
    return fig, axes[0]


def _legend_below(ax: Any) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=2, frameon=False)


def plot_recovery(recoveries: Sequence[Recovery], plots_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import algo_colors, safe_name, save_figure

    written: list[Path] = []
    colors = algo_colors({r.method for r in recoveries})
    by_dataset: dict[str, list[Recovery]] = defaultdict(list)
    for recovery in recoveries:
        by_dataset[recovery.dataset].append(recovery)
    for dataset, runs in sorted(by_dataset.items()):
        levels = sorted({r.corruption for r in runs if r.uses_offline_data} or {r.corruption for r in runs}, key=lambda label: (label != "clean", label))
        fig, axes = _method_panels(plt, runs, levels, colors, _eval_curve, 3.6)
        for ax, level in zip(axes, levels):
            panel = _panel(runs, level)
            clean = _mean([r.references.get("clean_offline", math.nan) for r in panel])
            behavior = _mean([r.references.get("behavior", math.nan) for r in panel])
            if math.isfinite(clean):
                ax.axhline(clean, color="#444444", ls="--", lw=1, label=f"clean-data offline ({clean:.1f})")
            if math.isfinite(behavior):
                ax.axhline(behavior, color="#888888", ls=":", lw=1, label=f"behaviour, clean data ({behavior:.1f})")
            ax.axvline(0, color="#bbbbbb", lw=0.8)
            _legend_below(ax)
        axes[0].set_ylabel("normalized return")
        fig.suptitle(f"{dataset}: recovery by online fine-tuning" + (" (generated, D4RL recipe)" if dataset.startswith("gen-") else ""), fontsize=10)
        written += save_figure(fig, plots_dir, f"recovery_curves_{safe_name(dataset)}")
        plt.close(fig)

        calibrated = [r for r in runs if len(r.q_minus_mc)]
        if calibrated:
            fig, axes = _method_panels(plt, calibrated, levels, colors, _q_curve, 3.4)
            for ax in axes:
                ax.axhline(0, color="#444444", lw=0.8)
                _legend_below(ax)
            axes[0].set_ylabel("Q - Monte-Carlo return\n(online episodes; original reward units)")
            fig.suptitle(f"{dataset}: critic calibration on the fine-tuning policy's own episodes (> 0: overestimation)", fontsize=9)
            written += save_figure(fig, plots_dir, f"recovery_q_{safe_name(dataset)}")
            plt.close(fig)

        # Dip and recovery time are defined against the switch: pretrained methods only.
        methods = sorted({r.method for r in runs if math.isfinite(r.switch_score)})
        if not methods:
            continue
        fig, (dip_ax, steps_ax) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
        width = 0.8 / max(1, len(levels))
        for index, level in enumerate(levels):
            x = np.arange(len(methods)) + index * width
            members = [[r for r in runs if r.method == m and r.corruption == level] for m in methods]
            dips = [_mean([r.dip for r in group_]) for group_ in members]
            dip_ax.bar(x, [d if math.isfinite(d) else 0.0 for d in dips], width, label=level)
            steps, censored = [], []
            for group_ in members:
                reached = [r.steps_to["clean_offline"] for r in group_ if r.steps_to.get("clean_offline") is not None]
                n_censored = sum(bool(r.censored.get("clean_offline")) for r in group_)
                budget = max((r.online_steps for r in group_), default=0)
                steps.append(float(np.median(reached)) if reached and not n_censored else float(budget) if n_censored else 0.0)
                censored.append(n_censored)
            bars = steps_ax.bar(x, steps, width, label=level)
            for bar, n_censored in zip(bars, censored):
                if n_censored:
                    bar.set_hatch("//")
                    steps_ax.annotate(f">{bar.get_height():.0f}\n({n_censored} censored)", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                      ha="center", va="bottom", fontsize=6)
        steps_ax.set_ylim(0, 1.3 * max([b.get_height() for b in steps_ax.patches] + [1.0]))  # room for the censoring labels
        for ax, title in ((dip_ax, "dip after the switch (first 10% of steps)"), (steps_ax, "steps to recover the clean offline score")):
            ax.set_xticks(np.arange(len(methods)) + width * (len(levels) - 1) / 2, [m.upper() for m in methods])
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{dataset}: dip and recovery time (median over seeds; hatched: never recovered within the budget)", fontsize=9)
        written += save_figure(fig, plots_dir, f"recovery_bars_{safe_name(dataset)}")
        plt.close(fig)
    return written


def build_recovery_report(results_dir: str | Path, plots_dir: str | Path) -> dict[str, list[Path]]:
    """Tables into ``results_dir`` and figures into ``plots_dir`` from its fine-tuning runs."""
    results_dir, plots_dir = Path(results_dir), Path(plots_dir)
    recoveries = load_recoveries(results_dir)
    if not recoveries:
        return {"tables": [], "figures": []}
    tables = write_tables(table_rows(recoveries), results_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    return {"tables": tables, "figures": plot_recovery(recoveries, plots_dir)}
