"""Training populations end to end: each member's run directory is a single run's."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hybrid_rl.data import views as views_module
from hybrid_rl.runs import book as run_book
from hybrid_rl.runs import train as train_module
from hybrid_rl.runs.train import TrainConfig, population_key, train, train_population

from conftest import run_killed

TIMING_KEYS = {"wall_time_s"}


def members(base: TrainConfig) -> list[TrainConfig]:
    """Three runs of one population: other seeds, top-k removal, reward noise."""
    return [base, replace(base, seed=4, remove_top_k=30.0), replace(base, seed=5, reward_noise_std=0.1)]


def interrupt_population_at(monkeypatch: pytest.MonkeyPatch, configs: list[TrainConfig], step: int) -> None:
    """Train ``configs`` as a population and kill it (no summaries) after ``step`` steps."""
    run_killed(monkeypatch, views_module.PopulationSampler, "sample_indices", step, lambda: train_population(configs))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_files(results: Path, run_id: str) -> list[str]:
    return sorted(p.name for p in (results / run_id).iterdir())


def test_population_key_groups_what_can_share_a_population(base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = members(base_config)
    assert population_key(a) == population_key(b) == population_key(c) is not None
    assert population_key(replace(a, total_steps=200)) != population_key(a)
    assert population_key(replace(a, algo="cql")) != population_key(a)
    assert population_key(replace(a, algo="bc")) not in (None, population_key(a))  # every built-in algorithm has a population step
    from hybrid_rl.engine import population

    declared = population.population_class
    monkeypatch.setattr(population, "population_class", lambda algo: None if algo == "bc" else declared(algo))
    assert population_key(replace(a, algo="bc")) is None  # an algorithm without one (a handwritten update()) runs alone
    observation_noise = ({"kind": "corrupt_transitions", "target": "observations", "rate": 0.3, "scale": 1.0},)
    assert population_key(replace(a, extra_corruptions=observation_noise)) is None  # not a view of the base data
    with pytest.raises(ValueError, match="differ only"):
        train_population([a, replace(a, seed=9, total_steps=200)])


def test_a_population_of_the_same_run_twice_is_refused_before_any_file(base_config: TrainConfig) -> None:
    with pytest.raises(ValueError, match="must be distinct runs"):
        train_population([base_config, base_config])
    assert not (Path(base_config.results_dir) / base_config.run_id).exists()


def test_population_members_equal_their_single_runs(base_config: TrainConfig, tmp_path: Path) -> None:
    configs = members(base_config)
    summaries = train_population(configs)
    singles = [replace(c, results_dir=str(tmp_path / "single")) for c in configs]
    for config, single in zip(configs, singles):
        expected_summary = train(single)
        summary = summaries[config.run_id]
        assert summary.keys() == expected_summary.keys() and summary["status"] == "completed"
        assert run_files(tmp_path / "results", config.run_id) == run_files(tmp_path / "single", config.run_id)

        written = json.loads((tmp_path / "results" / config.run_id / "config.json").read_text())
        reference = json.loads((tmp_path / "single" / config.run_id / "config.json").read_text())
        assert written["population"]["size"] == 3 and written["population"]["members"] == [c.run_id for c in configs]
        for key in ("identity", "dataset_checksum", "corruption_records", "algo_config", "reward_scale", "q_divergence_bound", "corrupted_dataset_summary"):
            assert written[key] == reference[key], key

        got = read_lines(tmp_path / "results" / config.run_id / "metrics.jsonl")
        want = read_lines(tmp_path / "single" / config.run_id / "metrics.jsonl")
        assert [(m["step"], m["kind"], sorted(m)) for m in got] == [(m["step"], m["kind"], sorted(m)) for m in want]
        for mine, theirs in zip(got, want):
            if mine["kind"] == "train":  # same batches and math; batched products round differently
                for key, value in theirs.items():
                    if isinstance(value, float):
                        assert mine[key] == pytest.approx(value, rel=1e-3, abs=1e-3), (config.run_id, mine["step"], key)
            else:  # same start states and (to rounding) the same policy
                assert mine["episode_returns"] == pytest.approx(theirs["episode_returns"], rel=1e-2, abs=1.0)


def test_interrupted_population_resumes_to_the_uninterrupted_result(base_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = [replace(c, results_dir=str(tmp_path / "reference")) for c in members(base_config)]
    train_population(reference)

    configs = members(base_config)
    interrupt_population_at(monkeypatch, configs, 90)  # the last checkpoint is at step 80
    results = Path(base_config.results_dir)
    assert not any((results / c.run_id / "summary.json").exists() for c in configs)

    # One member is resumed alone, from the population's checkpoint (single-run format) ...
    alone = train(configs[0])
    assert alone["status"] == "completed" and alone["steps_done"] == 120
    # ... and the other two as a population again; the finished one is not rerun.
    summaries = train_population(configs)
    assert summaries[configs[0].run_id] == alone
    for config, ref in zip(configs, reference):
        got = read_lines(results / config.run_id / "metrics.jsonl")
        want = read_lines(Path(ref.results_dir) / ref.run_id / "metrics.jsonl")
        assert [(m["step"], m["kind"]) for m in got] == [(m["step"], m["kind"]) for m in want]
        for mine, theirs in zip(got, want):
            for key, value in theirs.items():
                if isinstance(value, float):
                    assert mine[key] == pytest.approx(value, rel=1e-3, abs=1e-3), (config.run_id, mine["step"], key)


def test_a_diverged_member_ends_alone(base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = members(base_config)
    victim = configs[1].run_id
    log_train = run_book.RunBook.log_train

    def poisoned(self, values, loss_window, q_mc):
        if self.config.run_id == victim and self.step >= 40:
            values = {**values, "critic_loss": float("nan")}
        return log_train(self, values, loss_window, q_mc)

    monkeypatch.setattr(run_book.RunBook, "log_train", poisoned)
    summaries = train_population(configs)
    assert summaries[victim]["status"] == "diverged" and summaries[victim]["diverged_at_step"] == 40
    assert summaries[victim]["steps_done"] == 40
    for config in (configs[0], configs[2]):
        assert summaries[config.run_id]["status"] == "completed" and summaries[config.run_id]["num_evaluations"] == 2
    lines = read_lines(Path(base_config.results_dir) / victim / "metrics.jsonl")
    assert lines[-1]["event"] == "diverged" and max(line["step"] for line in lines) == 40


@pytest.mark.parametrize("algo", ["cql", "calql"])
def test_cql_population_trains_and_writes_run_directories(algo: str, base_config: TrainConfig) -> None:
    cql = replace(base_config, algo=algo, total_steps=40, eval_every=40, log_every=20, checkpoint_every=20,
                  algo_overrides={"critic_hidden": [32, 32], "actor_hidden": [32, 32], "batch_size": 32, "num_sampled_actions": 2})
    configs = [cql, replace(cql, seed=4, remove_top_k=30.0)]
    assert population_key(configs[0]) == population_key(configs[1]) is not None
    summaries = train_population(configs)
    for config in configs:
        assert summaries[config.run_id]["status"] == "completed"
        written = json.loads((Path(cql.results_dir) / config.run_id / "config.json").read_text())
        assert written["population"]["size"] == 2
        trains = [m for m in read_lines(Path(cql.results_dir) / config.run_id / "metrics.jsonl") if m["kind"] == "train"]
        assert [m["step"] for m in trains] == [20, 40]
        assert {"cql_penalty", "alpha", "q_minus_mc_mean", "critic_loss_rolling_var"} <= trains[-1].keys()
        # Cal-QL's floor reached the population's batches (each member's own returns).
        assert ("calibration_bound_rate" in trains[-1]) == (algo == "calql")
        state = torch.load(Path(cql.results_dir) / config.run_id / "checkpoint.pt", weights_only=False)
        assert state["step"] == 40 and state["algorithm"]["total_updates"] == 40


def test_members_at_different_steps_finish_one_by_one(base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = members(base_config)[:2]
    interrupt_population_at(monkeypatch, configs, 50)  # checkpoints at step 40
    (Path(base_config.results_dir) / configs[1].run_id / "checkpoint.pt").unlink()  # back to step 0

    calls_to_train = []
    single_train = train_module.train
    monkeypatch.setattr(train_module, "train", lambda config, **kw: calls_to_train.append(config.run_id) or single_train(config, **kw))
    summaries = train_population(configs)
    assert calls_to_train == [c.run_id for c in configs]  # steps 40 and 0 cannot share a population
    assert all(summaries[c.run_id]["status"] == "completed" and summaries[c.run_id]["steps_done"] == 120 for c in configs)
