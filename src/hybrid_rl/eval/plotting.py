"""Figures that answer "how does each method fail as its dataset is damaged?".

Four figure kinds, one file set (PNG + PDF) per dataset:

1. ``learning_curves__<dataset>``: normalized return vs gradient steps.
2. ``q_values__<dataset>``: mean Q-value during training (and Q - Monte-Carlo return).
3. ``critic_loss_variance__<dataset>``: rolling variance of the critic loss (log scale).
4. ``corruption__<dataset>__<axis>``: final score vs corruption strength (bars).

Conventions shared by all figures: one panel per algorithm (its colour is fixed across
figures), one line per corruption level in that panel (clean = darkest solid line,
stronger or other corruptions lighter and dashed), ``×`` marks a diverged run. Legends
sit outside the axes (under the panels, or right of the bar chart) and are drawn last,
so they never hide data. Footnotes say only what the figure shows (no band is described
where n = 1). Generated (``gen-*``) datasets are marked in titles: they are not D4RL.

Units: Q statistics and critic losses are logged in the algorithm's scaled reward units
(IQL's recipe multiplies rewards by 1000 / (max - min trajectory return) of the
*corrupted* data, so the scale differs between corruption levels). The Q-value and
critic-loss figures divide by the run's ``reward_scale`` (Q: once; loss variance: to the
fourth power) so that levels compare in the dataset's original reward units; the metric
files are never changed.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so nothing global is
touched and no GUI backend is needed; files are written atomically.
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
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ..algos.registry import algorithm_spec, is_known
from ..core.fileio import write_atomically
from ..core.naming import format_setting
from .runs import CorruptionLevel, RunRecord, is_generated_dataset
from .stats import (
    DEFAULT_REPS,
    DEFAULT_SEED,
    ScoreEstimate,
    align_curves,
    interval_estimates,
    mean_ci_over_seeds,
    rolling_variance,
    to_original_reward_units,
)

FIGURE_FORMATS = ("png", "pdf")
PNG_DPI = 150
ROLLING_WINDOW = 20
"""Window (in train-log lines) of the critic-loss variance when the trainer did not log one."""

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
_LEVEL_SYMBOLS = {"remove_top_k": "k = % of best trajectories removed",
                  "reward_noise_std": "σ = std of Gaussian reward noise"}


def level_note(levels: Iterable[CorruptionLevel]) -> str:
    """Explain the symbols the figure's level labels use (nothing for clean data only)."""
    keys = {key for level in levels for key in level.active_keys()}
    parts = [text for key, text in _LEVEL_SYMBOLS.items() if key in keys]
    return (", ".join(parts) + ".") if parts else ""


# ----------------------------------------------------------------------------- styling
def algo_display_name(algo: str) -> str:
    """'iql' -> 'IQL', 'td3bc' -> 'TD3+BC', a sweep's 'cql cql_alpha=5' -> 'CQL cql_alpha=5'
    (the algorithm's declared display name); unknown names are upper-cased."""
    name, _, settings = algo.partition(" ")
    shown = algorithm_spec(name).display_name if is_known(name) else name.upper()
    return " ".join(part for part in (shown, settings) if part)


def algo_colors(algos: Iterable[str]) -> dict[str, str]:
    """The algorithm's declared colour (IQL blue, CQL red, BC green, TD3+BC purple); other
    algorithms get spare colours in sorted order so a figure set stays consistent."""
    colors = {}
    spare = iter(_SPARE_COLORS)
    for algo in sorted(set(algos)):
        colors[algo] = (algorithm_spec(algo).color if is_known(algo) else None) or next(spare, "#333333")
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


_LEGEND_ROW_IN = 0.2  # height of one legend row at 7.5 pt (some labels take two lines)
_LEGEND_TWO_COLUMN_CHARS = 27  # longest label that still fits twice under a 4.3-inch panel


def _legend_columns(labels: Iterable[str]) -> int:
    """Two legend columns under a panel, or one when a label (e.g. an extra corruption's
    parameters) is too long for two to fit side by side."""
    longest = max((len(line) for label in labels for line in str(label).split("\n")), default=0)
    return 1 if longest > _LEGEND_TWO_COLUMN_CHARS else 2


def _legend_row_height(n_legend_rows: int) -> float:
    """Inches for a legend of ``n_legend_rows`` rows, with its title."""
    return 0.3 + _LEGEND_ROW_IN * max(n_legend_rows, 1)


def _panels_with_legend_row(n_cols: int, n_rows: int, panel_size: tuple[float, float],
                            legend_rows: int) -> tuple[Figure, np.ndarray, np.ndarray]:
    """Panels plus one row of empty axes under them, one per column, for the legends.

    A legend outside the axes can never hide a line, band, × or reference line; below the
    panels (not right of them) it keeps a multi-panel figure as narrow as a page.
    Returns ``(fig, axes[row][col], legend_axes[col])``.
    """
    legend_height = _legend_row_height(legend_rows)
    width = max(panel_size[0] * n_cols + 0.8, 6.4)
    height = panel_size[1] * n_rows + 0.9 + legend_height
    fig = Figure(figsize=(width, height), layout="constrained")
    grid = fig.subplots(n_rows + 1, n_cols, squeeze=False,
                        gridspec_kw={"height_ratios": [panel_size[1]] * n_rows + [legend_height]})
    for ax in grid[-1]:
        ax.set_axis_off()
    return fig, grid[:-1], grid[-1]


_TITLE_CHARS_PER_IN = 10  # conservative characters per inch of a 10 pt bold title


def _suptitle(fig: Figure, dataset: str, what: str) -> None:
    """'<dataset>: <what>' on one line, or on two when one would be cut off at the edges."""
    text = f"{dataset}: {what}"
    if len(text) > fig.get_figwidth() * _TITLE_CHARS_PER_IN:
        text = f"{dataset}\n{what}"
    fig.suptitle(text, fontweight="bold")


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
        grouped[run.method][run.level].append(run)
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


def _behavior_handle(ax: Axes, behavior: float) -> Line2D:
    """Draw the clean data's behaviour score as a reference line; return it for the legend."""
    return ax.axhline(behavior, label=f"behavior policy,\nclean data ({behavior:.1f})", **_BEHAVIOR_STYLE)


def _column_legend(legend_ax: Axes, panels: Sequence[Axes], any_diverged: bool) -> None:
    """The legend of one column of panels, in its legend axes under them.

    Call it after every artist is drawn, so no entry is missing. Panels of a column show
    the same runs, so an entry (same label) is listed once.
    """
    entries: dict[str, Artist] = {}
    for ax in panels:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if any_diverged:
        entries.setdefault("diverged run", _diverged_legend_handle())
    if entries:
        legend_ax.legend(list(entries.values()), list(entries), title="corruption", loc="upper center",
                         bbox_to_anchor=(0.5, 1.0), ncol=_legend_columns(entries), frameon=False,
                         borderaxespad=0.0)


def _legend_rows(grouped: Mapping[str, Mapping[CorruptionLevel, Sequence[RunRecord]]], extra: int,
                 label_of: Callable[[CorruptionLevel, Sequence[RunRecord]], str]) -> int:
    """Most legend rows under one column: its levels (labelled by ``label_of``), ``extra``
    reference lines and the × entry, in the columns ``_legend_columns`` picks."""
    rows = 1
    for levels in grouped.values():
        n_entries = len(levels) + extra + any(r.diverged for runs in levels.values() for r in runs)
        n_columns = _legend_columns(label_of(level, level_runs) for level, level_runs in levels.items())
        rows = max(rows, math.ceil(n_entries / n_columns))
    return rows


def band_alpha(color: str, darkness: float = 0.07) -> float:
    """Fill opacity that gives a band about the same contrast on white whatever its colour.

    A band darkens white by ``alpha * (1 - luminance)``: the light shades of the stronger
    corruption levels need several times the opacity of a saturated colour to be seen, and
    a fixed alpha either hides them or turns the dark ones into blocks.
    """
    luminance = float(np.dot(mcolors.to_rgb(color), (0.2126, 0.7152, 0.0722)))
    return float(np.clip(darkness / max(1.0 - luminance, 1e-6), 0.1, 0.4))


def _draw_band(ax: Axes, steps: np.ndarray, low: np.ndarray, high: np.ndarray, color: str) -> None:
    """A shaded band in the line's colour, with faint edges so overlapping bands stay apart."""
    ax.fill_between(steps, low, high, color=color, alpha=band_alpha(color), lw=0, zorder=1)
    for edge in (low, high):
        ax.plot(steps, edge, color=color, lw=0.5, alpha=0.5, zorder=1.5)


def dataset_title(dataset: str, runs: Sequence[RunRecord]) -> str:
    """Dataset name for a figure title; generated data is marked so it is never taken for D4RL."""
    generated = any(r.generated_dataset for r in runs) or is_generated_dataset(dataset)
    return f"{dataset} (generated, D4RL recipe)" if generated else dataset


DivergencePoint = tuple[float, float, str]
"""(step, last finite value, colour) of a diverged run, to be marked with ``×``."""

_PINNED_TOP, _PINNED_BOTTOM = 0.95, 0.05  # axes fractions of a pinned ×, inside the headroom strip
_HEADROOM = 0.15  # strip added above (below) the data for pinned ×s and their labels


def ylim_with_headroom(low: float, high: float, values: Iterable[float], log: bool) -> tuple[float, float]:
    """Extend ``[low, high]`` by an empty strip on the side where some value lies outside.

    A diverged run's × is pinned at the frame's edge with its value printed beside it; the
    strip keeps both off the curves, bands and reference lines (e.g. the Q = MC line).
    """
    values = [v for v in values if math.isfinite(v)]
    above, below = any(v > high for v in values), any(v < low for v in values)
    if log:
        # Log axes get a wider strip: it also shows the start of a blow-up.
        factor = 30.0
        return (low / factor if below else low), (high * factor if above else high)
    span = (high - low) or max(abs(high), 1.0)
    return (low - _HEADROOM * span if below else low), (high + _HEADROOM * span if above else high)


def _draw_divergence_markers(ax: Axes, points: Iterable[DivergencePoint]) -> None:
    """Mark diverged runs with ``×``; call after the y-range is final.

    A point outside the y-range (a Q-value of 1e10 next to curves around 100) is pinned
    inside the frame, in the headroom strip, and labelled with the value it reached; the
    label sits beside the ×, on the side with room, on a white ground, inside the axes.
    """
    low, high = ax.get_ylim()
    x_low, x_high = ax.get_xlim()
    marker = {"marker": "x", "markersize": 8, "markeredgewidth": 2.2, "linestyle": "none", "zorder": 5}
    for x, y, color in points:
        if low <= y <= high:
            ax.plot([x], [y], color=color, **marker)
            continue
        frac = _PINNED_TOP if y > high else _PINNED_BOTTOM
        ax.plot([x], [frac], color=color, transform=ax.get_xaxis_transform(), **marker)
        # Right of the × unless it is near the right edge: the diverged line comes from the left.
        right = (x - x_low) / ((x_high - x_low) or 1.0) < 0.7
        ax.annotate(f"{y:.1e}", (x, frac), xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                    xytext=(8 if right else -8, 0), ha="left" if right else "right", va="center",
                    fontsize=7, color=_darker(color), zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})


def _darker(color: str, amount: float = 0.4) -> str:
    """``color`` mixed towards black: text in a light level colour is hard to read."""
    return mcolors.to_hex((1.0 - amount) * np.array(mcolors.to_rgb(color)))


def _last_finite(steps: np.ndarray, values: np.ndarray) -> tuple[float, float] | None:
    finite = np.isfinite(values)
    if not finite.any():
        return None
    return float(steps[finite][-1]), float(values[finite][-1])


def _all_colors(runs: Iterable[RunRecord]) -> dict[str, str]:
    """Colours from every algorithm of the results, so a panel left out (BC in the Q-value
    figure) or a dataset without some algorithm never shifts another algorithm's colour."""
    return algo_colors(r.method for r in runs)


# ----------------------------------------------------------------------------- notes
def _join_sentences(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def learning_curve_note(max_seeds: int, min_seeds: int, any_diverged: bool, behavior_shown: bool,
                        levels_note: str = LEVEL_NOTE) -> str:
    """Footnote of the learning curves that says only what the figure shows.

    ``max_seeds`` / ``min_seeds``: the most and fewest seeds behind one line.
    """
    if max_seeds <= 1:
        line = "Line: one seed per corruption level (n = 1), so no confidence band."
    elif min_seeds <= 1:
        line = ("Line: mean over seeds; band: 95% t-interval over seeds, only for lines with n ≥ 2 "
                "(a line with n = 1 has none).")
    else:
        line = "Line: mean over seeds; band: 95% t-interval over seeds."
    behavior = "Dashed grey: behavior-policy score of the uncorrupted dataset." if behavior_shown else ""
    diverged = ("× = a run diverged (at its last evaluation); from there on the line averages the remaining "
                "seeds." if any_diverged else "")
    return "\n".join(p for p in (_join_sentences(line, behavior), diverged, levels_note) if p)


def _seed_phrase(max_seeds: int, statistic: str) -> str:
    """'Line: mean over the seeds that did not diverge (n)', or the n = 1 wording."""
    if max_seeds <= 1:
        return "Line: one seed (n = 1)."
    return f"Line: {statistic} over the seeds that did not diverge (n in the legend)."


def _diverged_sentence(any_diverged: bool) -> str:
    return ("Thin line ending in × = a diverged run (value printed where it leaves the frame)."
            if any_diverged else "")


def _has_critic(algo: str) -> bool:
    return algorithm_spec(algo).has_critic if is_known(algo) else True


def _skipped_sentence(skipped: Sequence[str], what: str) -> str:
    """'Not shown: BC (no critic, so no Q-values logged).'"""
    if not skipped:
        return ""
    reasons = [f"{algo_display_name(a)} ({'' if _has_critic(a) else 'no critic, so '}no {what} logged)"
               for a in skipped]
    return "Not shown: " + ", ".join(reasons) + "."


def _format_scale(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}–{high:.3g}"


def reward_scale_summary(grouped: Mapping[str, Mapping[CorruptionLevel, Sequence[RunRecord]]]) -> str:
    """'IQL: clean 0.366, k=30% 1.12, k=60% 1.95' for the algorithms that scaled rewards."""
    parts = []
    for algo, levels in grouped.items():
        scales = {level: [r.reward_scale for r in level_runs if r.reward_scale is not None]
                  for level, level_runs in levels.items()}
        if all(v == 1.0 for values in scales.values() for v in values):
            continue
        shown = [f"{level.label} {_format_scale(values)}" for level, values in scales.items() if values]
        parts.append(f"{algo_display_name(algo)}: " + ", ".join(shown))
    return "; ".join(parts)


def _units_note(grouped: Mapping[str, Mapping[CorruptionLevel, Sequence[RunRecord]]], quantity: str, units: str,
                divided_by: str) -> str:
    """Footnote sentence saying in which units ``quantity`` is drawn, and how it got there."""
    runs = [r for levels in grouped.values() for level_runs in levels.values() for r in level_runs]
    if all(r.reward_scale == 1.0 for r in runs):
        return f"{quantity} are in the dataset's {units}: every run trained on unscaled rewards (reward scale 1)."
    note = (f"{quantity} are rescaled to the dataset's {units}: each run's logged values divided by {divided_by} "
            "(metrics.jsonl keeps the scaled values).")
    scales = reward_scale_summary(grouped)
    if scales:
        note += (" Reward scales (IQL recipe: 1000 / (max − min trajectory return) of the data after "
                 f"corruption, so they differ between levels): {scales}.")
    return note


# ----------------------------------------------------------------------------- units
def loss_variance_power(algo: str) -> int | None:
    """Power of the reward scale in the critic-loss variance, None if it has none (the
    algorithm's declaration; unknown algorithms: None).

    IQL, TD3+BC and SAC minimise a squared TD error: scale² in the loss, scale⁴ in its
    variance. CQL adds alpha * (logsumexp Q − Q), which does not scale as any power of the
    reward scale, so its loss cannot be converted exactly.
    """
    return algorithm_spec(algo).loss_variance_power if is_known(algo) else None


def _in_reward_units(run: RunRecord, values: np.ndarray | None, power: int | None) -> np.ndarray | None:
    """``values`` in the dataset's original reward units, or as logged when the conversion
    is unknown (no recorded scale) or not exact (``power`` None); see ``_unconverted``."""
    scale = run.reward_scale
    if values is None or scale is None or scale == 1.0 or power is None:
        return values
    return to_original_reward_units(values, scale, power)


def _unconverted(runs: Iterable[RunRecord], power_of: Callable[[str], int | None]) -> list[RunRecord]:
    """Runs whose values stay in logged (scaled) units: scale unknown, or no exact power."""
    return [r for r in runs if r.reward_scale != 1.0 and (r.reward_scale is None or power_of(r.algo) is None)]


def _unconverted_sentence(runs: Sequence[RunRecord], power_of: Callable[[str], int | None]) -> str:
    """Which panels stay in logged units, and why, so no one reads them as converted."""
    parts = []
    for algo in sorted({r.algo for r in runs}):
        algo_runs = [r for r in runs if r.algo == algo]
        if power_of(algo) is None:
            why = algorithm_spec(algo).loss_variance_note if is_known(algo) else "its loss has no known power of the reward scale"
        else:
            why = "config.json records no reward scale"
        parts.append(f"{algo_display_name(algo)} ({len(algo_runs)} run(s), panel marked 'logged, scaled units') is "
                     f"not converted: {why}; its levels may differ in scale, so compare them with care.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- figure 1
def plot_learning_curves(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Normalized return vs gradient steps, one figure per dataset, one panel per algo
    (``learning_curve_figure``)."""
    return _figure_per_dataset(runs, out_dir, "learning_curves", learning_curve_figure)


def _figure_per_dataset(runs: Sequence[RunRecord], out_dir: str | Path, kind: str,
                        make_figure: Callable[[str, Sequence[RunRecord], Mapping[str, str]], Figure | None]) -> list[Path]:
    """Save ``make_figure(dataset, runs, colors)`` as ``<kind>__<dataset>`` for every dataset
    it draws (None: nothing to draw for that dataset). Colours are shared across figures."""
    colors = _all_colors(runs)
    written: list[Path] = []
    for dataset, dataset_runs in _by_dataset(runs).items():
        with matplotlib.rc_context(_STYLE):
            fig = make_figure(dataset, dataset_runs, colors)
            if fig is not None:
                written += save_figure(fig, Path(out_dir), f"{kind}__{safe_name(dataset)}")
    return written


def learning_curve_figure(dataset: str, dataset_runs: Sequence[RunRecord], colors: Mapping[str, str]) -> Figure:
    """One dataset's learning curves.

    Each line is the mean over seeds of one (algo, corruption level) with its 95%
    t-interval band (where it has two or more seeds); the dashed grey line is the
    uncorrupted dataset's behaviour score. A diverged run contributes until it stops and
    is marked ``×`` at its last evaluation. Legends go under the panels, drawn last.
    """
    grouped = _by_algo_level(dataset_runs)
    behavior = _behavior_score(dataset_runs)
    with matplotlib.rc_context(_STYLE):
        fig, axes, legend_axes = _panels_with_legend_row(
            len(grouped), 1, (4.3, 3.4), _legend_rows(grouped, int(math.isfinite(behavior)), _level_legend))
        markers: dict[Axes, list[DivergencePoint]] = defaultdict(list)
        seed_counts: list[int] = []
        for ax, (algo, levels) in zip(axes[0], grouped.items()):
            styles = _level_styles(grouped, algo, colors[algo])
            for level, level_runs in levels.items():
                style = styles[level]
                band = mean_ci_over_seeds([(r.eval_steps, r.eval_scores) for r in level_runs])
                ax.plot(band.steps, band.mean, lw=1.8, label=_level_legend(level, level_runs), zorder=3, **style)
                seed_counts.append(int(band.n_seeds.max(initial=0)))
                if seed_counts[-1] >= 2:  # one seed has no interval: draw no band
                    _draw_band(ax, band.steps, band.low, band.high, style["color"])
                for run in level_runs:
                    last = _last_finite(run.eval_steps, run.eval_scores) if run.diverged else None
                    if last is not None:
                        markers[ax].append((*last, style["color"]))
            if math.isfinite(behavior):
                _behavior_handle(ax, behavior)
            ax.set_title(algo_display_name(algo), color=colors[algo], fontweight="bold")
            ax.set_xlabel("gradient steps")
            ax.xaxis.set_major_formatter(FuncFormatter(_format_steps))
        axes[0][0].set_ylabel(NORMALIZED_RETURN_LABEL)
        _share_y(axes[0])
        for ax, legend_ax in zip(axes[0], legend_axes):
            _draw_divergence_markers(ax, markers[ax])
            _column_legend(legend_ax, [ax], bool(markers[ax]))
        _suptitle(fig, dataset_title(dataset, dataset_runs), "normalized return during training")
        _footnote(fig, learning_curve_note(max(seed_counts, default=0), min(seed_counts, default=0),
                                           any(markers.values()), math.isfinite(behavior),
                                           level_note(r.level for r in dataset_runs)))
    return fig


def _level_legend(level: CorruptionLevel, level_runs: Sequence[RunRecord]) -> str:
    """'k=30% (n=3)', or 'k=60% (n=3, 1 diverged)'."""
    n_diverged = sum(r.diverged for r in level_runs)
    extra = f", {n_diverged} diverged" if n_diverged else ""
    return f"{level.label} (n={len(level_runs)}{extra})"


def _train_level_legend(level: CorruptionLevel, level_runs: Sequence[RunRecord],
                        n_stable: int | None = None) -> str:
    """'k=60% (n=2, +1 diverged)': n counts the seeds behind the line (``n_stable``; by
    default every run that did not diverge), diverged runs are drawn apart; or
    'k=60% (all 3 diverged)'."""
    n_diverged = sum(r.diverged for r in level_runs)
    if n_stable is None:
        n_stable = len(level_runs) - n_diverged
    if n_stable == 0:
        return f"{level.label} (all {n_diverged} diverged)"
    return f"{level.label} (n={n_stable}" + (f", +{n_diverged} diverged)" if n_diverged else ")")


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


SeriesOf = Callable[[RunRecord], "np.ndarray | None"]


def _seed_curves(level_runs: Sequence[RunRecord], series_of: SeriesOf) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, seeds x steps grid) of one train series over the non-diverged runs."""
    curves = [(r.train_steps, series_of(r)) for r in level_runs if not r.diverged]
    curves = [(steps, values) for steps, values in curves if values is not None]
    return align_curves(curves) if curves else None


def _nan_reduce(reduce: Callable[..., np.ndarray], grid: np.ndarray) -> np.ndarray:
    """nanmean/nanmedian over seeds; an all-NaN step is a gap in the curve, not a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(grid, axis=0)


def _with_series(grouped: Mapping[str, Mapping[CorruptionLevel, list[RunRecord]]], series_of: SeriesOf
                 ) -> dict[str, dict[CorruptionLevel, list[RunRecord]]]:
    """The algorithms that logged the series at all: a panel without data (BC has no
    critic) would only show an empty 0-1 axis."""
    return {algo: dict(levels) for algo, levels in grouped.items()
            if any(series_of(r) is not None for level_runs in levels.values() for r in level_runs)}


def _plot_train_panel(
    ax: Axes,
    levels: Mapping[CorruptionLevel, list[RunRecord]],
    styles: Mapping[CorruptionLevel, dict],
    series_of: SeriesOf,
    reduce: Callable[..., np.ndarray],
    spread_of: SeriesOf | None = None,
) -> tuple[list[np.ndarray], list[DivergencePoint], int]:
    """One (algo, metric) panel: a line per level over its non-diverged seeds, diverged
    runs as thin lines. Returns the series that should fit the y-range, the divergence
    points to mark once the y-range is final, and the most seeds behind one line."""
    fitted: list[np.ndarray] = []
    points: list[DivergencePoint] = []
    max_seeds = 0
    for level, level_runs in levels.items():
        style = styles[level]
        aligned = _seed_curves(level_runs, series_of)
        n_diverged = sum(r.diverged for r in level_runs)
        if aligned is None and n_diverged:
            # Every seed of this level diverged: still name the level in the legend.
            ax.plot([], [], color=style["color"], lw=0.9, label=_train_level_legend(level, level_runs))
        if aligned is not None:
            steps, grid = aligned
            max_seeds = max(max_seeds, grid.shape[0])
            centre = _nan_reduce(reduce, grid)
            ax.plot(steps, centre, lw=1.6, label=_train_level_legend(level, level_runs, grid.shape[0]), zorder=3,
                    **style)
            spread = _seed_curves(level_runs, spread_of) if spread_of is not None else None
            if spread is not None and spread[1].shape == grid.shape:
                half = _nan_reduce(np.nanmean, spread[1])
                _draw_band(ax, steps, centre - half, centre + half, style["color"])
                fitted += [centre - half, centre + half]
            else:
                fitted.append(centre)
        for run in level_runs:
            values = series_of(run) if run.diverged else None
            if values is None:
                continue
            ax.plot(run.train_steps, values, color=style["color"], lw=0.9, alpha=0.8, linestyle="-", zorder=2)
            last = _last_finite(run.train_steps, values)
            if last is not None:
                points.append((*last, style["color"]))
    return fitted, points, max_seeds


def _finish_train_figure(axes: np.ndarray, legend_axes: np.ndarray, fitted: Mapping[Axes, list[np.ndarray]],
                         points: Mapping[Axes, list[DivergencePoint]], log: bool) -> None:
    """Fit each row's y-range to the stable runs (shared across algos), then the × marks
    and, last, the legends (outside the axes), so every artist has its entry."""
    for row in axes:
        limits = [_fitted_ylim(fitted[ax], log=log) for ax in row]
        limits = [lim for lim in limits if lim is not None]
        if limits:
            low, high = min(l for l, _ in limits), max(h for _, h in limits)
            low, high = ylim_with_headroom(low, high, [y for ax in row for _, y, _ in points[ax]], log)
            for ax in row:
                if log:
                    ax.set_yscale("log")
                ax.set_ylim(low, high)
        for ax in row:
            _draw_divergence_markers(ax, points[ax])
    for col, legend_ax in enumerate(legend_axes):
        column = list(axes[:, col])
        _column_legend(legend_ax, column, any(points[ax] for ax in column))


def _unit_title(ax: Axes, algo: str, color: str, scaled_units: bool) -> None:
    suffix = "\n(logged, scaled units)" if scaled_units else ""
    ax.set_title(algo_display_name(algo) + suffix, color=color, fontweight="bold")


def plot_q_diagnostics(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Q-values during training, one figure per dataset with Q-values (``q_value_figure``)."""
    return _figure_per_dataset(runs, out_dir, "q_values", q_value_figure)


def q_in_reward_units(run: RunRecord, key: str) -> np.ndarray | None:
    """A logged Q statistic (``q_mean``, ``q_std``, ``q_minus_mc_mean`` ...) in the dataset's
    original reward units: Q is a discounted sum of rewards, so it carries the scale once."""
    return _in_reward_units(run, run.train_metric(key), 1)


def q_value_figure(dataset: str, dataset_runs: Sequence[RunRecord], colors: Mapping[str, str]) -> Figure | None:
    """One dataset's Q-values, one column per algorithm with Q-values; None if none has any.

    Top row: mean Q over the sampled batch (mean over non-diverged seeds), band = ± the
    batch standard deviation of Q (``q_std``, mean over seeds). Bottom row (only when
    ``q_minus_mc_mean`` was logged): Q minus the discounted Monte-Carlo return of the same
    transitions, i.e. the critic's overestimation (> 0) or pessimism (< 0). Diverged runs
    are thin lines ending in ``×``. Everything is divided by the run's reward scale, i.e.
    shown in the dataset's original reward units (``q_in_reward_units``): IQL's scale is
    computed on the corrupted data and differs between corruption levels. Algorithms
    without Q-values (BC) get no panel.
    """
    everything = _by_algo_level(dataset_runs)
    grouped = _with_series(everything, lambda r: r.train_metric("q_mean"))
    if not grouped:
        return None
    skipped = [algo for algo in everything if algo not in grouped]
    shown_runs = [r for levels in grouped.values() for level_runs in levels.values() for r in level_runs]
    has_mc = any(r.train_metric("q_minus_mc_mean") is not None for r in shown_runs)
    unconverted = _unconverted(shown_runs, lambda algo: 1)
    rows = [("q_mean", "mean Q-value\n(original reward units)")]
    if has_mc:
        rows.append(("q_minus_mc_mean", "Q − Monte-Carlo return\n(original reward units;\n> 0: overestimation)"))
    with matplotlib.rc_context(_STYLE):
        fig, axes, legend_axes = _panels_with_legend_row(len(grouped), len(rows), (4.3, 3.0),
                                                         _legend_rows(grouped, int(has_mc), _train_level_legend))
        fitted: dict[Axes, list[np.ndarray]] = defaultdict(list)
        points: dict[Axes, list[DivergencePoint]] = defaultdict(list)
        max_seeds = 0
        for col, (algo, levels) in enumerate(grouped.items()):
            styles = _level_styles(grouped, algo, colors[algo])
            for row, (key, ylabel) in enumerate(rows):
                ax = axes[row][col]
                spread = (lambda r: q_in_reward_units(r, "q_std")) if key == "q_mean" else None
                fitted[ax], points[ax], n = _plot_train_panel(
                    ax, levels, styles, lambda r, key=key: q_in_reward_units(r, key), np.nanmean, spread)
                max_seeds = max(max_seeds, n)
                if key == "q_minus_mc_mean":
                    ax.axhline(0.0, color="0.25", lw=1.0, linestyle=(0, (6, 3)), label="no bias (Q = MC)")
                    fitted[ax].append(np.zeros(1))
                if row == 0:
                    _unit_title(ax, algo, colors[algo], any(r.method == algo for r in unconverted))
                if col == 0:
                    ax.set_ylabel(ylabel)
                if row == len(rows) - 1:
                    ax.set_xlabel("gradient steps")
                ax.xaxis.set_major_formatter(FuncFormatter(_format_steps))
        _finish_train_figure(axes, legend_axes, fitted, points, log=False)
        _suptitle(fig, dataset_title(dataset, dataset_runs), "critic Q-values during training")
        lines = [
            _join_sentences(_seed_phrase(max_seeds, "mean"),
                            "Band: ± batch std of Q (spread of Q over the sampled batch, mean over seeds; "
                            "not a confidence interval).", _diverged_sentence(any(points.values()))),
            _join_sentences(_units_note(grouped, "Q, its band and Q − MC", "original reward units",
                                        "its reward scale"),
                            _unconverted_sentence(unconverted, lambda algo: 1)),
            ("MC return: discounted Monte-Carlo return of fixed dataset transitions."
             if has_mc else "Q − Monte-Carlo return not shown: these runs did not log mc_return_mean."),
            _skipped_sentence(skipped, "Q-values"),
            level_note(r.level for r in shown_runs),
        ]
        _footnote(fig, "\n".join(line for line in lines if line))
    return fig


def critic_loss_variance(run: RunRecord, window: int = ROLLING_WINDOW) -> np.ndarray | None:
    """The trainer's rolling critic-loss variance, or one computed from the critic loss
    (in the run's logged, possibly scaled, units)."""
    logged = run.train_metric("critic_loss_rolling_var")
    if logged is not None:
        return logged
    loss = run.train_metric("critic_loss")
    return None if loss is None else rolling_variance(loss, window)


def critic_loss_variance_in_reward_units(run: RunRecord, window: int = ROLLING_WINDOW) -> np.ndarray | None:
    """``critic_loss_variance`` divided by scale⁴ where that conversion is exact."""
    return _in_reward_units(run, critic_loss_variance(run, window), loss_variance_power(run.algo))


def plot_critic_loss_variance(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Rolling variance of the critic loss, one figure per dataset with a critic
    (``critic_loss_variance_figure``)."""
    return _figure_per_dataset(runs, out_dir, "critic_loss_variance", critic_loss_variance_figure)


def critic_loss_variance_figure(dataset: str, dataset_runs: Sequence[RunRecord],
                                colors: Mapping[str, str]) -> Figure | None:
    """One dataset's critic-loss variance (log scale); None if no algorithm has a critic.

    Lines: median over non-diverged seeds per (algo, level) (the median, because one
    unstable seed would dominate a mean on a log scale). Diverged runs: thin lines with
    ``×`` at their last finite value before the divergence step. Values are in original
    reward units⁴ where that conversion is exact (``loss_variance_power``); algorithms
    without a critic get no panel.
    """
    everything = _by_algo_level(dataset_runs)
    grouped = _with_series(everything, critic_loss_variance)
    if not grouped:
        return None
    skipped = [algo for algo in everything if algo not in grouped]
    shown_runs = [r for levels in grouped.values() for level_runs in levels.values() for r in level_runs]
    unconverted = _unconverted(shown_runs, loss_variance_power)
    with matplotlib.rc_context(_STYLE):
        fig, axes, legend_axes = _panels_with_legend_row(len(grouped), 1, (4.3, 3.4),
                                                         _legend_rows(grouped, 0, _train_level_legend))
        fitted: dict[Axes, list[np.ndarray]] = defaultdict(list)
        points: dict[Axes, list[DivergencePoint]] = defaultdict(list)
        max_seeds = 0
        for ax, (algo, levels) in zip(axes[0], grouped.items()):
            styles = _level_styles(grouped, algo, colors[algo])
            fitted[ax], points[ax], n = _plot_train_panel(
                ax, levels, styles, critic_loss_variance_in_reward_units, np.nanmedian)
            max_seeds = max(max_seeds, n)
            _unit_title(ax, algo, colors[algo], any(r.method == algo for r in unconverted))
            ax.set_xlabel("gradient steps")
            ax.xaxis.set_major_formatter(FuncFormatter(_format_steps))
        axes[0][0].set_ylabel("rolling variance of critic loss\n(original reward units⁴, log scale)")
        _finish_train_figure(axes, legend_axes, fitted, points, log=True)
        _suptitle(fig, dataset_title(dataset, dataset_runs), "critic-loss instability during training")
        lines = [
            _join_sentences(_seed_phrase(max_seeds, "median of the critic loss's rolling variance"),
                            f"Rolling variance: logged by the trainer, else over {ROLLING_WINDOW} log lines.",
                            _diverged_sentence(any(points.values()))),
            _join_sentences(_units_note(grouped, "Variances", "original reward units⁴",
                                        "its reward scale⁴ (the loss is a squared TD error, in scale², so its "
                                        "variance is in scale⁴)"),
                            _unconverted_sentence(unconverted, loss_variance_power)),
            _skipped_sentence(skipped, "critic loss"),
            level_note(r.level for r in shown_runs),
        ]
        _footnote(fig, "\n".join(line for line in lines if line))
    return fig


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
    colors = _all_colors(runs)
    written: list[Path] = []
    for dataset, dataset_runs in _by_dataset(runs).items():
        grouped = _by_algo_level(dataset_runs)
        behavior = _behavior_score(dataset_runs)
        all_levels = {lv for levels in grouped.values() for lv in levels}
        for axis_name, levels in corruption_axes(all_levels):
            with matplotlib.rc_context(_STYLE):
                fig = _corruption_bar_figure(dataset_title(dataset, dataset_runs), dataset, axis_name, levels,
                                             grouped, colors, behavior,
                                             estimates or {}, (published or {}).get(dataset, {}), reps, seed)
                written += save_figure(fig, out_dir, f"corruption__{safe_name(dataset)}__{axis_name}")
    return written


def _corruption_bar_figure(
    title: str,
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
    seed_counts: list[int] = []
    for a, algo in enumerate(algos):
        labelled = False
        for x, level in enumerate(levels):
            level_runs = grouped[algo].get(level, [])
            if not level_runs:
                continue
            scores = np.array([r.final_score for r in level_runs])
            estimate = estimates.get((dataset, algo, level)) or interval_estimates(scores, reps=reps, seed=seed)
            iqm = estimate["iqm"]
            seed_counts.append(iqm.n)
            centre = x - group_width / 2 + (a + 0.5) * bar_width
            if iqm.n > 0:
                yerr = [[iqm.point - iqm.low], [iqm.high - iqm.point]] if iqm.has_interval else None
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
        handles.append(_behavior_handle(ax, behavior))
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
    what_title = f"final score, {what}" if axis_name == "clean" else f"final score vs. {what}"
    _suptitle(fig, title, what_title)
    _footnote(fig, corruption_bar_note([n for n in seed_counts if n > 0], any_diverged, level_note(levels)))
    return fig


def corruption_bar_note(seed_counts: Sequence[int], any_diverged: bool, levels_note: str = LEVEL_NOTE) -> str:
    """Footnote of the bar chart that says only what it shows (``seed_counts``: n per bar)."""
    final = "each run's final score (mean of its last 10% of evaluations)"
    if max(seed_counts, default=0) <= 1:
        bars = f"Bars: {final}; one seed per bar (n = 1), so no error bars."
    else:
        bars = f"Bars: IQM (interquartile mean) over seeds of {final}."
        if any(n < 4 for n in seed_counts):
            bars += " With fewer than 4 seeds the IQM trims nothing and equals the mean."
        bars += "\nError bars: 95% stratified-bootstrap CI" + (
            " (none for a bar with n = 1)." if min(seed_counts) <= 1 else ".")
    diverged = " A diverged seed is scored at its last evaluation before divergence." if any_diverged else ""
    return "\n".join(p for p in (bars + diverged, levels_note) if p)


# ----------------------------------------------------------------------------- all
def _sweep_value_key(value: object) -> tuple:
    """Sort numbers by size, everything else by its text."""
    return (0, float(value), "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0.0, str(value))


def _setting_value(run: RunRecord, name: str) -> object:
    """The value a run used for a setting: its resolved algo_config's (the published default
    for runs that kept it), lists as tuples."""
    value = (run.config.get("algo_config") or {}).get(name, run.settings.get(name, "default"))
    return tuple(value) if isinstance(value, list) else value


def plot_setting_sweeps(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Final score against each swept algorithm setting (``--set``): one figure per dataset,
    algorithm and setting, the setting's values on x (the published default included, from
    the runs that kept it), one line per corruption level (and combination of the other swept
    settings), the mean over seeds with a Student-t 95% interval. Nothing when no setting varies."""
    from .stats import t_interval

    written: list[Path] = []
    for dataset, dataset_runs in _by_dataset(runs).items():
        for algo in sorted({r.algo for r in dataset_runs}):
            algo_runs = [r for r in dataset_runs if r.algo == algo]
            for name in sorted({key for r in algo_runs for key in r.settings}):
                values = {_setting_value(r, name) for r in algo_runs}
                if len(values) < 2:
                    continue
                xs = sorted(values, key=_sweep_value_key)
                lines: dict[str, dict[object, list[float]]] = defaultdict(lambda: defaultdict(list))
                for run in algo_runs:
                    others = ", ".join(f"{k}={format_setting_label(v)}" for k, v in sorted(run.settings.items()) if k != name)
                    lines[run.level.label + (f", {others}" if others else "")][_setting_value(run, name)].append(run.final_score)
                with matplotlib.rc_context(_STYLE):
                    fig, axes = _new_figure(1, panel_size=(5.2, 3.4))
                    ax = axes[0][0]
                    for index, (label, by_value) in enumerate(sorted(lines.items())):
                        positions, points, lows, highs, counts = [], [], [], [], []
                        for position, value in enumerate(xs):
                            estimate = t_interval(by_value.get(value, []))
                            if estimate.n:
                                positions.append(position)
                                points.append(estimate.point)
                                lows.append(estimate.low)
                                highs.append(estimate.high)
                                counts.append(estimate.n)
                        style = level_style("#1f77b4", index, len(lines))
                        ax.plot(positions, points, marker="o", label=f"{label} (n={min(counts)}-{max(counts)})" if counts and min(counts) != max(counts)
                                else f"{label} (n={counts[0] if counts else 0})", **style)
                        ax.fill_between(positions, lows, highs, color=style["color"], alpha=0.15, lw=0)
                    ax.set_xticks(range(len(xs)), [format_setting_label(v) for v in xs])
                    ax.set_xlabel(name)
                    ax.set_ylabel("final normalized return")
                    ax.grid(alpha=0.3)
                    ax.legend(fontsize=7)
                    _suptitle(fig, dataset_title(dataset, algo_runs), f"{algo_display_name(algo)} final score against {name} (mean, 95% t-interval)")
                    written += save_figure(fig, Path(out_dir), f"sweep__{safe_name(dataset)}__{algo}-{name}")
    return written


def format_setting_label(value: object) -> str:
    return value if isinstance(value, str) else format_setting(value)


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
        + plot_setting_sweeps(runs, out_dir)
    )
