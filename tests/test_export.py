"""Damaged data out to other libraries: export -> load gives the same arrays and provenance."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from hybrid_rl.cli import main as cli_main
from hybrid_rl.data.dataset import ARRAY_FIELDS
from hybrid_rl.data.loader import dataset_task, load_dataset
from hybrid_rl.runs.train import TrainConfig, prepare_dataset, train

from conftest import TINY_DATASET


def test_export_of_damaged_data_round_trips_in_d4rl_format(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    out = tmp_path / "damaged.hdf5"
    assert cli_main(["dataset", "export", TINY_DATASET, "--remove_top_k", "30", "--reward_noise_std", "0.5", "--seed", "2", "--out", str(out)]) == 0
    original, expected, _ = prepare_dataset(TrainConfig(dataset=TINY_DATASET, remove_top_k=30.0, reward_noise_std=0.5, seed=2))
    loaded = load_dataset(out)
    for key in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(expected, key))
    assert loaded.checksum() == expected.checksum() == loaded.metadata["checksum"]
    assert loaded.metadata["source_dataset_id"] == TINY_DATASET and loaded.metadata["source_checksum"] == original.checksum()
    assert [record["kind"] for record in loaded.metadata["corruption_records"]] == ["remove_top_k", "reward_noise"]
    assert dataset_task(out) == "hopper-random"  # the presets follow the exported file's source
    with h5py.File(out, "r") as handle:  # what d4rl-reading code expects
        assert {key: handle[key].dtype.kind for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")} == {
            "observations": "f", "actions": "f", "rewards": "f", "next_observations": "f", "terminals": "b", "timeouts": "b"}
    capsys.readouterr()
    for argv, message in ((["dataset", "export", TINY_DATASET, "--out", str(out)], "exists; pass --force"),
                          (["dataset", "export", "hoper-medium-v2", "--out", str(tmp_path / "x.hdf5")], "unknown dataset"),
                          (["dataset", "export", "--out", str(tmp_path / "x.hdf5")], "one of the two"),
                          (["dataset", "export", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.hdf5")], "no run directory there"),
                          (["dataset", "export", TINY_DATASET, "--format", "minari", "--out", "flat-v0"], "needs a namespace")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.hdf5").exists()


def test_export_from_a_run_is_its_exact_data_and_minari_reads_it(tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    config = TrainConfig(algo="bc", dataset=TINY_DATASET, remove_top_k=30.0, seed=4, total_steps=20, eval_every=20, eval_episodes=1, log_every=10,
                         device="cpu", progress=False, results_dir=str(tmp_path / "results"), algo_overrides={"hidden": [8, 8]}, compile="off")
    train(config)
    run_dir = tmp_path / "results" / config.run_id
    recorded = json.loads((run_dir / "config.json").read_text())
    out = tmp_path / "run.hdf5"
    assert cli_main(["dataset", "export", "--from", str(run_dir), "--out", str(out)]) == 0
    exported = load_dataset(out)
    _, expected, _ = prepare_dataset(config)
    assert exported.checksum() == expected.checksum() and exported.metadata["source_checksum"] == recorded["dataset_checksum"]
    assert exported.metadata["run_id"] == config.run_id and exported.metadata["corruption"]["seed"] == 4
    assert cli_main(["dataset", "export", "--from", str(run_dir), "--format", "minari", "--out", "hybrid-rl-test/run-v0"]) == 0
    minari = load_dataset("hybrid-rl-test/run-v0")
    for key in ARRAY_FIELDS:
        if key != "timeouts":
            np.testing.assert_array_equal(getattr(minari, key), getattr(expected, key))
    # Minari stores whole episodes: the file's unfinished last episode comes back truncated.
    np.testing.assert_array_equal(minari.timeouts[:-1], expected.timeouts[:-1])
    assert minari.timeouts[-1] and not (expected.terminals[-1] or expected.timeouts[-1])
    assert minari.metadata["source_checksum"] == recorded["dataset_checksum"] and minari.metadata["run_id"] == config.run_id
    capsys.readouterr()
    (run_dir / "summary.json").unlink()
    assert cli_main(["dataset", "export", "--from", str(run_dir), "--out", str(tmp_path / "y.hdf5")]) == 2
    assert "is not finished" in capsys.readouterr().err and not (tmp_path / "y.hdf5").exists()
