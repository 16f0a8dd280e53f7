"""The dataset factory: ids, D4RL layout, determinism, metadata, shipped policies, bad input."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hybrid_rl.core.networks import TanhGaussianPolicy
from hybrid_rl.data import factory
from hybrid_rl.core.fileio import atomic_torch_save
from hybrid_rl.data.hdf5io import read_hdf5, validate_hdf5
from hybrid_rl.data.loader import load_dataset
from hybrid_rl.data.robots import make_robot_env

from conftest import d4rl_normalized, returns_by_hand


@pytest.fixture(scope="module")
def fake_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A policy file in the shipped format holding untrained (but real) hopper actors."""
    import torch

    torch.manual_seed(0)
    actors = [TanhGaussianPolicy(11, 3, (32, 32)).state_dict() for _ in range(3)]
    payload = {
        "format": factory.POLICY_FORMAT, "version": "v0", "robot": "hopper", "gym_env_id": "Hopper-v4",
        "obs_dim": 11, "act_dim": 3, "hidden": [32, 32], "random_steps": 300,
        "levels": {"medium": {"step": 900, "state_dict": actors[0], "evaluation": {}}, "expert": {"step": 1200, "state_dict": actors[1], "evaluation": {}}},
        "replay_schedule": [{"step": 300, "state_dict": actors[2]}, {"step": 600, "state_dict": actors[0]}],
    }
    path = tmp_path_factory.mktemp("policies") / "hopper-v0.pt"
    atomic_torch_save(payload, path)
    return path


@pytest.mark.parametrize(
    "name, robot, level, size",
    [
        ("gen-hopper-medium-v0", "hopper", "medium", None),
        ("gen-walker2d-medium-replay-v0@50k", "walker2d", "medium-replay", 50_000),
        ("gen-halfcheetah-medium-expert-v0@1.5m", "halfcheetah", "medium-expert", 1_500_000),
        ("gen-hopper-random-v0@1234", "hopper", "random", 1234),
        ("gen-walker2d-expert-v1@20k", "walker2d", "expert", 20_000),
    ],
)
def test_parse_ids(name: str, robot: str, level: str, size) -> None:
    gid = factory.parse_generated_id(name)
    assert (gid.robot, gid.level, gid.size) == (robot, level, size)
    base = name.split("@")[0]
    assert gid.version == base[-2:] and gid.base_name == base


@pytest.mark.parametrize(
    "name, message",
    [
        ("gen-ant-medium-v0", "no generated datasets for robot"),
        ("gen-hopper-superb-v0", "unknown level"),
        ("gen-hopper-medium-v2", "ships behaviour policies v0"),
        ("gen-hopper-medium-v0@0", "positive whole number"),
        ("gen-hopper-medium-v0@-5", "not a generated dataset id"),
        ("hopper-medium-v0", "not a generated dataset id"),
    ],
)
def test_bad_ids(name: str, message: str) -> None:
    with pytest.raises(factory.GeneratedDatasetError, match=message):
        factory.parse_generated_id(name)


def test_generated_names_cannot_be_mistaken_for_d4rl() -> None:
    for name in factory.generated_ids():
        assert name.startswith("gen-") and name[-3:] in ("-v0", "-v1") and not name.endswith("-v2")


def test_each_version_reads_its_own_policy_file(fake_policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """v0 and v1 ids of one robot generate from policies/ROBOT-v0.pt and ROBOT-v1.pt; a version
    not shipped for a robot is one clear error, and the listing offers only shipped ids."""
    import shutil

    monkeypatch.setattr(factory, "POLICY_DIR", tmp_path)
    shutil.copy(fake_policy_file, tmp_path / "hopper-v0.pt")
    assert [name for name in factory.generated_ids() if "hopper" in name] == [f"gen-hopper-{level}-v0" for level in factory.LEVELS]
    with pytest.raises(factory.GeneratedDatasetError, match="v1 of hopper are not shipped"):
        factory.generate_dataset("gen-hopper-medium-v1@100", progress=False)
    payload = factory.load_policy_file(fake_policy_file)
    payload["levels"]["medium"]["state_dict"] = payload["levels"]["expert"]["state_dict"]  # another medium policy
    atomic_torch_save({k: v for k, v in payload.items() if k != "sha256"}, tmp_path / "hopper-v1.pt")
    assert "gen-hopper-medium-v1" in factory.generated_ids()
    v0 = factory.generate_dataset("gen-hopper-medium-v0@300", progress=False)
    v1 = factory.generate_dataset("gen-hopper-medium-v1@300", progress=False)
    assert v0.metadata["policy_file_sha256"] == factory.sha256_of_file(tmp_path / "hopper-v0.pt")
    assert v1.metadata["policy_file_sha256"] == factory.sha256_of_file(tmp_path / "hopper-v1.pt")
    assert not np.array_equal(v0.actions, v1.actions)


@pytest.mark.parametrize("level", ["medium", "medium-replay", "medium-expert", "random"])
def test_layout_and_metadata(level: str, fake_policy_file: Path, tmp_path: Path) -> None:
    name = f"gen-hopper-{level}-v0@1200"
    dataset = factory.generate_dataset(name, policy_file=fake_policy_file, progress=False)
    assert len(dataset) == 1200
    assert set(dataset.infos) == {"qpos", "qvel", "action_log_probs"}
    assert dataset.infos["qpos"].shape == (1200, 6) and dataset.infos["qvel"].shape == (1200, 6)
    assert np.all(np.abs(dataset.actions) <= 1.0)
    # Terminals only where Hopper fell; no transition is both terminal and timed out.
    assert not np.any(dataset.terminals & dataset.timeouts)
    # Within an episode the next observation is the following observation.
    inside = ~(dataset.terminals | dataset.timeouts)[:-1]
    np.testing.assert_allclose(dataset.next_observations[:-1][inside], dataset.observations[1:][inside], atol=1e-6)
    meta = dataset.metadata
    assert meta["source"] == "generated" and "not D4RL" in meta["not_d4rl"]
    assert meta["gym_env_id"] == "Hopper-v4" and meta["level"] == level and meta["size"] == 1200
    assert "gymnasium" in meta["versions"] and "mujoco" in meta["versions"]
    if level != "random":
        assert meta["policy_file_sha256"] == factory.sha256_of_file(fake_policy_file)
    # The normalized score is D4RL's formula applied to the mean trajectory return.
    returns = returns_by_hand(dataset.rewards, dataset.terminals, dataset.timeouts)
    assert meta["episodes"] == len(returns)
    assert meta["return_mean"] == pytest.approx(returns.mean(), rel=1e-6)
    assert meta["normalized_score_mean"] == pytest.approx(d4rl_normalized("hopper", returns.mean()), rel=1e-6, abs=1e-6)


def test_qpos_matches_observation(fake_policy_file: Path) -> None:
    """Hopper's observation is qpos[1:] and clipped qvel: the recorded state must match it."""
    dataset = factory.generate_dataset("gen-hopper-medium-v0@300", policy_file=fake_policy_file, progress=False)
    np.testing.assert_allclose(dataset.observations[:, :5], dataset.infos["qpos"][:, 1:], atol=1e-5)


def test_generation_is_deterministic(fake_policy_file: Path, tmp_path: Path) -> None:
    first = factory.make_generated("gen-hopper-medium-v0@800", cache_dir=tmp_path / "a", policy_file=fake_policy_file, progress=False)
    second = factory.make_generated("gen-hopper-medium-v0@800", cache_dir=tmp_path / "b", policy_file=fake_policy_file, progress=False)
    assert first.read_bytes() == second.read_bytes()
    other_seed = factory.generate_dataset("gen-hopper-medium-v0@800", seed=1, policy_file=fake_policy_file, progress=False)
    assert other_seed.checksum() != read_hdf5(first).checksum()


def test_cached_file_is_reused_and_stale_one_regenerated(fake_policy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = factory.make_generated("gen-hopper-medium-v0@500", cache_dir=tmp_path, policy_file=fake_policy_file, progress=False)
    stamp = path.stat().st_mtime_ns
    assert factory.make_generated("gen-hopper-medium-v0@500", cache_dir=tmp_path, policy_file=fake_policy_file, progress=False) == path
    assert path.stat().st_mtime_ns == stamp
    path.write_bytes(path.read_bytes()[:1000])  # truncated cache file
    factory.make_generated("gen-hopper-medium-v0@500", cache_dir=tmp_path, policy_file=fake_policy_file, progress=False)
    assert "damaged" in capsys.readouterr().out
    validate_hdf5(path)


def test_hdf5_has_d4rl_keys(fake_policy_file: Path, tmp_path: Path) -> None:
    path = factory.make_generated("gen-hopper-medium-v0@400", cache_dir=tmp_path, policy_file=fake_policy_file, progress=False)
    with h5py.File(path, "r") as handle:
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "infos/qpos", "infos/qvel", "infos/action_log_probs"):
            assert key in handle, key
        assert handle["metadata/source"][()].decode() == "generated"


def test_missing_or_corrupt_policy_file(tmp_path: Path) -> None:
    with pytest.raises(factory.GeneratedDatasetError, match="missing"):
        factory.generate_dataset("gen-hopper-medium-v0@100", policy_file=tmp_path / "nope.pt", progress=False)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00garbage")
    with pytest.raises(factory.GeneratedDatasetError, match="corrupt"):
        factory.generate_dataset("gen-hopper-medium-v0@100", policy_file=broken, progress=False)
    assert not list(tmp_path.glob("*.hdf5"))


def test_random_level_needs_no_policy(generated_cache: Path) -> None:
    dataset = load_dataset("gen-hopper-random-v0@3000", cache_dir=generated_cache)
    assert dataset.metadata["source"] == "generated" and len(dataset) == 3000


def deterministic_episode_score(robot: str, actor, seed: int = 0) -> float:
    """D4RL normalized score of one episode (up to 1000 steps) of the actor's mean action."""
    import torch

    env = make_robot_env(robot)
    obs, _ = env.reset(seed=seed)
    total = 0.0
    for _ in range(1000):
        with torch.no_grad():
            action = actor.deterministic(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        if terminated or truncated:
            break
    env.close()
    return d4rl_normalized(robot, total)


# v0 of every robot must ship; v1 files are checked where they ship (docs/datasets.md).
SHIPPED = [(robot, "v0") for robot in ("halfcheetah", "hopper", "walker2d")]
SHIPPED += [(robot, version) for version in factory.POLICY_VERSIONS[1:] for robot in ("halfcheetah", "hopper", "walker2d")
            if factory.policy_path(robot, version).exists()]


@pytest.mark.parametrize("robot, version", SHIPPED)
def test_shipped_policies(robot: str, version: str) -> None:
    import torch

    path = factory.policy_path(robot, version)
    # The policy files are tracked in git (src/hybrid_rl/policies): a missing one is a packaging bug.
    assert path.exists(), f"shipped behaviour policy {path} is missing from the package"
    payload = factory.load_policy_file(path)
    low, high = factory.MEDIUM_TARGET_RANGE[robot]
    assert payload["robot"] == robot and payload["format"] == factory.POLICY_FORMAT and payload["version"] == version
    medium = payload["levels"]["medium"]["evaluation"]["stochastic_normalized"]
    assert low - 5 <= medium <= high + 5, f"medium policy scores {medium:.1f}, outside {low}-{high}"
    for level in ("medium", "expert"):  # stored scores are D4RL's normalization of the stored returns
        evaluation = payload["levels"][level]["evaluation"]
        assert evaluation["stochastic_normalized"] == pytest.approx(d4rl_normalized(robot, evaluation["stochastic_return"]), rel=1e-6)
    assert all(entry["step"] < factory.replay_source(payload)["step"] for entry in payload["replay_schedule"])
    if version != "v0":  # from v1 on, both chosen policies are measured over 30+ stochastic episodes at shipping
        for level in ("medium", "expert"):
            shipped = payload["levels"][level]["shipping_evaluation"]
            assert shipped["episodes"] >= 30 and len(shipped["stochastic_returns"]) == shipped["episodes"]
            assert shipped["stochastic_normalized"] == pytest.approx(d4rl_normalized(robot, float(np.mean(shipped["stochastic_returns"]))), rel=1e-6)

    # The weights themselves: every actor loads and acts on a real observation of the robot's env.
    env = make_robot_env(robot)
    obs, _ = env.reset(seed=0)
    act_dim = env.action_space.shape[0]
    env.close()
    assert payload["obs_dim"] == obs.shape[0] and payload["act_dim"] == act_dim
    batch = torch.as_tensor(np.stack([obs, obs * 0.5]), dtype=torch.float32)
    actions = {}
    entries = [(level, entry["state_dict"]) for level, entry in payload["levels"].items()]
    entries += [(f"replay@{entry['step']}", entry["state_dict"]) for entry in payload["replay_schedule"]]
    assert {"medium", "expert"} <= dict(entries).keys()
    for level, state_dict in entries:
        actor = factory.build_actor(payload, state_dict)
        for key, value in actor.state_dict().items():  # really the shipped weights
            torch.testing.assert_close(value, state_dict[key].float(), rtol=0, atol=0, msg=f"{level}: {key}")
        with torch.no_grad():
            deterministic = actor.deterministic(batch).numpy()
            sampled = actor.sample(batch).numpy()
        for what, action in (("deterministic", deterministic), ("sampled", sampled)):
            assert action.shape == (2, payload["act_dim"]), (level, what, action.shape)
            assert np.all(np.isfinite(action)), (level, what)
            assert np.all(np.abs(action) <= 1.0), (level, what, action)
        actions[level] = deterministic
    gap = np.abs(actions["medium"] - actions["expert"]).max()
    assert gap > 1e-3, f"medium and expert actors act alike on the same observation (max difference {gap:.2e})"
    # And they control the robot: one deterministic episode scores far above a random policy
    # (0). Measured with seed 0: halfcheetah 44/52, hopper 39/100, walker2d 65/69 (medium/expert).
    for level in ("medium", "expert"):
        score = deterministic_episode_score(robot, factory.build_actor(payload, payload["levels"][level]["state_dict"]))
        assert score > 25.0, f"{robot} {level} actor scores {score:.1f} in one deterministic episode"


def test_the_medium_snapshot_is_chosen_on_re_measured_scores() -> None:
    """5-episode evaluations are noisy (one fallen walker or flipped cheetah moves the mean by
    5-10 points): every evaluation within two standard errors of the window is re-measured,
    in step order, and the first inside the middle 70% is the medium policy. The returns and
    30-episode scores are those of walker2d-v1's and halfcheetah-v1's trainings."""
    from hybrid_rl.data.refs import normalized_score

    def evaluations(robot: str, returns: dict[int, list[float]]) -> list[dict]:
        return [{"step": step, "stochastic_normalized": normalized_score(robot, float(np.mean(r))), "stochastic_returns": r} for step, r in returns.items()]

    def measured(scores: dict[int, float]):
        asked = []

        def measure(step: int) -> dict:
            asked.append(step)
            return {"stochastic_normalized": scores[step]}
        return measure, asked

    # walker2d (window 55-75, middle 58-72): 5-episode scores 28.2, 49.5, 41.2, 54.5, 38.0,
    # 72.3, 61.2; re-measured over 30 episodes 340k lies inside (67.2, where 5 episodes said 54.5).
    walker = evaluations("walker2d", {310_000: [1209, 1307, 1351, 1456, 1163], 320_000: [3677, 1954, 1544, 1625, 2570],
                                      330_000: [3392, 1507, 1504, 1287, 1773], 340_000: [3531, 3416, 2459, 1340, 1770],
                                      350_000: [3451, 2251, 1208, 1141, 683], 360_000: [2702, 3452, 3547, 3354, 3543],
                                      370_000: [3573, 3461, 3797, 1604, 1623]})
    measure, asked = measured({320_000: 42.3, 330_000: 50.8, 340_000: 67.2, 350_000: 41.0, 360_000: 58.0, 370_000: 58.4})
    assert factory._medium_step(walker, "walker2d", measure) == 340_000 and asked == [320_000, 330_000, 340_000]
    assert factory._medium_step(walker, "walker2d") == 370_000  # by the 5-episode evaluations alone
    # halfcheetah (window 38-45, middle 39.05-43.95): 5-episode scores 35.2, 37.6, 36.1 (one
    # flipped episode), 45.8 jump over the window; re-measured, 90k lies inside.
    cheetah = evaluations("halfcheetah", {70_000: [4069, 3822, 4154, 4039, 4380], 80_000: [4007, 4406, 4555, 4515, 4477],
                                          90_000: [1961, 4814, 4841, 4721, 4683], 100_000: [5359, 5363, 5370, 5670, 5244]})
    measure, asked = measured({80_000: 36.9, 90_000: 40.8, 100_000: 45.7})
    assert factory._medium_step(cheetah, "halfcheetah", measure) == 90_000 and asked == [80_000, 90_000]
    # None inside after re-measuring: the candidate closest to the window's centre (41.5).
    measure, _ = measured({80_000: 37.0, 90_000: 37.5, 100_000: 46.0})
    assert factory._medium_step(cheetah, "halfcheetah", measure) == 90_000


def test_replay_ends_where_the_policy_first_reached_the_medium_level() -> None:
    """A learner that jumps over the medium window between evaluations (hopper: 28 -> 73)
    still ends its replay buffer there; one that never gets there is a one-line error."""
    scores = [(10_000, 5.0), (20_000, 27.6), (30_000, 73.3), (40_000, 50.0)]
    progress = [{"step": step, "stochastic_normalized": score} for step, score in scores]
    assert factory.replay_end_step(progress, "hopper") == 30_000  # hopper's window 40-60: reached at 43
    with pytest.raises(factory.GeneratedDatasetError, match="never reached the medium level"):
        factory.replay_end_step(progress[:2], "hopper")


def test_defaults_use_the_default_policy_version() -> None:
    """The dataset a run or study uses when none is named, and the ids that messages
    suggest, follow factory.DEFAULT_POLICY_VERSION (flipping it to v1 flips them all)."""
    from hybrid_rl.cli import default_datasets
    from hybrid_rl.data.loader import default_generated_version
    from hybrid_rl.core.grid_options import DEFAULT_DATASET
    from hybrid_rl.studies.phase2 import Phase2Spec
    from hybrid_rl.runs.train import TrainConfig

    version = factory.DEFAULT_POLICY_VERSION
    assert default_generated_version() == version
    assert factory.parse_generated_id(DEFAULT_DATASET).version == version
    assert TrainConfig().dataset == DEFAULT_DATASET and Phase2Spec().datasets == (DEFAULT_DATASET,)
    generated, _ = default_datasets("/nonexistent-d4rl-cache")
    assert all(factory.parse_generated_id(name).version == version for name in generated)


def test_levels_table_benchmark(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/dataset_levels.py (the docs table of generated levels) runs, one row per level."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dataset_levels.py"
    spec = importlib.util.spec_from_file_location("dataset_levels_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert module.main(["--version", "v0", "--robots", "hopper", "--levels", "random,medium", "--size", "300"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| gen-")]
    assert [row.split(" | ")[0:2] for row in rows] == [["| gen-hopper-random-v0@300", "300"], ["| gen-hopper-medium-v0@300", "300"]]
    with pytest.raises(SystemExit) as exit_info:  # a bad level: argparse's one-line error, exit 2
        module.main(["--levels", "medium,best"])
    assert exit_info.value.code == 2 and "unknown level 'best'" in capsys.readouterr().err


def test_a_generated_file_whose_bytes_changed_is_regenerated_not_trained_on(tmp_path, capsys) -> None:
    """Eight bytes zeroed in the middle of a cached generated file: the file still opens and
    validates, but its SHA-256 differs from the one recorded when it was made, so the next
    load regenerates it (the same data as before) instead of training on damaged data."""
    name = "gen-hopper-random-v0@3000"
    path = factory.make_generated(name, cache_dir=tmp_path, progress=False)
    fresh = factory.load_generated(name, cache_dir=tmp_path, progress=False)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(8)
    path.write_bytes(bytes(data))
    capsys.readouterr()
    again = factory.load_generated(name, cache_dir=tmp_path, progress=False)
    assert "bytes changed since it was generated" in capsys.readouterr().out
    assert again.checksum() == fresh.checksum()
    assert factory.load_generated(name, cache_dir=tmp_path, progress=False).checksum() == fresh.checksum()  # and is trusted again
