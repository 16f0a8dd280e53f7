"""The training loop: run directory contents, exact resume, divergence, bad input."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_rl.runs import train as train_module
from hybrid_rl.core.errors import HybridRLError
from hybrid_rl.runs.book import ConfigMismatchError, mc_diagnostic_indices, resolve_device
from hybrid_rl.runs.train import TrainConfig, train

from conftest import TINY_DATASET as DATASET
from conftest import run_killed


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_directory_is_self_describing(base_config: TrainConfig) -> None:
    summary = train(base_config)
    run_dir = Path(base_config.results_dir) / base_config.run_id
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == DATASET and len(config["dataset_checksum"]) == 64
    assert config["algo_config"]["hidden"] == [32, 32]
    assert "torch" in config["versions"] and config["device_resolved"] == "cpu"
    metrics = read_lines(run_dir / "metrics.jsonl")
    evals = [m for m in metrics if m["kind"] == "eval"]
    trains = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in evals] == [60, 120]
    assert [m["step"] for m in trains] == [20, 40, 60, 80, 100, 120]
    for key in ("critic_loss", "critic_loss_rolling_var", "q_mean", "q_std", "q_minus_mc_mean", "value_loss", "adv_mean"):
        assert key in trains[-1], key
    assert summary["status"] == "completed" and summary["steps_done"] == 120
    assert summary["final_normalized_return"] == pytest.approx(evals[-1]["normalized_return_mean"])
    assert (run_dir / "checkpoint.pt").exists()


def test_completed_run_is_skipped(base_config: TrainConfig) -> None:
    first = train(base_config)
    again = train(base_config)
    assert again == first


def test_resumed_run_matches_uninterrupted_run(base_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = replace(base_config, results_dir=str(tmp_path / "reference"))
    train(reference)
    expected = read_lines(Path(reference.results_dir) / reference.run_id / "metrics.jsonl")

    # Interrupt after step 90: the last checkpoint is at step 80, and metrics up to step 80
    # plus lines for later steps have been written before the "crash".
    run_killed(monkeypatch, train_module.TransitionSampler, "sample", 90, lambda: train(base_config))
    run_dir = Path(base_config.results_dir) / base_config.run_id
    assert not (run_dir / "summary.json").exists()
    train(base_config)
    assert read_lines(run_dir / "metrics.jsonl") == expected


def test_divergence_is_a_result(base_config: TrainConfig) -> None:
    config = replace(base_config, q_divergence_factor=1e-9, algo="iql")
    summary = train(config)
    assert summary["status"] == "diverged"
    assert summary["diverged_at_step"] == config.log_every
    events = [m for m in read_lines(Path(config.results_dir) / config.run_id / "metrics.jsonl") if m["kind"] == "event"]
    assert events and events[0]["event"] == "diverged"


def test_incompatible_run_directory_is_refused(base_config: TrainConfig) -> None:
    train(base_config)
    changed = replace(base_config, algo_overrides={"hidden": [32, 32], "batch_size": 32})
    with pytest.raises(ConfigMismatchError, match="algo_overrides"):
        train(changed, Path(base_config.results_dir) / base_config.run_id)


def test_unreadable_checkpoint_is_a_clear_error(base_config: TrainConfig) -> None:
    run_dir = Path(base_config.results_dir) / base_config.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(HybridRLError, match="unreadable"):
        train(base_config)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("field, value", [("total_steps", 0), ("remove_top_k", 100), ("remove_top_k", -1), ("reward_noise_std", -0.1), ("eval_every", 0)])
def test_bad_config_values(field: str, value, base_config: TrainConfig) -> None:
    with pytest.raises(ValueError, match=field):
        replace(base_config, **{field: value})


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert resolve_device("auto").type == expected
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    else:
        with pytest.raises(HybridRLError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(HybridRLError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(cuda: bool, mps: bool, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order itself, on any machine: availability is faked, only torch.device objects are made."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)


def test_mc_diagnostic_indices_avoid_truncated_tails(base_config: TrainConfig) -> None:
    from hybrid_rl.data.dataset import OfflineDataset

    n = 1000
    timeouts = np.zeros(n, bool)
    timeouts[[499, 999]] = True
    dataset = OfflineDataset(
        observations=np.zeros((n, 2), np.float32), actions=np.zeros((n, 1), np.float32), rewards=np.ones(n, np.float32),
        next_observations=np.zeros((n, 2), np.float32), terminals=np.zeros(n, bool), timeouts=timeouts,
    )
    index = mc_diagnostic_indices(dataset, discount=0.99, size=10_000, seed=0)
    # 300 steps of each 500-step timed-out trajectory are too close to the cut.
    assert len(index) == 2 * 200
    assert index.max() < 700 and not np.any((index >= 200) & (index < 500))


def test_resume_refuses_changed_data(base_config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = Path(base_config.results_dir) / base_config.run_id
    run_killed(monkeypatch, train_module.TransitionSampler, "sample", 50, lambda: train(base_config))
    config = json.loads((run_dir / "config.json").read_text())
    config["dataset_checksum"] = "0" * 64  # as if the id now named other data
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match="different data"):
        train(base_config)
