"""Dataset sources and environments. No internet: downloads go to a loopback HTTP server."""
from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hybrid_rl.data import loader
from hybrid_rl.data.dataset import ARRAY_FIELDS, OfflineDataset
from hybrid_rl.data.hdf5io import DatasetFileError, write_hdf5
from hybrid_rl.data.loader import (
    d4rl_cache_dir,
    d4rl_cache_path,
    d4rl_filename,
    d4rl_url,
    download_file,
    known_dataset_ids,
    load_dataset,
    make_env,
    make_vector_env,
)
from hybrid_rl.core.errors import (
    DatasetEnvMismatchError,
    DatasetUnavailableError,
    HybridRLError,
    MissingDependencyError,
    UnknownDatasetError,
)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path):
    """Only loopback hosts resolve; the user's d4rl cache and mirror settings are not used;
    retries are fast and the progress bar is off."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise socket.gaierror(f"test sandbox: no network access to {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "default_cache"))
    monkeypatch.delenv("HYBRID_RL_D4RL_MIRROR", raising=False)
    monkeypatch.setattr(loader, "DOWNLOAD_BACKOFF_S", 0.01)
    monkeypatch.setattr(loader, "DOWNLOAD_RETRIES", 2)
    monkeypatch.setattr(loader, "DOWNLOAD_TIMEOUT_S", 5.0)
    monkeypatch.setattr(loader, "SHOW_PROGRESS", False)


def _same_arrays(a: OfflineDataset, b: OfflineDataset) -> None:
    for key in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


# ---------------------------------------------------------------------------------------
# Loopback file server
# ---------------------------------------------------------------------------------------
class FileServer:
    """Serves files from a directory on 127.0.0.1 with HTTP Range support.

    drop_first: the first GET of each file sends the headers of the full file, half of the
    body, then closes the connection. support_range=False ignores Range (always 200).
    fail_first: answer the first n requests with HTTP 503. Every request is logged.
    """

    def __init__(self, directory: Path, *, drop_first: bool = False, support_range: bool = True, fail_first: int = 0) -> None:
        self.directory = directory
        self.drop_first = drop_first
        self.support_range = support_range
        self.fail_first = fail_first
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if server.fail_first > 0:
                    server.fail_first -= 1
                    self.send_error(503, "temporarily unavailable")
                    return
                path = server.directory / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404, "not found")
                    return
                data = path.read_bytes()
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and server.support_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_error(416, "range not satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.drop_first and sum(r["path"] == self.path for r in server.requests) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/d4rl/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(tmp_path):
    """Start a FileServer on a folder holding the given files (mirror URL at `.url`)."""
    servers: list[FileServer] = []

    def start(files: dict[str, bytes], **options) -> FileServer:
        root = tmp_path / f"server{len(servers)}"
        (root / "d4rl").mkdir(parents=True)
        for name, data in files.items():
            (root / "d4rl" / name).write_bytes(data)
        server = FileServer(root, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def hopper_bytes(hopper_file) -> bytes:
    return hopper_file.read_bytes()


# ---------------------------------------------------------------------------------------
# Ids, names, paths
# ---------------------------------------------------------------------------------------
def test_ids_and_file_names_match_d4rl():
    ids = known_dataset_ids()
    assert len([i for i in ids if i.endswith("-v2")]) == 20
    assert "hopper-medium-replay-v2" in ids and "ant-expert-v2" in ids and "gen-hopper-medium-v0" in ids
    assert d4rl_filename("hopper-medium-replay-v2") == "hopper_medium_replay-v2.hdf5"
    assert d4rl_filename("halfcheetah-medium-expert-v2") == "halfcheetah_medium_expert-v2.hdf5"
    assert d4rl_filename("walker2d-random-v2") == "walker2d_random-v2.hdf5"
    assert d4rl_url("ant-medium-v2") == "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/ant_medium-v2.hdf5"
    assert d4rl_url("ant-medium-v2", "https://mirror.example/d4rl") == "https://mirror.example/d4rl/ant_medium-v2.hdf5"
    assert d4rl_url("ant-medium-v2", "https://mirror.example/d4rl/") == "https://mirror.example/d4rl/ant_medium-v2.hdf5"


def test_every_form_of_a_dataset_id_resolves_to_its_task(hopper_dataset, tmp_path):
    forms = ["hopper-medium-v2", "gen-hopper-medium-v0", "gen-hopper-medium-v1", "gen-hopper-medium-v1@20000",
             "gen-hopper-medium-v1@50k", "gen-hopper-medium-v1@1.5M", "mujoco/hopper/medium-v0", "  Hopper-Medium-v2 "]
    named = tmp_path / "hopper_medium-v2.hdf5"  # d4rl's file name, copied anywhere
    write_hdf5(hopper_dataset.replace(metadata={}), named)
    exported = tmp_path / "anything.hdf5"  # a file that carries its source id
    write_hdf5(hopper_dataset.replace(name="mine", metadata={"source_dataset_id": "gen-hopper-medium-v1@20000"}), exported)
    for form in [*forms, named, str(exported)]:
        assert loader.dataset_task(form) == "hopper-medium", form
    assert loader.dataset_task("gen-hopper-medium-replay-v1@200k") == "hopper-medium-replay"
    assert loader.dataset_task("halfcheetah-medium-expert-v2") == "halfcheetah-medium-expert"
    anonymous = tmp_path / "anonymous.hdf5"
    write_hdf5(hopper_dataset.replace(name="anonymous", metadata={}), anonymous)
    not_hdf5 = tmp_path / "notes.hdf5"
    not_hdf5.write_text("not an HDF5 file")
    for unknown in (None, "", "antmaze", anonymous, not_hdf5, tmp_path / "missing.hdf5"):
        assert loader.dataset_task(unknown) is None, unknown


def test_every_form_of_a_dataset_id_trains_with_the_same_presets(hopper_dataset, tmp_path):
    """The trainer's algorithm config follows the task: a sized or Minari id of hopper-medium
    gets CORL's hopper-medium IQL settings, not the generic ones."""
    import torch

    from hybrid_rl.runs.train import TrainConfig, build_algorithm

    exported = tmp_path / "exported.hdf5"
    write_hdf5(hopper_dataset.replace(metadata={"source_dataset_id": "hopper-medium-v2"}), exported)
    for form in ("hopper-medium-v2", "gen-hopper-medium-v1", "gen-hopper-medium-v1@20000", "mujoco/hopper/medium-v0", str(exported)):
        config = build_algorithm(TrainConfig(algo="iql", dataset=form, total_steps=10), hopper_dataset, torch.device("cpu")).config
        assert (config.tau, config.deterministic_actor, config.reward_scaling) == (0.001, True, "iql"), form
    generic = build_algorithm(TrainConfig(algo="iql", dataset="gen-hopper-expert-v1@20000", total_steps=10), hopper_dataset, torch.device("cpu")).config
    assert (generic.tau, generic.deterministic_actor, generic.reward_scaling) == (0.005, False, "none")


def test_cache_dir_follows_d4rl(monkeypatch, tmp_path):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    assert d4rl_cache_path("hopper-medium-v2") == tmp_path / "d4rl" / "hopper_medium-v2.hdf5"
    assert d4rl_cache_path("hopper-medium-v2", cache_dir=tmp_path / "x") == tmp_path / "x" / "hopper_medium-v2.hdf5"
    monkeypatch.delenv("D4RL_DATASET_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert d4rl_cache_dir() == tmp_path / "home" / ".d4rl" / "datasets"


def test_unknown_ids_suggest_close_ones(tmp_path):
    with pytest.raises(UnknownDatasetError) as info:
        load_dataset("hoper-medium-v2")
    assert "hopper-medium-v2" in str(info.value) and isinstance(info.value, HybridRLError)
    with pytest.raises(UnknownDatasetError, match="hopper-medium-replay-v2"):
        load_dataset("hopper-medium-replay-v1")
    with pytest.raises(UnknownDatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.hdf5"))


# ---------------------------------------------------------------------------------------
# Cache: reuse without network, checksum sidecar, damaged files
# ---------------------------------------------------------------------------------------
def test_valid_cached_file_is_used_without_network(hopper_file, hopper_dataset, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a valid cached file must be loaded without any network access")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(hopper_file, cache / "hopper_medium-v2.hdf5")
    ds = load_dataset("hopper-medium-v2", cache_dir=cache)
    _same_arrays(ds, hopper_dataset)
    meta = ds.metadata
    assert meta["source"] == "d4rl" and meta["env_name"] == "hopper-medium-v2" and ds.name == "hopper-medium-v2"
    assert meta["gym_env_id"] == "Hopper-v4" and meta["file_path"] == str(cache / "hopper_medium-v2.hdf5")
    assert meta["sha256"] == hashlib.sha256(hopper_file.read_bytes()).hexdigest()
    # $D4RL_DATASET_DIR is d4rl's own cache variable.
    monkeypatch.setenv("D4RL_DATASET_DIR", str(cache))
    assert load_dataset("hopper-medium-v2").metadata["file_path"] == str(cache / "hopper_medium-v2.hdf5")


def test_cached_path_lookup_never_downloads(hopper_file, tmp_path):
    assert loader.d4rl_cached_path("hopper-medium-v2", tmp_path) is None
    shutil.copy(hopper_file, tmp_path / "hopper_medium-v2.hdf5")
    assert loader.d4rl_cached_path("hopper-medium-v2", tmp_path) == tmp_path / "hopper_medium-v2.hdf5"


def test_sha256_is_cached_next_to_the_file_keyed_by_size_and_mtime(hopper_file, tmp_path):
    path = Path(shutil.copy(hopper_file, tmp_path / "data.hdf5"))
    real = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loader.file_sha256(path) == real
    sidecar = tmp_path / "data.hdf5.sha256"
    cached = json.loads(sidecar.read_text())
    assert cached["sha256"] == real and cached["size"] == path.stat().st_size
    sidecar.write_text(json.dumps({**cached, "sha256": "f" * 64}))
    assert loader.file_sha256(path) == "f" * 64  # unchanged file: the sidecar is trusted
    os.utime(path, ns=(cached["mtime_ns"] + 10**9, cached["mtime_ns"] + 10**9))
    assert loader.file_sha256(path) == real  # touched file: hashed again


def test_damaged_cached_file_is_reported_deleted_and_downloaded_again(hopper_bytes, hopper_dataset, serve, tmp_path, caplog):
    server = serve({"hopper_medium-v2.hdf5": hopper_bytes})
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "hopper_medium-v2.hdf5").write_bytes(hopper_bytes[: len(hopper_bytes) // 3])
    (cache / "hopper_medium-v2.hdf5.sha256").write_text("stale")
    with caplog.at_level(logging.WARNING, logger="hybrid_rl.data.loader"):
        ds = load_dataset("hopper-medium-v2", cache_dir=cache, mirror=server.url)
    assert any("damaged" in r.getMessage() and "hopper_medium-v2.hdf5" in r.getMessage() for r in caplog.records)
    assert (cache / "hopper_medium-v2.hdf5").read_bytes() == hopper_bytes
    _same_arrays(ds, hopper_dataset)
    assert [r["range"] for r in server.requests] == [None]  # fresh download, not a resume of junk


def test_bytes_changed_after_download_are_caught_and_downloaded_again(hopper_bytes, hopper_dataset, serve, tmp_path, caplog):
    """Damage that keeps the HDF5 structure intact (flipped data bytes) is caught by the
    SHA-256 recorded at download, not loaded."""
    server = serve({"hopper_medium-v2.hdf5": hopper_bytes})
    path = tmp_path / "hopper_medium-v2.hdf5"
    load_dataset("hopper-medium-v2", cache_dir=tmp_path, mirror=server.url)
    reference = np.asarray(hopper_dataset.observations)
    offset = hopper_bytes.index(reference[5].tobytes())  # the raw float32 rows are in the file
    damaged = bytearray(hopper_bytes)
    damaged[offset:offset + 8] = np.array([1.5, -2.5], np.float32).tobytes()
    path.write_bytes(bytes(damaged))
    loader.validate_hdf5(path)  # the structure still validates: only the checksum can tell
    with caplog.at_level(logging.WARNING, logger="hybrid_rl.data.loader"):
        ds = load_dataset("hopper-medium-v2", cache_dir=tmp_path, mirror=server.url)
    assert any("changed since the download" in r.getMessage() for r in caplog.records), caplog.records
    _same_arrays(ds, hopper_dataset)
    assert path.read_bytes() == hopper_bytes and len(server.requests) == 2


def test_failed_first_download_leaves_nothing_behind(serve, tmp_path):
    server = serve({})
    cache = tmp_path / "new" / "cache"
    with pytest.raises(DatasetUnavailableError):
        load_dataset("hopper-medium-v2", cache_dir=cache, mirror=server.url)
    assert not (tmp_path / "new").exists()  # no cache folders, no lock file


@pytest.mark.parametrize("mirror", ["notaurl", "ftp://example.org/d4rl/", "http://"])
def test_mirror_must_be_an_http_url(mirror, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="not an http:// or https:// URL") as info:
        load_dataset("hopper-medium-v2", cache_dir=tmp_path, mirror=mirror)
    assert "mirror=" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv("HYBRID_RL_D4RL_MIRROR", mirror)
    with pytest.raises(ValueError, match="HYBRID_RL_D4RL_MIRROR"):
        load_dataset("hopper-medium-v2", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------
# Downloads through the loopback mirror
# ---------------------------------------------------------------------------------------
def test_download_through_mirror_argument_and_env_var(hopper_bytes, hopper_dataset, serve, tmp_path, monkeypatch):
    server = serve({"hopper_medium-v2.hdf5": hopper_bytes})
    ds = load_dataset("hopper-medium-v2", cache_dir=tmp_path / "a", mirror=server.url)
    _same_arrays(ds, hopper_dataset)
    assert server.requests[0]["path"] == "/d4rl/hopper_medium-v2.hdf5"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "hopper_medium-v2.hdf5", "hopper_medium-v2.hdf5.sha256"]  # no .part or .lock left behind
    assert ds.metadata["url"] == server.url + "hopper_medium-v2.hdf5"  # where it really came from
    monkeypatch.setenv("HYBRID_RL_D4RL_MIRROR", server.url)
    assert len(load_dataset("hopper-medium-v2", cache_dir=tmp_path / "b")) == len(hopper_dataset)
    assert len(server.requests) == 2


def test_download_resumes_after_a_cut_connection(hopper_bytes, serve, tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "DOWNLOAD_CHUNK_BYTES", 4096)
    server = serve({"hopper_medium-v2.hdf5": hopper_bytes}, drop_first=True)
    ds = load_dataset("hopper-medium-v2", cache_dir=tmp_path, mirror=server.url)
    assert len(server.requests) == 2
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == f"bytes={len(hopper_bytes) // 2}-"
    assert (tmp_path / "hopper_medium-v2.hdf5").read_bytes() == hopper_bytes
    assert not (tmp_path / "hopper_medium-v2.hdf5.part").exists()
    assert ds.metadata["sha256"] == hashlib.sha256(hopper_bytes).hexdigest()


def test_download_restarts_when_the_server_ignores_range(hopper_bytes, serve, tmp_path):
    server = serve({"file.hdf5": hopper_bytes}, support_range=False)
    (tmp_path / "file.hdf5.part").write_bytes(b"junk from another version of the file")
    download_file(server.url + "file.hdf5", tmp_path / "file.hdf5")
    assert server.requests[0]["range"] is not None  # we asked to resume ...
    assert (tmp_path / "file.hdf5").read_bytes() == hopper_bytes  # ... and got a clean restart


def test_transient_server_errors_are_retried(hopper_bytes, serve, tmp_path):
    server = serve({"file.hdf5": hopper_bytes}, fail_first=2)
    download_file(server.url + "file.hdf5", tmp_path / "file.hdf5", retries=2, backoff=0.0)
    assert len(server.requests) == 3
    assert (tmp_path / "file.hdf5").read_bytes() == hopper_bytes


def _assert_actionable(message: str, url: str, cache: Path) -> None:
    assert "\n" not in message, "one line, so the CLI prints it as is"
    assert url in message
    assert str(cache / "hopper_medium-v2.hdf5") in message  # where to put a manual download
    assert "HYBRID_RL_D4RL_MIRROR" in message
    assert "hybrid-rl dataset make" in message and f"gen-hopper-medium-{loader.default_generated_version()}" in message
    assert "local" in message


def test_server_404_names_url_and_offline_alternatives(serve, tmp_path):
    server = serve({})
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("hopper-medium-v2", cache_dir=tmp_path, mirror=server.url)
    _assert_actionable(str(info.value), server.url + "hopper_medium-v2.hdf5", tmp_path)
    assert "404" in str(info.value)
    assert len(server.requests) == 1  # a 404 is permanent: no retries
    assert isinstance(info.value, HybridRLError)
    assert not (tmp_path / "hopper_medium-v2.hdf5").exists()


def test_offline_gives_one_clear_error(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a loopback port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mirror = f"http://127.0.0.1:{port}/"
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("hopper-medium-v2", cache_dir=tmp_path, mirror=mirror)
    _assert_actionable(str(info.value), mirror + "hopper_medium-v2.hdf5", tmp_path)
    assert "3 attempts" in str(info.value)
    # Without a mirror the Berkeley server is tried; its name does not resolve here, as on
    # an offline machine, which fails at once instead of retrying.
    with pytest.raises(DatasetUnavailableError, match=re.escape(d4rl_url("hopper-medium-v2"))) as info:
        load_dataset("hopper-medium-v2", cache_dir=tmp_path)
    assert "offline" in str(info.value)


def test_invalid_download_is_deleted_and_reported(serve, tmp_path):
    server = serve({"hopper_medium-v2.hdf5": b"<html>this is a login page, not HDF5</html>"})
    with pytest.raises(DatasetUnavailableError, match="invalid"):
        load_dataset("hopper-medium-v2", cache_dir=tmp_path, mirror=server.url)
    assert not (tmp_path / "hopper_medium-v2.hdf5").exists()
    assert not (tmp_path / "hopper_medium-v2.hdf5.part").exists()


# ---------------------------------------------------------------------------------------
# Local, generated and Minari sources
# ---------------------------------------------------------------------------------------
def test_local_file_any_name(hopper_dataset, tmp_path):
    plain = hopper_dataset.replace(metadata={})  # no gym_env_id recorded
    path = write_hdf5(plain, tmp_path / "my_data.hdf5")
    ds = load_dataset(path)
    _same_arrays(ds, hopper_dataset)
    assert ds.metadata["source"] == "local" and ds.metadata["file_path"] == str(path.absolute())
    assert ds.metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DatasetEnvMismatchError, match="env_id="):
        make_env(ds)
    env = make_env(ds, env_id="Hopper-v4")
    assert env.observation_space.shape == (11,)
    env.close()


def test_local_copy_of_a_d4rl_file_is_recognised(hopper_dataset, tmp_path):
    path = write_hdf5(hopper_dataset.replace(metadata={}), tmp_path / "elsewhere" / "hopper_medium-v2.hdf5")
    ds = load_dataset(str(path))
    assert ds.metadata["source"] == "local" and ds.metadata["env_name"] == "hopper-medium-v2"
    assert ds.metadata["gym_env_id"] == "Hopper-v4"


def test_local_file_gets_no_sidecar(hopper_dataset, tmp_path):
    write_hdf5(hopper_dataset, tmp_path / "mine.hdf5")
    ds = load_dataset(tmp_path / "mine.hdf5")
    assert ds.metadata["sha256"] == hashlib.sha256((tmp_path / "mine.hdf5").read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.hdf5"]  # nothing written next to the user's file


def test_mistyped_relative_path_is_not_taken_for_a_minari_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(UnknownDatasetError, match="does not exist"):
        load_dataset("data/my_file")


def test_written_files_get_the_umask_permissions(hopper_dataset, tmp_path):
    mask = os.umask(0o022)
    try:
        write_hdf5(hopper_dataset, tmp_path / "shared.hdf5")
    finally:
        os.umask(mask)
    assert (tmp_path / "shared.hdf5").stat().st_mode & 0o777 == 0o644  # readable by a shared cache's other users


def test_damaged_local_file_raises_a_user_error(hopper_bytes, tmp_path):
    path = tmp_path / "broken.hdf5"
    path.write_bytes(hopper_bytes[:1000])
    with pytest.raises(DatasetFileError):
        load_dataset(path)


def test_generated_ids_go_to_the_factory(hopper_dataset, tmp_path, monkeypatch):
    calls = []

    def load_generated(name, cache_dir=None):
        calls.append((name, cache_dir))
        return hopper_dataset.replace(metadata={"recipe": "test"})

    fake = types.ModuleType("hybrid_rl.data.factory")
    fake.load_generated = load_generated
    monkeypatch.setitem(sys.modules, "hybrid_rl.data.factory", fake)
    ds = load_dataset("gen-hopper-medium-v0", cache_dir=tmp_path)
    assert calls == [("gen-hopper-medium-v0", tmp_path)]
    assert ds.metadata["source"] == "generated" and ds.metadata["recipe"] == "test"
    assert ds.metadata["env_name"] == "gen-hopper-medium-v0" and ds.metadata["gym_env_id"] == "Hopper-v4"
    load_dataset("gen-walker2d-expert-v0@50k")  # the factory's size suffix is passed through
    assert calls[-1] == ("gen-walker2d-expert-v0@50k", None)


class _FakeMinariDataset:
    """The part of minari.MinariDataset the loader uses: iterate_episodes() and env_spec."""

    def __init__(self, episodes, env_spec):
        self.episodes = episodes
        self.env_spec = env_spec

    def iterate_episodes(self):
        return iter(self.episodes)


def test_minari_episodes_become_transitions(monkeypatch):
    import gymnasium as gym

    rng = np.random.default_rng(0)

    def episode(steps, terminated, truncated):
        terminations = np.zeros(steps, bool)
        truncations = np.zeros(steps, bool)
        terminations[-1], truncations[-1] = terminated, truncated
        return types.SimpleNamespace(
            observations=rng.normal(size=(steps + 1, 11)), actions=rng.uniform(-1, 1, (steps, 3)),
            rewards=rng.normal(size=steps), terminations=terminations, truncations=truncations,
        )

    episodes = [episode(3, True, False), episode(1, False, True), episode(2, False, False)]
    calls = []
    fake = types.ModuleType("minari")
    fake.load_dataset = lambda name, download=False: calls.append((name, download)) or _FakeMinariDataset(episodes, gym.spec("Hopper-v5"))
    monkeypatch.setitem(sys.modules, "minari", fake)

    ds = load_dataset("mujoco/hopper/medium-v0")
    assert calls == [("mujoco/hopper/medium-v0", True)]
    assert len(ds) == 6 and ds.metadata["source"] == "minari" and ds.metadata["gym_env_id"] == "Hopper-v5"
    np.testing.assert_array_equal(ds.terminals, [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 0, 1, 0, 1])  # unflagged episode end -> timeout
    np.testing.assert_allclose(ds.observations[:3], episodes[0].observations[:3].astype(np.float32))
    np.testing.assert_allclose(ds.next_observations[:3], episodes[0].observations[1:].astype(np.float32))
    np.testing.assert_allclose(ds.next_observations[3], episodes[1].observations[1].astype(np.float32))
    env = make_env(ds)  # the recorded env (v5), not the D4RL v4 one
    assert env.spec.id == "Hopper-v5"
    env.close()


def test_export_minari_writes_episodes_that_load_back(hopper_dataset, monkeypatch):
    import gymnasium as gym

    created = {}

    class EpisodeBuffer(types.SimpleNamespace):
        pass

    def create_dataset_from_buffers(dataset_id, buffer, env, **kwargs):
        created.update(dataset_id=dataset_id, buffer=buffer, env_id=env.spec.id, kwargs=kwargs)

    fake = types.ModuleType("minari")
    fake.create_dataset_from_buffers = create_dataset_from_buffers
    fake.load_dataset = lambda name, download=False: _FakeMinariDataset(
        [types.SimpleNamespace(**vars(e)) for e in created["buffer"]], gym.spec(created["env_id"]))
    collector = types.ModuleType("minari.data_collector")
    collector.EpisodeBuffer = EpisodeBuffer
    monkeypatch.setitem(sys.modules, "minari", fake)
    monkeypatch.setitem(sys.modules, "minari.data_collector", collector)

    assert loader.export_minari(hopper_dataset, "hybrid-rl/hopper-test-v0") == "hybrid-rl/hopper-test-v0"
    assert created["env_id"] == "Hopper-v4" and len(created["buffer"]) == hopper_dataset.num_trajectories
    first = created["buffer"][0]
    assert len(first.observations) == len(first.rewards) + 1
    back = load_dataset("hybrid-rl/hopper-test-v0")
    _same_arrays(back, hopper_dataset.replace(timeouts=back.timeouts))
    # Only the trailing partial episode differs: as a Minari episode it ends in a truncation.
    np.testing.assert_array_equal(back.timeouts[:-1], hopper_dataset.timeouts[:-1])
    with pytest.raises(UnknownDatasetError, match="namespace"):
        loader.export_minari(hopper_dataset, "hopper-test-v0")


def test_real_minari_round_trip(hopper_dataset, tmp_path, monkeypatch):
    """With the real minari package (installed by the dev extra): a dataset exported as a
    local Minari dataset loads back through ``minari.load_dataset`` with the same
    transitions, terminals from terminations and timeouts from truncations."""
    if os.environ.get("HYBRID_RL_CI_REDUCED") != "1":  # CI installs the dev extra: there it must run
        pytest.importorskip("minari", reason="pip install 'hybrid-rl[minari]'")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    loader.export_minari(hopper_dataset, "hybrid-rl/hopper-roundtrip-v0")
    back = load_dataset("hybrid-rl/hopper-roundtrip-v0")
    assert back.metadata["source"] == "minari" and back.metadata["gym_env_id"] == "Hopper-v4"
    _same_arrays(back, hopper_dataset.replace(timeouts=back.timeouts))
    np.testing.assert_array_equal(back.terminals, hopper_dataset.terminals)
    # The trailing partial episode becomes a truncation; every other timeout is kept.
    np.testing.assert_array_equal(back.timeouts[:-1], hopper_dataset.timeouts[:-1])
    assert back.timeouts[-1] and not hopper_dataset.timeouts[-1]
    env = make_env(back)
    assert env.spec.id == "Hopper-v4"
    env.close()


def test_minari_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # makes `import minari` fail
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'hybrid-rl[minari]'")):
        load_dataset("mujoco/hopper/medium-v0")


# ---------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------
def test_make_env_and_vector_env_for_a_d4rl_dataset(hopper_file, tmp_path):
    shutil.copy(hopper_file, tmp_path / "hopper_medium-v2.hdf5")
    ds = load_dataset("hopper-medium-v2", cache_dir=tmp_path)
    env = make_env(ds)
    assert env.spec.id == "Hopper-v4" and env.spec.max_episode_steps == 1000
    env.close()
    vec = make_vector_env(ds, 2)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 11)
    obs, reward, terminated, truncated, _ = vec.step(np.zeros((2, 3), np.float32))
    assert reward.shape == (2,)
    vec.close()
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env(ds, 0)


def test_d4rl_ant_has_zero_contact_forces_and_no_contact_cost(tmp_path):
    """D4RL's ant data was recorded with all-zero contact forces (and so no contact cost):
    its env must show the same, not Gymnasium's real forces."""
    import gymnasium as gym

    n = 4
    ds = OfflineDataset(
        observations=np.zeros((n, 111), np.float32), actions=np.zeros((n, 8), np.float32),
        rewards=np.zeros(n, np.float32), next_observations=np.zeros((n, 111), np.float32),
        terminals=np.zeros(n, bool), timeouts=np.array([0, 0, 0, 1], bool),
    )
    write_hdf5(ds, tmp_path / "ant_medium-v2.hdf5")
    env = make_env(load_dataset("ant-medium-v2", cache_dir=tmp_path))
    plain = gym.make("Ant-v4", use_contact_forces=False)
    forces = gym.make("Ant-v4", use_contact_forces=True)
    assert env.observation_space.shape == (111,) and env.spec.max_episode_steps == 1000
    obs, _ = env.reset(seed=3)
    plain_obs, _ = plain.reset(seed=3)
    forces.reset(seed=3)
    rng = np.random.default_rng(0)
    saw_contact = False
    for _ in range(50):
        action = rng.uniform(-1, 1, 8).astype(np.float32)
        obs, reward, *_ = env.step(action)
        plain_obs, plain_reward, *_ = plain.step(action)
        forces_obs, forces_reward, *_ = forces.step(action)
        assert np.array_equal(obs[:27], plain_obs) and not obs[27:].any()
        assert reward == plain_reward  # no contact cost, as in D4RL
        saw_contact |= bool(np.abs(forces_obs[27:]).sum() > 0)
    assert saw_contact, "real contact forces are non-zero: the difference is real"
    for e in (env, plain, forces):
        e.close()


def test_robot_is_a_whole_word():
    from hybrid_rl.data.refs import robot_of

    assert [robot_of(n) for n in ("ant-medium-v2", "mujoco/ant/expert-v0", "Ant-v4", "hybrid_rl/D4RLAnt-v4", "HalfCheetah-v4",
                                  "gen-walker2d-medium-v0@50k", "hopper_medium_replay-v2.hdf5")] == \
        ["ant", "ant", "ant", "ant", "halfcheetah", "walker2d", "hopper"]
    for name in ("antmaze-umaze-v2", "D4RL/antmaze/umaze-v1", "pen-human-v1"):
        with pytest.raises(ValueError, match="no reference scores"):
            robot_of(name)


def test_dimension_mismatch_is_a_clear_error(make_dataset):
    ds = make_dataset([[1, 2]], obs_dim=5, act_dim=3).replace(metadata={"gym_env_id": "Hopper-v4"})
    with pytest.raises(DatasetEnvMismatchError, match=r"\(5,\)"):
        make_env(ds)


def test_a_locked_cached_file_is_reported_not_deleted(hopper_file, tmp_path, monkeypatch):
    """HDF5 file locking held by another process is not damage: the valid file stays."""
    path = Path(shutil.copy(hopper_file, tmp_path / "hopper_medium-v2.hdf5"))

    def locked(p):
        try:
            raise OSError("Unable to synchronously open file (unable to lock file, errno = 11)")
        except OSError as exc:
            raise DatasetFileError(f"{p} is not a readable HDF5 file ({exc})") from exc

    monkeypatch.setattr(loader, "validate_hdf5", locked)
    with pytest.raises(DatasetUnavailableError, match="locked by another process"):
        load_dataset("hopper-medium-v2", cache_dir=tmp_path)
    assert path.exists()
