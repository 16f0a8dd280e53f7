"""The Ray launcher: a grid run through a real Ray cluster (head + two worker nodes on
loopback), a worker node killed mid-run, and the one-line hint when Ray is missing.

The cluster tests start their own Ray head and two 1-CPU worker nodes on 127.0.0.1 (the
head has no CPUs, so every run goes to a worker node, as on a cluster with a login-node
head). Everything shares this machine's filesystem, which stands in for the shared
storage a real cluster needs.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hybrid_rl.core.errors import MissingDependencyError
from hybrid_rl.runs.train import TrainConfig, train

DATASET = "gen-hopper-random-v0@3000"  # uniform-random data: generated in ~2 s, no policy file
REDUCED = os.environ.get("HYBRID_RL_CI_REDUCED") == "1"
HINT = "pip install 'hybrid-rl[ray]'"
TIMING_KEYS = {"wall_time_s"}


def import_ray():
    """Ray, or skip where it is not installed; CI installs it, so there these tests must run."""
    if REDUCED:
        import ray

        return ray
    return pytest.importorskip("ray", reason=f"Ray not installed ({HINT})")


def small_config(results: Path, cache: Path, seed: int, steps: int, **changes) -> TrainConfig:
    values = dict(
        algo="iql", dataset=DATASET, seed=seed, total_steps=steps, eval_every=steps // 2, eval_episodes=2, log_every=50,
        checkpoint_every=100, device="cpu", results_dir=str(results), cache_dir=str(cache), progress=False,
        algo_overrides={"hidden": [32, 32], "batch_size": 64},
    )
    values.update(changes)
    return TrainConfig(**values)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_clean_run_dir(run_dir: Path, steps: int, log_every: int = 50) -> None:
    """One final summary, no leftover temporary files, every logged step exactly once and in order."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == steps
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    records = metrics(run_dir)
    for kind in ("train", "eval"):
        seen = [r["step"] for r in records if r["kind"] == kind]
        assert seen == sorted(set(seen)), f"{run_dir.name}: {kind} steps repeated or out of order: {seen}"
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(log_every, steps + 1, log_every))
    assert summary["num_evaluations"] == len([r for r in records if r["kind"] == "eval"]) == 2


# ---------------------------------------------------------------------------------------
# Without Ray
# ---------------------------------------------------------------------------------------
def test_missing_ray_is_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hybrid_rl.studies import ray_launcher

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    for call in (ray_launcher.require_ray, lambda: ray_launcher.run_configs_on_ray([TrainConfig(results_dir=str(tmp_path))], address=None)):
        with pytest.raises(MissingDependencyError) as info:
            call()
        message = str(info.value)
        assert HINT in message and "\n" not in message


@pytest.mark.parametrize("study", ["phase1", "phase2"])
def test_cli_launcher_ray_without_ray(study: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--launcher ray` without Ray: exit status 2, one line on stderr, before any work."""
    from hybrid_rl.cli import phase1_main, phase2_main

    monkeypatch.setitem(sys.modules, "ray", None)
    results = tmp_path / "results"
    common = ["--launcher", "ray", "--quick", "--env", DATASET, "--results", str(results), "--cache_dir", str(tmp_path / "cache")]
    if study == "phase1":
        code = phase1_main(common)
    else:
        code = phase2_main([*common, "--results_phase2", str(tmp_path / "results_phase2"), "--plots", str(tmp_path / "plots")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert HINT in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not any(tmp_path.glob("results*/*/config.json"))


# ---------------------------------------------------------------------------------------
# Checks that need Ray but no cluster
# ---------------------------------------------------------------------------------------
def test_threads_follow_the_cpu_share() -> None:
    from hybrid_rl.studies.ray_launcher import threads_for

    assert [threads_for(c) for c in (0.25, 0.5, 1, 1.6, 2, 4)] == [1, 1, 1, 2, 2, 4]


@pytest.mark.parametrize(
    "kwargs, config_changes, message",
    [
        ({"cpus_per_run": 0}, {}, "--cpus-per-run"),
        ({"gpus_per_run": -1}, {}, "--gpus-per-run"),
        ({"gpus_per_run": 1.5}, {}, "whole number"),
        ({}, {"device": "cuda"}, "--gpus-per-run"),
    ],
)
def test_bad_resources_fail_before_ray_starts(kwargs, config_changes, message, tmp_path: Path) -> None:
    ray = import_ray()
    from hybrid_rl.core.errors import HybridRLError
    from hybrid_rl.studies.ray_launcher import run_configs_on_ray

    with pytest.raises(HybridRLError, match=message):
        run_configs_on_ray([TrainConfig(results_dir=str(tmp_path), **config_changes)], address=None, **kwargs)
    assert not ray.is_initialized()


def test_a_run_ray_gave_up_on_is_a_one_line_failure() -> None:
    ray = import_ray()
    from hybrid_rl.studies.ray_launcher import _system_failure

    result = _system_failure(ray, "run", ray.exceptions.WorkerCrashedError(), max_retries=3)
    assert not result["ok"] and result["error"].startswith("worker died on each of 4 attempts: WorkerCrashedError")
    missing = _system_failure(ray, "run", RuntimeError("ModuleNotFoundError: No module named 'hybrid_rl'\n  traceback ..."), max_retries=3)
    assert "install hybrid-rl" in missing["error"] and "\n" not in missing["error"]


# ---------------------------------------------------------------------------------------
# A real cluster on loopback: head (0 CPUs) + two 1-CPU worker nodes
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Yields (cluster, address). Every Ray process listens on 127.0.0.1 only."""
    ray = import_ray()
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    patch = pytest.MonkeyPatch()
    # Ray replaces 127.0.0.1 in an address by the machine's network IP (and its nodes
    # advertise that IP) unless it runs in single-host mode: keep everything on loopback.
    patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read by node processes started below
    patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # this process imported Ray already
    patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    small = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024**2}
    # Fast node-death detection (Ray's default takes ~15 s), so the driver reports a lost
    # node while the grid is still running.
    fast_health_checks = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": fast_health_checks, **small})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, **small)
        cluster.wait_for_nodes()
        address = f"127.0.0.1:{cluster.address.rsplit(':', 1)[1]}"
        yield cluster, address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        patch.undo()


@pytest.fixture(scope="module")
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid's pre-flight: the dataset generated once, before any task starts."""
    from hybrid_rl.data.loader import load_dataset

    cache = tmp_path_factory.mktemp("ray_datasets")
    load_dataset(DATASET, cache_dir=str(cache))
    return cache


@pytest.mark.slow
def test_grid_through_two_worker_nodes_equals_local_runs(ray_cluster, dataset_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from hybrid_rl.studies.ray_launcher import run_configs_on_ray

    cluster, address = ray_cluster
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(dataset_cache))  # forwarded to the tasks
    steps = 200 if REDUCED else 300
    good = [small_config(tmp_path / "ray", dataset_cache, seed, steps) for seed in (0, 1)]
    broken = small_config(tmp_path / "ray", dataset_cache, 2, steps, algo_overrides={"no_such_field": 1})
    lines: list[str] = []
    results = run_configs_on_ray([*good, broken], address=address, cpus_per_run=1, log=lines.append, heartbeat_s=600)
    print("\n".join(lines))  # the driver's report, shown if the test fails

    assert not ray.is_initialized(), "the driver disconnects from a cluster it connected to"
    assert set(results) == {c.run_id for c in [*good, broken]}
    worker_ids = {node.node_id[:8] for node in cluster.worker_nodes}
    for config in good:
        result = results[config.run_id]
        assert result["ok"], result
        assert result["node"].rsplit("(", 1)[1].rstrip(")") in worker_ids
        run_dir = tmp_path / "ray" / config.run_id
        assert_clean_run_dir(run_dir, steps)
        assert json.loads((run_dir / "config.json").read_text())["threads"] == 1  # = cpus_per_run
    # A run's own exception is a recorded failure, reported on the driver, not retried.
    assert not results[broken.run_id]["ok"] and "no_such_field" in results[broken.run_id]["error"]
    assert any(line.startswith("[") and "FAILED" in line and broken.run_id in line for line in lines)
    assert sum(line.split("] ", 1)[-1].startswith("done ") for line in lines) == 2

    # The same run on this machine, without Ray: same summary fields, identical metrics.
    local = train(replace(good[0], results_dir=str(tmp_path / "local"), threads=1))
    remote = results[good[0].run_id]["summary"]
    assert local.keys() == remote.keys()
    assert {k: v for k, v in local.items() if k not in TIMING_KEYS} == {k: v for k, v in remote.items() if k not in TIMING_KEYS}
    assert metrics(tmp_path / "local" / good[0].run_id) == metrics(tmp_path / "ray" / good[0].run_id)

    # Submitting the finished grid again reruns nothing: the summaries come back untouched.
    stamps = {c.run_id: (tmp_path / "ray" / c.run_id / "summary.json").stat().st_mtime_ns for c in good}
    again = run_configs_on_ray(good, address=address, log=lambda line: None)
    assert {run_id: r["summary"] for run_id, r in again.items()} == {c.run_id: results[c.run_id]["summary"] for c in good}
    assert stamps == {c.run_id: (tmp_path / "ray" / c.run_id / "summary.json").stat().st_mtime_ns for c in good}
    assert not list((tmp_path / "ray").glob(".ray_driver_*")), "the driver removes its shared-storage marker"


@pytest.mark.slow
def test_worker_node_killed_mid_run_grid_still_completes(ray_cluster, dataset_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill a worker node while both runs are past a checkpoint: Ray retries the lost run on
    the surviving node, it resumes from its checkpoint, and every result is whole and single."""
    import ray

    from hybrid_rl.studies.ray_launcher import run_configs_on_ray

    cluster, address = ray_cluster
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(dataset_cache))
    steps = 800 if REDUCED else 1500
    configs = [small_config(tmp_path, dataset_cache, seed, steps) for seed in (0, 1)]
    run_dirs = [tmp_path / c.run_id for c in configs]
    killed: dict[str, object] = {}

    def kill_a_worker_node_once_both_runs_checkpointed() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            progressed = [d for d in run_dirs if (d / "checkpoint.pt").exists() and not (d / "summary.json").exists()
                          and (d / "metrics.jsonl").exists() and (d / "metrics.jsonl").stat().st_size > 0]
            if len(progressed) == 2 and ray.is_initialized():
                # Any worker node but the one whose raylet the driver is attached to.
                driver_socket = ray._private.worker.global_worker.node._raylet_socket_name
                victim = next(n for n in cluster.worker_nodes if n._raylet_socket_name != driver_socket)
                cluster.remove_node(victim, allow_graceful=False)
                killed["node"] = victim
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_worker_node_once_both_runs_checkpointed, daemon=True)
    killer.start()
    lines: list[str] = []
    try:
        results = run_configs_on_ray(configs, address=address, max_retries=3, log=lines.append, heartbeat_s=600)
    finally:
        killer.join(timeout=5)
        print("\n".join(lines))
    assert "node" in killed, "both runs finished before a node could be killed (make them longer)"

    assert all(results[c.run_id]["ok"] for c in configs), results
    resumed = [r["resumed_from_step"] for r in results.values() if r.get("resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] % 100 == 0 and 0 < resumed[0] < steps, results
    for run_dir in run_dirs:
        assert_clean_run_dir(run_dir, steps)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(d.name for d in run_dirs)  # nothing else, no duplicate run dirs
    # The driver says which run resumed. It does not promise to report the lost node first
    # (or at all): Ray's GCS marks a node dead only after missed heartbeats, and the
    # retried run can finish before that (seen on CI).
    assert any("resumed from step" in line for line in lines), lines


@pytest.mark.slow
def test_grid_population_is_one_ray_task_equal_to_a_local_population(ray_cluster, dataset_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--launcher ray --population on`: the runs that differ only in seed and corruption go
    to one task as one population; its run directories equal a population trained here."""
    from hybrid_rl.studies.grid import GridSpec, run_grid
    from hybrid_rl.runs.train import train_population

    _, address = ray_cluster
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(dataset_cache))
    steps = 200
    spec = GridSpec(
        algos=("iql",), datasets=(DATASET,), remove_top_k=(0.0, 30.0), seeds=(0, 1), total_steps=steps, eval_every=steps // 2,
        eval_episodes=2, log_every=50, checkpoint_every=100, device="cpu", results_dir=str(tmp_path / "ray"), cache_dir=str(dataset_cache),
        algo_overrides={"iql": {"hidden": [32, 32], "batch_size": 64}},
    )
    lines: list[str] = []
    status = run_grid(spec, launcher="ray", ray_address=address, population="on", log=lines.append, progress=False)
    print("\n".join(lines))
    assert status["ran"] == 4 and not status["failed"]
    assert any("4 runs in 1 population(s) of up to 4 (vmapped, one Ray task each)" in line for line in lines), lines
    assert any("4 run(s) submitted as 1 task(s)" in line for line in lines), lines
    configs = spec.expand()
    for config in configs:
        run_dir = tmp_path / "ray" / config.run_id
        assert_clean_run_dir(run_dir, steps)
        assert json.loads((run_dir / "config.json").read_text())["population"]["size"] == 4

    local = train_population([replace(c, results_dir=str(tmp_path / "local"), threads=1, progress=False) for c in configs])
    assert set(local) == {c.run_id for c in configs}
    for config in configs:
        assert metrics(tmp_path / "local" / config.run_id) == metrics(tmp_path / "ray" / config.run_id), config.run_id


@pytest.mark.slow
def test_phase2_study_through_worker_nodes_equals_the_local_study(ray_cluster, dataset_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_phase2.py --launcher ray`: the parents (Phase I runs) and then the fine-tuning
    runs go to the worker nodes as tasks, with the study's relative directories resolved on
    the driver; every run directory equals the same study run here with local workers."""
    from test_phase2 import tiny_spec

    from hybrid_rl.studies.phase2 import run_phase2

    _, address = ray_cluster
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(dataset_cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the local study's runs use one thread, as the 1-CPU tasks do
    runs = {}
    for launcher in ("ray", "local"):
        study = tmp_path / launcher
        study.mkdir()
        monkeypatch.chdir(study)
        spec = replace(tiny_spec(study, dataset_cache), methods=("iql", "sac"), remove_top_k=(0.0,), online_steps=60,
                       results_dir="results", phase2_results="results_phase2")
        lines: list[str] = []
        options = dict(launcher="ray", ray_address=address) if launcher == "ray" else {}
        status = run_phase2(spec, workers=1, log=lines.append, progress=False, **options)
        print("\n".join(lines))
        assert status["ran"] == 2 and not status["failed"], status
        runs[launcher] = sorted(p.relative_to(study) for p in study.glob("results*/*/metrics.jsonl"))
        if launcher == "ray":
            assert any("Ray, 1 CPU(s) and 0 GPU per run" in line for line in lines), lines
            assert sum(line.split("] ", 1)[-1].startswith("done ") for line in lines) == 3  # one parent, two fine-tuning runs
            finetuned = json.loads(next(study.glob("results_phase2/ft-iql*/config.json")).read_text())
            assert finetuned["parent"]["run_dir"] == str(study / "results" / finetuned["parent"]["run_id"])
    assert runs["ray"] == runs["local"] and len(runs["ray"]) == 3
    for path in runs["ray"]:
        assert metrics(tmp_path / "ray" / path.parent) == metrics(tmp_path / "local" / path.parent), path
