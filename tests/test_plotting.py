"""Figures: every expected file is written, valid and non-trivial; helpers behave."""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from hybrid_rl.eval.plotting import (
    _draw_divergence_markers,
    _format_steps,
    algo_colors,
    band_alpha,
    corruption_axes,
    corruption_bar_note,
    critic_loss_variance,
    critic_loss_variance_figure,
    critic_loss_variance_in_reward_units,
    learning_curve_figure,
    learning_curve_note,
    level_note,
    level_style,
    plot_all,
    q_in_reward_units,
    q_value_figure,
    safe_name,
    ylim_with_headroom,
)
from hybrid_rl.eval.runs import CorruptionLevel, load_runs
from run_dir_factory import GRID_DATASETS, standard_report, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def assert_valid_figure_files(paths: list[Path]) -> None:
    for path in paths:
        assert path.exists(), path
        data = path.read_bytes()
        if path.suffix == ".png":
            width, height = png_size(path)
            assert width >= 900 and height >= 500, (path, width, height)
            assert len(data) > 30_000, f"{path} is suspiciously small ({len(data)} bytes)"
        else:
            assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF"), path
            assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_standard_grid_writes_every_figure_as_png_and_pdf(tmp_path_factory):
    _, plots_dir, built = standard_report(tmp_path_factory)
    expected = set()
    for dataset in GRID_DATASETS:
        name = safe_name(dataset)
        stems = [f"learning_curves__{name}", f"q_values__{name}", f"critic_loss_variance__{name}",
                 f"corruption__{name}__remove_top_k", f"corruption__{name}__reward_noise_std"]
        expected |= {plots_dir / f"{stem}.{fmt}" for stem in stems for fmt in ("png", "pdf")}
    figures = {Path(p) for p in built["figures"]}
    assert figures == expected
    assert_valid_figure_files(sorted(figures))
    assert not [p for p in plots_dir.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"


def test_single_seed_without_mc_return_still_plots(tmp_path):
    """One run, one algo, clean data, no MC return logged: every figure kind still works."""
    write_run(tmp_path / "results", algo="iql", dataset="mujoco/hopper/medium-v0", seed=0,
              log_mc_return=False, total_steps=20_000, eval_every=2_000, log_every=500)
    paths = plot_all(load_runs(tmp_path / "results"), tmp_path / "plots", reps=100)
    stems = {p.stem for p in paths}
    name = safe_name("mujoco/hopper/medium-v0")
    assert name == "mujoco_hopper_medium-v0"
    assert stems == {f"learning_curves__{name}", f"q_values__{name}", f"critic_loss_variance__{name}",
                     f"corruption__{name}__clean"}
    assert len(paths) == 8
    for path in paths:  # smaller figures (one panel) but real content
        assert path.stat().st_size > 8_000


def test_corruption_axes_split_into_one_parameter_sweeps():
    clean = CorruptionLevel.from_config({})
    k30 = CorruptionLevel.from_config({"remove_top_k": 30})
    k60 = CorruptionLevel.from_config({"remove_top_k": 60.0, "reward_noise_std": 0.0})
    noise = CorruptionLevel.from_config({"reward_noise_std": 0.5})
    both = CorruptionLevel.from_config({"remove_top_k": 30, "reward_noise_std": 0.5})
    axes = dict(corruption_axes([k60, noise, clean, k30, both]))
    assert list(axes) == ["remove_top_k", "reward_noise_std", "combined"]
    assert axes["remove_top_k"] == [clean, k30, k60]
    assert axes["reward_noise_std"] == [clean, noise]
    assert axes["combined"] == [clean, k30, k60, noise, both]
    assert corruption_axes([clean]) == [("clean", [clean])]


def test_colors_are_fixed_per_algo_and_levels_distinct():
    assert algo_colors(["iql", "cql"]) == algo_colors(["cql", "iql", "iql"])
    assert algo_colors(["iql"])["iql"] != algo_colors(["cql"])["cql"]
    colors = algo_colors(["iql", "mystery", "other"])
    assert len(set(colors.values())) == 3
    styles = [level_style("#1f77b4", i, 4) for i in range(4)]
    assert styles[0] == {"color": "#1f77b4", "linestyle": "-"}
    assert len({s["color"] for s in styles}) == 4
    assert len({str(s["linestyle"]) for s in styles}) == 4


def test_step_tick_labels():
    assert [_format_steps(v) for v in (0, 500, 250_000, 1_000_000, 1_500_000)] == ["0", "500", "250k", "1M", "1.5M"]


def test_divergence_marker_is_pinned_inside_the_frame():
    fig = Figure()
    ax = fig.subplots()
    ax.set_xlim(0.0, 10.0)
    ax.set_ylim(0.0, 10.0)
    _draw_divergence_markers(ax, [(5.0, 4.0, "red"), (9.8, 3.2e10, "red"), (1.0, -7e9, "red")])
    markers = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert [tuple(np.ravel(m.get_ydata())) for m in markers] == [(4.0,), (0.95,), (0.05,)]  # axes fraction
    assert [t.get_text() for t in ax.texts] == ["3.2e+10", "-7.0e+09"]
    # Labels stay inside the axes, even for a × at the right edge (its label goes left).
    fig.canvas.draw()
    frame = ax.get_window_extent()
    for text in ax.texts:
        box = text.get_window_extent()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text


def test_headroom_keeps_pinned_values_off_the_data():
    # Nothing outside: unchanged.
    assert ylim_with_headroom(-100.0, 20.0, [5.0], log=False) == (-100.0, 20.0)
    # A value above: a strip of 15% of the range on top, so a × pinned at 95% of the
    # height sits above every curve and above the zero line (at most 87% of the height).
    low, high = ylim_with_headroom(-100.0, 20.0, [1.4e10], log=False)
    assert (low, high) == (-100.0, pytest.approx(38.0))
    assert (20.0 - low) / (high - low) < 0.95 - 0.05
    assert ylim_with_headroom(-100.0, 20.0, [-1e9], log=False) == (pytest.approx(-118.0), 20.0)
    assert ylim_with_headroom(1e-3, 1.0, [1e29, float("nan")], log=True) == (1e-3, 30.0)


def test_reward_scaled_runs_plot_in_original_units(tmp_path):
    """Two runs that learned the same Q in dataset units, one trained on rewards x 2
    (logs Q x 2, loss variance x 16): their plotted series are the same."""
    write_run(tmp_path, seed=0, total_steps=10_000, eval_every=1_000, log_every=500, reward_scale=1.0)
    write_run(tmp_path, seed=1, total_steps=10_000, eval_every=1_000, log_every=500, reward_scale=2.0)
    plain, scaled = load_runs(tmp_path)
    assert (plain.reward_scale, scaled.reward_scale) == (1.0, 2.0)
    # The factory draws seed-specific noise; compare each run with its own logged values.
    for key in ("q_mean", "q_std", "q_minus_mc_mean"):
        np.testing.assert_allclose(q_in_reward_units(scaled, key), scaled.train[key] / 2.0)
        np.testing.assert_array_equal(q_in_reward_units(plain, key), plain.train[key])
    np.testing.assert_allclose(critic_loss_variance_in_reward_units(scaled),
                               scaled.train["critic_loss_rolling_var"] / 16.0)
    # CQL's loss mixes powers of the scale: left in logged units (the figure says so).
    cql = dataclasses.replace(scaled, algo="cql")
    np.testing.assert_array_equal(critic_loss_variance_in_reward_units(cql), scaled.train["critic_loss_rolling_var"])


def test_q_figure_values_agree_across_reward_scales(tmp_path):
    """The same run logged at scale 1 and at scale 2 draws identical Q curves."""
    run_dir = write_run(tmp_path / "a", seed=0, total_steps=10_000, eval_every=1_000, log_every=500)
    run = load_runs(tmp_path / "a")[0]
    doubled = dataclasses.replace(
        run, config={**run.config, "reward_scale": 2.0},
        train={k: (v * 2.0 if k.startswith("q_") or k in ("mc_return_mean",) else v) for k, v in run.train.items()})
    curves = []
    for variant in (run, doubled):
        fig = q_value_figure("gen-hopper-medium-v0", [variant], algo_colors(["iql"]))
        curves.append([np.asarray(line.get_ydata(), dtype=float) for ax in fig.axes for line in ax.get_lines()
                       if len(np.atleast_1d(line.get_ydata())) > 1])
    assert len(curves[0]) == len(curves[1]) > 0
    for a, b in zip(*curves):
        np.testing.assert_allclose(a, b)
    assert run_dir.exists()


def test_critic_loss_variance_falls_back_to_the_loss(tmp_path):
    run_dir = write_run(tmp_path, total_steps=10_000, eval_every=1_000, log_every=100)
    run = load_runs(tmp_path)[0]
    np.testing.assert_array_equal(critic_loss_variance(run), run.train["critic_loss_rolling_var"])
    without = dataclasses.replace(run, train={k: v for k, v in run.train.items() if k != "critic_loss_rolling_var"})
    computed = critic_loss_variance(without, window=5)
    assert computed.shape == run.train["critic_loss"].shape
    assert computed[4] == pytest.approx(np.var(run.train["critic_loss"][:5]))
    assert run_dir.exists()


def _panel_axes(fig: Figure) -> list:
    """The data panels of a figure (legend axes are switched off)."""
    return [ax for ax in fig.axes if ax.axison]


def _legends(fig: Figure) -> list:
    return [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def test_bc_gets_no_q_or_critic_panels(tmp_path):
    """BC has no critic: no empty 0-1 panel for it; the footnote says why it is missing."""
    for algo in ("bc", "iql"):
        write_run(tmp_path, algo=algo, dataset="walker2d-medium-v2", total_steps=10_000, eval_every=1_000,
                  log_every=500)
    runs = load_runs(tmp_path)
    colors = algo_colors(r.algo for r in runs)
    for make in (q_value_figure, critic_loss_variance_figure):
        fig = make("walker2d-medium-v2", runs, colors)
        assert [ax.get_title() for ax in _panel_axes(fig) if ax.get_title()] == ["IQL"]
        assert "Not shown: BC (no critic" in fig.texts[-1].get_text()
    only_bc = [r for r in runs if r.algo == "bc"]
    assert q_value_figure("walker2d-medium-v2", only_bc, colors) is None
    assert critic_loss_variance_figure("walker2d-medium-v2", only_bc, colors) is None
    assert len(learning_curve_figure("walker2d-medium-v2", runs, colors).axes) == 4  # 2 panels + 2 legend rows


def test_legends_sit_outside_every_panel(tmp_path_factory):
    """No legend overlaps a panel: it can hide no line, band, × or reference line."""
    results_dir, _, _ = standard_report(tmp_path_factory)
    runs = [r for r in load_runs(results_dir) if r.dataset == "walker2d-medium-v2" and r.is_result]
    colors = algo_colors(r.algo for r in runs)
    for make in (learning_curve_figure, q_value_figure, critic_loss_variance_figure):
        fig = make("walker2d-medium-v2", runs, colors)
        fig.canvas.draw()
        legends = _legends(fig)
        assert len(legends) == 2, make.__name__  # one per algorithm column
        texts = {t.get_text() for legend in legends for t in legend.get_texts()}
        assert "diverged run" in texts  # the × entry exists once markers are drawn
        for legend in legends:
            box = legend.get_window_extent()
            for ax in _panel_axes(fig):
                assert not box.overlaps(ax.get_window_extent()), (make.__name__, ax.get_title())


def test_footnotes_say_only_what_is_drawn():
    single = learning_curve_note(1, 1, any_diverged=False, behavior_shown=True, levels_note="")
    assert "band" not in single.replace("no confidence band", "") and "n = 1" in single
    assert "×" not in single and "k =" not in single
    mixed = learning_curve_note(3, 1, any_diverged=True, behavior_shown=False)
    assert "95% t-interval" in mixed and "n = 1" in mixed and "×" in mixed and "Dashed grey" not in mixed
    assert "95% t-interval over seeds." in learning_curve_note(3, 3, False, True)
    bars = corruption_bar_note([1, 1], any_diverged=False, levels_note="")
    assert "no error bars" in bars and "bootstrap" not in bars and "diverged" not in bars
    few = corruption_bar_note([3, 3], any_diverged=True)
    assert "bootstrap" in few and "IQM trims nothing" in few and "diverged" in few
    assert level_note([CorruptionLevel.from_config({})]) == ""
    assert level_note([CorruptionLevel.from_config({"remove_top_k": 30})]) == "k = % of best trajectories removed."


def test_generated_datasets_are_marked_in_titles(tmp_path):
    write_run(tmp_path, dataset="gen-hopper-medium-v0", total_steps=10_000, eval_every=1_000, log_every=500)
    run = load_runs(tmp_path)[0]
    fig = learning_curve_figure(run.dataset, [run], algo_colors(["iql"]))
    assert "gen-hopper-medium-v0 (generated, D4RL recipe)" in fig.get_suptitle()
    d4rl = dataclasses.replace(run, dataset="hopper-medium-v2", config={k: v for k, v in run.config.items()
                                                                         if k != "dataset_metadata"})
    fig = learning_curve_figure(d4rl.dataset, [d4rl], algo_colors(["iql"]))
    assert "generated" not in fig.get_suptitle()


def test_bands_stay_visible_for_light_level_colours():
    dark, light = level_style("#1f77b4", 0, 4)["color"], level_style("#1f77b4", 3, 4)["color"]
    assert band_alpha(light) > band_alpha(dark)  # a light shade needs more opacity to show
    assert 0.1 <= band_alpha(dark) and band_alpha(light) <= 0.4
