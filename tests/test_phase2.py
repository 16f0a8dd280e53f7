"""The Phase II study end to end on tiny data: parents trained first, every method run,
recovery tables and figures written, a rerun skips everything, bad input costs nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hybrid_rl.cli import phase2_main
from hybrid_rl.phase2 import Phase2Spec, run_phase2

from conftest import TINY_DATASET


def tiny_spec(tmp_path: Path, cache: Path) -> Phase2Spec:
    return Phase2Spec(
        methods=("iql", "rlpd", "sac"), datasets=(TINY_DATASET,), remove_top_k=(0.0, 30.0), seeds=(0,), pretrain_steps=40, online_steps=60,
        utd=1, eval_every=30, pretrain_eval_every=40, eval_episodes=2, checkpoint_every=30, device="cpu",
        results_dir=str(tmp_path / "results"), phase2_results=str(tmp_path / "results_phase2"), cache_dir=str(cache),
        algo_overrides={"iql": {"hidden": [16, 16], "batch_size": 32}},
        method_overrides={"rlpd": {"hidden": [16, 16], "batch_size": 32, "ensemble_size": 3}, "sac": {"hidden": [16, 16], "batch_size": 32}},
    )


def test_the_study_trains_parents_then_every_method_and_reports(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_rl.eval.recovery_report import build_recovery_report

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path, generated_cache)
    status = run_phase2(spec, workers=1, log=lambda line: None, progress=False)
    # iql at k 0 and 30, rlpd at k 0 and 30, sac once (it uses no offline data)
    assert status["failed"] == {} and status["runs"] == 5 and status["ran"] == 5
    parents = sorted(p.name for p in (tmp_path / "results").iterdir() if p.is_dir())
    assert parents == ["iql__gen-hopper-random-v0@3000__k0__noise0__s0", "iql__gen-hopper-random-v0@3000__k30__noise0__s0"]
    runs = sorted(p.name for p in (tmp_path / "results_phase2").iterdir() if p.is_dir())
    assert [name.split("__")[0] for name in runs] == ["ft-iql", "ft-iql", "ft-rlpd", "ft-rlpd", "ft-sac"]

    written = build_recovery_report(tmp_path / "results_phase2", tmp_path / "plots")
    rows = list(csv.DictReader((tmp_path / "results_phase2" / "recovery.csv").open()))
    assert {(r["method"], r["corruption"]) for r in rows} == {("iql", "clean"), ("iql", "k=30%"), ("rlpd", "clean"), ("rlpd", "k=30%"), ("sac", "clean")}
    iql_clean = next(r for r in rows if r["method"] == "iql" and r["corruption"] == "clean")
    parent_summary = json.loads((tmp_path / "results" / parents[0] / "summary.json").read_text())
    assert float(iql_clean["switch_mean"]) == pytest.approx(parent_summary["final_normalized_return"], abs=1e-3)
    assert {p.name for p in written["figures"]} == {f"recovery_{kind}_gen-hopper-random-v0_3000.{ext}" for kind in ("curves", "bars") for ext in ("png", "pdf")}
    assert "switch -> final" in (tmp_path / "results_phase2" / "recovery.md").read_text()

    again = run_phase2(spec, workers=1, log=lambda line: None, progress=False)
    assert again["ran"] == 0 and again["skipped_complete"] == 5


def test_bad_phase2_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args, message in ((["--method", "iql,awac"], "unknown fine-tuning method"), (["--remove_top_k", "100"], "outside [0, 100)"),
                          (["--sampling", "mostly"], "unknown sampling mode")):
        code = phase2_main([*args, "--results", str(tmp_path / "r"), "--results_phase2", str(tmp_path / "r2"), "--plots", str(tmp_path / "p")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not any(tmp_path.iterdir())
