"""Figures that answer "how does each method fail as its dataset is damaged?".

Four figure kinds, one file set (PNG + PDF) per dataset:

1. ``learning_curves__<dataset>``: normalized return vs gradient steps.
2. ``q_values__<dataset>``: mean Q-value during training (and Q - Monte-Carlo return).
3. ``critic_loss_variance__<dataset>``: rolling variance of the critic loss (log scale).
4. ``corruption__<dataset>__<axis>``: final score vs corruption strength (bars).

Conventions shared by all figures: one panel per algorithm (its colour is fixed across
figures), one line per corruption level in that panel (clean = darkest solid line,
stronger or other corruptions lighter and dashed), ``×`` marks a diverged run. Figures
are built with ``matplotlib.figure.Figure`` (no pyplot), so nothing global is touched
and no GUI backend is needed; files are written atomically.
"""
from __future__ import annotations

import math
import re
import textwrap
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ..fileio import write_atomically
from .runs import CorruptionLevel, RunRecord
from .stats import (
    DEFAULT_REPS,
    DEFAULT_SEED,
    ScoreEstimate,
    align_curves,
    interval_estimates,
    mean_ci_over_seeds,
    rolling_variance,
)

FIGURE_FORMATS = ("png", "pdf")
PNG_DPI = 150
ROLLING_WINDOW = 20
"""Window (in train-log lines) of the critic-loss variance when the trainer did not log one."""

ALGO_NAMES = {"iql": "IQL", "cql": "CQL", "bc": "BC", "td3bc": "TD3+BC", "sac": "SAC"}
_ALGO_BASE_COLORS = {"iql": "#1f77b4", "cql": "#d62728", "bc": "#2ca02c", "td3bc": "#9467bd"}
_SPARE_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_LINE_STYLES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 1, 1, 1, 1, 1)))
_BEHAVIOR_STYLE = {"color": "0.25", "linestyle": (0, (6, 3)), "linewidth": 1.3}

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "legend.title_fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

LEVEL_NOTE = "k = % of best trajectories removed, σ = std of Gaussian reward noise."
NORMALIZED_RETURN_LABEL = "normalized return\n(D4RL: 0 = random, 100 = expert)"


# ----------------------------------------------------------------------------- styling
def algo_display_name(algo: str) -> str:
    """'iql' -> 'IQL', 'td3bc' -> 'TD3+BC'; unknown names are upper-cased."""
    return ALGO_NAMES.get(algo, algo.upper())


def algo_colors(algos: Iterable[str]) -> dict[str, str]:
    """A fixed colour per algorithm (IQL blue, CQL red, BC green, TD3+BC purple); other
    algorithms get spare colours in sorted order so a figure set stays consistent."""
    colors = {}
    spare = iter(_SPARE_COLORS)
    for algo in sorted(set(algos)):
        colors[algo] = _ALGO_BASE_COLORS.get(algo) or next(spare, "#333333")
    return colors


def level_style(base_color: str, index: int, n_levels: int) -> dict[str, object]:
    """Colour shade and line style of the ``index``-th of ``n_levels`` corruption levels.

    Level 0 (clean, when present) is the algorithm's full colour and a solid line; later
    levels are mixed towards white (at most 60%, so they stay visible on white) and get
    distinct dash patterns, so levels are told apart in colour and in greyscale print.
    """
    rgb = np.array(mcolors.to_rgb(base_color))
    lighten = 0.6 * index / max(n_levels - 1, 1)
    shade = (1 - lighten) * rgb + lighten * np.ones(3)
    return {"color": mcolors.to_hex(shade), "linestyle": _LINE_STYLES[index % len(_LINE_STYLES)]}


def _format_steps(value: float, _pos: object = None) -> str:
    """Tick label for gradient steps: 0, 250k, 1M, 1.5M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def safe_name(text: str) -> str:
    """File-name-safe version of a dataset id ('mujoco/hopper/medium-v0' -> 'mujoco_hopper_medium-v0')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


def _new_figure(n_cols: int, n_rows: int = 1,
                panel_size: tuple[float, float] = (4.3, 3.4)) -> tuple[Figure, np.ndarray]:
    """Constrained-layout figure with a grid of panels (``axes[row][col]``)."""
    width = max(panel_size[0] * n_cols + 0.8, 6.4)
    height = panel_size[1] * n_rows + 0.9
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


_FOOTNOTE_LINE_IN = 0.16  # height of one 7.5 pt footnote line, in inches
_FOOTNOTE_CHARS_PER_IN = 16  # conservative characters per inch at 7.5 pt


def _footnote(fig: Figure, text: str) -> None:
    """Add an explanatory footnote under the panels, wrapped to the figure's width.

    The figure grows by the footnote's height and the constrained layout is told to keep
    clear of it (it ignores ``fig.text`` otherwise), so panels keep their size.
    """
    width_chars = int(fig.get_figwidth() * _FOOTNOTE_CHARS_PER_IN)
    lines = [wrapped for paragraph in text.split("\n")
             for wrapped in (textwrap.wrap(paragraph, width_chars) or [""])]
    extra = _FOOTNOTE_LINE_IN * len(lines) + 0.12
    height = fig.get_figheight() + extra
    fig.set_figheight(height)
    bottom = extra / height
    fig.get_layout_engine().set(rect=(0.0, bottom, 1.0, 1.0 - bottom))
    fig.text(0.01, 0.04 / height, "\n".join(lines), ha="left", va="bottom", fontsize=7.5, color="0.3",
             linespacing=1.45)


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` in ``out_dir``; return the paths.

    PDF creation dates are left out so that rebuilding a report from the same runs gives
    byte-identical files. The figure's layout is frozen after the first format is saved.
    """
    paths = []
    for fmt in FIGURE_FORMATS:
        path = Path(out_dir) / f"{stem}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        write_atomically(path, lambda handle, fmt=fmt, metadata=metadata: fig.savefig(
            handle, format=fmt, dpi=PNG_DPI, metadata=metadata))
        paths.append(path)
        # The first save ran the constrained layout; keep its result for the other
        # formats instead of solving it again (it is a third of the rendering time).
        fig.set_layout_engine("none")
    return paths


# ----------------------------------------------------------------------------- grouping
def _by_dataset(runs: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.is_result:  # failed and in-progress runs have no result to plot
            grouped[run.dataset].append(run)
    return dict(sorted(grouped.items()))


def _by_algo_level(runs: Iterable[RunRecord]) -> dict[str, dict[CorruptionLevel, list[RunRecord]]]:
    grouped: dict[str, dict[CorruptionLevel, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run.algo][run.level].append(run)
    return {algo: dict(sorted(levels.items())) for algo, levels in sorted(grouped.items())}


def _behavior_score(runs: Sequence[RunRecord]) -> float:
    """The uncorrupted dataset's behaviour score (median over runs; they should agree)."""
    values = [r.behavior_score for r in runs if math.isfinite(r.behavior_score)]
    return float(np.median(values)) if values else math.nan


def _level_styles(grouped: Mapping[str, Mapping[CorruptionLevel, object]], algo: str,
                  color: str) -> dict[CorruptionLevel, dict]:
    """Styles of one algo's levels, indexed over *all* levels of the figure, so a level
    keeps its dash pattern and shade in every panel even when an algo lacks some level."""
    all_levels = sorted({level for levels in grouped.values() for level in levels})
    return {level: level_style(color, all_levels.index(level), len(all_levels)) for level in grouped[algo]}


def _diverged_legend_handle() -> Line2D:
    return Line2D([], [], marker="x", linestyle="none", color="black", markersize=7,
                  markeredgewidth=1.8, label="diverged run")


DivergencePoint = tuple[float, float, str]
"""(step, last finite value, colour) of a diverged run, to be marked with ``×``."""


def _draw_divergence_markers(ax: Axes, points: Iterable[DivergencePoint]) -> None:
    """Mark diverged runs with ``×``; call after the y-range is final.

    A point outside the y-range (a Q-value of 1e10 next to curves around 100) is pinned
    just inside the frame edge and labelled with the value it reached.
    """
    low, high = ax.get_ylim()
    marker = {"marker": "x", "markersize": 8, "markeredgewidth": 2.2, "linestyle": "none", "zorder": 5}
    for x, y, color in points:
        if low <= y <= high:
            ax.plot([x], [y], color=color, **marker)
            continue
        above = y > high
        frac = 0.94 if above else 0.06
        ax.plot([x], [frac], color=color, transform=ax.get_xaxis_transform(), **marker)
        ax.annotate(f"{y:.1e}", (x, frac), xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                    xytext=(-7, -3 if above else 3), ha="right", va="top" if above else "bottom",
                    fontsize=7, color=color)


def _last_finite(steps: np.ndarray, values: np.ndarray) -> tuple[float, float] | None:
    finite = np.isfinite(values)
    if not finite.any():
        return None
    return float(steps[finite][-1]), float(values[finite][-1])


# ----------------------------------------------------------------------------- figure 1
def plot_learning_curves(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Normalized return vs gradient steps, one figure per dataset, one panel per algo.

    Each line is the mean over seeds of one (algo, corruption level) with its 95%
    t-interval band; the dashed grey line is the uncorrupted dataset's behaviour score.
    A diverged run contributes until it stops and is marked ``×`` at its last evaluation.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for dataset, dataset_runs in _by_dataset(runs).items():
        grouped = _by_algo_level(dataset_runs)
        colors = algo_colors(grouped)
        behavior = _behavior_score(dataset_runs)
        with matplotlib.rc_context(_STYLE):
            fig, axes = _new_figure(len(grouped))
            markers: dict[Axes, list[DivergencePoint]] = defaultdict(list)
            for ax, (algo, levels) in zip(axes[0], grouped.items()):
                styles = _level_styles(grouped, algo, colors[algo])
                for level, level_runs in levels.items():
                    style = styles[level]
                    band = mean_ci_over_seeds([(r.eval_steps, r.eval_scores) for r in level_runs])
                    ax.plot(band.steps, band.mean, lw=1.8, label=_level_legend(level, level_runs), **style)
                    ax.fill_between(band.steps, band.low, band.high, color=style["color"], alpha=0.15, lw=0)
                    for run in level_runs:
                        last = _last_finite(run.eval_steps, run.eval_scores) if run.diverged else None
                        if last is not None:
                            markers[ax].append((*last, style["color"]))
                handles, _ = ax.get_legend_handles_labels()
                if math.isfinite(behavior):
                    handles.append(ax.axhline(behavior, label=f"behavior policy, clean data ({behavior:.1f})",
                                              **_BEHAVIOR_STYLE))
                if markers[ax]:
                    handles.append(_diverged_legend_handle())
                ax.legend(handles=handles, title="corruption", loc="best", framealpha=0.85)
                ax.set_title(algo_display_name(algo), color=colors[algo], fontweight="bold")
                ax.set_xlabel("gradient steps")
                ax.xaxis.set_major_formatter(FuncFormatter(_format_steps))
            axes[0][0].set_ylabel(NORMALIZED_RETURN_LABEL)
            _share_y(axes[0])
            for ax, points in markers.items():
                _draw_divergence_markers(ax, points)
            fig.suptitle(f"{dataset}: normalized return during training", fontweight="bold")
            _footnote(fig, "Line: mean over seeds; band: 95% t-interval over seeds. Dashed grey: behavior-policy "
                           "score of the uncorrupted dataset.\n× = a run diverged (at its last evaluation); "
                           "from there on the line averages the remaining seeds.\n" + LEVEL_NOTE)
            written += save_figure(fig, out_dir, f"learning_curves__{safe_name(dataset)}")
    return written


def _level_legend(level: CorruptionLevel, level_runs: Sequence[RunRecord]) -> str:
    """'k=30% (n=3)', or 'k=60% (n=3, 1 diverged)'."""
    n_diverged = sum(r.diverged for r in level_runs)
    extra = f", {n_diverged} diverged" if n_diverged else ""
    return f"{level.label} (n={len(level_runs)}{extra})"


def _share_y(axes: Sequence[Axes]) -> None:
    """Give panels one y-range so algorithms compare at a glance (set after plotting)."""
    lows, highs = zip(*(ax.get_ylim() for ax in axes))
    for ax in axes:
        ax.set_ylim(min(lows), max(highs))


# ----------------------------------------------------------------------------- figures 2, 3
def _fitted_ylim(series: Iterable[np.ndarray], log: bool = False, margin: float = 0.08) -> tuple[float, float] | None:
    """A y-range that fits the given series (those of runs that did not diverge).

    Diverged runs are left out on purpose: their Q-values reach 1e10 and would flatten
    every other curve; they leave the frame and their ``×`` is pinned to its edge.
    """
    chunks = [np.asarray(v, dtype=float) for v in series]
    chunks = [v[np.isfinite(v) & (v > 0)] if log else v[np.isfinite(v)] for v in chunks]
    data = np.concatenate(chunks) if chunks else np.array([])
    if data.size == 0:
        return None
    low, high = float(data.min()), float(data.max())
    if log:
        return low / 2.0, high * 2.0
    pad = margin * (high - low) if high > low else max(abs(high), 1.0) * margin
    return low - pad, high + pad


def _seed_curves(level_runs: Sequence[RunRecord], series_of: Callable[[RunRecord], np.ndarray | None]
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, seeds x steps grid) of one train series over the non-diverged runs."""
    curves = [(r.train_steps, series_of(r)) for r in level_runs if not r.diverged]
    curves = [(steps, values) for steps, values in curves if values is not None]
    return align_curves(curves) if curves else None


def _nan_reduce(reduce: Callable[..., np.ndarray], grid: np.ndarray) -> np.ndarray:
    """nanmean/nanmedian over seeds; an all-NaN step is a gap in the curve, not a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(grid, axis=0)


def _plot_train_panel(
    ax: Axes,
    levels: Mapping[CorruptionLevel, list[RunRecord]],
    styles: Mapping[CorruptionLevel, dict],
    series_of: Callable[[RunRecord], np.ndarray | None],
    reduce: Callable[..., np.ndarray],
    spread_of: Callable[[RunRecord], np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], list[DivergencePoint]]:
    """One (algo, metric) panel: a line per level over its non-diverged seeds, diverged
    runs as thin lines. Returns the series that should fit the y-range and the
    divergence points to mark once the y-range is final."""
    fitted: list[np.ndarray] = []
    points: list[DivergencePoint] = []
    for level, level_runs in levels.items():
        style = styles[level]
        aligned = _seed_curves(level_runs, series_of)
        n_diverged = sum(r.diverged for r in level_runs)
        if aligned is None and n_diverged:
            # Every seed of this level diverged: still name the level in the legend.
            ax.plot([], [], color=style["color"], lw=0.9, label=f"{level.label} (all {n_diverged} diverged)")
        if aligned is not None:
            steps, grid = aligned
            centre = _nan_reduce(reduce, grid)
            diverged_note = f", +{n_diverged} diverged" if n_diverged else ""
            ax.plot(steps, centre, lw=1.6, label=f"{level.label} (n={grid.shape[0]}{diverged_note})", **style)
            spread = _seed_curves(level_runs, spread_of) if spread_of is not None else None
            if spread is not None and spread[1].shape == grid.shape:
                half = _nan_reduce(np.nanmean, spread[1])
                ax.fill_between(steps, centre - half, centre + half, color=style["color"], alpha=0.08, lw=0)
                fitted += [centre - half, centre + half]
            else:
                fitted.append(centre)
        for run in level_runs:
            values = series_of(run) if run.diverged else None
            if values is None:
                continue
            ax.plot(run.train_steps, values, color=style["color"], lw=0.9, alpha=0.8, linestyle="-")
            last = _last_finite(run.train_steps, values)
            if last is not None:
                points.append((*last, style["color"]))
    return fitted, points


def _finish_train_figure(axes: np.ndarray, fitted: Mapping[Axes, list[np.ndarray]],
                         points: Mapping[Axes, list[DivergencePoint]], log: bool) -> None:
    """Fit each row's y-range to the stable runs (shared across algos), add legends and ×."""
    for row in axes:
        limits = [_fitted_ylim(fitted[ax], log=log) for ax in row]
        limits = [lim for lim in limits if lim is not None]
        if limits:
            low, high = min(l for l, _ in limits), max(h for _, h in limits)
            if log and any(points[ax] for ax in row):
                high *= 30.0  # headroom on the log axis so the start of a blow-up shows
            for ax in row:
                if log:
                    ax.set_yscale("log")
                ax.set_ylim(low, high)
        for ax in row:
            handles, _ = ax.get_legend_handles_labels()
            if points[ax]:
                handles.append(_diverged_legend_handle())
            if handles:
                ax.legend(handles=handles, title="corruption", loc="best", framealpha=0.85)
            _draw_divergence_markers(ax, points[ax])


def plot_q_diagnostics(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Q-values during training, one figure per dataset, one column per algo.

    Top row: mean Q over the sampled batch (mean over non-diverged seeds), band = ± the
    batch standard deviation of Q (``q_std``, mean over seeds). Bottom row (only when
    ``q_minus_mc_mean`` was logged): Q minus the discounted Monte-Carlo return of the same
    transitions, i.e. the critic's overestimation (> 0) or pessimism (< 0). Diverged runs
    are thin lines ending in ``×``.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for dataset, dataset_runs in _by_dataset(runs).items():
        if not any(r.train_metric("q_mean") is not None for r in dataset_runs):
            continue
        grouped = _by_algo_level(dataset_runs)
        colors = algo_colors(grouped)
        has_mc = any(r.train_metric("q_minus_mc_mean") is not None for r in dataset_runs)
        rows = [("q_mean", "mean Q-value\n(discounted-return units)")]
        if has_mc:
            rows.append(("q_minus_mc_mean", "Q − Monte-Carlo return\n(> 0: overestimation)"))
        with matplotlib.rc_context(_STYLE):
            fig, axes = _new_figure(len(grouped), len(rows), panel_size=(4.3, 3.0))
            fitted: dict[Axes, list[np.ndarray]] = defaultdict(list)
            points: dict[Axes, list[DivergencePoint]] = defaultdict(list)
            for col, (algo, levels) in enumerate(grouped.items()):
                styles = _level_styles(grouped, algo, colors[algo])
                for row, (key, ylabel) in enumerate(rows):
                    ax = axes[row][col]
                    spread = (lambda r: r.train_metric("q_std")) if key == "q_mean" else None
                    fitted[ax], points[ax] = _plot_train_panel(
                        ax, levels, styles, lambda r, key=key: r.train_metric(key), np.nanmean, spread)
                    if key == "q_minus_mc_mean":
                        ax.axhline(0.0, color="0.25", lw=1.0, linestyle=(0, (6, 3)), label="no bias (Q = MC)")
                        fitted[ax].append(np.zeros(1))
                    if row == 0:
                        ax.set_title(algo_display_name(algo), color=colors[algo], fontweight="bold")
                    if col == 0:
                        ax.set_ylabel(ylabel)
                    if row == len(rows) - 1:
                        ax.set_xlabel("gradient steps")
                    ax.xaxis.set_major_formatter(FuncFormatter(_format_steps))
            _finish_train_figure(axes, fitted, points, log=False)
            fig.suptitle(f"{dataset}: critic Q-values during training", fontweight="bold")
            note = ("Line: mean over the seeds that did not diverge (n); band: ± batch std of Q. "
                    "Thin line ending in × = a diverged run (value printed where it leaves the frame).\n")
            note += ("MC return: discounted Monte-Carlo return of the sampled dataset transitions."
                     if has_mc else "Q − Monte-Carlo return not shown: these runs did not log mc_return_mean.")
            _footnote(fig, note + "\n" + LEVEL_NOTE)
            written += save_figure(fig, out_dir, f"q_values__{safe_name(dataset)}")
    return written


def critic_loss_variance(run: RunRecord, window: int = ROLLING_WINDOW) -> np.ndarray | None:
    """The trainer's rolling critic-loss variance, or one computed from the critic loss."""
    logged = run.train_metric("critic_loss_rolling_var")
    if logged is not None:
        return logged
    loss = run.train_metric("critic_loss")
    return None if loss is None else rolling_variance(loss, window)


def plot_critic_loss_variance(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Rolling variance of the critic loss (log scale), one figure per dataset.

    Lines: median over non-diverged seeds per (algo, level) (the median, because one
    unstable seed would dominate a mean on a log scale). Diverged runs: thin lines with
    ``×`` at their last finite value before the divergence step.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for dataset, dataset_runs in _by_dataset(runs).items():
        if not any(critic_loss_variance(r) is not None for r in dataset_runs):
            continue
        grouped = _by_algo_level(dataset_runs)
        colors = algo_colors(grouped)
        with matplotlib.rc_context(_STYLE):
            fig, axes = _new_figure(len(grouped))
            fitted: dict[Axes, list[np.ndarray]] = defaultdict(list)
            points: dict[Axes, list[DivergencePoint]] = defaultdict(list)
            for ax, (algo, levels) in zip(axes[0], grouped.items()):
                styles = _level_styles(grouped, algo, colors[algo])
                fitted[ax], points[ax] = _plot_train_panel(ax, levels, styles, critic_loss_variance, np.nanmedian)
                ax.set_title(algo_display_name(algo), color=colors[algo], fontweight="bold")
                ax.set_xlabel("gradient steps")
                ax.xaxis.set_major_formatter(FuncFormatter(_format_steps))
            axes[0][0].set_ylabel("rolling variance of critic loss\n(loss units², log scale)")
            _finish_train_figure(axes, fitted, points, log=True)
            fig.suptitle(f"{dataset}: critic-loss instability during training", fontweight="bold")
            _footnote(fig, "Line: median over the seeds that did not diverge (n) of the critic loss's rolling "
                           f"variance (logged by the trainer, else over {ROLLING_WINDOW} log lines).\n"
                           "Thin line ending in × = a diverged run (value printed where it leaves the frame).\n"
                           + LEVEL_NOTE)
            written += save_figure(fig, out_dir, f"critic_loss_variance__{safe_name(dataset)}")
    return written


# ----------------------------------------------------------------------------- figure 4
GroupKey = tuple[str, str, CorruptionLevel]
"""(dataset, algo, corruption level): one cell of the results table."""


def corruption_axes(levels: Iterable[CorruptionLevel]) -> list[tuple[str, list[CorruptionLevel]]]:
    """Split a dataset's levels into one-parameter sweeps for the bar charts.

    Returns ``[(axis_name, levels), ...]``: for every corruption parameter that varies,
    the clean level plus the levels where only that parameter is active, sorted by
    strength; if some levels combine parameters, one extra ``"combined"`` axis holds all
    levels. With only clean runs, a single ``"clean"`` axis.
    """
    levels = sorted(set(levels))
    keys = sorted({k for level in levels for k in level.active_keys()},
                  key=lambda k: next(lv.sort_key for lv in levels if k in lv.active_keys()))
    sweeps = []
    for key in keys:
        sweep = [lv for lv in levels if set(lv.active_keys()) <= {key}]
        sweep.sort(key=lambda lv: lv.value_of(key))
        sweeps.append((key, sweep))
    if any(len(lv.active_keys()) > 1 for lv in levels):
        sweeps.append(("combined", levels))
    if not sweeps:
        sweeps.append(("clean", levels))
    return sweeps


_AXIS_TITLES = {
    "remove_top_k": "top-k% best trajectories removed",
    "reward_noise_std": "Gaussian reward noise",
    "combined": "all corruption settings",
    "clean": "clean data only",
}


def plot_corruption_comparison(
    runs: Sequence[RunRecord],
    out_dir: str | Path,
    estimates: Mapping[GroupKey, Mapping[str, ScoreEstimate]] | None = None,
    published: Mapping[str, Mapping[str, float]] | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
) -> list[Path]:
    """Final score vs corruption strength: grouped bars, one figure per (dataset, axis).

    Bars: IQM over seeds of each run's final normalized return, error bars its 95%
    stratified-bootstrap CI; dots: the seeds (``×``: diverged); dashed line: the
    uncorrupted dataset's behaviour score; grey ticks: the behaviour score of the data
    left after corruption; stars: published CORL score (D4RL datasets, clean level).

    Args:
        estimates: precomputed ``interval_estimates`` per (dataset, algo, level), e.g.
            from the report, so bootstraps are not run twice; computed here if missing.
        published: ``{dataset: {algo: score}}`` reference scores (clean data).
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for dataset, dataset_runs in _by_dataset(runs).items():
        grouped = _by_algo_level(dataset_runs)
        colors = algo_colors(grouped)
        behavior = _behavior_score(dataset_runs)
        all_levels = {lv for levels in grouped.values() for lv in levels}
        for axis_name, levels in corruption_axes(all_levels):
            with matplotlib.rc_context(_STYLE):
                fig = _corruption_bar_figure(dataset, axis_name, levels, grouped, colors, behavior,
                                             estimates or {}, (published or {}).get(dataset, {}), reps, seed)
                written += save_figure(fig, out_dir, f"corruption__{safe_name(dataset)}__{axis_name}")
    return written


def _corruption_bar_figure(
    dataset: str,
    axis_name: str,
    levels: Sequence[CorruptionLevel],
    grouped: Mapping[str, Mapping[CorruptionLevel, list[RunRecord]]],
    colors: Mapping[str, str],
    behavior: float,
    estimates: Mapping[GroupKey, Mapping[str, ScoreEstimate]],
    published: Mapping[str, float],
    reps: int,
    seed: int,
) -> Figure:
    algos = list(grouped)
    group_width = 0.8
    bar_width = group_width / len(algos)
    axes_width = max(4.0, len(levels) * (0.5 + 0.5 * len(algos)))
    # The legend sits right of the axes, where it can never hide a bar: +3 inches for it.
    fig, axes = _new_figure(1, panel_size=(axes_width + 3.0, 3.8))
    ax = axes[0][0]
    jitter = np.random.default_rng(0)  # fixed: a rebuilt figure must be identical
    any_diverged = any_published = False
    for a, algo in enumerate(algos):
        labelled = False
        for x, level in enumerate(levels):
            level_runs = grouped[algo].get(level, [])
            if not level_runs:
                continue
            scores = np.array([r.final_score for r in level_runs])
            estimate = estimates.get((dataset, algo, level)) or interval_estimates(scores, reps=reps, seed=seed)
            iqm = estimate["iqm"]
            centre = x - group_width / 2 + (a + 0.5) * bar_width
            if iqm.n > 0:
                yerr = None if iqm.single_run else [[iqm.point - iqm.low], [iqm.high - iqm.point]]
                ax.bar(centre, iqm.point, bar_width * 0.92, color=colors[algo], alpha=0.55,
                       edgecolor=colors[algo], linewidth=1.2, yerr=yerr, capsize=3,
                       error_kw={"elinewidth": 1.2, "ecolor": "0.15"},
                       label=None if labelled else algo_display_name(algo))
                labelled = True
            # Seed count at the foot of the bar, where no error bar, dot or star can cover it.
            ax.annotate(f"n={iqm.n}", (centre, 0.0), xycoords=("data", "axes fraction"),
                        textcoords="offset points", xytext=(0, 3), ha="center", va="bottom",
                        fontsize=6.5, color="0.2")
            offsets = jitter.uniform(-0.25, 0.25, size=len(level_runs)) * bar_width
            for run, score, dx in zip(level_runs, scores, offsets):
                if not math.isfinite(score):
                    continue
                if run.diverged:
                    any_diverged = True
                    ax.plot(centre + dx, score, marker="x", color="black", markersize=6,
                            markeredgewidth=1.6, zorder=4, linestyle="none")
                else:
                    ax.plot(centre + dx, score, marker="o", color="black", markersize=3.2,
                            markerfacecolor="white", markeredgewidth=0.9, zorder=4, linestyle="none")
            if level.is_clean and algo in published:
                any_published = True
                ax.plot(centre, published[algo], marker="*", markersize=11, color=colors[algo],
                        markeredgecolor="black", markeredgewidth=0.7, zorder=5, linestyle="none")
    # Behaviour score of the data each level actually trained on (lower after removal).
    corrupted_drawn = False
    for x, level in enumerate(levels):
        values = [r.corrupted_behavior_score for algo in algos for r in grouped[algo].get(level, [])
                  if math.isfinite(r.corrupted_behavior_score)]
        # Drawn only where it differs from the clean score (reward noise leaves it unchanged).
        if values and not level.is_clean and not abs(float(np.median(values)) - behavior) < 0.05:
            ax.hlines(float(np.median(values)), x - group_width / 2, x + group_width / 2, colors="0.35",
                      linestyles=(0, (1, 1)), linewidth=2.0, zorder=3)
            corrupted_drawn = True
    handles, _ = ax.get_legend_handles_labels()
    if math.isfinite(behavior):
        handles.append(ax.axhline(behavior, label=f"behavior policy, clean data ({behavior:.1f})",
                                  **_BEHAVIOR_STYLE))
    if corrupted_drawn:
        handles.append(Line2D([], [], color="0.35", linestyle=(0, (1, 1)), linewidth=2.0,
                              label="behavior score of the\ncorrupted data"))
    handles.append(Line2D([], [], marker="o", color="black", markerfacecolor="white", linestyle="none",
                          markersize=4, label="one seed"))
    if any_diverged:
        handles.append(Line2D([], [], marker="x", color="black", linestyle="none", markersize=6,
                              markeredgewidth=1.6, label="diverged seed\n(last eval before divergence)"))
    if any_published:
        handles.append(Line2D([], [], marker="*", color="0.6", markeredgecolor="black", linestyle="none",
                              markersize=10, label="published score (CORL),\nclean data"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              frameon=False, labelspacing=0.8)
    ax.set_xticks(range(len(levels)), [lv.label for lv in levels])
    ax.set_xlim(-0.6, len(levels) - 0.4)
    ax.set_xlabel(f"corruption ({_AXIS_TITLES.get(axis_name, axis_name)})")
    ax.set_ylabel("final " + NORMALIZED_RETURN_LABEL)
    ax.grid(axis="x", visible=False)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    what = _AXIS_TITLES.get(axis_name, axis_name)
    title = f"final score, {what}" if axis_name == "clean" else f"final score vs. {what}"
    fig.suptitle(f"{dataset}: {title}", fontweight="bold")
    _footnote(fig, "Bars: IQM (interquartile mean) over seeds of each run's final score (mean of its last 10% "
                   "of evaluations).\nError bars: 95% stratified-bootstrap CI (none for n = 1). A diverged seed "
                   "is scored at its last evaluation before divergence.\n" + LEVEL_NOTE)
    return fig


# ----------------------------------------------------------------------------- all
def plot_all(
    runs: Sequence[RunRecord],
    out_dir: str | Path,
    estimates: Mapping[GroupKey, Mapping[str, ScoreEstimate]] | None = None,
    published: Mapping[str, Mapping[str, float]] | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
) -> list[Path]:
    """Write every figure for the completed and diverged runs; return the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return (
        plot_learning_curves(runs, out_dir)
        + plot_q_diagnostics(runs, out_dir)
        + plot_critic_loss_variance(runs, out_dir)
        + plot_corruption_comparison(runs, out_dir, estimates, published, reps, seed)
    )
