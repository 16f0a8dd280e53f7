"""D4RL-layout HDF5: round trip, validation of damaged files, files without next_observations."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hybrid_rl.data.dataset import ARRAY_FIELDS
from hybrid_rl.data.hdf5io import DatasetFileError, read_hdf5, validate_hdf5, write_hdf5
from hybrid_rl.core.errors import HybridRLError


def test_round_trip_keeps_arrays_infos_and_metadata(hopper_dataset, tmp_path):
    path = write_hdf5(hopper_dataset, tmp_path / "rollout.hdf5")
    info = validate_hdf5(path)
    assert info == {"rows": len(hopper_dataset), "obs_dim": 11, "act_dim": 3, "has_next_observations": True, "infos": ["qpos", "qvel"]}
    loaded = read_hdf5(path)
    for key in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(hopper_dataset, key))
    np.testing.assert_array_equal(loaded.infos["qpos"], hopper_dataset.infos["qpos"])
    assert loaded.name == "rollout"
    assert loaded.metadata["gym_env_id"] == "Hopper-v4" and loaded.metadata["horizon"] == 30
    assert loaded.metadata["source_path"] == str(path)
    assert loaded.checksum() == hopper_dataset.checksum()


def test_write_is_deterministic_and_atomic(make_dataset, tmp_path):
    ds = make_dataset([[1, 2], [3]], ends=["terminal", "none"]).replace(metadata={"recipe": {"levels": [1, 2]}})
    a = write_hdf5(ds, tmp_path / "a.hdf5").read_bytes()
    b = write_hdf5(ds, tmp_path / "b.hdf5").read_bytes()
    assert a == b
    assert read_hdf5(tmp_path / "a.hdf5").metadata["recipe"] == {"levels": [1, 2]}
    # A failure while writing leaves neither the target nor a temporary file behind.
    bad = ds.replace(metadata={"unstorable": object()})
    with pytest.raises(TypeError):  # h5py: an object has no HDF5 type
        write_hdf5(bad, tmp_path / "c.hdf5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5", "b.hdf5"]


def test_truncated_and_garbage_files_are_rejected(hopper_file, tmp_path):
    data = hopper_file.read_bytes()
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"<html>503 Service Unavailable</html>")
    for path in (truncated, garbage):
        with pytest.raises(DatasetFileError, match=str(path.name)):
            validate_hdf5(path)
        with pytest.raises(DatasetFileError):
            read_hdf5(path)
    assert issubclass(DatasetFileError, HybridRLError) and issubclass(DatasetFileError, ValueError)


def _write_raw(path: Path, **arrays) -> Path:
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)
    return path


def _raw_arrays(n: int = 4) -> dict:
    return {
        "observations": np.zeros((n, 3), np.float32),
        "actions": np.zeros((n, 2), np.float32),
        "rewards": np.zeros(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("timeouts"), "required key"),
        (lambda a: a.update(rewards=np.zeros(3, np.float32)), "rows"),
        (lambda a: a.update(actions=np.zeros(4, np.float32)), "2-D"),
        (lambda a: a.update(next_observations=np.zeros((4, 5), np.float32)), "next_observations"),
        (lambda a: a["observations"].__setitem__((2, 1), np.nan), "NaN"),
    ],
    ids=["missing-key", "row-mismatch", "1d-actions", "next-obs-shape", "nan"],
)
def test_layout_errors_are_reported(tmp_path, change, message):
    arrays = _raw_arrays()
    change(arrays)
    path = _write_raw(tmp_path / "bad.hdf5", **arrays)
    with pytest.raises(DatasetFileError, match=message):
        validate_hdf5(path)


def test_group_instead_of_array_is_reported(tmp_path):
    path = tmp_path / "group.hdf5"
    arrays = _raw_arrays()
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            if key != "observations":
                handle.create_dataset(key, data=value)
        handle.create_group("observations")
    with pytest.raises(DatasetFileError, match="groups"):
        validate_hdf5(path)


def test_missing_next_observations_are_built_like_d4rl(make_dataset, tmp_path):
    # Trajectories: [0 1 2] timeout, [3 4] terminal, [5 6] file ends mid-episode.
    ds = make_dataset([[1, 2, 3], [4, 5], [6, 7]], ends=["timeout", "terminal", "none"])
    arrays = {key: getattr(ds, key) for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    loaded = read_hdf5(_write_raw(tmp_path / "no_next.hdf5", **arrays))
    # Dropped: row 2 (last step of a timed-out episode: successor unknown) and row 6 (last row).
    np.testing.assert_array_equal(loaded.observations[:, 0], [0, 1, 3, 4, 5])
    np.testing.assert_array_equal(loaded.next_observations[:, 0], [1, 2, 4, 5, 6])
    np.testing.assert_array_equal(loaded.terminals, [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(loaded.timeouts, [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(loaded.trajectory_bounds(), [[0, 2], [2, 4], [4, 5]])
    assert "dropped 2 transitions" in loaded.metadata["next_observations_built"]


def test_built_next_observations_never_mark_a_terminal_as_timeout(make_dataset, tmp_path):
    # A one-step timed-out episode right after a terminal: dropping it must not turn the
    # terminal into terminal + timeout.
    ds = make_dataset([[1, 2], [3]], ends=["terminal", "timeout"])
    arrays = {key: getattr(ds, key) for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    loaded = read_hdf5(_write_raw(tmp_path / "no_next.hdf5", **arrays))
    np.testing.assert_array_equal(loaded.terminals, [0, 1])
    np.testing.assert_array_equal(loaded.timeouts, [0, 0])


def test_read_without_validation_of_a_copy(hopper_file, hopper_dataset, tmp_path):
    """validate=False skips validation: a copy that validation rejects (a NaN observation)
    still loads, under the given name and with the file's arrays."""
    copy = Path(shutil.copy(hopper_file, tmp_path / "copy.hdf5"))
    with h5py.File(copy, "r+") as handle:
        handle["observations"][5, 2] = np.nan
    with pytest.raises(DatasetFileError, match="NaN"):
        validate_hdf5(copy)
    with pytest.raises(DatasetFileError, match="NaN"):
        read_hdf5(copy)
    loaded = read_hdf5(copy, validate=False, name="x")
    assert loaded.name == "x" and len(loaded) == len(hopper_dataset)
    expected = hopper_dataset.observations.copy()
    expected[5, 2] = np.nan
    np.testing.assert_array_equal(loaded.observations, expected)  # NaN compares equal to NaN here
    for key in ARRAY_FIELDS:
        if key != "observations":
            np.testing.assert_array_equal(getattr(loaded, key), getattr(hopper_dataset, key))
    np.testing.assert_array_equal(loaded.infos["qpos"], hopper_dataset.infos["qpos"])


def test_file_whose_rebuilt_transitions_would_all_be_dropped_says_why(tmp_path):
    """Without next_observations, d4rl's rule drops every timeout row and the last row: a
    file of one-step timed-out episodes has nothing left, and the error must say why."""
    n = 3
    with h5py.File(tmp_path / "f.hdf5", "w") as handle:
        handle["observations"] = np.zeros((n, 2), np.float32)
        handle["actions"] = np.zeros((n, 1), np.float32)
        handle["rewards"] = np.zeros(n, np.float32)
        handle["terminals"] = np.zeros(n, bool)
        handle["timeouts"] = np.ones(n, bool)
    with pytest.raises(DatasetFileError, match="drops every one of its 3 transitions"):
        read_hdf5(tmp_path / "f.hdf5")
