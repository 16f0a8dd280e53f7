"""Reading run directories and building the report: rows, counts, robustness, idempotence."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hybrid_rl.data.refs import PUBLISHED_SCORES
from hybrid_rl.core.errors import HybridRLError
from hybrid_rl.eval import report as report_module
from hybrid_rl.eval.report import build_report
from hybrid_rl.eval.runs import (
    CorruptionLevel,
    ResultsDirError,
    RunFormatError,
    corruption_label,
    load_run,
    load_runs,
    read_metrics,
)
from hybrid_rl.eval.stats import interval_estimates
from run_dir_factory import (
    DIVERGED_RUN,
    EARLY_FAILED_RUN_ID,
    FAILED_RUN,
    GRID_ALGOS,
    GRID_DATASETS,
    GRID_LEVELS,
    GRID_SEEDS,
    IN_PROGRESS_RUN,
    STANDARD_REPS,
    TRUNCATED_RUN,
    run_id_of,
    standard_report,
    write_run,
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def rid(run: tuple) -> str:
    """Run id of a factory (dataset, algo, corruption, seed) tuple."""
    dataset, algo, level, seed = run
    return run_id_of(algo, dataset, level, seed)


def label_of(level: dict) -> str:
    return CorruptionLevel.from_config(level).label


# ----------------------------------------------------------------------------- runs.py
def test_corruption_labels():
    assert corruption_label({}) == "clean"
    assert corruption_label(None) == "clean"
    assert corruption_label({"remove_top_k": 0.0, "reward_noise_std": 0.0}) == "clean"
    assert corruption_label({"remove_top_k": 30.0, "reward_noise_std": 0.0}) == "k=30%"
    assert corruption_label({"reward_noise_std": 0.5}) == "noise σ=0.5"
    assert corruption_label({"reward_noise_std": 0.5, "remove_top_k": 30}) == "k=30%, noise σ=0.5"
    assert corruption_label({"obs_noise": 0.1, "remove_top_k": 10}) == "k=10%, obs_noise=0.1"
    # The trainer's "extra" specs (data.corruption kinds) are part of the level too.
    extra = {"remove_top_k": 0.0, "reward_noise_std": 0.0, "extra": [
        {"kind": "corrupt_transitions", "target": "observations", "rate": 0.3, "scale": 1.0, "seed": 5}]}
    assert corruption_label(extra) == "corrupt_transitions[observations] rate=0.3, scale=1"
    assert corruption_label({**extra, "extra": []}) == "clean"
    assert corruption_label({"extra": [{"kind": "replace_rewards", "rate": 0.0}]}) == "clean"
    other_scale = {"extra": [{"kind": "corrupt_transitions", "target": "observations", "rate": 0.3, "scale": 2.0}]}
    assert CorruptionLevel.from_config(extra) != CorruptionLevel.from_config(other_scale)
    assert CorruptionLevel.from_config(extra).value_of("corrupt_transitions[observations]") == 0.3
    levels = sorted(CorruptionLevel.from_config(c) for c in
                    [{"reward_noise_std": 0.5}, {"remove_top_k": 60}, {}, {"remove_top_k": 30}])
    assert [lv.label for lv in levels] == ["clean", "k=30%", "k=60%", "noise σ=0.5"]


def test_read_metrics_tolerates_a_truncated_last_line_and_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "critic_loss": NaN}\n\n'
                    '{"step": 2, "kind": "eval", "normalized_return_mean": 3.5}\n{"step": 3, "ki')
    records, truncated = read_metrics(path)
    assert truncated
    assert [r["step"] for r in records] == [1, 2]
    assert math.isnan(records[0]["critic_loss"])
    assert read_metrics(tmp_path / "missing.jsonl") == ([], False)


def test_read_metrics_rejects_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train"}\n{"step": 2, garbage\n{"step": 3, "kind": "train"}\n')
    with pytest.raises(RunFormatError, match=r"line 2: .*Only the last line may be cut off"):
        read_metrics(path)


def test_load_run_statuses_and_final_scores(tmp_path):
    completed = load_run(write_run(tmp_path, seed=0))
    assert completed.status == "completed" and completed.is_result and not completed.diverged
    assert completed.final_score == pytest.approx(completed.summary["final_normalized_return"])
    assert completed.eval_steps.size == 20 and completed.train_steps.size == 100

    diverged = load_run(write_run(tmp_path, seed=1, status="diverged", diverge_at=52_000))
    assert diverged.diverged and diverged.diverged_at_step == 52_000
    before = diverged.eval_steps <= 52_000
    assert diverged.final_score == pytest.approx(diverged.eval_scores[before][-1])  # eval at 50k

    early = load_run(write_run(tmp_path, seed=2, status="diverged", diverge_at=3_000))
    assert math.isnan(early.final_score) and early.is_result  # no evaluation before divergence

    running = load_run(write_run(tmp_path, seed=3, status="in_progress", stop_at=40_000))
    assert running.status == "in_progress" and not running.is_result and running.last_step == 40_000
    failed = load_run(write_run(tmp_path, seed=4, status="failed"))
    assert failed.status == "failed" and math.isnan(failed.final_score)


def test_completed_run_without_final_in_summary_recomputes_it(tmp_path):
    run_dir = write_run(tmp_path, seed=0)
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["final_normalized_return"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    run = load_run(run_dir)
    assert run.final_score == pytest.approx(np.mean(run.eval_scores[-2:]))  # 20 evals -> last 2


def test_load_runs_rejects_duplicate_runs_and_bad_status(tmp_path):
    first = write_run(tmp_path / "a", seed=0)
    (tmp_path / "b").mkdir()
    first.rename(tmp_path / "b" / "copy_1")
    write_run(tmp_path / "b", seed=0)
    with pytest.raises(RunFormatError, match="same run"):
        load_runs(tmp_path / "b")
    bad = write_run(tmp_path / "c", seed=0)
    (bad / "summary.json").write_text(json.dumps({"status": "exploded"}))
    with pytest.raises(RunFormatError, match="unknown status"):
        load_run(bad)


# ----------------------------------------------------------------------------- report
def test_summary_csv_has_one_row_per_cell_with_the_right_counts(tmp_path_factory):
    results_dir, _, built = standard_report(tmp_path_factory)
    rows = read_csv(Path(built["summary_csv"]))
    assert len(rows) == len(GRID_DATASETS) * len(GRID_ALGOS) * len(GRID_LEVELS)
    cells = {(r["dataset"], r["algo"], r["corruption"]): r for r in rows}
    for dataset in GRID_DATASETS:
        for algo in GRID_ALGOS:
            for level in GRID_LEVELS:
                row = cells[(dataset, algo, label_of(level))]
                key = (dataset, algo, level)
                assert row["n_seeds"] == str(len(GRID_SEEDS))  # in-progress/failed runs excluded
                assert row["seeds"] == ";".join(map(str, GRID_SEEDS))
                assert row["n_diverged"] == ("1" if key == DIVERGED_RUN[:3] else "0")
                assert row["n_failed"] == ("1" if key == FAILED_RUN[:3] else "0")
                assert row["n_in_progress"] == ("1" if key == IN_PROGRESS_RUN[:3] else "0")
                assert float(row["behavior_score"]) > 0
                published = PUBLISHED_SCORES.get(dataset, {}).get(algo)
                assert row["published_corl_clean"] == ("" if published is None else f"{published:.4f}")
    assert cells[("walker2d-medium-v2", "iql", "clean")]["published_corl_clean"] == "80.9000"
    assert cells[("gen-hopper-medium-v0", "cql", "k=30%")]["remove_top_k"] == "30"


def test_summary_numbers_match_the_runs(tmp_path_factory):
    results_dir, _, built = standard_report(tmp_path_factory)
    runs = load_runs(results_dir)
    rows = {(r["dataset"], r["algo"], r["corruption"]): r for r in read_csv(Path(built["summary_csv"]))}
    dataset, algo, level, _ = DIVERGED_RUN
    cell = [r for r in runs if (r.dataset, r.algo, r.level) == (dataset, algo, CorruptionLevel.from_config(level))
            and r.is_result]
    scores = [r.final_score for r in cell]
    diverged = next(r for r in cell if r.diverged)
    assert diverged.final_score == pytest.approx(diverged.eval_scores[np.isfinite(diverged.eval_scores)][-1])
    expected = interval_estimates(scores, reps=STANDARD_REPS)
    row = rows[(dataset, algo, label_of(level))]
    assert float(row["final_mean"]) == pytest.approx(np.mean(scores), abs=1e-4)
    assert float(row["final_iqm_ci_low"]) == pytest.approx(expected["iqm"].low, abs=1e-4)
    assert float(row["final_iqm_ci_high"]) == pytest.approx(expected["iqm"].high, abs=1e-4)


def test_summary_markdown_lists_status_and_figures(tmp_path_factory):
    results_dir, plots_dir, built = standard_report(tmp_path_factory)
    md = Path(built["summary_md"]).read_text(encoding="utf-8")
    assert built["summary_md"] == str(results_dir / "summary.md")
    for dataset in GRID_DATASETS:
        assert f"## {dataset}" in md
    assert "## In progress" in md and f"`{rid(IN_PROGRESS_RUN)}`: step 33000/100000" in md
    assert "## Failed" in md and "CUDA out of memory" in md
    assert f"`{rid(FAILED_RUN)}` at step 33000" in md
    assert f"`{rid(TRUNCATED_RUN)}`: the last line of metrics.jsonl was cut off" in md
    assert "## Across datasets" in md
    assert "| CQL | k=60% | 3 | 1 |" in md  # the diverged seed is counted, not dropped
    # Every PNG is embedded with a link relative to the results directory.
    for png in (p for p in built["figures"] if p.endswith(".png")):
        assert f"(../plots/{Path(png).name})" in md
    assert built["in_progress"] == [rid(IN_PROGRESS_RUN)]
    assert f"`{EARLY_FAILED_RUN_ID}` before it started (no config.json): ValueError" in md
    assert built["failed"] == sorted([rid(FAILED_RUN), EARLY_FAILED_RUN_ID])
    assert built["n_runs"] == len(GRID_DATASETS) * len(GRID_ALGOS) * len(GRID_LEVELS) * len(GRID_SEEDS) + 3
    assert set(built["files"]) == {built["summary_md"], built["summary_csv"], *built["figures"]}
    assert all(Path(p).exists() for p in built["files"])


def test_rebuild_is_byte_identical(tmp_path):
    results_dir = tmp_path / "results"
    for seed in (0, 1):
        for level in ({}, {"remove_top_k": 30.0}):
            write_run(results_dir, algo="iql", dataset="hopper-medium-v2", seed=seed, corruption=level,
                      total_steps=20_000, eval_every=2_000, log_every=500)
    write_run(results_dir, algo="iql", dataset="hopper-medium-v2", seed=2, status="diverged",
              diverge_at=12_000, total_steps=20_000, eval_every=2_000, log_every=500)
    first = build_report(results_dir, tmp_path / "plots", reps=200)
    snapshot = {p: Path(p).read_bytes() for p in first["files"]}
    second = build_report(results_dir, tmp_path / "plots", reps=200)
    assert second == first
    for path, content in snapshot.items():
        assert Path(path).read_bytes() == content, f"{path} changed on rebuild"
    leftovers = [p for p in list(results_dir.iterdir()) + list((tmp_path / "plots").iterdir())
                 if p.name.endswith(".tmp")]
    assert not leftovers


def test_empty_missing_or_file_results_dir_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "scratch").mkdir()  # a directory that is no run
    with pytest.raises(HybridRLError, match=r"no completed runs in .*empty: it holds no run directory at all.*"
                                            r"run the experiments first") as caught:
        build_report(tmp_path / "empty", tmp_path / "plots")
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    assert not (tmp_path / "empty" / "summary.md").exists()
    with pytest.raises(ResultsDirError, match="does not exist") as caught:
        build_report(tmp_path / "nowhere", tmp_path / "plots")
    assert isinstance(caught.value, FileNotFoundError)
    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(ResultsDirError, match="is not a directory") as caught:
        build_report(tmp_path / "a_file", tmp_path / "plots")
    assert isinstance(caught.value, NotADirectoryError) and "does not exist" not in str(caught.value)


def test_runs_without_results_still_get_tables(tmp_path):
    """Only an in-progress run: tables with its section, no figures, no error."""
    write_run(tmp_path / "running", status="in_progress", stop_at=40_000)
    built = build_report(tmp_path / "running", tmp_path / "plots")
    assert built["figures"] == [] and built["in_progress"] == [run_id_of("iql", "gen-hopper-medium-v0", {}, 0)]
    md = Path(built["summary_md"]).read_text(encoding="utf-8")
    assert "## In progress" in md and "step 40000/100000" in md
    rows = read_csv(Path(built["summary_csv"]))
    assert [(r["n_seeds"], r["n_in_progress"], r["final_mean"]) for r in rows] == [("0", "1", "")]


def test_a_grid_where_every_run_failed_gets_a_summary(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        for level in ({}, {"remove_top_k": 30.0}):
            write_run(results, seed=seed, corruption=level, status="failed", error="RuntimeError: boom")
    early = results / "iql__gen-hopper-medium-v0__k60__noise0__s0"
    early.mkdir()
    (early / "summary.json").write_text(json.dumps({"status": "failed", "run_id": early.name,
                                                    "error": "ValueError: bad override"}))
    built = build_report(results, tmp_path / "plots")
    assert built["figures"] == [] and len(built["failed"]) == 5 and built["n_runs"] == 5
    rows = read_csv(Path(built["summary_csv"]))
    assert [(r["corruption"], r["n_seeds"], r["n_failed"]) for r in rows] == [("clean", "0", "2"), ("k=30%", "0", "2")]
    for row in rows:
        assert row["final_mean"] == row["final_iqm"] == row["final_mean_ci_low"] == row["final_iqm_ci_high"] == ""
        assert row["seeds"] == "" and float(row["behavior_score"]) > 0
    md = Path(built["summary_md"]).read_text(encoding="utf-8")
    assert "| IQL | clean | 0 | 0 | n/a | n/a |" in md and "+2 failed" in md
    assert "## Failed" in md and md.count("RuntimeError: boom") == 4 and "ValueError: bad override" in md


def test_tables_are_written_before_the_figures(tmp_path, monkeypatch):
    """A figure problem must not lose the tables."""
    write_run(tmp_path / "results", total_steps=10_000, eval_every=1_000, log_every=500)

    def broken_plot_all(*args, **kwargs):
        raise RuntimeError("figure exploded")

    monkeypatch.setattr(report_module, "plot_all", broken_plot_all)
    with pytest.raises(RuntimeError, match="figure exploded"):
        build_report(tmp_path / "results", tmp_path / "plots", reps=100)
    assert (tmp_path / "results" / "summary.csv").exists()
    assert "## gen-hopper-medium-v0" in (tmp_path / "results" / "summary.md").read_text(encoding="utf-8")


def test_single_seed_has_no_interval_in_the_csv_and_honest_labels(tmp_path):
    results = tmp_path / "results"
    for dataset in ("gen-hopper-medium-v0", "walker2d-medium-v2"):
        write_run(results, dataset=dataset, seed=0, total_steps=10_000, eval_every=1_000, log_every=500)
    built = build_report(results, tmp_path / "plots", reps=100)
    for row in read_csv(Path(built["summary_csv"])):
        assert row["n_seeds"] == "1" and row["final_mean"] != ""
        assert row["final_mean_ci_low"] == row["final_mean_ci_high"] == ""
        assert row["final_iqm_ci_low"] == row["final_iqm_ci_high"] == ""
    md = Path(built["summary_md"]).read_text(encoding="utf-8")
    assert "(n=1)" in md  # per-dataset cells keep their honest label
    across = md[md.index("## Across datasets"):]
    assert "| IQL | clean | 2 | 1 |" in across  # 2 datasets, 1 seed per dataset
    assert "(1 seed per dataset × 2 datasets, no CI)" in across and "(n=1)" not in across
    assert "IQM equals its mean" in md and "This is correct" in md
    # Generated data is never passed off as D4RL.
    assert "**Generated datasets** (`gen-hopper-medium-v0`)" in md and "not D4RL data" in md
    section = md[md.index("## gen-hopper-medium-v0"):md.index("## walker2d-medium-v2")]
    assert "**Generated data, not D4RL**" in section and "stochastic rollouts" in section
    assert "Generated data, not D4RL" not in md[md.index("## walker2d-medium-v2"):md.index("## Across")]


def test_no_small_n_or_generated_notes_when_they_do_not_apply(tmp_path):
    results = tmp_path / "results"
    for seed in range(4):
        write_run(results, dataset="walker2d-medium-v2", seed=seed, total_steps=10_000, eval_every=1_000,
                  log_every=500)
    md = Path(build_report(results, tmp_path / "plots", reps=100)["summary_md"]).read_text(encoding="utf-8")
    assert "IQM equals its mean" not in md and "Generated" not in md and "reward_scale" not in md


def test_reward_scaled_runs_are_explained(tmp_path):
    write_run(tmp_path / "results", total_steps=10_000, eval_every=1_000, log_every=500, reward_scale=0.366)
    md = Path(build_report(tmp_path / "results", tmp_path / "plots", reps=100)["summary_md"]).read_text(
        encoding="utf-8")
    assert "config.json `reward_scale`" in md and "original reward units" in md


def test_corrupt_metrics_in_a_run_stops_the_report_with_its_path(tmp_path):
    run_dir = write_run(tmp_path / "results", total_steps=10_000, eval_every=1_000, log_every=500)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:10]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFormatError, match=r"metrics\.jsonl, line 4"):
        build_report(tmp_path / "results", tmp_path / "plots")
