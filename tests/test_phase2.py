"""The Phase II study end to end on tiny data: parents trained first, every method run,
recovery tables and figures written, a rerun skips everything, bad input costs nothing."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from hybrid_rl.cli import phase2_main
from hybrid_rl.core.errors import HybridRLError
from hybrid_rl.studies.phase2 import Phase2Spec, run_phase2

from conftest import TINY_DATASET


def tiny_spec(tmp_path: Path, cache: Path) -> Phase2Spec:
    return Phase2Spec(
        methods=("iql", "rlpd", "sac"), datasets=(TINY_DATASET,), remove_top_k=(0.0, 30.0), seeds=(0,), pretrain_steps=40, online_steps=60,
        utd=1, eval_every=30, pretrain_eval_every=40, eval_episodes=2, switch_episodes=3, checkpoint_every=30, device="cpu",
        results_dir=str(tmp_path / "results"), phase2_results=str(tmp_path / "results_phase2"), cache_dir=str(cache),
        algo_overrides={"iql": {"hidden": [16, 16], "batch_size": 32}},
        method_overrides={"rlpd": {"hidden": [16, 16], "batch_size": 32, "ensemble_size": 3}, "sac": {"hidden": [16, 16], "batch_size": 32}},
    )


def test_the_study_trains_parents_then_every_method_and_reports(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from hybrid_rl.eval.recovery_report import build_recovery_report

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    monkeypatch.chdir(tmp_path)
    # The study's default methods and a method without data: RLPD at its recipe and without offline data.
    spec = replace(tiny_spec(tmp_path, generated_cache), methods=("iql", "offline", "iql@utd0", "rlpd", "rlpd@online_only", "sac"), seeds=(0, 1))
    status = run_phase2(spec, workers=1, log=lambda line: None, progress=False)
    # per seed: iql, offline, frozen and rlpd at k 0 and 30; rlpd without data and sac once (they use no offline data)
    assert status["failed"] == {} and status["runs"] == 2 * (4 * 2 + 2) and status["ran"] == status["runs"]
    parents = sorted(p.name for p in (tmp_path / "results").iterdir() if p.is_dir())
    tail = "batch_size=32__hidden=16x16__steps40"  # the tiny parents' settings and budget
    assert parents == [f"iql__gen-hopper-random-v0@3000__k{k}__noise0__{tail}__s{seed}" for k in (0, 30) for seed in (0, 1)]  # offline continues them
    runs = sorted(p.name for p in (tmp_path / "results_phase2").iterdir() if p.is_dir())
    assert sorted({name.split("__")[0] for name in runs}) == ["ft-iql", "ft-offline", "ft-rlpd", "ft-sac"]

    written = build_recovery_report(tmp_path / "results_phase2", tmp_path / "plots")
    rows = list(csv.DictReader((tmp_path / "results_phase2" / "recovery.csv").open()))
    # The study's UTD 1 departs from RLPD's recipe (20), and its name says so.
    assert {(r["variant"], r["corruption"]) for r in rows} == {(v, c) for v in ("iql", "offline", "frozen", "rlpd utd1") for c in ("clean", "k=30%")} | {
        ("rlpd utd1 online_only", "clean"), ("sac", "clean")}
    assert all(r["n"] == "2" and r["interval"] == "mean, Student-t over seeds" for r in rows)
    # The switch is measured at step 0 of each run: every run from one parent measures the same policy on the same episodes.
    iql_clean = next(r for r in rows if r["variant"] == "iql" and r["corruption"] == "clean")
    frozen_clean = next(r for r in rows if r["variant"] == "frozen" and r["corruption"] == "clean")
    switches = [json.loads((tmp_path / "results_phase2" / name / "metrics.jsonl").read_text().splitlines()[0])["normalized_return_mean"]
                for name in runs if name.startswith("ft-iql__from__iql__gen-hopper-random-v0@3000__k0__") and "utd1" in name]
    assert float(iql_clean["switch_point"]) == pytest.approx(sum(switches) / 2, abs=1e-3) and iql_clean["switch_point"] == frozen_clean["switch_point"]
    assert float(frozen_clean["gain_point"]) == pytest.approx(float(frozen_clean["final_point"]) - float(frozen_clean["switch_point"]), abs=1e-3)
    paired = list(csv.DictReader((tmp_path / "results_phase2" / "recovery_paired.csv").open()))
    assert {(r["comparison"], r["variant"], r["against"]) for r in paired if r["corruption"] == "k=30%"} == {
        ("damaged - clean", v, "clean") for v in ("iql", "offline", "frozen", "rlpd utd1")} | {
        ("method - control", "iql", "offline"), ("method - control", "iql", "frozen"), ("method - control", "rlpd utd1", "rlpd utd1 online_only")}
    assert all(r["n_pairs"] == "2" for r in paired)
    assert {p.name for p in written["figures"]} == {f"recovery_{kind}_gen-hopper-random-v0_3000.{ext}" for kind in ("curves", "bars", "q") for ext in ("png", "pdf")}
    # Hopper episodes of these weak policies end by falling: every interacting method's critic is checked on them.
    assert all(math.isfinite(float(r["q_minus_mc_final_mean"])) for r in rows if r["variant"] != "offline")
    text = (tmp_path / "results_phase2" / "recovery.md").read_text()
    assert "| switch | final | interval | gain | dip |" in text and "## Paired differences (by seed)" in text

    again = run_phase2(spec, workers=1, log=lambda line: None, progress=False)
    assert again["ran"] == 0 and again["skipped_complete"] == status["runs"]


def test_the_study_trains_populations_when_asked(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--population on: the parents train as one Phase I population, their fine-tuning runs as one Phase II population."""
    from dataclasses import replace

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    spec = replace(tiny_spec(tmp_path, generated_cache), methods=("iql",), population="on", compile="off")
    lines: list[str] = []
    status = run_phase2(spec, workers=1, log=lines.append, progress=False)
    assert status["failed"] == {} and status["ran"] == 2
    assert any("2 runs in 1 population(s) of up to 2 (one stacked step, every member in its own environment" in line for line in lines), lines
    for root in ("results", "results_phase2"):
        for config_file in (tmp_path / root).glob("*/config.json"):
            assert json.loads(config_file.read_text())["population"]["size"] == 2, config_file


def test_bad_phase2_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args, message in ((["--method", "iql,awac"], "unknown fine-tuning method"), (["--remove_top_k", "100"], "outside [0, 100)"),
                          (["--sampling", "mostly"], "unknown sampling mode"), (["--method", "iql@fast"], "unknown option 'fast'"),
                          (["--method", "iql,iql@utd1"], "names one run twice")):
        code = phase2_main([*args, "--results", str(tmp_path / "r"), "--results_phase2", str(tmp_path / "r2"), "--plots", str(tmp_path / "p")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not any(tmp_path.iterdir())


def test_a_report_needs_fine_tuning_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "r2").mkdir()
    code = phase2_main(["--plot_only", "--results_phase2", str(tmp_path / "r2"), "--plots", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "no fine-tuning runs in" in err and err.count("\n") == 1, err
    assert not (tmp_path / "p").exists() and not any((tmp_path / "r2").iterdir())


STUDY_SCRIPT = """
import sys
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_phase2 import tiny_spec
from hybrid_rl.studies.phase2 import run_phase2
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


def test_the_study_sweeps_settings_of_its_parents_and_from_scratch_methods(tmp_path: Path) -> None:
    """--set beta=3,10: IQL parents at both betas, each fine-tuned from; SAC has no beta and
    runs once. A setting only SAC has (init_alpha) sweeps SAC alone."""
    from dataclasses import replace

    spec = replace(tiny_spec(tmp_path, tmp_path / "cache"), methods=("iql", "sac"), remove_top_k=(0.0,), settings=(("beta", ("3", "10")),))
    parents = [c.run_id for c in spec.phase1_spec().expand()]
    assert len(parents) == 2 and sum("__beta=10__" in p for p in parents) == 1  # beta=3 is IQL's default: the plain id
    runs = [c.run_id for c in spec.finetune_configs()]
    assert sorted(r.split("__from__")[1] for r in runs if r.startswith("ft-iql")) == sorted(f"{p}__utd1__uniform__online60__s0" for p in parents)
    assert len([r for r in runs if r.startswith("ft-sac")]) == 1
    swept = replace(spec, settings=(("init_alpha", ("0.1", "1")),))
    assert [c.run_id.split("__noise0__")[1] for c in swept.finetune_configs() if c.method == "sac"] == [
        "batch_size=32__hidden=16x16__init_alpha=0.1__utd1__online_only__online60__s0", "batch_size=32__hidden=16x16__utd1__online_only__online60__s0"]
    with pytest.raises(HybridRLError, match="no algorithm here"):
        replace(spec, settings=(("cql_alpha", ("1",)),))
