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
    corruption_axes,
    critic_loss_variance,
    level_style,
    plot_all,
    safe_name,
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
    write_run(tmp_path / "results", algo="bc", dataset="mujoco/hopper/medium-v0", seed=0,
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
    ax.set_ylim(0.0, 10.0)
    _draw_divergence_markers(ax, [(5.0, 4.0, "red"), (7.0, 3.2e10, "red")])
    markers = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert [tuple(np.ravel(m.get_ydata())) for m in markers] == [(4.0,), (0.94,)]  # axes fraction
    assert [t.get_text() for t in ax.texts] == ["3.2e+10"]


def test_critic_loss_variance_falls_back_to_the_loss(tmp_path):
    run_dir = write_run(tmp_path, total_steps=10_000, eval_every=1_000, log_every=100)
    run = load_runs(tmp_path)[0]
    np.testing.assert_array_equal(critic_loss_variance(run), run.train["critic_loss_rolling_var"])
    without = dataclasses.replace(run, train={k: v for k, v in run.train.items() if k != "critic_loss_rolling_var"})
    computed = critic_loss_variance(without, window=5)
    assert computed.shape == run.train["critic_loss"].shape
    assert computed[4] == pytest.approx(np.var(run.train["critic_loss"][:5]))
    assert run_dir.exists()
