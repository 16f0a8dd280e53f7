"""A trained policy outside its run: load_policy acts as the run's evaluations did."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hybrid_rl.cli import main as cli_main
from hybrid_rl.core.rollouts import episode_returns
from hybrid_rl.runs.train import TrainConfig, train

from conftest import TINY_DATASET


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, generated_cache: Path) -> Path:
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
        # IQL on hopper data: observations normalised, the deterministic mean action evaluated.
        config = TrainConfig(algo="iql", dataset=TINY_DATASET, remove_top_k=30.0, seed=3, total_steps=60, eval_every=60, eval_episodes=3,
                             log_every=20, checkpoint_every=60, device="cpu", progress=False, results_dir=str(results),
                             cache_dir=str(generated_cache), algo_overrides={"hidden": [16, 16], "batch_size": 32}, compile="off")
        train(config)
    return results / config.run_id


def last_evaluation(run_dir: Path) -> dict:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line][-1]


def test_a_loaded_policy_replays_the_runs_final_evaluation(run_dir: Path) -> None:
    from hybrid_rl import load_policy

    policy = load_policy(run_dir)
    assert policy.obs_mean is not None and policy.info["algo"] == "iql" and policy.info["step"] == 60
    evaluation = last_evaluation(run_dir)
    envs = [policy.make_env() for _ in evaluation["episode_returns"]]
    returns = episode_returns(envs, policy.act, 1_000_000 + 10_000 * 3)  # the run's evaluation seeds (seed 3)
    assert returns == pytest.approx(evaluation["episode_returns"], rel=1e-6)
    assert np.all(np.abs(policy.act(np.zeros(policy.obs_dim))) <= 1.0)


def test_an_exported_policy_file_acts_as_the_run(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hybrid_rl import load_policy

    out = tmp_path / "policy.pt"
    assert cli_main(["policy", "export", str(run_dir), "--out", str(out)]) == 0
    exported, original = load_policy(out), load_policy(run_dir)
    obs = np.random.default_rng(0).normal(size=(5, original.obs_dim)).astype(np.float32)
    np.testing.assert_array_equal(exported.act(obs), original.act(obs))
    assert exported.info["run_id"] == run_dir.name and exported.make_env().action_space.shape == (original.act_dim,)
    capsys.readouterr()
    for argv, message in ((["policy", "export", str(run_dir), "--out", str(out)], "exists; pass --force"),
                          (["policy", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.pt")], "neither a run directory nor a policy file"),
                          (["policy", "export", str(run_dir), "--out", str(tmp_path / "no" / "p.pt")], "does not exist")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.pt").exists()


def test_a_checkpoint_from_before_the_stored_normalisation_rebuilds_it_from_the_data(run_dir: Path, tmp_path: Path, generated_cache: Path,
                                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import torch

    from hybrid_rl import load_policy

    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    old = Path(shutil.copytree(run_dir, tmp_path / run_dir.name))
    checkpoint = torch.load(old / "checkpoint.pt", weights_only=False)
    del checkpoint["preprocessing"]
    torch.save(checkpoint, old / "checkpoint.pt")
    rebuilt, stored = load_policy(old), load_policy(run_dir)
    np.testing.assert_allclose(rebuilt.obs_mean, stored.obs_mean, rtol=1e-6)
    np.testing.assert_allclose(rebuilt.obs_std, stored.obs_std, rtol=1e-6)
