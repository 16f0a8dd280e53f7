"""Corruptions: exact removed sets, ties, reproducibility, no mutation, records, bad parameters."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from hybrid_rl.data import corruption
from hybrid_rl.data.corruption import (
    add_reward_noise,
    apply_corruptions,
    corrupt_transitions,
    derive_seed,
    flip_reward_sign,
    remove_top_k_trajectories,
    replace_rewards,
    spec_from_record,
)
from hybrid_rl.data.dataset import ARRAY_FIELDS, OfflineDataset


def _snapshot(ds: OfflineDataset) -> dict:
    return {key: getattr(ds, key).copy() for key in ARRAY_FIELDS} | {"metadata": json.dumps(ds.metadata, sort_keys=True)}


def _assert_unchanged(ds: OfflineDataset, snapshot: dict) -> None:
    for key in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(ds, key), snapshot[key], err_msg=f"input {key} was mutated")
    assert json.dumps(ds.metadata, sort_keys=True) == snapshot["metadata"]


def _one_step_each(returns) -> list[list[float]]:
    return [[float(r)] for r in returns]


# --- remove_top_k ------------------------------------------------------------------------
def test_remove_top_k_removes_exactly_the_best_trajectories(make_dataset):
    # Trajectory t has t+1 steps; returns chosen so the top 3 are trajectories 2, 6, 4.
    returns = [5, 1, 9, 3, 7, 2, 8, 4, 6, 0]
    rewards = [[r / (t + 1)] * (t + 1) for t, r in enumerate(returns)]
    ds = make_dataset(rewards)
    before = _snapshot(ds)
    out, record = remove_top_k_trajectories(ds, 30)
    _assert_unchanged(ds, before)
    assert record["removed_trajectory_indices"] == [2, 4, 6]
    assert record["removed_returns"] == pytest.approx([9, 7, 8])
    assert record["return_threshold"] == pytest.approx(7)
    assert record["trajectories_removed"] == 3 and record["trajectories_kept"] == 7
    assert record["transitions_removed"] == 3 + 5 + 7 and record["transitions_kept"] == 55 - 15
    assert record["kind"] == "remove_top_k" and record["k"] == 30 and record["num_trajectories"] == 10
    np.testing.assert_allclose(out.trajectory_returns(), [5, 1, 3, 2, 4, 6, 0], atol=1e-5)
    # The kept rows are exactly the original rows of the kept trajectories, in order.
    bounds = ds.trajectory_bounds()
    kept_rows = np.concatenate([np.arange(*bounds[t]) for t in range(10) if t not in (2, 4, 6)])
    np.testing.assert_array_equal(out.observations[:, 0], kept_rows)
    json.dumps(record)


def test_remove_top_k_ties_remove_the_earlier_trajectory_first(make_dataset):
    ds = make_dataset(_one_step_each([1, 5, 3, 5]))
    _, record = remove_top_k_trajectories(ds, 25)
    assert record["removed_trajectory_indices"] == [1]
    ds = make_dataset(_one_step_each([5, 5, 5, 1]))
    out, record = remove_top_k_trajectories(ds, 50)
    assert record["removed_trajectory_indices"] == [0, 1]
    np.testing.assert_array_equal(out.observations[:, 0], [2, 3])


@pytest.mark.parametrize("k, n, removed", [(30, 7, 2), (10, 10, 1), (99.9, 10, 9), (29.999, 10, 2), (0.5, 10, 0), (50, 1, 0)])
def test_remove_top_k_count_is_floor_of_k_n_over_100(make_dataset, k, n, removed):
    ds = make_dataset(_one_step_each(range(n)))
    _, record = remove_top_k_trajectories(ds, k)
    assert record["trajectories_removed"] == removed
    assert record["removed_trajectory_indices"] == list(range(n - removed, n))


def test_remove_top_k_zero_keeps_the_data(make_dataset):
    ds = make_dataset([[1, 2], [3]], ends=["terminal", "none"])
    out, record = remove_top_k_trajectories(ds, 0)
    for key in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(out, key), getattr(ds, key))
    assert record["removed_trajectory_indices"] == [] and record["trajectories_removed"] == 0
    assert record["return_threshold"] is None and record["transitions_kept"] == 3


def test_remove_top_k_with_partial_and_one_step_trajectories(make_dataset):
    # Last trajectory is partial (no end flag) and the best: it is removed, the rest intact.
    ds = make_dataset([[1], [2, 2], [3], [10, 10]], ends=["terminal", "timeout", "terminal", "none"])
    out, record = remove_top_k_trajectories(ds, 25)
    assert record["removed_trajectory_indices"] == [3]
    np.testing.assert_array_equal(out.trajectory_bounds(), [[0, 1], [1, 3], [3, 4]])
    # A partial trajectory that is kept stays last and partial.
    out, record = remove_top_k_trajectories(ds.replace(rewards=np.array([9, 2, 2, 3, 1, 1], np.float32)), 25)
    assert record["removed_trajectory_indices"] == [0]
    assert not (out.terminals[-1] or out.timeouts[-1]) and out.num_trajectories == 3


@pytest.mark.parametrize("k", [-1, 100, 150, float("nan"), "30", True, None])
def test_remove_top_k_bad_k(make_dataset, k):
    with pytest.raises(ValueError, match="k"):
        remove_top_k_trajectories(make_dataset([[1], [2]]), k)


# --- reward noise --------------------------------------------------------------------------
def test_reward_noise_is_seeded_and_recorded(hopper_dataset):
    before = _snapshot(hopper_dataset)
    a, record = add_reward_noise(hopper_dataset, 0.5, seed=1)
    b, _ = add_reward_noise(hopper_dataset, 0.5, seed=1)
    c, _ = add_reward_noise(hopper_dataset, 0.5, seed=2)
    _assert_unchanged(hopper_dataset, before)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    assert not np.array_equal(a.rewards, c.rewards)
    for key in ("observations", "actions", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(a, key), getattr(hopper_dataset, key))
    noise = a.rewards.astype(np.float64) - hopper_dataset.rewards
    assert record == {
        "kind": "reward_noise", "std": 0.5, "seed": 1, "num_transitions": len(hopper_dataset),
        "noise_mean": pytest.approx(noise.mean(), abs=1e-5), "noise_std": pytest.approx(noise.std(), abs=1e-5),
    }
    assert a.rewards.dtype == np.float32
    json.dumps(record)


def test_reward_noise_statistics_and_zero_std(make_dataset):
    ds = make_dataset([[0.0] * 20_000])
    out, record = add_reward_noise(ds, 2.0, seed=0)
    assert abs(record["noise_std"] - 2.0) < 0.05 and abs(record["noise_mean"]) < 0.05
    same, _ = add_reward_noise(ds, 0, seed=0)
    np.testing.assert_array_equal(same.rewards, ds.rewards)
    for bad in (-0.1, float("inf")):
        with pytest.raises(ValueError, match="std"):
            add_reward_noise(ds, bad, seed=0)
    with pytest.raises(ValueError, match="seed"):
        add_reward_noise(ds, 1.0, seed=-1)


# --- RIQL transition corruption ------------------------------------------------------------
@pytest.mark.parametrize("target, field", [("observations", "observations"), ("actions", "actions"), ("rewards", "rewards"), ("dynamics", "next_observations")])
def test_corrupt_transitions_changes_only_chosen_rows_of_one_field(hopper_dataset, target, field):
    ds = hopper_dataset
    before = _snapshot(ds)
    out, record = corrupt_transitions(ds, target, rate=0.3, scale=1.0, seed=3)
    _assert_unchanged(ds, before)
    n_changed = int(0.3 * len(ds))
    indices = np.asarray(record["indices"])
    assert record["num_changed"] == len(indices) == n_changed
    assert np.all(np.diff(indices) > 0)  # sorted and distinct
    assert record["indices_sha256"] == hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest()
    assert record["field"] == field and record["target"] == target and record["seed"] == 3
    for key in ARRAY_FIELDS:
        if key != field:
            np.testing.assert_array_equal(getattr(out, key), getattr(ds, key))
    original, corrupted = getattr(ds, field).astype(np.float64), getattr(out, field).astype(np.float64)
    untouched = np.setdiff1d(np.arange(len(ds)), indices)
    np.testing.assert_array_equal(corrupted[untouched], original[untouched])
    std = original.std(axis=0)
    np.testing.assert_allclose(record["field_std"], std, rtol=1e-6)
    delta = np.abs(corrupted[indices] - original[indices])
    assert np.all(delta <= 1.0 * std + 1e-5)  # |lambda| <= scale, in stds
    if target == "actions":
        assert corrupted.min() >= -1.0 and corrupted.max() <= 1.0
        assert record["clipped_to"] == [-1.0, 1.0] and record["num_clipped"] > 0
    else:
        assert delta.mean() > 0.1 * np.mean(std)  # the noise is really there
    json.dumps(record)


def test_corrupt_transitions_is_reproducible_and_seed_dependent(hopper_dataset):
    a, ra = corrupt_transitions(hopper_dataset, "observations", 0.2, 1.0, seed=5)
    b, rb = corrupt_transitions(hopper_dataset, "observations", 0.2, 1.0, seed=5)
    c, rc = corrupt_transitions(hopper_dataset, "observations", 0.2, 1.0, seed=6)
    np.testing.assert_array_equal(a.observations, b.observations)
    assert ra == rb
    assert ra["indices"] != rc["indices"] and not np.array_equal(a.observations, c.observations)


def test_corrupt_transitions_edge_rates(make_dataset):
    ds = make_dataset([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    out, record = corrupt_transitions(ds, "rewards", 0.0, 1.0, seed=0)
    np.testing.assert_array_equal(out.rewards, ds.rewards)
    assert record["num_changed"] == 0 and record["indices"] == []
    _, record = corrupt_transitions(ds, "rewards", 1.0, 1.0, seed=0)
    assert record["indices"] == list(range(10))
    _, record = corrupt_transitions(ds, "rewards", 0.3, 1.0, seed=0)
    assert record["num_changed"] == 3  # floor(0.3 * 10) computed exactly


def test_large_index_sets_are_stored_as_count_and_hash(make_dataset, monkeypatch):
    monkeypatch.setattr(corruption, "INDEX_LIST_LIMIT", 5)
    ds = make_dataset([[1.0] * 20])
    out, record = flip_reward_sign(ds, 0.5, seed=0)
    assert "indices" not in record and record["num_changed"] == 10 and len(record["indices_sha256"]) == 64
    # The hash describes the rows that really changed: SHA-256 of their sorted int64 indices.
    changed = np.flatnonzero(out.rewards != ds.rewards)
    assert len(changed) == 10 and np.all(out.rewards[changed] == -1.0)
    assert record["indices_sha256"] == hashlib.sha256(changed.astype(np.int64).tobytes()).hexdigest()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "states"}, "target"),
        ({"rate": 1.5}, "rate"),
        ({"rate": -0.1}, "rate"),
        ({"scale": -1.0}, "scale"),
        ({"seed": 1.5}, "seed"),
        ({"seed": None}, "seed"),
    ],
)
def test_corrupt_transitions_bad_parameters(make_dataset, kwargs, message):
    params = {"target": "observations", "rate": 0.3, "scale": 1.0, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        corrupt_transitions(make_dataset([[1, 2, 3]]), **params)


# --- adversarial / replacement rewards ---------------------------------------------------------
def test_replace_rewards_uses_the_observed_range(hopper_dataset):
    ds = hopper_dataset
    before = _snapshot(ds)
    out, record = replace_rewards(ds, 0.5, seed=0)
    _assert_unchanged(ds, before)
    idx = np.asarray(record["indices"])
    assert record["low"] == pytest.approx(ds.rewards.min()) and record["high"] == pytest.approx(ds.rewards.max())
    assert record["range_from_data"] is True and len(idx) == len(ds) // 2
    assert out.rewards[idx].min() >= record["low"] and out.rewards[idx].max() <= record["high"]
    untouched = np.setdiff1d(np.arange(len(ds)), idx)
    np.testing.assert_array_equal(out.rewards[untouched], ds.rewards[untouched])
    out, record = replace_rewards(ds, 1.0, seed=0, low=-30.0, high=30.0)  # RIQL's random reward attack
    assert record["range_from_data"] is False and np.abs(out.rewards).max() <= 30.0
    assert out.rewards.std() > 10.0
    with pytest.raises(ValueError, match="low"):
        replace_rewards(ds, 0.3, seed=0, low=2.0, high=1.0)


def test_flip_reward_sign(make_dataset):
    ds = make_dataset([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    out, record = flip_reward_sign(ds, 0.4, seed=2, scale=2.0)
    idx = np.asarray(record["indices"])
    assert len(idx) == 4 and record["scale"] == 2 and record["kind"] == "flip_reward_sign"
    np.testing.assert_allclose(out.rewards[idx], -2.0 * ds.rewards[idx])
    rest = np.setdiff1d(np.arange(10), idx)
    np.testing.assert_array_equal(out.rewards[rest], ds.rewards[rest])
    default, record = flip_reward_sign(ds, 0.4, seed=2)
    np.testing.assert_allclose(default.rewards[idx], -ds.rewards[idx])
    assert record["indices"] == idx.tolist()  # same seed, same transitions


# --- composition and replay ----------------------------------------------------------------
def test_apply_corruptions_composes_and_replays(hopper_dataset):
    specs = [
        {"kind": "remove_top_k", "k": 30},
        {"kind": "reward_noise", "std": 0.5},
        {"kind": "corrupt_transitions", "target": "dynamics", "rate": 0.3, "scale": 1.0},
        {"kind": "flip_reward_sign", "rate": 0.1, "seed": 99},
    ]
    before = _snapshot(hopper_dataset)
    out, records = apply_corruptions(hopper_dataset, specs, seed=4)
    _assert_unchanged(hopper_dataset, before)
    assert [r["kind"] for r in records] == [s["kind"] for s in specs]
    assert records[1]["seed"] == derive_seed(4, 1) and records[2]["seed"] == derive_seed(4, 2)
    assert records[3]["seed"] == 99  # an explicit seed wins
    assert derive_seed(4, 1) != derive_seed(4, 2)

    # Same as calling the functions one after the other with those seeds.
    manual, _ = remove_top_k_trajectories(hopper_dataset, 30)
    manual, _ = add_reward_noise(manual, 0.5, derive_seed(4, 1))
    manual, _ = corrupt_transitions(manual, "dynamics", 0.3, 1.0, derive_seed(4, 2))
    manual, _ = flip_reward_sign(manual, 0.1, 99)
    assert manual.checksum() == out.checksum()

    # Records (stored in a run's config.json) replay the exact dataset with any base seed.
    stored = json.loads(json.dumps(records))
    replayed, replay_records = apply_corruptions(hopper_dataset, [spec_from_record(r) for r in stored], seed=12345)
    assert replayed.checksum() == out.checksum() and replay_records == records
    assert out.metadata["corruptions"] == [spec_from_record(r) for r in records]

    again, _ = apply_corruptions(hopper_dataset, specs, seed=4)
    other, _ = apply_corruptions(hopper_dataset, specs, seed=5)
    assert again.checksum() == out.checksum() and other.checksum() != out.checksum()


@pytest.mark.parametrize(
    "specs, message",
    [
        ([{"kind": "drop_everything"}], "unknown kind"),
        ([{"k": 30}], "'kind'"),
        ([{"kind": "remove_top_k"}], "missing"),
        ([{"kind": "remove_top_k", "k": 30, "seed": 1}], "unknown parameter"),
        ([{"kind": "reward_noise", "std": 1.0, "stdev": 2.0}], "unknown parameter"),
        ({"kind": "remove_top_k", "k": 30}, "list"),
        ([{"kind": "reward_noise", "std": -1.0}], "std"),
    ],
)
def test_apply_corruptions_rejects_bad_specs(make_dataset, specs, message):
    with pytest.raises(ValueError, match=message):
        apply_corruptions(make_dataset([[1, 2], [3]]), specs, seed=0)


def test_records_with_results_need_spec_from_record(make_dataset):
    ds = make_dataset([[1, 2], [3]])
    _, record = remove_top_k_trajectories(ds, 50)
    with pytest.raises(ValueError, match="spec_from_record"):
        apply_corruptions(ds, [record], seed=0)
    assert spec_from_record(record) == {"kind": "remove_top_k", "k": 50}


# ---------------------------------------------------------------------------------------
# The command-line form, and the one validation before any data is loaded
# ---------------------------------------------------------------------------------------
def test_corruptions_read_and_write_their_command_line_form() -> None:
    from hybrid_rl.data.corruption import format_corruptions, parse_corruptions

    text = "corrupt_transitions:target=dynamics:rate=0.3:scale=1.5+reward_noise:std=0.5:seed=7"
    specs = parse_corruptions(text)
    assert specs == ({"kind": "corrupt_transitions", "target": "dynamics", "rate": 0.3, "scale": 1.5},
                     {"kind": "reward_noise", "std": 0.5, "seed": 7})
    assert parse_corruptions(format_corruptions(specs)) == specs
    assert parse_corruptions("none") == () and format_corruptions(()) == "none"
    assert parse_corruptions("replace_rewards:rate=1") == parse_corruptions("replace_rewards:rate=1.0")  # one run, one id


@pytest.mark.parametrize("text, message", [
    ("corrupt_transitions:target=obs:rate=0.3:scale=1", "target must be one of"),
    ("corrupt_transitions:target=observations:rate=0.3", "missing parameter(s) ['scale']"),
    ("replace_rewards:rate=0.3:size=2", "unknown parameter(s) ['size']"),
    ("replace_rewards:rate=-0.1", "rate"),
    ("melt:rate=0.1", "unknown kind 'melt'"),
    ("replace_rewards:0.3", "is not NAME=VALUE"),
])
def test_a_bad_corruption_is_refused_before_any_data_is_loaded(text: str, message: str) -> None:
    from hybrid_rl.data.corruption import parse_corruptions

    with pytest.raises(ValueError) as error:
        parse_corruptions(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_data_spec_names_checks_and_applies_its_corruptions_in_order(make_dataset) -> None:
    from hybrid_rl.data.dataspec import DataSpec

    observations = {"kind": "corrupt_transitions", "target": "observations", "rate": 0.5, "scale": 1.0}
    spec = DataSpec("gen-hopper-medium-v1", remove_top_k=30.0, reward_noise_std=0.5, extra_corruptions=(observations,))
    assert [s["kind"] for s in spec.corruption_specs()] == ["remove_top_k", "reward_noise", "corrupt_transitions"]
    assert spec.id_parts() == ["gen-hopper-medium-v1", "k30", "noise0.5", "corrupt_transitions-0.5-1.0-observations"]
    dataset = make_dataset([[1.0, 2.0], [5.0, 5.0, 5.0], [0.5], [3.0, 1.0]])
    original, corrupted, records = spec.prepare(seed=3, original=dataset)
    again = apply_corruptions(dataset, spec.corruption_specs(), seed=3)[0]
    assert original is dataset and corrupted.checksum() == again.checksum() and [r["kind"] for r in records] == ["remove_top_k", "reward_noise", "corrupt_transitions"]
    for bad, message in (({"remove_top_k": 100.0}, "outside"), ({"reward_noise_std": -1.0}, "negative"),
                         ({"extra_corruptions": ({"kind": "melt"},)}, "unknown kind")):
        with pytest.raises(ValueError, match=message):
            DataSpec("x", **bad)
