"""Phase II fine-tuning runs: parents, the online stage, resume after a kill, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_rl.cli import main as cli_main
from hybrid_rl.data.refs import normalized_score
from hybrid_rl.data.replay import DeviceReplayBuffer, MixedSampler
from hybrid_rl.data.dataset import TransitionSampler
from hybrid_rl.engine.loop import OfflineStage
from hybrid_rl.engine.online import OnlineMember, OnlineStage
from hybrid_rl.core.errors import HybridRLError
from hybrid_rl.runs.finetune import FinetuneConfig, finetune
from hybrid_rl.runs.train import TrainConfig, train

from conftest import TINY_DATASET, build_dataset, run_killed

SMALL = {
    "iql": {"hidden": [32, 32], "batch_size": 64},
    "cql": {"critic_hidden": [32, 32], "actor_hidden": [32, 32], "batch_size": 32, "num_sampled_actions": 4},
    "calql": {"critic_hidden": [32, 32], "actor_hidden": [32, 32], "batch_size": 32, "num_sampled_actions": 4},
}


@pytest.fixture(scope="module")
def parents(tmp_path_factory: pytest.TempPathFactory, generated_cache: Path) -> dict[str, Path]:
    """Finished tiny Phase I runs of IQL, CQL and Cal-QL (k = 30: the fine-tuning starts from damaged data)."""
    results = tmp_path_factory.mktemp("phase1")
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
        for algo in ("iql", "cql", "calql"):
            config = TrainConfig(algo=algo, dataset=TINY_DATASET, remove_top_k=30.0, seed=1, total_steps=60, eval_every=60, eval_episodes=2,
                                 log_every=20, checkpoint_every=60, device="cpu", progress=False, results_dir=str(results),
                                 cache_dir=str(generated_cache), algo_overrides=SMALL[algo])
            assert train(config)["status"] == "completed"
            out[algo] = results / config.run_id
    return out


def ft_config(tmp_path: Path, generated_cache: Path, **changes) -> FinetuneConfig:
    base = dict(online_steps=150, eval_every=50, eval_episodes=2, switch_episodes=4, log_every=25, checkpoint_every=50, device="cpu", progress=False,
                results_dir=str(tmp_path / "phase2"), cache_dir=str(generated_cache), seed=2)
    return FinetuneConfig(**{**base, **changes})


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_iql_fine_tuning_names_its_parent_and_logs_online_episodes(parents, tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    config = ft_config(tmp_path, generated_cache, method="iql", parent=str(parents["iql"]))
    summary = finetune(config)
    assert summary["status"] == "completed" and summary["steps_done"] == 150 and summary["num_evaluations"] == 3
    run_dir = tmp_path / "phase2" / summary["run_id"]
    written = json.loads((run_dir / "config.json").read_text())
    parent_summary = json.loads((parents["iql"] / "summary.json").read_text())
    assert written["parent"]["run_id"] == parents["iql"].name and written["parent"]["switch_score"] == parent_summary["final_normalized_return"]
    assert len(written["parent"]["checkpoint_sha256"]) == 64
    assert written["algo"] == "iql" and written["method"] == "iql" and written["corruption"]["remove_top_k"] == 30.0
    assert written["online"]["sampling"] == "uniform" and written["online"]["utd"] == 1 and written["variant"] == "iql"
    # The starting policy is measured first, at step 0, over switch_episodes episodes; its
    # first eval_episodes episodes are the ones every later evaluation plays (same seeds).
    switch, *rest = read_records(run_dir)
    assert (switch["step"], switch["kind"], switch["switch"], switch["episodes"], len(switch["episode_returns"])) == (0, "eval", True, 4, 4)
    assert [r["step"] for r in rest if r["kind"] == "eval"] == [50, 100, 150]  # the summary's evaluations leave the switch out
    episodes = [r for r in read_records(run_dir) if r["kind"] == "episode"]
    assert episodes and sum(r["length"] for r in episodes) <= 150
    for record in episodes:
        assert record["normalized_return"] == pytest.approx(normalized_score("hopper", record["return"]))
        if record["terminated"]:  # the critic's calibration on the episode's own transitions
            assert record["q_mc_transitions"] == record["length"]
            assert record["q_minus_mc_mean"] == pytest.approx(record["q_mean"] - record["mc_return_mean"])
    # The cosine schedule ended at the switch; online the actor learns at the constant actor_lr.
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["algorithm"]["optimizers"]["actor"]["param_groups"][0]["lr"] == written["algo_config"]["actor_lr"] == 3e-4
    assert checkpoint["algorithm"]["total_updates"] == 60 + 150  # UTD 1 from the parent's 60 updates on


@pytest.mark.parametrize("method", ["iql", "cql", "calql", "rlpd", "sac", "offline"])
def test_a_killed_fine_tuning_run_resumes_to_identical_metrics(method, parents, tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    stage = OnlineStage
    if method == "offline":  # the control: the IQL parent trains on offline, two updates per step
        changes, stage = dict(method="offline", parent=str(parents["iql"]), utd=2), OfflineStage
    elif method == "sac":
        changes = dict(method="sac", parent="scratch", dataset=TINY_DATASET, warmup_steps=40, algo_overrides={"hidden": [32, 32], "batch_size": 64})
    elif method == "rlpd":  # from scratch on damaged data, UTD 3
        changes = dict(method="rlpd", parent="scratch", dataset=TINY_DATASET, remove_top_k=30.0, warmup_steps=40, utd=3,
                       algo_overrides={"hidden": [32, 32], "batch_size": 64, "ensemble_size": 4})
    else:
        changes = dict(method=method, parent=str(parents[method]))
    reference = ft_config(tmp_path / "uninterrupted", generated_cache, **changes)
    finetune(reference)
    config = ft_config(tmp_path, generated_cache, **changes)
    run_killed(monkeypatch, stage, "train_step", 120, lambda: finetune(config))  # killed at step 121, last checkpoint at 100
    run_dir = Path(config.results_dir) / reference.run_id
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 100 and not (run_dir / "summary.json").exists()
    finetune(config)
    expected = (Path(reference.results_dir) / reference.run_id / "metrics.jsonl").read_text()
    assert (run_dir / "metrics.jsonl").read_text() == expected
    assert any(json.loads(line)["kind"] == "episode" for line in expected.splitlines()) == (method != "offline")
    assert json.loads(expected.splitlines()[0])["switch"]  # measured once, kept through the resume


def test_the_controls_offline_training_and_the_frozen_policy(parents, tmp_path, generated_cache, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    results = tmp_path / "phase2"
    common = ["--from", str(parents["iql"]), "--results", str(results), "--online_steps", "60", "--eval_every", "30", "--eval_episodes", "2",
              "--switch_episodes", "3", "--device", "cpu", "--cache_dir", str(generated_cache), "--compile", "off"]
    parent_updates = torch.load(parents["iql"] / "checkpoint.pt", weights_only=False)["algorithm"]["total_updates"]

    assert cli_main(["finetune", "--method", "iql", "--utd", "0", *common]) == 0
    frozen = json.loads(capsys.readouterr().out)
    run_dir = results / frozen["run_id"]
    assert frozen["run_id"] == f"ft-iql__from__{parents['iql'].name}__utd0__uniform__online60__s0"
    assert json.loads((run_dir / "config.json").read_text())["variant"] == "frozen"
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)["algorithm"]
    parent = torch.load(parents["iql"] / "checkpoint.pt", weights_only=False)["algorithm"]
    assert checkpoint["total_updates"] == parent_updates  # never updated
    for name, tensor in parent["modules"]["actor"].items():
        assert torch.equal(checkpoint["modules"]["actor"][name], tensor), name
    records = read_records(run_dir)
    switch, evals = records[0], [r for r in records if r["kind"] == "eval" and not r.get("switch")]
    # An unchanged deterministic policy plays the same evaluation episodes: every evaluation is
    # the switch measurement's first eval_episodes episodes, the noise floor of the metrics.
    assert [r["episode_returns"] for r in evals] == [switch["episode_returns"][:2]] * 2
    assert any(r["kind"] == "episode" for r in records)  # it still acts in the environment

    assert cli_main(["finetune", "--method", "offline", *common]) == 0
    offline = json.loads(capsys.readouterr().out)
    run_dir = results / offline["run_id"]
    written = json.loads((run_dir / "config.json").read_text())
    assert offline["run_id"] == f"ft-offline__from__{parents['iql'].name}__utd1__offline__online60__s0" and written["variant"] == "offline"
    assert written["online"]["interacts"] is False and written["algo"] == "iql"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["algorithm"]["total_updates"] == parent_updates + 60
    records = read_records(run_dir)
    assert not any(r["kind"] == "episode" for r in records) and records[0]["switch"]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 30, 60]


def test_bad_control_settings_get_one_line_and_write_nothing(parents, tmp_path, generated_cache, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    results = tmp_path / "phase2"
    for args, message in ((["--from", str(parents["iql"]), "--method", "iql", "--utd", "-1"], "must be a whole number >= 0"),
                          (["--from", "scratch", "--env", TINY_DATASET, "--method", "offline"], "pass --from RESULTS/RUN_ID, not --from scratch"),
                          (["--from", str(parents["iql"]), "--method", "offline", "--utd", "0"], "would do nothing"),
                          (["--from", str(parents["iql"]), "--method", "offline", "--sampling", "uniform"], "offline data only"),
                          (["--from", "scratch", "--env", TINY_DATASET, "--method", "sac", "--utd", "0"], "none to freeze")):
        try:
            code = cli_main(["finetune", "--results", str(results), "--online_steps", "50", "--device", "cpu", "--cache_dir", str(generated_cache), *args])
        except SystemExit as exc:  # argparse's own check of --utd's type, one line too
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
        assert not results.exists()


def test_calql_fine_tuning_floors_online_transitions_at_their_episodes_returns(parents, tmp_path, generated_cache, monkeypatch) -> None:
    """Cal-QL's online data carry Monte-Carlo returns-to-go of their finished episodes."""
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    config = ft_config(tmp_path, generated_cache, method="calql", parent=str(parents["calql"]), online_steps=80)
    summary = finetune(config)
    run_dir = tmp_path / "phase2" / summary["run_id"]
    buffer = torch.load(run_dir / "checkpoint.pt", weights_only=False)["sampler"]["buffer"]
    rewards, mc, ends = buffer["tensors"]["rewards"], buffer["tensors"]["mc_returns"], buffer["tensors"]["terminals"] + buffer["tensors"]["timeouts"]
    assert len(rewards) > 0 and ends[-1] == 1  # only whole episodes enter the buffer
    discount = json.loads((run_dir / "config.json").read_text())["algo_config"]["discount"]
    expected, running = [], 0.0
    for reward, end in zip(reversed(rewards.tolist()), reversed(ends.tolist())):
        running = reward + discount * running * (1.0 - end)
        expected.append(running)
    np.testing.assert_allclose(mc.numpy(), expected[::-1], rtol=1e-5)
    train_records = [r for r in read_records(run_dir) if r["kind"] == "train" and "calibration_bound_rate" in r]
    assert train_records and all(0.0 <= r["calibration_bound_rate"] <= 1.0 for r in train_records)


def test_rlpd_from_scratch_uses_the_damaged_data_of_the_same_seed(tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    config = ft_config(tmp_path, generated_cache, method="rlpd", parent="scratch", dataset=TINY_DATASET, remove_top_k=30.0, online_steps=60,
                       warmup_steps=50, utd=2, algo_overrides={"hidden": [16, 16], "batch_size": 32, "ensemble_size": 3})
    summary = finetune(config)
    run_dir = tmp_path / "phase2" / summary["run_id"]
    written = json.loads((run_dir / "config.json").read_text())
    # The id names the data, the method's non-default settings, UTD, sampling and (not the default 250k) the budget.
    assert summary["run_id"] == "ft-rlpd__scratch__gen-hopper-random-v0@3000__k30__noise0__batch_size=32__ensemble_size=3__hidden=16x16__utd2__symmetric__online60__s2"
    assert written["corruption_records"][0]["kind"] == "remove_top_k" and written["corruption"]["remove_top_k"] == 30.0
    assert written["algo_config"]["actor_every"] == 2 and written["algo_config"]["layer_norm"] is True
    assert written["parent"]["run_id"] is None and written["online"]["warmup_steps"] == 50
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["algorithm"]["total_updates"] == 2 * (60 - 50)  # UTD 2 after the warm-up


def test_bad_parents_get_one_line_and_write_nothing(parents, tmp_path, generated_cache, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    results = tmp_path / "phase2"

    def run(*args: str) -> str:
        code = cli_main(["finetune", "--results", str(results), "--online_steps", "50", "--device", "cpu", "--cache_dir", str(generated_cache), *args])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert not results.exists()
        return err

    assert "no Phase I run directory" in run("--from", str(tmp_path / "missing"), "--method", "iql")
    assert "use --method cql" in run("--from", str(parents["cql"]), "--method", "iql")
    assert "--from scratch --env" in run("--from", str(parents["iql"]), "--method", "sac")
    assert "corruption flags are for --from scratch" in run("--from", str(parents["iql"]), "--method", "iql", "--remove_top_k", "10")
    assert "add --env DATASET" in run("--from", "scratch", "--method", "sac")
    assert "pass --from RESULTS/RUN_ID" in run("--from", "scratch", "--method", "iql", "--env", TINY_DATASET)
    assert "unknown fine-tuning method" in run("--from", str(parents["iql"]), "--method", "awac")
    assert "unknown sampling mode" in run("--from", str(parents["iql"]), "--method", "iql", "--sampling", "mostly")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(parents["iql"], unfinished)
    (unfinished / "summary.json").unlink()
    assert "is not finished" in run("--from", str(unfinished), "--method", "iql")


def test_parent_data_that_changed_is_refused(parents, tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    parent = tmp_path / "parent"
    shutil.copytree(parents["iql"], parent)
    recorded = json.loads((parent / "config.json").read_text())
    recorded["dataset_checksum"] = "0" * 64  # as if the id now named other data
    (parent / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(HybridRLError, match="changed since"):
        finetune(ft_config(tmp_path, generated_cache, method="iql", parent=str(parent)))


def test_a_parent_checkpoint_that_changed_stops_the_resume(parents, tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    parent = tmp_path / "parent"
    shutil.copytree(parents["iql"], parent)
    config = ft_config(tmp_path, generated_cache, method="iql", parent=str(parent))
    run_killed(monkeypatch, OnlineStage, "train_step", 60, lambda: finetune(config))  # a checkpoint at 50
    checkpoint = torch.load(parent / "checkpoint.pt", weights_only=False)
    checkpoint["algorithm"]["modules"]["actor"]["net.0.weight"] += 1.0  # the parent retrained in place
    torch.save(checkpoint, parent / "checkpoint.pt")
    with pytest.raises(HybridRLError, match="checkpoint of .* changed"):
        finetune(config)


def test_a_diverged_parent_is_fine_tuned_only_from_finite_weights(parents, tmp_path, generated_cache, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    parent = tmp_path / "diverged"
    shutil.copytree(parents["iql"], parent)
    summary = json.loads((parent / "summary.json").read_text())
    (parent / "summary.json").write_text(json.dumps({**summary, "status": "diverged", "diverged_at_step": 40}))
    done = finetune(ft_config(tmp_path, generated_cache, method="iql", parent=str(parent), online_steps=50))
    written = json.loads((tmp_path / "phase2" / done["run_id"] / "config.json").read_text())
    assert done["status"] == "completed" and written["parent"]["status"] == "diverged"

    checkpoint = torch.load(parent / "checkpoint.pt", weights_only=False)
    checkpoint["algorithm"]["modules"]["actor"]["net.0.weight"][0, 0] = float("nan")
    torch.save(checkpoint, parent / "checkpoint.pt")
    with pytest.raises(HybridRLError, match="non-finite weights"):
        finetune(ft_config(tmp_path / "again", generated_cache, method="iql", parent=str(parent), online_steps=50))


# ---------------------------------------------------------------------------------------
# The pieces: mixed sampling and the online stage
# ---------------------------------------------------------------------------------------
def two_sources(online_rows: int = 100) -> tuple[TransitionSampler, DeviceReplayBuffer]:
    offline = TransitionSampler(build_dataset([[1.0] * 300], obs_dim=2, act_dim=1), seed=0)  # offline rewards 1
    online = DeviceReplayBuffer(2, 1, 500, seed=0)
    online.add({"observations": np.zeros((online_rows, 2)), "actions": np.zeros((online_rows, 1)), "rewards": -np.ones(online_rows),  # online rewards -1
                "next_observations": np.zeros((online_rows, 2)), "terminals": np.zeros(online_rows), "timeouts": np.zeros(online_rows)})
    return offline, online


def test_mixed_sampler_modes() -> None:
    offline, online = two_sources(100)
    symmetric = MixedSampler(offline, online, "symmetric", 0.25).sample(64)["rewards"]
    assert (symmetric == -1).sum() == 16 and (symmetric == 1).sum() == 48
    uniform = torch.cat([MixedSampler(offline, online, "uniform", seed=s).sample(400)["rewards"] for s in range(5)])
    assert abs(float((uniform == -1).float().mean()) - 100 / 400) < 0.03  # each of 300 + 100 rows equally likely
    assert bool((MixedSampler(offline, online, "online_only").sample(64)["rewards"] == -1).all())
    empty = DeviceReplayBuffer(2, 1, 10)
    assert bool((MixedSampler(offline, empty, "symmetric").sample(8)["rewards"] == 1).all())  # no online data yet
    with pytest.raises(ValueError, match="needs offline data"):
        MixedSampler(None, online, "uniform")


def test_q_calibration_against_hand_computed_returns() -> None:
    from hybrid_rl.engine.online import q_calibration

    class ConstantQ:
        bonus = None

        def q_values(self, member, obs, actions):
            return torch.full((len(obs),), 2.0)

        def entropy_bonus(self, member, obs, actions):
            return None if self.bonus is None else torch.full((len(obs),), self.bonus)

    def episode(length: int) -> dict:
        return {"observations": np.zeros((length, 3), np.float32), "actions": np.zeros((length, 1), np.float32), "rewards": np.ones(length, np.float32)}

    # Rewards 1, 1, 1 with discount 0.5: returns-to-go 1.75, 1.5, 1 (mean 4.25 / 3).
    terminated = q_calibration(ConstantQ(), 0, episode(3), np.array([1.75, 1.5, 1.0]), 0.5, True, torch.device("cpu"))
    assert terminated == {"q_mean": 2.0, "mc_return_mean": pytest.approx(4.25 / 3), "q_minus_mc_mean": pytest.approx(2.0 - 4.25 / 3), "q_mc_transitions": 3}
    # Cut by the time limit: only steps with >= 3 / (1 - gamma) = 300 steps left are fair targets.
    mc = np.arange(301, dtype=np.float32)
    cut = q_calibration(ConstantQ(), 0, episode(301), mc, 0.99, False, torch.device("cpu"))
    assert cut["q_mc_transitions"] == 1 and cut["mc_return_mean"] == 0.0
    assert q_calibration(ConstantQ(), 0, episode(300), mc[:300], 0.99, False, torch.device("cpu")) == {}
    # A soft-Q critic: its backup adds the bonus b of each next action, so the Monte-Carlo target
    # sums r_t + gamma b_t+1 (nothing after the last step): with b = 0.4, 1.2, 1.2, 1 -> 2.05, 1.7, 1.
    soft = ConstantQ()
    soft.bonus = 0.4
    calibrated = q_calibration(soft, 0, episode(3), np.array([1.75, 1.5, 1.0]), 0.5, True, torch.device("cpu"))
    assert calibrated["mc_return_mean"] == pytest.approx(4.75 / 3) and calibrated["entropy_bonus_mean"] == pytest.approx(0.4)


def test_online_stage_stores_truncations_as_timeouts_not_terminals() -> None:
    import gymnasium as gym

    from hybrid_rl.data.views import Preprocessing
    from hybrid_rl.engine.learners import AgentLearner

    env = gym.make("Pendulum-v1", max_episode_steps=7)  # never terminates: every episode ends by the time limit
    buffer = DeviceReplayBuffer(3, 1, 100)

    class Zero:
        def explore(self, obs, noise):
            return np.zeros((len(obs), 1), np.float32)

    member = OnlineMember(env, buffer, MixedSampler(None, buffer, "online_only"), Preprocessing(None, None, 2.0), lambda r: r, seed=0)
    stage = OnlineStage([member], utd=1, batch_size=4, warmup_steps=100)
    learner = AgentLearner(Zero())
    for _ in range(15):
        assert stage.train_step(learner) == {}  # still warming up: no update
    data = buffer.as_dataset("online")
    assert not data.terminals.any() and list(np.flatnonzero(data.timeouts)) == [6, 13]
    episodes = stage.take_records(0)
    assert [e["length"] for e in episodes] == [7, 7] and not any(e["terminated"] for e in episodes)
    assert data.rewards[:7].sum() == pytest.approx(2.0 * episodes[0]["return"], rel=1e-5)  # rewards scaled as the offline data
