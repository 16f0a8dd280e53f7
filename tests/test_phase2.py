"""The Phase II study end to end on tiny data: parents trained first, every method run,
recovery tables and figures written, a rerun skips everything, bad input costs nothing."""
from __future__ import annotations

import csv
import json
import math
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
    assert {p.name for p in written["figures"]} == {f"recovery_{kind}_gen-hopper-random-v0_3000.{ext}" for kind in ("curves", "bars", "q") for ext in ("png", "pdf")}
    # Hopper episodes of these weak policies end by falling: every method's critic is checked on them.
    assert all(math.isfinite(float(r["q_minus_mc_final_mean"])) for r in rows)
    assert "switch -> final" in (tmp_path / "results_phase2" / "recovery.md").read_text()

    again = run_phase2(spec, workers=1, log=lambda line: None, progress=False)
    assert again["ran"] == 0 and again["skipped_complete"] == 5


def test_the_study_trains_populations_when_asked(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--population on: the parents train as one Phase I population, their fine-tuning runs as one Phase II population."""
    from dataclasses import replace

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    spec = replace(tiny_spec(tmp_path, generated_cache), methods=("iql",), population="on", compile="off")
    lines: list[str] = []
    status = run_phase2(spec, workers=1, log=lines.append, progress=False)
    assert status["failed"] == {} and status["ran"] == 2
    assert any("2 fine-tuning runs in 1 population(s) of up to 2" in line for line in lines), lines
    for root in ("results", "results_phase2"):
        for config_file in (tmp_path / root).glob("*/config.json"):
            assert json.loads(config_file.read_text())["population"]["size"] == 2, config_file


def test_bad_phase2_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args, message in ((["--method", "iql,awac"], "unknown fine-tuning method"), (["--remove_top_k", "100"], "outside [0, 100)"),
                          (["--sampling", "mostly"], "unknown sampling mode")):
        code = phase2_main([*args, "--results", str(tmp_path / "r"), "--results_phase2", str(tmp_path / "r2"), "--plots", str(tmp_path / "p")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not any(tmp_path.iterdir())


STUDY_SCRIPT = """
import sys
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_phase2 import tiny_spec
from hybrid_rl.phase2 import run_phase2
spec = replace(tiny_spec(Path({root!r}), Path({cache!r})), methods=("iql", "sac"), remove_top_k=(0.0,), online_steps=400, checkpoint_every=100, eval_every=200)
status = run_phase2(spec, workers=1, log=lambda line: None, progress=False)
sys.exit(1 if status["failed"] else 0)
"""


@pytest.mark.slow
def test_a_killed_study_reruns_to_the_same_runs(tmp_path: Path, generated_cache: Path) -> None:
    """SIGKILL the study while a fine-tuning run is between checkpoints, run it again: every
    run directory ends as in a study that was never interrupted (locks freed by the kill,
    finished runs skipped, the interrupted one resumed)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def study(root: Path) -> subprocess.Popen:
        root.mkdir(exist_ok=True)
        script = STUDY_SCRIPT.format(tests=str(Path(__file__).parent), root=str(root), cache=str(generated_cache))
        env = {**os.environ, "HYBRID_RL_DATA_DIR": str(generated_cache), "MPLBACKEND": "Agg"}
        return subprocess.Popen([sys.executable, "-c", script], cwd=root, env=env, stderr=subprocess.PIPE)

    def finish(process: subprocess.Popen) -> None:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()[-2000:]

    finish(study(tmp_path / "reference"))
    killed = tmp_path / "killed"
    process = study(killed)
    deadline = time.time() + 600
    interrupted = None
    while process.poll() is None and time.time() < deadline and interrupted is None:
        for run_dir in (killed / "results_phase2").glob("ft-*"):
            if (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists():
                interrupted = run_dir.name
        time.sleep(0.01)
    assert interrupted is not None and process.poll() is None, "the study finished before a fine-tuning run could be killed mid-way"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finish(study(killed))

    assert interrupted in {p.name for p in (tmp_path / "reference" / "results_phase2").iterdir()}
    for results in ("results", "results_phase2"):
        expected = sorted(p.name for p in (tmp_path / "reference" / results).iterdir() if p.is_dir())
        assert sorted(p.name for p in (killed / results).iterdir() if p.is_dir()) == expected
        for name in expected:
            assert (killed / results / name / "metrics.jsonl").read_text() == (tmp_path / "reference" / results / name / "metrics.jsonl").read_text(), name
