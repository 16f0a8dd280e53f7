"""The Phase II report: recovery tables and figures from fine-tuning run directories.

Reads only run directories (``eval.recovery``), so ``run_phase2.py --plot_only`` works on
results made anywhere. Writes to the results directory:

- ``recovery.csv`` / ``recovery.md``: one row per dataset, corruption level and method
  variant (the controls ``offline`` and ``frozen`` included) with n and an interval for
  every score: a Student-t interval over seeds below ``BOOTSTRAP_MIN_RUNS`` runs (a
  percentile bootstrap over 3 seeds would only return their range), rliable's IQM with a
  stratified-bootstrap interval for the final score from there on; a single run shows its
  standard error over evaluation episodes instead. Steps to recover are Kaplan-Meier
  medians with the counts that reached the reference and that were censored.
- ``recovery_paired.csv`` (and a section of recovery.md): paired-by-seed differences with
  Student-t intervals: damaged minus clean data for each method, and each method minus each
  control from the same parents (continued offline training, the frozen policy, a method
  without offline data).

and to the plots directory, per dataset: ``recovery_curves_<dataset>`` (normalized return
against online steps from the switch measurement at step 0, one panel per corruption
level, mean over seeds with a Student-t band, dashed: the clean-data offline reference,
dotted: the behaviour score), ``recovery_bars_<dataset>`` (dip with its interval and
Kaplan-Meier median steps to recover, hatched where runs were censored) and
``recovery_q_<dataset>`` (Q minus the Monte-Carlo return on the online episodes).
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import HybridRLError
from ..core.fileio import atomic_write_text
from .recovery import REFERENCES, Measured, Recovery, binned_means, is_control, kaplan_meier_median, load_recoveries
from .stats import ScoreEstimate, interval_estimates, mean_ci_over_seeds, paired_difference, t_interval

BOOTSTRAP_MIN_RUNS = 10  # from here on the final score is rliable's IQM with a stratified-bootstrap CI
SCORES = ("switch", "final", "gain", "dip")  # the per-run measurements with a standard error
CSV_FIELDS = ("dataset", "corruption", "method", "variant", "algo", "settings", "utd", "sampling", "n", "interval",
              *(f"{name}_{part}" for name in SCORES for part in ("point", "low", "high")),
              *(f"{prefix}_{reference}" for reference in REFERENCES for prefix in ("km_median_steps_to", "reached", "censored")),
              "regret_mean", "warmup_regret_mean", "auc_mean", "q_minus_mc_final_mean")
PAIRED_FIELDS = ("dataset", "comparison", "corruption", "variant", "against", "algo", "settings", "n_pairs",
                 *(f"delta_{name}_{part}" for name in ("switch", "final", "gain", "auc") for part in ("mean", "low", "high")))


class NoFinetuneRunsError(HybridRLError):
    """A Phase II report was asked of a directory without fine-tuning runs."""


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _within_run(measured: Measured) -> ScoreEstimate:
    """One run's score with a normal 95% interval from its evaluation episodes."""
    half = 1.96 * measured.se if math.isfinite(measured.se) else math.nan
    return ScoreEstimate(measured.value, measured.value - half, measured.value + half, 1 if math.isfinite(measured.value) else 0)


def score_estimate(runs: Sequence[Recovery], name: str) -> tuple[ScoreEstimate, str]:
    """The group's estimate of one score and how its interval was made."""
    values = [getattr(r, name).value for r in runs]
    if len(runs) == 1:
        return _within_run(getattr(runs[0], name)), "episodes (1 run)"
    if name == "final" and len(runs) >= BOOTSTRAP_MIN_RUNS:
        return interval_estimates(values)["iqm"], "IQM, stratified bootstrap"
    return t_interval(values), "mean, Student-t over seeds"


GroupKey = tuple[str, str, str, str, str]  # dataset, corruption, variant, algo, settings


def group(recoveries: Sequence[Recovery]) -> dict[GroupKey, list[Recovery]]:
    groups: dict[GroupKey, list[Recovery]] = defaultdict(list)
    for recovery in recoveries:
        groups[(recovery.dataset, recovery.corruption, recovery.variant, recovery.algo, recovery.settings)].append(recovery)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] != "clean", item[0][1], *item[0][2:])))


def table_rows(recoveries: Sequence[Recovery]) -> list[dict[str, Any]]:
    rows = []
    for (dataset, corruption, variant, algo, settings), runs in group(recoveries).items():
        row = dict(dataset=dataset, corruption=corruption, method=runs[0].method, variant=variant, algo=algo, settings=settings, n=len(runs),
                          utd="/".join(sorted({str(r.utd) for r in runs})), sampling="/".join(sorted({r.sampling for r in runs})))
        for name in SCORES:
            estimate, how = score_estimate(runs, name)
            row.update({f"{name}_point": estimate.point, f"{name}_low": estimate.low if estimate.n else math.nan,
                        f"{name}_high": estimate.high if estimate.n else math.nan})
            if name == "final":
                row["interval"] = how
        for reference in REFERENCES:
            row[f"km_median_steps_to_{reference}"] = kaplan_meier_median([r.steps_to.get(reference) for r in runs], [r.budget for r in runs])
            row[f"reached_{reference}"] = sum(r.steps_to.get(reference) is not None for r in runs)
            row[f"censored_{reference}"] = sum(bool(r.censored.get(reference)) for r in runs)
        row.update(regret_mean=_mean([r.regret for r in runs]), warmup_regret_mean=_mean([r.warmup_regret for r in runs]),
                   auc_mean=_mean([r.auc for r in runs]), q_minus_mc_final_mean=_mean([r.q_minus_mc_final for r in runs]))
        rows.append(row)
    return rows


def _by_seed(runs: Sequence[Recovery], name: str) -> dict[int, float]:
    return {r.seed: (getattr(r, name).value if name in SCORES else getattr(r, name)) for r in runs}


def _paired_row(comparison: str, key: GroupKey, against: str, treated: Sequence[Recovery], control: Sequence[Recovery]) -> dict[str, Any]:
    dataset, corruption, variant, algo, settings = key
    row = dict(dataset=dataset, comparison=comparison, corruption=corruption, variant=variant, against=against, algo=algo, settings=settings)
    row["n_pairs"] = len({r.seed for r in treated} & {r.seed for r in control})
    for name in ("switch", "final", "gain", "auc"):
        estimate = paired_difference(_by_seed(treated, name), _by_seed(control, name))
        row.update({f"delta_{name}_mean": estimate.point, f"delta_{name}_low": estimate.low if estimate.n >= 2 else math.nan,
                    f"delta_{name}_high": estimate.high if estimate.n >= 2 else math.nan})
    return row


def paired_rows(recoveries: Sequence[Recovery]) -> list[dict[str, Any]]:
    """Damaged minus clean data per method variant, and each method minus each control of
    the same parents (or, from scratch, of the same method), all paired by seed."""
    groups = group(recoveries)
    rows = []
    for key, runs in groups.items():
        dataset, corruption, variant, algo, settings = key
        clean = groups.get((dataset, "clean", variant, algo, settings))
        if corruption != "clean" and clean:
            rows.append(_paired_row("damaged - clean", key, "clean", runs, clean))
    for key, runs in groups.items():
        dataset, corruption, variant, algo, settings = key
        if is_control(variant):
            continue
        for (d, c, control, a, s), control_runs in groups.items():
            data_free = not control_runs[0].uses_offline_data  # run on the clean level only: it serves every level
            if (d, a, s) == (dataset, algo, settings) and is_control(control) and (c == corruption or data_free):
                rows.append(_paired_row("method - control", key, control, runs, control_runs))
    return rows


def _cell(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _interval(row: dict[str, Any], prefix: str) -> str:
    point, low, high = (row.get(f"{prefix}_{part}", math.nan) for part in ("point", "low", "high"))
    if not math.isfinite(point):
        return "-"
    return f"{point:.1f} [{low:.1f}, {high:.1f}]" if math.isfinite(low) else f"{point:.1f}"


def _km(row: dict[str, Any], reference: str) -> str:
    median, reached, censored = row[f"km_median_steps_to_{reference}"], row[f"reached_{reference}"], row[f"censored_{reference}"]
    if not reached and not censored:
        return "-"
    head = f"{median:,.0f}" if math.isfinite(median) else "not reached"
    return f"{head} ({reached}/{row['n']}" + (f", c {censored})" if censored else ")")


def _method_label(row: dict[str, Any]) -> str:
    """'iql', 'frozen (iql)', 'offline (iql, beta=10)': the variant, its parents' algorithm
    when the name does not say it, and the settings of a sweep."""
    extra = [part for part in (row["algo"] if row["variant"].split(" ")[0] != row["algo"] else "", row.get("settings", "")) if part]
    return row["variant"] + (f" ({', '.join(extra)})" if extra else "")


def write_tables(rows: Sequence[dict[str, Any]], paired: Sequence[dict[str, Any]], results_dir: Path) -> list[Path]:
    for name, fields, table in (("recovery.csv", CSV_FIELDS, rows), ("recovery_paired.csv", PAIRED_FIELDS, paired)):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in table:
            writer.writerow({key: _cell(value, 4) if isinstance(value, float) else value for key, value in row.items()})
        atomic_write_text(results_dir / name, buffer.getvalue())

    lines = [
        "# Recovery by online fine-tuning", "",
        "Normalized return (D4RL: 0 random, 100 expert); every score is measured in the run itself (docs/recovery.md). "
        "*switch*: the starting policy evaluated at online step 0 over the switch episodes. *final*: the mean of the last max(3, 10%) "
        "evaluations. *gain* = final - switch. *dip*: the mean of the evaluations in the first 10% of online steps minus the switch "
        "(signed; 0 when nothing changes). Intervals are 95%: over seeds as the *interval* column says for the final score "
        f"(Student-t below {BOOTSTRAP_MIN_RUNS} runs; switch, gain and dip always Student-t), or for a single run from its evaluation "
        "episodes. *steps to ...*: Kaplan-Meier median online steps to the first sustained crossing (2 consecutive evaluations) of "
        "the clean-data offline score (the clean parent's switch measurement, same algorithm and seed) or the clean data's "
        "behaviour score, with (reached/n, c: censored at the budget); 'not reached': the median lies beyond the budget. *regret*: "
        "1 - score/100 of the online episodes weighted by their steps (random warm-up apart). *Q - MC (end)*: the method's critic "
        "estimate minus the Monte-Carlo return (soft for SAC/RLPD) on the online episodes of the last 10% of steps, original reward "
        "units. Controls: *offline* = the parent trained on for the same gradient steps without interaction; *frozen* = the "
        "parent's policy, never updated (UTD 0). Generated `gen-*` datasets follow the D4RL recipe but are not D4RL data.", "",
        "| dataset | corruption | method (pretrained) | UTD, sampling | n | switch | final | interval | gain | dip | steps to clean offline "
        "| steps to behaviour | regret (warm-up) | AUC | Q - MC (end) |",
        "|" + "---|" * 15,
    ]
    for row in rows:
        method = _method_label(row)
        regret = _cell(row["regret_mean"], 3) + (f" ({_cell(row['warmup_regret_mean'], 3)})" if math.isfinite(row["warmup_regret_mean"]) else "")
        lines.append(f"| {row['dataset']} | {row['corruption']} | {method} | {row['utd']}, {row['sampling']} | {row['n']} | {_interval(row, 'switch')} | "
                     f"{_interval(row, 'final')} | {row['interval']} | {_interval(row, 'gain')} | {_interval(row, 'dip')} | {_km(row, 'clean_offline')} | "
                     f"{_km(row, 'behavior')} | {regret or '-'} | {_cell(row['auc_mean']) or '-'} | {_cell(row['q_minus_mc_final_mean']) or '-'} |")
    if paired:
        lines += ["", "## Paired differences (by seed)", "",
                  "Mean difference over the seeds both sides have, with a 95% Student-t interval (n pairs); an interval that excludes 0 "
                  "is a difference the seeds agree on. *damaged - clean*: the same method from the damaged and from the clean parent. "
                  "*method - control*: the method against a control from the same parents (or, from scratch, of the same method).", "",
                  "| dataset | comparison | corruption | method | against | n pairs | Δ switch | Δ final | Δ gain | Δ AUC |", "|" + "---|" * 10]
        for row in paired:
            cells = [_interval({f"d_{part}": row[f"delta_{name}_{key}"] for part, key in (("point", "mean"), ("low", "low"), ("high", "high"))}, "d")
                     for name in ("switch", "final", "gain", "auc")]
            method = _method_label(row)
            lines.append(f"| {row['dataset']} | {row['comparison']} | {row['corruption']} | {method} | {row['against']} | {row['n_pairs']} | " + " | ".join(cells) + " |")
    atomic_write_text(results_dir / "recovery.md", "\n".join(lines) + "\n")
    return [results_dir / "recovery.csv", results_dir / "recovery_paired.csv", results_dir / "recovery.md"]


def _eval_curve(run: Recovery) -> tuple[np.ndarray, np.ndarray]:
    """A run's evaluation curve from its switch measurement at step 0."""
    if not math.isfinite(run.switch.value):
        return run.eval_steps, run.eval_scores
    return np.concatenate([[0], run.eval_steps]), np.concatenate([[run.switch.value], run.eval_scores])


def _q_curve(run: Recovery) -> tuple[np.ndarray, np.ndarray]:
    """A run's Q - MC per online episode, averaged in bins of online steps."""
    return binned_means(run.q_steps, run.q_minus_mc, run.online_steps)


def _panel(runs: Sequence[Recovery], level: str) -> list[Recovery]:
    """The runs drawn in a corruption level's panel: that level's, plus the runs of methods
    without offline data (run on the clean level only: the corruption cannot touch them)."""
    return [r for r in runs if r.corruption == level or not r.uses_offline_data]


def _method_panels(plt: Any, runs: Sequence[Recovery], levels: Sequence[str], colors: dict[str, Any], curve: Any, height: float) -> tuple[Any, Any]:
    """One panel per corruption level (``_panel``), one line per method variant: the mean over
    seeds of ``curve(run)`` with a Student-t band (controls dashed)."""
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), height), squeeze=False, sharey=True, layout="constrained")
    for ax, level in zip(axes[0], levels):
        panel = _panel(runs, level)
        for name in sorted({r.label for r in panel}):
            members = [r for r in panel if r.label == name]
            band = mean_ci_over_seeds([curve(r) for r in members])
            label = f"{name} (n={len(members)})" + ("" if members[0].uses_offline_data else ", no data")
            sparse = len(band.steps) < 5  # a marker, or a lone point would not show
            ax.plot(band.steps, band.mean, color=colors[name], label=label, lw=1.6, ls="--" if is_control(members[0].variant) else "-",
                    marker="o" if sparse else None, ms=3)
            ax.fill_between(band.steps, band.low, band.high, color=colors[name], alpha=0.15, lw=0)
        ax.set_title(level, fontsize=9)
        ax.set_xlabel("online steps")
        ax.grid(alpha=0.3)
    return fig, axes[0]


def _legend_below(fig: Any, axes: Sequence[Any]) -> None:
    """One legend under all panels (a method's line appears once, whichever panels it is in),
    inside the figure: constrained layout makes room for it."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    ncol = max(1, min(3, len(entries), int(fig.get_figwidth() // 3.2)))
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=ncol, fontsize=7, frameon=False)


def _bar_error(runs: Sequence[Recovery], name: str) -> tuple[float, float]:
    """(point, half-width) of a score for a bar: over seeds, or one run's episodes."""
    estimate, _ = score_estimate(runs, name)
    half = (estimate.high - estimate.low) / 2 if estimate.n and math.isfinite(estimate.low) else 0.0
    return estimate.point, half


def plot_recovery(recoveries: Sequence[Recovery], plots_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import algo_colors, safe_name, save_figure

    written: list[Path] = []
    colors = algo_colors({r.label for r in recoveries})
    by_dataset: dict[str, list[Recovery]] = defaultdict(list)
    for recovery in recoveries:
        by_dataset[recovery.dataset].append(recovery)
    for dataset, runs in sorted(by_dataset.items()):
        levels = sorted({r.corruption for r in runs if r.uses_offline_data} or {r.corruption for r in runs}, key=lambda label: (label != "clean", label))
        generated = " (generated, D4RL recipe)" if dataset.startswith("gen-") else ""
        fig, axes = _method_panels(plt, runs, levels, colors, _eval_curve, 3.8)
        for ax, level in zip(axes, levels):
            panel = _panel(runs, level)
            clean = _mean([r.references.get("clean_offline", math.nan) for r in panel])
            behavior = _mean([r.references.get("behavior", math.nan) for r in panel])
            if math.isfinite(clean):
                ax.axhline(clean, color="#444444", ls="--", lw=1, label="clean-data offline score (reference)")
            if math.isfinite(behavior):
                ax.axhline(behavior, color="#888888", ls=":", lw=1, label="behaviour score, clean data")
            ax.axvline(0, color="#bbbbbb", lw=0.8)
        _legend_below(fig, axes)
        axes[0].set_ylabel("normalized return")
        fig.suptitle(f"{dataset}{generated}: recovery from the switch (step 0)", fontsize=9)
        written += save_figure(fig, plots_dir, f"recovery_curves_{safe_name(dataset)}")
        plt.close(fig)

        calibrated = [r for r in runs if len(r.q_minus_mc)]
        if calibrated:
            fig, axes = _method_panels(plt, calibrated, levels, colors, _q_curve, 3.6)
            for ax in axes:
                ax.axhline(0, color="#444444", lw=0.8)
            _legend_below(fig, axes)
            axes[0].set_ylabel("Q - MC return, online episodes\n(original reward units)")
            fig.suptitle(f"{dataset}: critic calibration on its own episodes (> 0: overestimation)", fontsize=9)
            written += save_figure(fig, plots_dir, f"recovery_q_{safe_name(dataset)}")
            plt.close(fig)

        # Dip and recovery time are measured against the switch of a pretrained agent.
        variants = sorted({r.label for r in runs if r.pretrained})
        if not variants:
            continue
        fig, (dip_ax, steps_ax) = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(variants) * len(levels)), 3.6), layout="constrained")
        width = 0.8 / max(1, len(levels))
        for index, level in enumerate(levels):
            x = np.arange(len(variants)) + index * width
            members = [[r for r in runs if r.label == v and r.corruption == level] for v in variants]
            dips = [_bar_error(group_, "dip") if group_ else (math.nan, 0.0) for group_ in members]
            dip_ax.bar(x, [d if math.isfinite(d) else 0.0 for d, _ in dips], width, yerr=[h for _, h in dips], capsize=2, label=level)
            steps, censored = [], []
            for group_ in members:
                median = kaplan_meier_median([r.steps_to.get("clean_offline") for r in group_], [r.budget for r in group_]) if group_ else math.nan
                n_censored = sum(bool(r.censored.get("clean_offline")) for r in group_)
                budget = max((r.budget for r in group_), default=0)
                steps.append(median if math.isfinite(median) else float(budget) if n_censored else 0.0)
                censored.append(n_censored if not math.isfinite(median) else 0)
            bars = steps_ax.bar(x, steps, width, label=level)
            for bar, n_censored in zip(bars, censored):
                if n_censored:
                    bar.set_hatch("//")
                    steps_ax.annotate(f">{bar.get_height():.0f}\n({n_censored} c)", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                      ha="center", va="bottom", fontsize=6)
        steps_ax.set_ylim(0, 1.3 * max([b.get_height() for b in steps_ax.patches] + [1.0]))  # room for the censoring labels
        dip_ax.axhline(0, color="#444444", lw=0.8)
        for ax, title in ((dip_ax, "dip: early mean - switch (95% CI)"), (steps_ax, "KM median steps to clean offline score")):
            ax.set_xticks(np.arange(len(variants)) + width * (len(levels) - 1) / 2, [v.replace(" ", "\n") for v in variants], fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{dataset}: dip and recovery time (hatched: median beyond the budget)", fontsize=9)
        written += save_figure(fig, plots_dir, f"recovery_bars_{safe_name(dataset)}")
        plt.close(fig)
    return written


def build_recovery_report(results_dir: str | Path, plots_dir: str | Path) -> dict[str, list[Path]]:
    """Tables into ``results_dir`` and figures into ``plots_dir`` from its fine-tuning runs;
    ``NoFinetuneRunsError`` (one line) when it holds none."""
    results_dir, plots_dir = Path(results_dir), Path(plots_dir)
    recoveries = load_recoveries(results_dir)
    if not recoveries:
        raise NoFinetuneRunsError(f"no fine-tuning runs in {results_dir}: run the Phase II study first (python run_phase2.py), "
                                  "or pass the directory that holds its runs (--results_phase2 for run_phase2.py, --results for hybrid-rl report)")
    tables = write_tables(table_rows(recoveries), paired_rows(recoveries), results_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    return {"tables": tables, "figures": plot_recovery(recoveries, plots_dir)}
