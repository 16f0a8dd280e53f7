"""The update path of a single run: the compiled step (the CPU default for long runs) against
the eager reference (``--compile off``).

The compiled step is a population of one (engine.population) under torch.compile: the same
losses, batches and random draws as ``algos/``, so a run must give the eager reference's
numbers up to floating-point rounding. The tolerance: float32 rounding differs between the
two paths by ~1e-7 relative per operation; over these 120-step runs the largest relative
difference in any logged number was 7.5e-5 (IQL) and 3.6e-5 (CQL) on the development CPU
(docs/performance.md), so rel 1e-3 leaves a 13x margin for other CPUs while a different
batch, random draw, learning rate or loss term moves the first logged losses by more.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hybrid_rl.algos.sac import SAC, SACConfig
from hybrid_rl.data.views import PopulationSampler
from hybrid_rl.algos.registry import SPECS
from hybrid_rl.engine.population import compiled_step_wanted, cpp_compiler
from hybrid_rl.runs.finetune import FinetuneConfig, _online_learner
from hybrid_rl.runs.train import TrainConfig, train

from conftest import run_killed

RTOL, ATOL = 1e-3, 1e-4
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# ---------------------------------------------------------------------------------------
# The policy behind --compile auto
# ---------------------------------------------------------------------------------------
def test_compile_modes_pick_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hybrid_rl.engine.population.cpp_compiler", lambda: "/usr/bin/g++")
    thresholds = {name: spec.compile_min_steps for name, spec in SPECS.items() if spec.compile_min_steps is not None}
    assert set(thresholds) == {"iql", "cql", "calql", "sac", "rlpd"}  # the timed ones
    for algo, threshold in thresholds.items():
        assert compiled_step_wanted(algo, "auto", CPU, threshold)
        assert not compiled_step_wanted(algo, "auto", CPU, threshold - 1)  # too short to pay for compiling
        assert not compiled_step_wanted(algo, "auto", CUDA, 10 * threshold)  # not measured on a GPU yet
        assert compiled_step_wanted(algo, "on", CPU, 1) and compiled_step_wanted(algo, "on", CUDA, 1)
        assert not compiled_step_wanted(algo, "off", CPU, 10 * threshold)
    for algo in ("bc", "td3bc"):  # a compiled step, but no measured gain: eager unless asked for
        assert compiled_step_wanted(algo, "on", CPU, 1) and not compiled_step_wanted(algo, "auto", CPU, 10**6)
    monkeypatch.setattr("hybrid_rl.engine.population.cpp_compiler", lambda: None)
    assert not compiled_step_wanted("iql", "auto", CPU, 10**6)  # inductor would fail without a C++ compiler
    with pytest.raises(ValueError, match="compile must be one of"):
        compiled_step_wanted("iql", "yes", CPU, 1)
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="yes")


def test_fine_tuning_counts_gradient_steps_after_the_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAC from scratch makes no updates in its warm-up: 14,999 online steps after a 5,000-step
    warm-up are 9,999 updates, one short of SAC's threshold, so `auto` stays eager there."""
    monkeypatch.setattr("hybrid_rl.engine.population.cpp_compiler", lambda: "/usr/bin/g++")
    short = FinetuneConfig(method="sac", parent="scratch", dataset="gen-hopper-medium-v0", online_steps=SPECS["sac"].compile_min_steps + 4_999, warmup_steps=5_000)
    agent = SAC(3, 2, SACConfig(hidden=(8, 8)), CPU)
    assert _online_learner([agent], [short], CPU)[1] == {"update_step": "eager"}
    assert _online_learner([agent], [replace(short, online_steps=short.online_steps + 1)], CPU)[1] == {"update_step": "compiled"}
    assert _online_learner([agent], [replace(short, online_steps=short.online_steps + 1, compile="off")], CPU)[1] == {"update_step": "eager"}


# ---------------------------------------------------------------------------------------
# Compiled against eager: whole runs
# ---------------------------------------------------------------------------------------
needs_compiler = pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler: torch.compile's CPU backend cannot run here")
SMALL = {
    "iql": {"hidden": [32, 32], "batch_size": 64},
    "cql": {"critic_hidden": [32, 32], "actor_hidden": [32, 32], "batch_size": 32, "num_sampled_actions": 4},
    "calql": {"critic_hidden": [32, 32], "actor_hidden": [32, 32], "batch_size": 32, "num_sampled_actions": 4},
}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_runs_close(actual: list[dict], expected: list[dict]) -> float:
    """Same records, keys and steps; numbers within the tolerance. Returns the largest
    relative difference seen (for the record in docs/performance.md)."""
    assert [(r["step"], r["kind"]) for r in actual] == [(r["step"], r["kind"]) for r in expected]
    worst = 0.0
    for mine, theirs in zip(actual, expected):
        assert set(mine) == set(theirs)
        for key, value in theirs.items():
            values = zip(mine[key], value) if isinstance(value, list) else [(mine[key], value)]
            for a, b in values:
                if isinstance(b, float):
                    assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f"step {theirs['step']} {key}: {a} vs {b}"
                    worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
                else:
                    assert a == b, (key, a, b)
    return worst


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("algo", ["iql", "cql", "calql"])
def test_compiled_run_equals_the_eager_reference(algo: str, base_config: TrainConfig, tmp_path: Path) -> None:
    config = replace(base_config, algo=algo, algo_overrides=SMALL[algo])
    runs = {}
    for mode in ("off", "on"):
        run = replace(config, compile=mode, results_dir=str(tmp_path / mode))
        summary = train(run)
        run_dir = Path(run.results_dir) / run.run_id
        written = json.loads((run_dir / "config.json").read_text())
        assert written["update_step"] == ("eager" if mode == "off" else "compiled")
        assert summary["status"] == "completed"
        runs[mode] = run_dir
    worst = assert_runs_close(records(runs["on"]), records(runs["off"]))
    print(f"{algo}: largest relative difference compiled vs eager over {config.total_steps} steps: {worst:.2e}")
    # Both write the single-run checkpoint format: same keys, same shapes.
    eager, compiled = (torch.load(runs[m] / "checkpoint.pt", weights_only=False)["algorithm"] for m in ("off", "on"))
    for network, tensors in eager["modules"].items():
        for name, tensor in tensors.items():
            torch.testing.assert_close(compiled["modules"][network][name], tensor, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
@needs_compiler
def test_compiled_run_resumes_to_identical_results(base_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(base_config, compile="on")
    reference = replace(config, results_dir=str(tmp_path / "reference"))
    train(reference)
    expected = (Path(reference.results_dir) / reference.run_id / "metrics.jsonl").read_text()
    # Killed after step 90 (last checkpoint at 80), then rerun: the same bytes.
    run_killed(monkeypatch, PopulationSampler, "sample_indices", 90, lambda: train(config))
    run_dir = Path(config.results_dir) / config.run_id
    assert not (run_dir / "summary.json").exists()
    train(config)
    assert (run_dir / "metrics.jsonl").read_text() == expected
    # The eager reference can take over a compiled run's checkpoint (the same format).
    handover = replace(config, results_dir=str(tmp_path / "handover"))
    run_killed(monkeypatch, PopulationSampler, "sample_indices", 90, lambda: train(handover))
    assert train(replace(handover, compile="off"))["status"] == "completed"
    assert_runs_close(records(Path(handover.results_dir) / handover.run_id), [json.loads(line) for line in expected.splitlines()])
