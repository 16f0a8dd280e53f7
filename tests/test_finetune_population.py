"""Fine-tuning populations (Phase II on a GPU) and the compiled fine-tuning step (a CPU's default
for long IQL and CQL fine-tuning runs).

A population fine-tunes runs that differ only in seed and corruption together: each member
acts in its own environment with noise from its own stream, stores into its own buffer and
samples its own batches; one stacked step updates them all. So every member must give the
numbers of its single run, up to floating-point rounding of the batched products (the
same tolerance as Phase I's populations: rel 1e-3). Online, a rounding difference in an
action also changes the next observation; over these 150-step runs the largest relative
difference in any logged number was 3.5e-6 (population against single runs) and 1.5e-6
(compiled against eager) on the development CPU, while another batch, noise draw or
learning rate moves the first logged losses by far more than 1e-3.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hybrid_rl.engine.online import OnlineStage
from hybrid_rl.engine.population import cpp_compiler
from hybrid_rl.runs.finetune import FinetuneConfig, finetune, finetune_population, population_key
from hybrid_rl.runs.train import TrainConfig, train
from hybrid_rl.runs.units import plan_units

from conftest import TINY_DATASET, run_killed
from test_finetune import SMALL, ft_config, read_records

RTOL, ATOL = 1e-3, 1e-4


def train_parents(algo: str, results: Path, generated_cache: Path) -> list[Path]:
    """Two finished tiny runs of ``algo`` that differ in seed and corruption (one population's parents)."""
    out = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
        for seed, k in ((1, 30.0), (3, 0.0)):
            config = TrainConfig(algo=algo, dataset=TINY_DATASET, remove_top_k=k, seed=seed, total_steps=60, eval_every=60, eval_episodes=2,
                                 log_every=20, checkpoint_every=60, device="cpu", progress=False, results_dir=str(results),
                                 cache_dir=str(generated_cache), algo_overrides=SMALL[algo], compile="off")
            assert train(config)["status"] == "completed"
            out.append(results / config.run_id)
    return out


@pytest.fixture(scope="module")
def iql_parents(tmp_path_factory: pytest.TempPathFactory, generated_cache: Path) -> list[Path]:
    return train_parents("iql", tmp_path_factory.mktemp("phase1_population"), generated_cache)


def population_configs(root: Path, cache: Path, parents: list[Path], **changes) -> list[FinetuneConfig]:
    return [ft_config(root, cache, method="iql", parent=str(parent), seed=seed, **{"compile": "off", **changes}) for parent, seed in zip(parents, (2, 5))]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))]


def assert_close_runs(got_dir: Path, want_dir: Path) -> None:
    """The same records at the same steps; every number within rounding."""
    got, want = read_records(got_dir), read_records(want_dir)
    assert [(r["step"], r["kind"], sorted(r)) for r in got] == [(r["step"], r["kind"], sorted(r)) for r in want]
    for mine, theirs in zip(got, want):
        for key, value in theirs.items():
            if isinstance(value, float):
                assert mine[key] == pytest.approx(value, rel=RTOL, abs=ATOL), (got_dir.name, mine["step"], mine["kind"], key)
            elif isinstance(value, list):
                assert mine[key] == pytest.approx(value, rel=RTOL, abs=ATOL), (got_dir.name, mine["step"], key)
            else:
                assert mine[key] == value, (got_dir.name, mine["step"], key)


def assert_killed_population_resumes_identically(configs: list[FinetuneConfig], root: Path, monkeypatch) -> None:
    """The finished population ``configs`` again under ``root``, killed after step 120 (last
    checkpoint at 100) and rerun: every member's metrics.jsonl has the same bytes."""
    killed = [replace(config, results_dir=str(root / "phase2")) for config in configs]
    run_killed(monkeypatch, OnlineStage, "train_step", 120, lambda: finetune_population(killed))
    finetune_population(killed)
    for config, ref in zip(killed, configs):
        expected = (Path(ref.results_dir) / ref.run_id / "metrics.jsonl").read_text()
        assert (Path(config.results_dir) / config.run_id / "metrics.jsonl").read_text() == expected


@pytest.mark.parametrize("device", DEVICES)
def test_a_fine_tuning_population_equals_its_single_runs(device, iql_parents, tmp_path, generated_cache, monkeypatch) -> None:
    """On a GPU (benchmarks/gpu_checks.sh runs the cuda case) as on a CPU: the buffers,
    samplers and stacked step live on the device, the environments on the host."""
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    configs = population_configs(tmp_path / "population", generated_cache, iql_parents, device=device)
    summaries = finetune_population(configs)
    assert [summaries[c.run_id]["status"] for c in configs] == ["completed", "completed"]
    for config in configs:
        single = finetune(replace(config, results_dir=str(tmp_path / "single")))
        assert single["status"] == "completed" and single["steps_done"] == 150
        run_dir = tmp_path / "population" / "phase2" / config.run_id
        assert_close_runs(run_dir, tmp_path / "single" / config.run_id)
        written = json.loads((run_dir / "config.json").read_text())
        assert written["update_step"] == "vmapped" and written["population"]["members"] == [c.run_id for c in configs]
        assert written["parent"]["run_id"] == Path(config.parent).name
        assert any(r["kind"] == "episode" for r in read_records(run_dir))
    # The two members saw different data and noise: their online episodes differ.
    first, second = ([r["return"] for r in read_records(tmp_path / "population" / "phase2" / c.run_id) if r["kind"] == "episode"] for c in configs)
    assert first != second


def test_a_killed_fine_tuning_population_resumes_to_identical_metrics(iql_parents, tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    reference = population_configs(tmp_path / "uninterrupted", generated_cache, iql_parents)
    finetune_population(reference)
    configs = population_configs(tmp_path, generated_cache, iql_parents)
    run_killed(monkeypatch, OnlineStage, "train_step", 120, lambda: finetune_population(configs))  # last checkpoint at step 100
    finetune_population(configs)
    for config, ref in zip(configs, reference):
        expected = (Path(ref.results_dir) / ref.run_id / "metrics.jsonl").read_text()
        assert (Path(config.results_dir) / config.run_id / "metrics.jsonl").read_text() == expected


def test_calql_fine_tunes_as_a_population_with_its_floor(tmp_path, generated_cache, monkeypatch) -> None:
    """Cal-QL parents fine-tune as one population: online batches carry each member's own
    Monte-Carlo returns (offline: its data's; online: its finished episodes'), so the floor
    is active, and a killed population resumes to the same bytes. (Its draws are CQL's:
    members equal their single runs in distribution only, see engine.population.)"""
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    parents = train_parents("calql", tmp_path / "phase1", generated_cache)
    configs = [ft_config(tmp_path / "reference", generated_cache, method="calql", parent=str(parent), seed=seed, compile="off")
               for parent, seed in zip(parents, (2, 5))]
    assert population_key(configs[0]) == population_key(configs[1]) is not None
    summaries = finetune_population(configs)
    for config in configs:
        assert summaries[config.run_id]["status"] == "completed"
        run_dir = Path(config.results_dir) / config.run_id
        assert json.loads((run_dir / "config.json").read_text())["population"]["size"] == 2
        trains = [r for r in read_records(run_dir) if r["kind"] == "train"]
        assert trains and all(0.0 <= r["calibration_bound_rate"] <= 1.0 for r in trains)
    assert_killed_population_resumes_identically(configs, tmp_path / "killed", monkeypatch)


@pytest.mark.parametrize("method", ["rlpd", "sac"])
def test_from_scratch_runs_train_as_a_population(method, tmp_path, generated_cache, monkeypatch) -> None:
    """RLPD and SAC from scratch (Phase II's most expensive runs on a GPU) group by dataset
    and settings: two seeds (and for RLPD two corruption levels of its offline data) train
    as one population through the random warm-up and the two-phase step, and a killed
    population resumes to the same bytes."""
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    small = {"rlpd": {"hidden": [32, 32], "ensemble_size": 4, "batch_size": 32}, "sac": {"hidden": [32, 32], "batch_size": 32}}[method]
    levels = (0.0, 30.0) if method == "rlpd" else (0.0, 0.0)
    configs = [ft_config(tmp_path / "reference", generated_cache, method=method, parent="scratch", dataset=TINY_DATASET, remove_top_k=k, seed=seed,
                         utd=2, warmup_steps=40, algo_overrides=small) for k, seed in zip(levels, (2, 5))]
    assert population_key(configs[0]) == population_key(configs[1]) is not None
    summaries = finetune_population(configs)
    for config in configs:
        assert summaries[config.run_id]["status"] == "completed" and summaries[config.run_id]["steps_done"] == 150
        run_dir = Path(config.results_dir) / config.run_id
        assert json.loads((run_dir / "config.json").read_text())["population"]["size"] == 2
        trains = [r for r in read_records(run_dir) if r["kind"] == "train" and r["step"] > 40]  # after the warm-up
        assert trains and all({"critic_loss", "actor_loss", "alpha_loss", "q_mean"} <= r.keys() for r in trains)
    first, second = ([r["return"] for r in read_records(Path(c.results_dir) / c.run_id) if r["kind"] == "episode"] for c in configs)
    assert first != second
    assert_killed_population_resumes_identically(configs, tmp_path / "killed", monkeypatch)


def test_fine_tuning_runs_group_into_populations(iql_parents, tmp_path, generated_cache) -> None:
    configs = population_configs(tmp_path, generated_cache, iql_parents)
    scratch = FinetuneConfig(method="sac", parent="scratch", dataset=TINY_DATASET, results_dir=str(tmp_path))
    missing = replace(configs[0], parent=str(tmp_path / "no_such_run"))
    other_budget = replace(configs[1], online_steps=300)
    assert population_key(configs[0]) == population_key(configs[1]) is not None
    assert population_key(missing) is None
    assert population_key(scratch) is not None and population_key(scratch) != population_key(configs[0])
    assert population_key(other_budget) != population_key(configs[0])
    units = plan_units([*configs, scratch, missing], "on", "cpu")
    assert sorted(len(unit) for unit in units) == [1, 1, 2]
    assert plan_units(configs, "auto", "cpu") == [[configs[0]], [configs[1]]]  # on a CPU, one run per worker
    assert [len(unit) for unit in plan_units(configs, "auto", "cuda")] == [2]


@pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler: torch.compile's CPU backend cannot run here")
def test_compiled_fine_tuning_equals_the_eager_reference(iql_parents, tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    eager = ft_config(tmp_path / "eager", generated_cache, method="iql", parent=str(iql_parents[0]), compile="off")
    compiled = replace(eager, results_dir=str(tmp_path / "compiled" / "phase2"), compile="on")
    finetune(eager)
    finetune(compiled)
    written = json.loads((Path(compiled.results_dir) / compiled.run_id / "config.json").read_text())
    assert written["update_step"] == "compiled"
    assert json.loads((Path(eager.results_dir) / eager.run_id / "config.json").read_text())["update_step"] == "eager"
    assert_close_runs(Path(compiled.results_dir) / compiled.run_id, Path(eager.results_dir) / eager.run_id)
