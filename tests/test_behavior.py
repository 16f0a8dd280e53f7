"""Behaviour-policy training (the dataset factory's SAC runs): files, a slower learner for
medium-replay, and a resume that logs every evaluation once."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_rl.algos.sac import SAC, SACConfig
from hybrid_rl.runs.behavior import train_behavior_policy
from hybrid_rl.runs.configs import BehaviorTrainingConfig
from hybrid_rl.engine.population import cpp_compiler

from conftest import run_killed

TINY = BehaviorTrainingConfig(robot="hopper", total_steps=300, seed=0, random_steps=100, eval_every=100, eval_episodes=1, checkpoint_every=100,
                              sac=SACConfig(hidden=(16, 16), batch_size=32), compile="off")


def progress_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "progress.jsonl").read_text().splitlines()]


def test_training_writes_snapshots_and_update_every_slows_the_learner(tmp_path: Path) -> None:
    for update_every, updates in ((1, 201), (4, 51)):  # updates at steps 100..300 (every step, every 4th)
        out = train_behavior_policy(replace(TINY, update_every=update_every), tmp_path / f"every{update_every}", progress=False)
        assert progress_steps(out) == [100, 200, 300]
        assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["actor_0000100.pt", "actor_0000200.pt", "actor_0000300.pt"]
        assert torch.load(out / "checkpoint.pt", weights_only=False)["agent"]["total_updates"] == updates
        assert json.loads((out / "config.json").read_text())["update_every"] == update_every
    with pytest.raises(ValueError, match="update_every"):
        replace(TINY, update_every=0)


def test_a_training_that_ends_between_evaluations_evaluates_its_last_step(tmp_path: Path) -> None:
    """The training loop evaluates the final step of every run; the factory can then choose
    the last policy too."""
    out = train_behavior_policy(replace(TINY, total_steps=250), tmp_path / "short", progress=False)
    assert progress_steps(out) == [100, 200, 250]
    assert (out / "snapshots" / "actor_0000250.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 250


def test_a_training_is_not_continued_with_other_settings_nor_by_two_processes(tmp_path: Path) -> None:
    """The run layer's rules, as for every run: its directory's run lock, and its identity
    (every setting but the length, the checkpoint interval and the update path)."""
    from hybrid_rl.core.fileio import file_lock
    from hybrid_rl.core.run_format import RUN_LOCK_FILE
    from hybrid_rl.runs.book import ConfigMismatchError, RunBusyError

    out = train_behavior_policy(replace(TINY, total_steps=100), tmp_path / "run", progress=False)
    recorded = (out / "config.json").read_text()
    with pytest.raises(ConfigMismatchError, match=r"different configuration \(fields \['sac'\]\); pass the recorded settings"):
        train_behavior_policy(replace(TINY, sac=SACConfig(hidden=(32, 32), batch_size=32)), out, progress=False)
    assert (out / "config.json").read_text() == recorded and progress_steps(out) == [100]  # nothing touched
    with file_lock(out / RUN_LOCK_FILE, owner="pid 99 on elsewhere"):
        with pytest.raises(RunBusyError, match="being trained by another process .*pid 99 on elsewhere"):
            train_behavior_policy(TINY, out, progress=False)
    assert progress_steps(out) == [100]
    assert set(TINY.identity()) == {spec for spec in json.loads(recorded)} - {"total_steps", "checkpoint_every", "compile"}


def evaluations(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"} for line in (out / "progress.jsonl").read_text().splitlines()]


def test_a_killed_training_resumes_to_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each evaluation is logged once, and the resumed run's evaluations, snapshots and
    networks are the uninterrupted run's exactly: the checkpoint keeps the environment
    mid-episode (at step 200 a hopper episode is under way; restarting it changes every
    later number)."""
    straight = train_behavior_policy(TINY, tmp_path / "straight", progress=False)
    killed = tmp_path / "killed"
    # Killed at update 150 (step 250): the checkpoint is at step 200, the evaluation at 200 is kept.
    run_killed(monkeypatch, SAC, "update", 150, lambda: train_behavior_policy(TINY, killed, progress=False))
    assert progress_steps(killed) == [100, 200]
    with open(killed / "progress.jsonl", "a") as handle:  # as if killed between an evaluation and the next checkpoint
        handle.write(json.dumps({"step": 250, "stochastic_normalized": 0.0}) + "\n")
    train_behavior_policy(TINY, killed, progress=False)
    assert progress_steps(killed) == [100, 200, 300]
    assert evaluations(killed) == evaluations(straight)
    for snapshot in ("actor_0000300.pt",):
        for key, value in torch.load(straight / "snapshots" / snapshot).items():
            assert torch.equal(torch.load(killed / "snapshots" / snapshot)[key], value), key
    states = [torch.load(path / "checkpoint.pt", weights_only=False)["agent"]["modules"] for path in (straight, killed)]
    for network, weights in states[0].items():
        for key, value in weights.items():
            assert torch.equal(states[1][network][key], value), f"{network}.{key}"


def test_a_finished_training_continued_with_more_steps_is_the_longer_run(tmp_path: Path) -> None:
    """``train-policy --steps`` raised on a finished training continues it to the run that
    had the larger ``--steps`` from the start: same evaluations, snapshots and networks (its
    replay buffer grows, and the full buffer of the shorter run is laid out oldest first)."""
    straight = train_behavior_policy(TINY, tmp_path / "straight", progress=False)
    extended = train_behavior_policy(replace(TINY, total_steps=200), tmp_path / "extended", progress=False)
    train_behavior_policy(TINY, extended, progress=False)
    assert evaluations(extended) == evaluations(straight)
    for key, value in torch.load(straight / "snapshots" / "actor_0000300.pt").items():
        assert torch.equal(torch.load(extended / "snapshots" / "actor_0000300.pt")[key], value), key
    states = [torch.load(path / "checkpoint.pt", weights_only=False) for path in (straight, extended)]
    for network, weights in states[0]["agent"]["modules"].items():
        for key, value in weights.items():
            assert torch.equal(states[1]["agent"]["modules"][network][key], value), f"{network}.{key}"
    assert states[1]["buffer"]["size"] == 300 and np.array_equal(states[1]["buffer"]["rewards"], states[0]["buffer"]["rewards"])
    with pytest.raises(ValueError, match="trained to step 300, past --steps 200: pass --steps 300 or more"):
        train_behavior_policy(replace(TINY, total_steps=200), extended, progress=False)


def test_a_training_killed_before_its_first_checkpoint_starts_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Killed at update 50 (step 150): the evaluation at 100 is logged, no checkpoint exists yet.
    run_killed(monkeypatch, SAC, "update", 50, lambda: train_behavior_policy(replace(TINY, checkpoint_every=300), tmp_path, progress=False))
    assert progress_steps(tmp_path) == [100] and not (tmp_path / "checkpoint.pt").exists()
    train_behavior_policy(TINY, tmp_path, progress=False)
    assert progress_steps(tmp_path) == [100, 200, 300]


def test_ship_policy_with_a_separate_replay_training(tmp_path: Path) -> None:
    """``ship-policy --replay_from``: medium and expert from the main training, medium-replay
    from a slower one up to its own medium point; the chosen policies re-measured over
    ``--episodes`` stochastic episodes; the file generates every level."""
    from hybrid_rl.cli import main as cli_main
    from hybrid_rl.data import factory

    main = train_behavior_policy(TINY, tmp_path / "main", progress=False)
    slow = train_behavior_policy(replace(TINY, total_steps=400, update_every=2), tmp_path / "slow", progress=False)
    out = tmp_path / "hopper-v1.pt"
    assert cli_main(["dataset", "ship-policy", "--robot", "hopper", "--from", str(main), "--replay_from", str(slow), "--replay_step", "300",
                     "--medium_step", "200", "--version", "v1", "--episodes", "2", "--out", str(out)]) == 0
    payload = factory.load_policy_file(out)
    assert payload["version"] == "v1" and payload["levels"]["medium"]["step"] == 200
    # The expert is the best of the candidates re-measured over 2 episodes, and says so.
    expert = payload["levels"]["expert"]
    candidates = {step: factory.evaluate_snapshot(main, "hopper", step, 2)["stochastic_normalized"] for step in (100, 200, 300)}
    assert expert["step"] == max(candidates, key=candidates.get)
    assert expert["shipping_evaluation"]["episodes"] == 2 and len(expert["shipping_evaluation"]["stochastic_returns"]) == 2
    assert expert["shipping_evaluation"]["stochastic_normalized"] == pytest.approx(candidates[expert["step"]])
    # medium-replay: the slow training's snapshots before its step 300, its own config.
    assert factory.replay_source(payload)["step"] == 300 and payload["replay"]["training_config"]["update_every"] == 2
    assert [entry["step"] for entry in payload["replay_schedule"]] == [100, 200]
    slow_snapshot = torch.load(slow / "snapshots" / "actor_0000200.pt")
    torch.testing.assert_close(payload["replay_schedule"][1]["state_dict"]["trunk.0.weight"], slow_snapshot["trunk.0.weight"].half())
    replay = factory.generate_dataset("gen-hopper-medium-replay-v1", policy_file=out, progress=False)
    assert len(replay) == 300 and "step 300" in replay.metadata["recipe"]
    # A replay step the slower training never evaluated is a one-line error.
    assert cli_main(["dataset", "ship-policy", "--robot", "hopper", "--from", str(main), "--replay_from", str(slow), "--replay_step", "250",
                     "--episodes", "0", "--out", str(tmp_path / "bad.pt")]) == 2
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.slow
@pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler: torch.compile's CPU backend cannot run here")
def test_the_compiled_trainer_follows_the_eager_one(tmp_path: Path) -> None:
    """compile="on" trains through a compiled population of one: the same exploration draws,
    updates and exports as SAC.update, so after 100 updates its networks match the eager
    trainer's to float tolerance, and its checkpoint resumes in either path."""
    short = replace(TINY, total_steps=200)
    eager = train_behavior_policy(short, tmp_path / "eager", progress=False)
    compiled = train_behavior_policy(replace(short, compile="on"), tmp_path / "compiled", progress=False)
    records = [json.loads(line) for line in (compiled / "progress.jsonl").read_text().splitlines()]
    assert [record["update_step"] for record in records] == ["compiled", "compiled"]
    states = [torch.load(path / "checkpoint.pt", weights_only=False)["agent"] for path in (eager, compiled)]
    assert states[0]["total_updates"] == states[1]["total_updates"] == 101
    for network in ("actor", "critic", "target_critic"):
        for key, value in states[0]["modules"][network].items():
            torch.testing.assert_close(states[1]["modules"][network][key], value, rtol=1e-3, atol=1e-4, msg=f"{network}.{key}")
    # The compiled path's checkpoint is a SAC checkpoint: the eager trainer continues it.
    train_behavior_policy(replace(TINY, compile="off"), compiled, progress=False)
    assert progress_steps(compiled) == [100, 200, 300]


def test_train_policy_command_passes_its_flags_on(tmp_path: Path) -> None:
    """`hybrid-rl dataset train-policy` writes the training it was asked for (here 200
    warm-up steps only: no update, no evaluation, a final checkpoint); bad flags exit 2."""
    from hybrid_rl.cli import main as cli_main

    out = tmp_path / "run"
    assert cli_main(["dataset", "train-policy", "--robot", "hopper", "--steps", "200", "--hidden", "24,24", "--lr", "1e-4",
                     "--update_every", "4", "--compile", "off", "--seed", "3", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["sac"]["hidden"] == [24, 24] and config["sac"]["actor_lr"] == config["sac"]["critic_lr"] == 1e-4
    assert (config["update_every"], config["compile"], config["seed"], config["total_steps"]) == (4, "off", 3, 200)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 200
    for bad in (["--hidden", "24,x"], ["--lr", "-1e-4"], ["--lr", "nan"], ["--steps", "0"], ["--random_steps", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["dataset", "train-policy", "--robot", "hopper", *bad, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2 and not (tmp_path / "bad").exists()


def test_train_policy_flags_are_the_configs_declared_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flags the command trains the config's defaults (SAC 2x128 at 3e-4 included,
    as --hidden's and --lr's help say)."""
    from hybrid_rl.cli import main as cli_main
    from hybrid_rl.runs import behavior

    made: list[BehaviorTrainingConfig] = []
    monkeypatch.setattr(behavior, "train_behavior_policy", lambda config, out, **kw: made.append(config) or Path(out))
    assert cli_main(["dataset", "train-policy", "--robot", "walker2d", "--out", str(tmp_path / "w")]) == 0
    assert made == [BehaviorTrainingConfig(robot="walker2d")]
    assert made[0].sac == SACConfig(hidden=(128, 128)) and made[0].sac.actor_lr == made[0].sac.critic_lr == 3e-4
