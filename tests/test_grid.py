"""The experiment grid: expansion, bad input, failure isolation, kill-and-resume."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid_rl.cli import main as cli_main
from hybrid_rl.cli import phase1_main
from hybrid_rl.core.errors import HybridRLError
from hybrid_rl.runs import units
from hybrid_rl.studies.grid import GridSpec, run_grid
from hybrid_rl.runs.units import plan_units, run_state

DATASET = "gen-hopper-random-v0@3000"


def small_spec(results: Path, cache: Path, **changes) -> GridSpec:
    values = dict(
        algos=("bc", "iql"), datasets=(DATASET,), remove_top_k=(0.0, 30.0), seeds=(0,), total_steps=200, eval_every=100,
        eval_episodes=2, log_every=50, device="cpu", results_dir=str(results), cache_dir=str(cache),
        algo_overrides={"bc": {"hidden": [32, 32]}, "iql": {"hidden": [32, 32]}},
    )
    values.update(changes)
    return GridSpec(**values)


def test_expansion_order_and_ids(tmp_path: Path) -> None:
    spec = small_spec(tmp_path / "r", tmp_path / "c", seeds=(0, 1))
    configs = spec.expand()
    assert len(configs) == 2 * 2 * 2
    assert len({c.run_id for c in configs}) == len(configs)
    # The ids carry the non-default settings (hidden=32x32) and budget (200 steps) of these tiny runs.
    tail = "hidden=32x32__steps200"
    assert configs[0].run_id == f"bc__{DATASET}__k0__noise0__{tail}__s0"
    # The documented order: dataset, algo, settings, noise, k, seed (seed fastest).
    assert [c.run_id for c in configs] == [
        f"bc__{DATASET}__k0__noise0__{tail}__s0",
        f"bc__{DATASET}__k0__noise0__{tail}__s1",
        f"bc__{DATASET}__k30__noise0__{tail}__s0",
        f"bc__{DATASET}__k30__noise0__{tail}__s1",
        f"iql__{DATASET}__k0__noise0__{tail}__s0",
        f"iql__{DATASET}__k0__noise0__{tail}__s1",
        f"iql__{DATASET}__k30__noise0__{tail}__s0",
        f"iql__{DATASET}__k30__noise0__{tail}__s1",
    ]
    assert [(c.algo, c.remove_top_k, c.seed) for c in configs[:3]] == [("bc", 0.0, 0), ("bc", 0.0, 1), ("bc", 30.0, 0)]
    # Every axis at two values: datasets outermost, then algos, reward noise, top-k, seeds.
    other = "gen-walker2d-random-v0@3000"
    wide = small_spec(tmp_path / "r", tmp_path / "c", datasets=(DATASET, other), reward_noise_std=(0.0, 0.1), seeds=(0, 1)).expand()
    assert [c.run_id for c in wide] == [
        f"{algo}__{dataset}__k{k}__noise{noise}__{tail}__s{seed}"
        for dataset in (DATASET, other) for algo in ("bc", "iql") for noise in ("0", "0.1") for k in ("0", "30") for seed in (0, 1)
    ]


def test_failure_of_one_run_does_not_stop_the_grid(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny networks: one thread per run
    from hybrid_rl.algos.iql import IQL

    def crash(self, batch):  # a run that fails mid-way (bad input is caught before any run starts)
        raise RuntimeError("simulated crash inside IQL.update")

    monkeypatch.setattr(IQL, "update", crash)
    spec = small_spec(tmp_path / "r", generated_cache)
    status = run_grid(spec, workers=1, log=lambda message: None, progress=False)
    assert sorted(status["failed"]) == sorted(c.run_id for c in spec.expand() if c.algo == "iql")
    assert all("simulated crash" in error for error in status["failed"].values())
    for config in spec.expand():
        state = run_state(config)
        assert state == ("complete" if config.algo == "bc" else "new")


def test_grid_where_every_run_fails_still_writes_the_summary(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    from hybrid_rl.algos.iql import IQL

    def crash(self, batch):
        raise RuntimeError("simulated crash inside IQL.update")

    monkeypatch.setattr(IQL, "update", crash)
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    results = tmp_path / "results"
    code = phase1_main(["--algo", "iql", "--env", DATASET, "--remove_top_k", "0", "--seed", "0", "--total_steps", "50", "--workers", "1",
                        "--eval_every", "25", "--eval_episodes", "1", "--results", str(results), "--plots", str(tmp_path / "plots")])
    assert code == 1  # runs failed: not the bad-input status 2
    summary = (results / "summary.md").read_text()
    assert "simulated crash" in summary and "iql__" in summary
    assert "FAILED" in capsys.readouterr().out


def test_plan_units_groups_population_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = small_spec(tmp_path / "r", tmp_path / "c", algos=("bc", "iql", "cql"), seeds=(0, 1, 2)).expand()
    assert plan_units(configs, "auto", "cpu") == [[c] for c in configs]  # populations do not pay on a CPU
    assert plan_units(configs, "off", "cuda") == [[c] for c in configs]
    units = plan_units(configs, "on", "cpu", max_size=4)
    assert sorted(c.run_id for unit in units for c in unit) == sorted(c.run_id for c in configs)  # each run exactly once
    for algo in ("bc", "iql", "cql"):
        assert sorted(len(u) for u in units if u[0].algo == algo) == [2, 4]  # 6 runs, at most 4 per population
    # An algorithm without a population step (one that writes its update() by hand) runs alone.
    from hybrid_rl.engine import population

    declared = population.population_class
    monkeypatch.setattr(population, "population_class", lambda algo: None if algo == "bc" else declared(algo))
    assert [len(u) for u in plan_units(configs, "on", "cpu", max_size=4) if u[0].algo == "bc"] == [1] * 6
    assert all(len({c.algo for c in unit}) == 1 for unit in units)
    assert plan_units(configs, "auto", "cuda", max_size=36) == plan_units(configs, "on", "cuda", max_size=36)
    with pytest.raises(HybridRLError, match="population mode"):
        plan_units(configs, "sometimes", "cpu")


def test_grid_of_populations_writes_the_same_runs(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lines: list[str] = []
    grouped = small_spec(tmp_path / "pop", generated_cache, seeds=(0, 1))
    status = run_grid(grouped, workers=1, log=lines.append, progress=False, population="on")
    assert not status["failed"] and status["ran"] == 8
    assert any("8 runs in 2 population(s) of up to 4" in line for line in lines), lines  # BC and IQL, 4 runs each
    singles = small_spec(tmp_path / "single", generated_cache, seeds=(0, 1))
    run_grid(singles, workers=1, log=lambda line: None, progress=False, population="off")
    for config in grouped.expand():
        mine = json.loads((tmp_path / "pop" / config.run_id / "summary.json").read_text())
        theirs = json.loads((tmp_path / "single" / config.run_id / "summary.json").read_text())
        assert mine.keys() == theirs.keys() and mine["status"] == theirs["status"] == "completed"
        assert mine["num_evaluations"] == theirs["num_evaluations"] == 2
        assert mine["steps_done"] == theirs["steps_done"] == 200
        # Each member trained its own seed on its own corrupted data ...
        assert mine["dataset_normalized_return"] == theirs["dataset_normalized_return"], config.run_id
        written = json.loads((tmp_path / "pop" / config.run_id / "config.json").read_text())
        reference = json.loads((tmp_path / "single" / config.run_id / "config.json").read_text())
        assert written["seed"] == reference["seed"] == config.seed, config.run_id
        assert written["remove_top_k"] == reference["remove_top_k"] == config.remove_top_k, config.run_id
        for key in ("corruption", "corruption_records", "corrupted_dataset_summary", "dataset_checksum", "reward_scale"):
            assert written[key] == reference[key], (config.run_id, key)
        assert [r["kind"] for r in written["corruption_records"]] == (["remove_top_k"] if config.remove_top_k else []), config.run_id
        # ... and logged what the single run logged: train metrics to the population tolerance
        # (batched matrix products round differently, as in test_train_population), evaluations
        # from the same start states with (to rounding) the same policy.
        got = [json.loads(line) for line in (tmp_path / "pop" / config.run_id / "metrics.jsonl").read_text().splitlines()]
        want = [json.loads(line) for line in (tmp_path / "single" / config.run_id / "metrics.jsonl").read_text().splitlines()]
        assert [(m["step"], m["kind"], sorted(m)) for m in got] == [(m["step"], m["kind"], sorted(m)) for m in want], config.run_id
        assert sum(m["kind"] == "train" for m in want) == 4 and sum(m["kind"] == "eval" for m in want) == 2
        for line, (mine_line, their_line) in enumerate(zip(got, want)):
            if their_line["kind"] == "train":
                for key, value in their_line.items():
                    if isinstance(value, float):
                        assert mine_line[key] == pytest.approx(value, rel=1e-3, abs=1e-3), (config.run_id, mine_line["step"], key)
            elif their_line["kind"] == "eval":
                assert mine_line["episode_returns"] == pytest.approx(their_line["episode_returns"], rel=1e-2, abs=1.0), (config.run_id, line)
    again = run_grid(grouped, workers=1, log=lambda line: None, progress=False, population="on")
    assert again["skipped_complete"] == 8 and again["ran"] == 0


def test_population_out_of_gpu_memory_is_split(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    sizes: list[int] = []
    real = units.train_population

    def limited(configs, **kwargs):  # a device with room for two agents
        sizes.append(len(configs))
        if len(configs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(configs, **kwargs)

    phase1 = units.RUN_KINDS[units.TrainConfig]
    monkeypatch.setitem(units.RUN_KINDS, units.TrainConfig, phase1._replace(population=limited))
    configs = small_spec(tmp_path / "r", generated_cache, algos=("iql",), seeds=(0, 1, 2), remove_top_k=(0.0,), total_steps=40, eval_every=40, log_every=20).expand()
    results = units.train_unit_safely(configs, threads=1)
    assert sizes == [3, 2] and [r["run_id"] for r in results] == [c.run_id for c in configs]  # 3 -> 1 alone + 2 together
    assert all(r["ok"] and r["summary"]["status"] == "completed" for r in results)


def test_failed_population_keeps_its_finished_members(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    configs = small_spec(tmp_path / "r", generated_cache, algos=("iql",), seeds=(0, 1), remove_top_k=(0.0,), total_steps=40, eval_every=40, log_every=20).expand()

    def first_finishes_then_crash(unit, options):
        units.train(unit[0])
        raise RuntimeError("the device fell off the bus")

    monkeypatch.setattr(units, "_train_unit", first_finishes_then_crash)
    first, second = units.train_unit_safely(configs, threads=1)
    assert first["ok"] and first["summary"]["status"] == "completed"
    assert not second["ok"] and "fell off the bus" in second["error"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algo", "sarsa"], "unknown algorithm"),
        (["--remove_top_k", "100"], "outside [0, 100)"),
        (["--total_steps", "0"], None),
        (["--env", "hoper-medium-v2", "--quick"], "unknown dataset"),
        (["--workers", "0"], "--workers"),
        (["--corruption", "corrupt_transitions:target=obs:rate=0.3:scale=1"], "target must be one of"),
        (["--corruption", "replace_rewards:rate=1.5"], "must be <= 1"),
        (["--corruption", "replace_rewards:rate"], "is not NAME=VALUE"),
        (["--corruption", "none", "--corruption", "clean", "--quick"], "given twice"),
    ],
)
def test_bad_input_fails_before_work(argv, message, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    try:
        code = phase1_main([*argv, "--results", str(results)])
    except SystemExit as exc:  # argparse rejects malformed values itself
        code = exc.code
    assert code == 2
    if message:
        assert message in capsys.readouterr().err
    assert not results.exists(), "bad input writes nothing"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env", "hoper-medium-v2"], "closest known ids: hopper-medium-v2"),
        (["--env", DATASET, "--algo_overrides", '{"no_such_field": 1}'], "no_such_field"),
        (["--env", DATASET, "--algo", "sarsa"], "unknown algorithm"),
    ],
)
def test_train_command_bad_input_writes_nothing(argv, message, tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    results = tmp_path / "results"
    try:
        code = cli_main(["train", "--algo", "iql", *argv, "--total_steps", "10", "--results", str(results)])
    except SystemExit as exc:  # argparse rejects unknown choices itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith(("error:", "hybrid-rl train: error:"))
    assert not results.exists()


def test_unwritable_results_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = phase1_main(["--quick", "--env", DATASET, "--results", str(blocker / "results")])
    assert code == 2
    assert "cannot write to --results" in capsys.readouterr().err


def test_plot_only_on_empty_results_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "results").mkdir()
    assert cli_main(["report", "--results", str(tmp_path / "results"), "--plots", str(tmp_path / "plots")]) == 2
    assert "no completed runs" in capsys.readouterr().err


GRID_SCRIPT = """
import sys
from hybrid_rl.core.errors import HybridRLError
from hybrid_rl.studies.grid import GridSpec, run_grid
spec = GridSpec(algos=("bc", "iql"), datasets=("{dataset}",), remove_top_k=(0.0, 30.0), seeds=(0,), total_steps={steps},
    eval_every=100, eval_episodes=2, log_every=25, checkpoint_every=100, device="cpu", results_dir=sys.argv[1], cache_dir="{cache}",
    algo_overrides={{"bc": {{"hidden": [32, 32]}}, "iql": {{"hidden": [32, 32]}}}})
if __name__ == "__main__":  # spawned workers import this file: they must not start a grid
    status = run_grid(spec, workers=int(sys.argv[2]), progress=False)
    sys.exit(1 if status["failed"] else 0)
"""
KILL_STEPS = 400


@pytest.fixture(scope="module")
def grid_script(tmp_path_factory: pytest.TempPathFactory, generated_cache: Path) -> tuple[Path, dict, Path]:
    """(script, env, reference results): the small grid above, run once uninterrupted."""
    folder = tmp_path_factory.mktemp("kill")
    script = folder / "grid.py"
    script.write_text(GRID_SCRIPT.format(dataset=DATASET, steps=KILL_STEPS, cache=generated_cache))
    env = {**os.environ, "HYBRID_RL_DATA_DIR": str(generated_cache), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(folder / "reference"), "1"], check=True, env=env, capture_output=True)
    return script, env, folder / "reference"


def worker_pids(parent: int) -> list[int]:
    """The grid's worker processes (multiprocessing spawn children, not its resource tracker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def wait_for_a_run_between_checkpoints(results: Path, process: subprocess.Popen) -> Path | None:
    """An unfinished run that has a checkpoint and has logged past it (None if the grid ended first)."""
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        for run in results.glob("*__s0"):
            if (run / "checkpoint.pt").exists() and not (run / "summary.json").exists():
                metrics = (run / "metrics.jsonl").read_text().splitlines()
                if metrics and metrics[-1].endswith("}") and json.loads(metrics[-1])["step"] % 100 != 0:
                    return run
        time.sleep(0.02)
    return None


def training_pid(run: Path) -> int | None:
    """The pid of the process holding ``run``'s lock (None if it is not held right now)."""
    try:
        owner = (run / ".run.lock").read_text()
    except OSError:
        return None
    found = re.search(r"pid (\d+)", owner)
    return int(found.group(1)) if found else None


def last_logged_step(run: Path) -> int | None:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else None


def assert_same_as_reference(results: Path, reference: Path, context: str = "") -> None:
    for run in sorted(reference.glob("*__s0")):
        assert (results / run.name / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text(), f"{run.name}\n{context}"
        summary = json.loads((results / run.name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps_done"] == KILL_STEPS, f"{run.name}: {summary}\n{context}"
    assert not list(results.glob(".*.lock")) and not list(results.glob("*/.run.lock")), context


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_killed_grid_resumes_to_identical_results(workers: int, grid_script, tmp_path: Path) -> None:
    """SIGKILL the grid while a run is between checkpoints: its workers die with it (none is
    left writing), and the rerun equals an uninterrupted grid."""
    script, env, reference = grid_script
    results = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, str(script), str(results), str(workers)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for_a_run_between_checkpoints(results, process) is not None, "the grid finished before it could be interrupted"
    workers_before = worker_pids(process.pid)
    assert len(workers_before) == (workers if workers > 1 else 0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers_before):
        time.sleep(0.1)
    assert not [pid for pid in workers_before if Path(f"/proc/{pid}").exists()], "workers outlived the killed grid"
    subprocess.run([sys.executable, str(script), str(results), str(workers)], check=True, env=env, capture_output=True)
    assert_same_as_reference(results, reference)


@pytest.mark.slow
def test_a_dead_worker_process_does_not_fail_the_grid(grid_script, tmp_path: Path) -> None:
    """SIGKILL one worker process (as the out-of-memory killer would): the units it broke
    start again in fresh workers and resume, and the grid ends with every run correct."""
    script, env, reference = grid_script
    results = tmp_path / "one_worker_killed"
    process = subprocess.Popen([sys.executable, str(script), str(results), "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = wait_for_a_run_between_checkpoints(results, process)
    assert run is not None, "the grid finished before a worker could be killed"
    # The worker training that run (its lock names the holder's pid): killing it always
    # breaks a unit in progress, where killing an idle worker could come after the last unit.
    victim = training_pid(run) or worker_pids(process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    context = f"killed pid {victim} while {run.name} was at step {last_logged_step(run)}; grid output:\n{output}"
    assert process.returncode == 0, context
    assert "a worker process died" in output and "resume from their checkpoints" in output, context
    assert_same_as_reference(results, reference, context)


def test_second_grid_on_the_same_results_is_refused(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_rl.core.fileio import file_lock

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    spec = small_spec(tmp_path / "r", generated_cache)
    (tmp_path / "r").mkdir()
    with file_lock(tmp_path / "r" / ".grid.lock", owner="grid pid 4242 on elsewhere"):
        with pytest.raises(HybridRLError, match="another grid is running .*pid 4242"):
            run_grid(spec, workers=1, log=lambda line: None, progress=False)
    assert not any(p.name.endswith("__s0") for p in (tmp_path / "r").iterdir())


def test_a_run_being_trained_elsewhere_is_not_touched(base_config) -> None:
    from hybrid_rl.core.fileio import file_lock
    from hybrid_rl.runs.book import RunBusyError
    from hybrid_rl.runs.train import train

    run_dir = Path(base_config.results_dir) / base_config.run_id
    run_dir.mkdir(parents=True)
    with file_lock(run_dir / ".run.lock", owner="pid 77 on node-b"):
        with pytest.raises(RunBusyError, match="pid 77 on node-b"):
            train(base_config)
    assert sorted(p.name for p in run_dir.iterdir()) == [], "no failure summary over the other process's run"


# ---------------------------------------------------------------------------------------
# Sweeps over algorithm settings (--set) and one set of run defaults
# ---------------------------------------------------------------------------------------
TINY_CQL = ["--set", "critic_hidden=16x16", "--set", "actor_hidden=16x16", "--set", "batch_size=16", "--set", "num_sampled_actions=2"]


def test_an_alpha_sweep_writes_one_run_per_setting_and_a_figure(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results, plots = tmp_path / "results", tmp_path / "plots"
    code = phase1_main(["--algo", "cql", "--env", DATASET, "--remove_top_k", "0,30", "--seed", "0", "--total_steps", "30", "--eval_episodes", "2",
                        "--set", "cql_alpha=1,5", *TINY_CQL, "--workers", "1", "--device", "cpu", "--compile", "off",
                        "--results", str(results), "--plots", str(plots)])
    assert code == 0
    runs = sorted(p.name for p in results.iterdir() if p.is_dir())
    # Every non-default setting is in the id, in name order, then the budget.
    assert runs == sorted(f"cql__{DATASET}__k{k}__noise0__actor_hidden=16x16__batch_size=16__cql_alpha={a}__critic_hidden=16x16__num_sampled_actions=2"
                          f"__steps30__s0" for a in (1, 5) for k in (0, 30)), runs
    for name in runs:  # the setting reached the algorithm, and config.json says which settings the run changed
        config = json.loads((results / name / "config.json").read_text())
        assert config["algo_config"]["cql_alpha"] == config["settings"]["cql_alpha"] == float(name.split("cql_alpha=")[1].split("__")[0])
    rows = (results / "summary.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "cql_alpha" in header and sorted(row.split(",")[header.index("cql_alpha")] for row in rows[1:]) == ["1", "1", "5", "5"]
    assert "| algo | actor_hidden | batch_size | cql_alpha | critic_hidden | num_sampled_actions | corruption |" in (results / "summary.md").read_text()
    assert (plots / f"sweep__{DATASET.replace('@', '_')}__cql-cql_alpha.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algo", "iql", "--set", "cql_alpha=1,5"], "--set cql_alpha: no algorithm here (iql) has that setting; valid settings are iql: actor_lr"),
        (["--algo", "iql", "--set", "beta=high"], "--set beta=high: iql's beta takes a number"),
        (["--algo", "iql", "--set", "expectile=0.5,1.5"], "--set expectile=1.5: IQL expectile must be in (0, 1)"),
        (["--algo", "iql", "--set", "beta=3", "--set", "beta=10"], "--set beta is given twice"),
        (["--algo", "iql", "--set", "beta"], "expected NAME=VALUE"),
    ],
)
def test_bad_settings_are_one_line_before_any_work(argv, message, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    try:
        code = phase1_main([*argv, "--env", DATASET, "--results", str(results), "--plots", str(tmp_path / "plots")])
    except SystemExit as exc:  # argparse's own check of the NAME=VALUE form
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not results.exists()


def test_train_settings_and_its_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    for argv, message in ((["--set", "beta=3,10"], "hybrid-rl train runs one setting"),
                          (["--algo_overrides", "{beta: 3}"], "--algo_overrides is not valid JSON"),
                          (["--algo_overrides", "[3]"], "--algo_overrides must be a JSON object"),
                          (["--algo", "cql", "--set", "alpha=5"], "--set alpha: no algorithm here (cql) has that setting")):
        code = cli_main(["train", "--env", DATASET, "--results", str(results), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not results.exists()


def test_train_and_the_grid_share_their_run_defaults(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """The same flags make the same run: the grid takes the run hybrid-rl train left as finished."""
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    results = tmp_path / "results"
    common = ["--env", DATASET, "--seed", "0", "--total_steps", "40", "--eval_episodes", "2", "--set", "hidden=16x16", "--device", "cpu",
              "--results", str(results), "--compile", "off"]
    assert cli_main(["train", "--algo", "iql", *common]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert run_id == f"iql__{DATASET}__k0__noise0__hidden=16x16__steps40__s0"
    assert phase1_main(["--algo", "iql", "--remove_top_k", "0", *common, "--workers", "1", "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "1 complete (skipped)" in out or "skipped 1" in out or "1 already complete" in out, out
    assert sorted(p.name for p in results.iterdir() if p.is_dir()) == [run_id]


def test_runs_of_other_budgets_and_settings_coexist_and_the_quick_studies_share_parents() -> None:
    from hybrid_rl.cli import build_parser, grid_spec, phase2_spec
    from hybrid_rl.runs.train import TrainConfig

    assert TrainConfig(dataset=DATASET).run_id == f"iql__{DATASET}__k0__noise0__s0"  # default budget and settings: the short id
    assert TrainConfig(dataset=DATASET, total_steps=20_000).run_id == f"iql__{DATASET}__k0__noise0__steps20k__s0"
    assert TrainConfig(dataset=DATASET, algo_overrides={"beta": 3.0}).run_id == f"iql__{DATASET}__k0__noise0__s0"  # the default value
    assert TrainConfig(dataset=DATASET, algo_overrides={"beta": 10}).run_id == f"iql__{DATASET}__k0__noise0__beta=10__s0"
    # run_phase2.py --quick after run_phase1.py --quick (the README's order): its parents are the quick grid's runs.
    parser = build_parser()
    grid = {c.run_id: c.identity() for c in grid_spec(parser.parse_args(["grid", "--quick", "--algo", "iql"]), ("gen-hopper-medium-v1",)).expand()}
    parents = {c.run_id: c.identity() for c in phase2_spec(parser.parse_args(["phase2", "--quick"])).phase1_spec().expand()}
    assert parents and all(grid.get(run_id) == identity for run_id, identity in parents.items())


# ---------------------------------------------------------------------------------------
# Every corruption kind is a grid axis (--corruption)
# ---------------------------------------------------------------------------------------
def test_the_corruption_axis_crosses_the_other_levels_and_names_each_run() -> None:
    from hybrid_rl.cli import build_parser, grid_spec, phase2_spec

    parser = build_parser()
    observations = "corrupt_transitions:target=observations:rate=0.3:scale=1"
    args = parser.parse_args(["grid", "--quick", "--algo", "iql", "--remove_top_k", "0,30", "--seed", "0",
                              "--corruption", "none", "--corruption", observations, "--corruption", "replace_rewards:rate=0.2+flip_reward_sign:rate=0.1"])
    configs = grid_spec(args, ("gen-hopper-medium-v1",)).expand()
    assert len(configs) == 2 * 3 and len({c.run_id for c in configs}) == 6
    assert [c.extra_corruptions for c in configs[:3]] == [
        (), ({"kind": "corrupt_transitions", "target": "observations", "rate": 0.3, "scale": 1.0},),
        ({"kind": "replace_rewards", "rate": 0.2}, {"kind": "flip_reward_sign", "rate": 0.1})]
    # Without --corruption the grid is what it always was (no further level, the same ids).
    plain = grid_spec(parser.parse_args(["grid", "--quick", "--algo", "iql"]), ("gen-hopper-medium-v1",)).expand()
    assert all(c.extra_corruptions == () and "corrupt" not in c.run_id for c in plain)
    # The Phase II study pretrains its parents on the same levels and starts each fine-tuning run from its own.
    study = phase2_spec(parser.parse_args(["phase2", "--quick", "--method", "iql,sac", "--seed", "0", "--remove_top_k", "0",
                                           "--corruption", "none", "--corruption", observations]))
    parents = {c.run_id: c for c in study.phase1_spec().expand()}
    runs = study.finetune_configs()
    assert sorted(Path(c.parent).name for c in runs if c.method == "iql") == sorted(parents)
    assert [c.extra_corruptions for c in runs if c.method == "sac"] == [()]  # SAC learns without the data: one run
