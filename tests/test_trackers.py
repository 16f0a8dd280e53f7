"""Runs into Weights & Biases (offline here): the same scalars as metrics.jsonl, the config, a group per results directory."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hybrid_rl.cli import main as cli_main
from hybrid_rl.core.trackers import scalars

from conftest import TINY_DATASET


def test_a_run_logs_to_wandb_offline(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = tmp_path / "results"
    assert cli_main(["train", "--algo", "iql", "--env", TINY_DATASET, "--total_steps", "30", "--eval_episodes", "1", "--set", "hidden=8x8",
                     "--device", "cpu", "--results", str(results), "--wandb", "hybrid-rl-tests", "--compile", "off"]) == 0
    run_dir = results / json.loads(capsys.readouterr().out)["run_id"]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = (offline / f"run-{offline.name.rsplit('-', 1)[1]}.wandb").read_bytes()  # what `wandb sync` uploads
    # The run's name and config.json, and the scalars of metrics.jsonl under <kind>/<name>.
    for text in (run_dir.name, "dataset_checksum", "eval/normalized_return_mean", "train/critic_loss"):
        assert text.encode() in records, text
    assert json.loads((run_dir / "config.json").read_text())["wandb"] == "hybrid-rl-tests"


def test_tracker_scalars_and_a_missing_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert scalars({"step": 5, "kind": "eval", "normalized_return_mean": 40.0, "switch": True, "episode_returns": [1.0]}) == {"eval/normalized_return_mean": 40.0}
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    code = cli_main(["train", "--env", TINY_DATASET, "--results", str(tmp_path / "r"), "--wandb", "p"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'hybrid-rl[wandb]'" in err and err.count("\n") == 1 and not (tmp_path / "r").exists()
