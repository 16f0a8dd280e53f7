"""Dataset sources (D4RL v2 files, Minari, local HDF5, generated) and matching environments.

``load_dataset(name_or_path)`` is the single entry point. It dispatches on:

1. an existing local path -> any D4RL-format HDF5 file, read as is;
2. a D4RL v2 id (``hopper-medium-replay-v2``) -> the d4rl cache, downloading on a miss;
3. a generated id (``gen-hopper-medium-v0``) -> ``hybrid_rl.data.factory.load_generated``;
4. a Minari id (``mujoco/hopper/medium-v0``, anything with a '/') -> ``minari`` (optional).

The D4RL cache uses d4rl's own directory and file names (``$D4RL_DATASET_DIR`` or
``~/.d4rl/datasets``, ``hopper_medium_replay-v2.hdf5``), so a cache filled by d4rl is reused
and never downloaded again. Every cached or downloaded file is validated before it is read
(HDF5 structure, keys, lengths, finite values; and, for a file hybrid-rl downloaded, its
SHA-256 against the one recorded at download); a damaged one is reported, deleted and
fetched again, never loaded.
"""
from __future__ import annotations

import contextlib
import difflib
import http.client
import importlib
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import DatasetEnvMismatchError, DatasetUnavailableError, MissingDependencyError, UnknownDatasetError
from ..core.fileio import file_lock, file_sha256, read_file_record, sidecar_path, write_file_record
from .dataset import OfflineDataset
from .hdf5io import DatasetFileError, read_hdf5, read_hdf5_metadata, validate_hdf5
from .envs import register_envs
from .refs import GYM_ENV_IDS, robot_of

logger = logging.getLogger(__name__)

D4RL_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/"
D4RL_ROBOTS = ("halfcheetah", "hopper", "walker2d", "ant")
D4RL_LEVELS = ("random", "medium", "medium-replay", "medium-expert", "expert")
# The dataset factory (factory.py) follows the D4RL recipe: same levels, but only the robots
# it ships behaviour policies for. Used only if the factory cannot be imported.
GENERATED_ROBOTS = ("halfcheetah", "hopper", "walker2d")
GENERATED_LEVELS = D4RL_LEVELS

MIRROR_ENV_VAR = "HYBRID_RL_D4RL_MIRROR"
CACHE_ENV_VAR = "D4RL_DATASET_DIR"  # the variable d4rl itself reads

# Download policy. Module-level so tests (and impatient users) can shorten them.
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation (connect, each read), not the whole file
DOWNLOAD_RETRIES = 3  # extra attempts after the first one
DOWNLOAD_BACKOFF_S = 1.0  # waits before the retries: 1x, 2x, 4x ... this
DOWNLOAD_CHUNK_BYTES = 1 << 20
SHOW_PROGRESS = True

_D4RL_ID = re.compile(r"^(?P<robot>[a-z0-9]+)-(?P<level>[a-z-]+)-v2$")
# The spellings of one task ("<robot>-<level>") that per-dataset algorithm presets follow:
# D4RL ids of any version, generated ids of any policy version and size, Minari's mujoco ids.
_TASK_SPELLINGS = (
    re.compile(r"^(?:gen-)?(?P<robot>[a-z0-9]+)-(?P<level>[a-z]+(?:-[a-z]+)*)-v\d+(?:@[0-9.]+[km]?)?$"),
    re.compile(r"^mujoco/(?P<robot>[a-z0-9]+)/(?P<level>[a-z]+(?:-[a-z]+)*)-v\d+$"),
)
# Metadata keys, most specific first, that name the dataset a local file was made from
# (an exported file's source id, a generated or D4RL file's own id).
_SOURCE_ID_KEYS = ("source_dataset_id", "dataset_id", "env_name", "name")


# ---------------------------------------------------------------------------------------
# Ids, file names and paths
# ---------------------------------------------------------------------------------------
def d4rl_dataset_ids() -> list[str]:
    """The D4RL v2 locomotion ids this loader can fetch, e.g. ``hopper-medium-replay-v2``."""
    return [f"{robot}-{level}-v2" for robot in D4RL_ROBOTS for level in D4RL_LEVELS]


def generated_dataset_ids() -> list[str]:
    """Ids of the datasets ``hybrid-rl dataset make`` generates offline, e.g. ``gen-hopper-medium-v0``.

    (The factory also accepts a size suffix, ``gen-hopper-medium-v0@50k``.)
    """
    try:
        return list(importlib.import_module("hybrid_rl.data.factory").generated_ids())
    except ImportError:  # the factory's own dependencies are broken: still list the ids
        return [f"gen-{robot}-{level}-v0" for robot in GENERATED_ROBOTS for level in GENERATED_LEVELS]


def default_generated_version() -> str:
    """The behaviour-policy version that suggestions of a generated id name (the factory's
    default; v0, which stays shipped, if the factory cannot be imported)."""
    try:
        return str(importlib.import_module("hybrid_rl.data.factory").DEFAULT_POLICY_VERSION)
    except ImportError:
        return "v0"


def is_generated_id(name: str) -> bool:
    """Generated ids start with ``gen-``; the factory validates the rest (robot, level, size)."""
    return name.startswith("gen-")


def known_dataset_ids() -> list[str]:
    """All ids ``load_dataset`` knows by name: D4RL v2 ids, then generated ids.

    Minari ids (``mujoco/hopper/medium-v0`` ...) and local file paths are accepted too but
    are open-ended, so they are not listed.
    """
    return d4rl_dataset_ids() + generated_dataset_ids()


def is_d4rl_id(name: str) -> bool:
    match = _D4RL_ID.match(name)
    return bool(match) and match["robot"] in D4RL_ROBOTS and match["level"] in D4RL_LEVELS


def d4rl_filename(dataset_id: str) -> str:
    """d4rl's file name for an id: ``hopper-medium-replay-v2`` -> ``hopper_medium_replay-v2.hdf5``."""
    match = _D4RL_ID.match(dataset_id)
    if not is_d4rl_id(dataset_id) or match is None:
        raise UnknownDatasetError(_unknown_id_message(dataset_id))
    return f"{match['robot']}_{match['level'].replace('-', '_')}-v2.hdf5"


def _d4rl_id_from_filename(filename: str) -> str | None:
    """Inverse of `d4rl_filename` (None if `filename` is not a D4RL v2 file name)."""
    for dataset_id in d4rl_dataset_ids():
        if d4rl_filename(dataset_id) == filename:
            return dataset_id
    return None


def d4rl_url(dataset_id: str, mirror: str | None = None) -> str:
    """URL of a D4RL v2 file on the Berkeley server, or on `mirror` (same file names under it)."""
    base = mirror or D4RL_BASE_URL
    return base.rstrip("/") + "/" + d4rl_filename(dataset_id)


def d4rl_cache_dir() -> Path:
    """d4rl's cache directory: ``$D4RL_DATASET_DIR``, else ``~/.d4rl/datasets``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or "~/.d4rl/datasets").expanduser()


def d4rl_cache_path(dataset_id: str, cache_dir: str | Path | None = None) -> Path:
    """Where a D4RL v2 file is (or will be) cached, exactly where d4rl keeps it."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else d4rl_cache_dir()
    return directory / d4rl_filename(dataset_id)


def d4rl_cached_path(dataset_id: str, cache_dir: str | Path | None = None) -> Path | None:
    """The cached file of a D4RL v2 id if there is one, else None. Never touches the network.

    Only checks that the file exists (validating a 1 GB file takes seconds);
    ``load_dataset`` validates it and repairs a damaged copy.
    """
    path = d4rl_cache_path(dataset_id, cache_dir)
    return path if path.is_file() else None


def _resolve_mirror(mirror: str | None) -> str | None:
    """The mirror to use (argument, else $HYBRID_RL_D4RL_MIRROR), checked to be an http(s) URL."""
    value = mirror or os.environ.get(MIRROR_ENV_VAR) or None
    if value is not None:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            source = "mirror=" if mirror else f"${MIRROR_ENV_VAR}"
            raise ValueError(f"{source} {value!r} is not an http:// or https:// URL; give the base URL under which the D4RL file names are served")
    return value


def _unknown_id_message(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), known_dataset_ids(), n=5, cutoff=0.5)
    hint = f"closest known ids: {', '.join(close)}" if close else "run `hybrid-rl dataset list` or see known_dataset_ids()"
    return (
        f"unknown dataset {name!r}: not an existing file, a D4RL v2 id, a generated id or a Minari id; "
        f"{hint} (Minari ids contain '/', e.g. mujoco/hopper/medium-v0)"
    )


# ---------------------------------------------------------------------------------------
# Download record, kept next to cached files (fileio.file_sha256's ``<file>.sha256``)
# ---------------------------------------------------------------------------------------
def _record_download(path: Path, url: str) -> None:
    """Remember a fresh download's SHA-256 and URL, so later damage to the bytes is caught."""
    value = file_sha256(path)
    write_file_record(path, {**read_file_record(path), "downloaded_sha256": value, "source_url": url})


def _changed_since_download(path: Path) -> str | None:
    """Why a file hybrid-rl downloaded no longer has its downloaded bytes (None if it has,
    or if it was not downloaded by hybrid-rl: a d4rl cache file has no record)."""
    expected = read_file_record(path).get("downloaded_sha256")
    if not expected:
        return None
    actual = file_sha256(path)
    if actual == expected:
        return None
    return f"its bytes changed since the download (sha256 {actual[:12]}... instead of {expected[:12]}...)"


# ---------------------------------------------------------------------------------------
# Download: retries, exponential backoff, resume with HTTP Range, atomic rename
# ---------------------------------------------------------------------------------------
class _PermanentHTTPError(Exception):
    """An HTTP status that retrying will not fix (404, 403 ...)."""


def _total_size(response: http.client.HTTPResponse, start: int) -> int | None:
    """Full file size from Content-Range (partial reply) or Content-Length (full reply)."""
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes\s+\d+-\d+/(\d+)", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (start if response.status == 206 else 0)


def _download_attempt(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One HTTP request appending to `part` from its current size. Raises on any failure,
    including a reply shorter than announced; the bytes received so far stay in `part`."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "hybrid-rl (urllib)"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            # Range not satisfiable: the partial file is not a prefix we can extend (it may
            # be from another version of the file). Start over.
            part.unlink(missing_ok=True)
            raise ConnectionError(f"server refused to resume from byte {start} (HTTP 416); restarting") from exc
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise ConnectionError(f"HTTP {exc.code} {exc.reason}") from exc
        raise _PermanentHTTPError(f"HTTP {exc.code} {exc.reason}") from exc
    with response:
        if start and response.status != 206:
            start = 0  # server ignored the Range header and sends the whole file
        total = _total_size(response, start)
        from ..core.progress import progress_bar

        mode = "ab" if start else "wb"
        received = start
        with open(part, mode) as sink, progress_bar(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress, leave=False,
        ) as bar:
            while True:
                block = response.read(DOWNLOAD_CHUNK_BYTES)
                if not block:
                    break
                sink.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received != total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


def download_file(
    url: str,
    dest: str | Path,
    *,
    timeout: float | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    progress: bool | None = None,
    validate: Callable[[Path], Any] | None = None,
) -> Path:
    """Download `url` to `dest` atomically, resuming an interrupted download.

    Bytes accumulate in ``<dest>.part`` (kept across failures and runs, continued with an
    HTTP ``Range`` request) and the file is renamed to `dest` only once complete - and, if
    `validate` is given, only once ``validate(part)`` returned without raising - so `dest`
    never holds a partial or invalid file. Transient failures (timeouts, dropped
    connections, HTTP 5xx) are retried `retries` times with exponential backoff
    ``backoff * 2**i`` seconds; a permanent HTTP error (404, 403 ...) fails at once.

    Raises:
        DatasetUnavailableError: the file could not be obtained; the message gives the reason.
        Whatever `validate` raises: the complete download is invalid (``.part`` is deleted).
    """
    dest = Path(dest)
    timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    retries = DOWNLOAD_RETRIES if retries is None else retries
    backoff = DOWNLOAD_BACKOFF_S if backoff is None else backoff
    progress = SHOW_PROGRESS if progress is None else progress
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff * 2 ** (attempt - 1)
            logger.warning("download of %s failed (%s); retry %d/%d in %.1f s", url, last_error, attempt, retries, wait)
            time.sleep(wait)
        try:
            _download_attempt(url, part, timeout=timeout, progress=progress)
        except _PermanentHTTPError as exc:
            raise DatasetUnavailableError(str(exc)) from exc
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None)
            if isinstance(exc, socket.gaierror) or isinstance(reason, socket.gaierror):
                # The host name does not resolve: offline (e.g. a compute node without
                # internet). Retrying only delays the message.
                raise DatasetUnavailableError(f"cannot resolve the host ({reason or exc}); this machine looks offline") from exc
            last_error = f"{type(exc).__name__}: {reason if reason is not None else exc}"
            continue
        if validate is not None:
            try:
                validate(part)
            except Exception:
                part.unlink(missing_ok=True)  # complete but wrong: resuming it cannot help
                raise
        os.replace(part, dest)
        return dest
    raise DatasetUnavailableError(f"{last_error} (after {retries + 1} attempts)")


def _unavailable_message(dataset_id: str, path: Path, url: str, reason: str) -> str:
    robot, level = _D4RL_ID.match(dataset_id).group("robot", "level")  # type: ignore[union-attr]
    version = default_generated_version()
    generated = f"gen-{robot}-{level}-{version}" if robot in GENERATED_ROBOTS else f"gen-<robot>-<level>-{version}"
    return (
        f"cannot get {dataset_id} ({path.name}) from {url}: {reason}. "
        f"If you have the file, put it at {path} (or point ${CACHE_ENV_VAR} / cache_dir= at its folder); "
        f"or set ${MIRROR_ENV_VAR} / mirror= to a base URL serving the D4RL file names. "
        f"Offline alternatives: generate a dataset with `hybrid-rl dataset make` and load it by id ({generated}), "
        "or pass the path of a local D4RL-format HDF5 file."
    )


def _usable_cached_file(path: Path) -> bool:
    """True if `path` exists and validates; a damaged file is reported and deleted.

    A file that cannot be *read* (permissions, HDF5 file locking) is not damaged: that is
    an error the user must fix, and the file is left alone.
    """
    if not path.exists():
        return False
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise DatasetUnavailableError(f"cannot read the cached file {path} ({exc.strerror}); fix its permissions or point cache_dir= elsewhere") from None
    try:
        validate_hdf5(path)
        changed = _changed_since_download(path)
        if changed:
            raise DatasetFileError(f"{path}: {changed}")
        return True
    except DatasetFileError as exc:
        if "unable to lock file" in str(exc.__cause__ or "").lower():  # HDF5 file locking, not damage
            raise DatasetUnavailableError(
                f"{path} is locked by another process ({exc.__cause__}); wait for it, or set HDF5_USE_FILE_LOCKING=FALSE on a filesystem without locks"
            ) from None
        logger.warning("cached dataset %s is damaged and will be downloaded again: %s", path, exc)
        path.unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)
        return False


def ensure_d4rl_file(dataset_id: str, *, cache_dir: str | Path | None = None, mirror: str | None = None) -> Path:
    """Path of a valid local copy of a D4RL v2 file, downloading it on a cache miss.

    A cached file that fails validation is reported (logging warning), deleted and
    downloaded again. A download is validated before it is moved into the cache; if it is
    invalid it is deleted and reported as unavailable (the server or mirror serves a bad
    file). Concurrent callers (parallel grid workers) serialise on ``<file>.lock``.
    """
    path = d4rl_cache_path(dataset_id, cache_dir)
    if _usable_cached_file(path):  # fast path, no lock and no network
        return path
    url = d4rl_url(dataset_id, _resolve_mirror(mirror))
    created = [directory for directory in (path.parent, *path.parent.parents) if not directory.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Parallel grid workers asking for the same missing file must not write one .part together.
        with file_lock(path.with_name(path.name + ".lock")):
            if _usable_cached_file(path):  # another process finished it while we waited
                return path
            try:
                download_file(url, path, validate=validate_hdf5)
            except DatasetFileError as exc:
                raise DatasetUnavailableError(f"the downloaded file is invalid ({exc})") from exc
            _record_download(path, url)
    except (DatasetUnavailableError, OSError) as exc:
        for directory in created:  # a failed first download leaves no empty cache folders behind
            with contextlib.suppress(OSError):
                directory.rmdir()
        reason = str(exc) if isinstance(exc, DatasetUnavailableError) else f"cannot write to the cache ({exc})"  # not writable, disk full ...
        raise DatasetUnavailableError(_unavailable_message(dataset_id, path, url, reason)) from exc
    return path


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------
def _with_metadata(dataset: OfflineDataset, **entries: Any) -> OfflineDataset:
    return dataset.replace(metadata={**dataset.metadata, **{k: v for k, v in entries.items() if v is not None}})




def _load_d4rl(dataset_id: str, *, cache_dir: str | Path | None, mirror: str | None) -> OfflineDataset:
    path = ensure_d4rl_file(dataset_id, cache_dir=cache_dir, mirror=mirror)
    dataset = read_hdf5(path, name=dataset_id, validate=False)  # validated by ensure_d4rl_file
    return _with_metadata(
        dataset, source="d4rl", dataset_id=dataset_id, env_name=dataset_id, gym_env_id=GYM_ENV_IDS[robot_of(dataset_id)],
        file_path=str(path.absolute()), sha256=file_sha256(path),
        url=read_file_record(path).get("source_url") or d4rl_url(dataset_id),  # where it came from, mirror included
    )


def _load_local(path: Path) -> OfflineDataset:
    if path.is_dir():
        raise UnknownDatasetError(f"{path} is a directory; pass the path of a D4RL-format HDF5 file")
    dataset = read_hdf5(path)
    entries: dict[str, Any] = {"source": "local", "file_path": str(path.absolute()), "sha256": file_sha256(path, cache=False)}
    # A D4RL file copied elsewhere keeps d4rl's name: recognise it so that scores and the
    # evaluation env are right. Any other file must name its env in metadata (gym_env_id).
    d4rl_id = _d4rl_id_from_filename(path.name)
    if d4rl_id is not None:
        entries.update(env_name=dataset.metadata.get("env_name", d4rl_id), dataset_id=d4rl_id)
        if "gym_env_id" not in dataset.metadata:
            entries.update(gym_env_id=GYM_ENV_IDS[robot_of(d4rl_id)])
    return _with_metadata(dataset, **entries)


def _load_generated(name: str, *, cache_dir: str | Path | None) -> OfflineDataset:
    # Imported lazily: generation pulls in policies and simulators that plain loading does not need.
    factory = importlib.import_module("hybrid_rl.data.factory")
    dataset = factory.load_generated(name, cache_dir=cache_dir)
    entries: dict[str, Any] = {"source": "generated", "dataset_id": name, "env_name": dataset.metadata.get("env_name", name)}
    if "gym_env_id" not in dataset.metadata:
        # The factory collects data in the robot's D4RL evaluation env (v4, refs.GYM_ENV_IDS);
        # make_env still checks the dimensions against the data.
        entries.update(gym_env_id=GYM_ENV_IDS[robot_of(name)])
    path = dataset.metadata.get("file_path") or dataset.metadata.get("source_path")
    if path and Path(path).is_file():
        entries.update(file_path=str(Path(path).absolute()), sha256=file_sha256(path))
    return _with_metadata(dataset, **entries)


def _import_minari() -> Any:
    try:
        return importlib.import_module("minari")
    except ImportError as exc:
        raise MissingDependencyError(
            "Minari datasets (ids like mujoco/hopper/medium-v0) need the optional 'minari' package: pip install 'hybrid-rl[minari]'; "
            "a local file is read only if it exists"
        ) from exc


def minari_to_offline_dataset(minari_dataset: Any, *, name: str) -> OfflineDataset:
    """Convert a ``minari.MinariDataset`` (episodes) to the D4RL transition layout.

    Per episode of T steps Minari stores T+1 observations: ``observations = obs[:-1]``,
    ``next_observations = obs[1:]``, ``terminals = terminations``, ``timeouts = truncations``.
    An episode that ends with neither flag gets a timeout on its last step, so episodes
    stay separate (its final state is still bootstrapped, as for a truncation).
    """
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    for episode in minari_dataset.iterate_episodes():
        obs = episode.observations
        if isinstance(obs, dict) or not isinstance(obs, np.ndarray) or obs.ndim != 2:
            raise UnknownDatasetError(
                f"Minari dataset {name!r} has non-vector observations ({type(obs).__name__}); "
                "only flat Box observation spaces (MuJoCo locomotion) are supported"
            )
        steps = len(episode.rewards)
        if steps == 0:
            continue
        terminals = np.asarray(episode.terminations, dtype=bool).reshape(-1)
        timeouts = np.asarray(episode.truncations, dtype=bool).reshape(-1)
        if not (terminals[-1] or timeouts[-1]):
            timeouts = timeouts.copy()
            timeouts[-1] = True
        parts["observations"].append(obs[:steps])
        parts["next_observations"].append(obs[1 : steps + 1])
        parts["actions"].append(np.asarray(episode.actions).reshape(steps, -1))
        parts["rewards"].append(np.asarray(episode.rewards).reshape(-1))
        parts["terminals"].append(terminals)
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise UnknownDatasetError(f"Minari dataset {name!r} holds no transitions")
    dtypes = {"terminals": bool, "timeouts": bool}
    arrays = {key: np.concatenate(value).astype(dtypes.get(key, np.float32)) for key, value in parts.items()}
    metadata: dict[str, Any] = {"source": "minari", "dataset_id": name, "env_name": name}
    # Minari's own reference returns, when the dataset has them, are kept for users who want
    # Minari's normalization; hybrid-rl's normalized scores use D4RL's per-robot references.
    storage_metadata = getattr(getattr(minari_dataset, "storage", None), "metadata", None) or {}
    for key in ("ref_min_score", "ref_max_score"):
        if storage_metadata.get(key) is not None:
            metadata[f"minari_{key}"] = float(storage_metadata[key])
    # A dataset hybrid-rl exported carries its provenance (source id, corruption records,
    # checksums) in its description, after PROVENANCE_MARK.
    description = str(storage_metadata.get("description") or "")
    if PROVENANCE_MARK in description:
        with contextlib.suppress(ValueError):
            metadata.update(json.loads(description.split(PROVENANCE_MARK, 1)[1]))
    env_spec = getattr(minari_dataset, "env_spec", None)
    if env_spec is not None:
        metadata["gym_env_id"] = env_spec.id
        with contextlib.suppress(Exception):  # kwargs that are not JSON-able: id is enough
            metadata["gym_env_spec"] = env_spec.to_json()
    return OfflineDataset(**arrays, name=name, metadata=metadata)


def _load_minari(name: str) -> OfflineDataset:
    minari = _import_minari()
    try:
        minari_dataset = minari.load_dataset(name, download=True)
    except Exception as exc:  # minari raises assorted errors for missing ids and network failures
        raise DatasetUnavailableError(
            f"cannot load Minari dataset {name!r} ({type(exc).__name__}: {exc}). Check the id with "
            "`minari list remote`, or download it while online with `minari download " + name + "`; "
            f"offline alternatives: a generated dataset gen-<robot>-<level>-{default_generated_version()} (`hybrid-rl dataset make`) or a local HDF5 path."
        ) from exc
    return minari_to_offline_dataset(minari_dataset, name=name)


PROVENANCE_MARK = "hybrid-rl provenance: "


def export_minari(dataset: OfflineDataset, dataset_id: str, *, env_id: str | None = None, provenance: dict[str, Any] | None = None) -> str:
    """Write `dataset` as a local Minari dataset (``minari.create_dataset_from_buffers``).

    Episodes are the dataset's trajectories; episode observations are
    ``observations[start:end]`` plus the final ``next_observations[end - 1]`` (T + 1 rows),
    terminations = terminals, truncations = timeouts. The recorded environment is
    ``make_env(dataset, env_id=env_id)`` (so its sizes are checked). `dataset_id` must
    contain a '/' (e.g. ``hybrid-rl/hopper-medium-v0``) so that ``load_dataset`` reads it
    back as a Minari id. ``provenance`` (JSON values) is kept in the dataset's description
    and comes back in the loaded dataset's metadata. Returns `dataset_id`.
    """
    if "/" not in dataset_id:
        raise UnknownDatasetError(
            f"Minari id {dataset_id!r} needs a namespace, e.g. hybrid-rl/{dataset_id}, so load_dataset recognises it as a Minari id"
        )
    minari = _import_minari()
    buffer_type = importlib.import_module("minari.data_collector").EpisodeBuffer
    episodes = []
    for episode_id, (start, end) in enumerate(dataset.trajectory_bounds()):
        episodes.append(buffer_type(
            id=episode_id,
            observations=np.concatenate([dataset.observations[start:end], dataset.next_observations[end - 1 : end]]),
            actions=dataset.actions[start:end],
            rewards=dataset.rewards[start:end],
            terminations=dataset.terminals[start:end],
            truncations=dataset.timeouts[start:end],
            infos={},
        ))
    env = make_env(dataset, env_id=env_id)
    try:
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=episodes,
            env=env,
            algorithm_name=str(dataset.metadata.get("recipe") or dataset.metadata.get("algorithm") or "unknown"),
            author="hybrid-rl",
            description=f"exported by hybrid-rl from {dataset.metadata.get('dataset_id', dataset.name)} ({dataset.metadata.get('source', 'unknown source')})"
            + (f"; {PROVENANCE_MARK}{json.dumps(provenance, sort_keys=True)}" if provenance else ""),
        )
    finally:
        env.close()
    return dataset_id


def dataset_task(name_or_path: str | os.PathLike | None) -> str | None:
    """The task ``"<robot>-<level>"`` a dataset is a version of, or None when it names none.

    Every form of one dataset gives the same task, so per-dataset algorithm presets follow
    the data, not its spelling: ``hopper-medium-v2``, ``gen-hopper-medium-v1``,
    ``gen-hopper-medium-v1@20000`` and ``mujoco/hopper/medium-v0`` are all
    ``hopper-medium``. A local file is recognised by d4rl's file name
    (``hopper_medium-v2.hdf5``) or, failing that, by the source id its metadata carries
    (exported and generated files record one); only the metadata is read.
    """
    if name_or_path is None:
        return None
    name = os.fspath(name_or_path).strip()
    path = Path(name).expanduser()
    if path.is_file():
        d4rl_id = _d4rl_id_from_filename(path.name)
        if d4rl_id is not None:
            return dataset_task(d4rl_id)
        try:
            metadata = read_hdf5_metadata(path)
        except (OSError, ValueError):  # not an HDF5 file: loading it reports the problem
            return None
        for key in _SOURCE_ID_KEYS:
            value = metadata.get(key)
            if isinstance(value, str) and not Path(value).expanduser().is_file():
                task = dataset_task(value)
                if task is not None:
                    return task
        return None
    for spelling in _TASK_SPELLINGS:
        match = spelling.match(name.lower())
        if match:
            return f"{match['robot']}-{match['level']}"
    return None


def _looks_like_path(name: str) -> bool:
    """A name meant as a file (so a missing file is reported as such, not as a Minari id)."""
    return name.lower().endswith((".hdf5", ".h5")) or name.startswith((".", "/", "~", "\\"))


def check_dataset_name(name_or_path: str | os.PathLike) -> None:
    """Raise the error ``load_dataset`` would raise for a name it cannot even look up (an
    unknown id, a missing file, a malformed generated id, Minari without its package),
    without loading, downloading or generating anything."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            raise UnknownDatasetError(f"{path} is a directory; pass the path of a D4RL-format HDF5 file")
        return
    if is_d4rl_id(name):
        return
    if is_generated_id(name):
        importlib.import_module("hybrid_rl.data.factory").parse_generated_id(name)
        return
    if _looks_like_path(name) or ("/" in name and Path(name.split("/")[0]).is_dir()):
        raise UnknownDatasetError(f"dataset file {path} does not exist; check the path (D4RL-format files end in .hdf5 or .h5)")
    if "/" in name:
        _import_minari()
        return
    raise UnknownDatasetError(_unknown_id_message(name))


def load_dataset(name_or_path: str | os.PathLike, *, cache_dir: str | Path | None = None, mirror: str | None = None) -> OfflineDataset:
    """Load a dataset by id or path; see the module docstring for what is accepted.

    Args:
        name_or_path: a local D4RL-format HDF5 file, a D4RL v2 id (``hopper-medium-v2``), a
            generated id (``gen-hopper-medium-v0``) or a Minari id (``mujoco/hopper/medium-v0``).
        cache_dir: directory of D4RL files (default ``$D4RL_DATASET_DIR`` or
            ``~/.d4rl/datasets``); also passed to the dataset factory for generated ids.
        mirror: base URL serving D4RL file names (default ``$HYBRID_RL_D4RL_MIRROR``, else
            the Berkeley server).

    Returns:
        The dataset, with ``metadata`` keys ``source`` (d4rl / minari / local / generated),
        ``env_name``, ``gym_env_id`` (when known), ``file_path`` and ``sha256`` (for files).

    Raises:
        DatasetUnavailableError: offline, server down, file missing on the server.
        UnknownDatasetError: not a path and not a known id (the message lists close ids).
        DatasetFileError: a local file is damaged or not in the D4RL layout.
        MissingDependencyError: a Minari id without the ``minari`` package.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path)
    if is_d4rl_id(name):
        return _load_d4rl(name, cache_dir=cache_dir, mirror=mirror)
    if is_generated_id(name):
        return _load_generated(name, cache_dir=cache_dir)
    check_dataset_name(name)  # raises for anything left that is not a Minari id
    return _load_minari(name)


# ---------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------
def _env_for(meta: dict[str, Any], name: str, env_id: str | None) -> tuple[Any, dict]:
    """What to pass to ``gymnasium.make``: an id or EnvSpec, plus recorded kwargs."""
    from gymnasium.envs.registration import EnvSpec

    recorded_id = meta.get("gym_env_id")
    if env_id is not None and env_id != recorded_id:
        return env_id, {}  # the user's explicit choice; recorded kwargs belong to another env
    if meta.get("gym_env_spec") and env_id is None:
        # Minari: the exact recorded spec (recover_environment() does the same).
        return EnvSpec.from_json(meta["gym_env_spec"]), {}
    if recorded_id:
        return recorded_id, dict(meta.get("gym_env_kwargs") or {})
    raise DatasetEnvMismatchError(
        f"dataset {name!r} (source {meta.get('source', 'unknown')}) does not record its environment; "
        "pass env_id= (e.g. 'Hopper-v4') or store 'gym_env_id' in the file's metadata"
    )


def make_env(dataset: OfflineDataset, *, env_id: str | None = None, **kwargs: Any) -> Any:
    """The Gymnasium environment to evaluate policies trained on `dataset`.

    D4RL datasets get the Gymnasium v4 env of the same robot (``Hopper-v4`` ...; for Ant,
    ``hybrid_rl/D4RLAnt-v4``: 111-dim observations with D4RL's all-zero contact forces, see
    envs.py), Minari datasets their recorded env, local and
    generated files the env in ``metadata['gym_env_id']`` - or `env_id` if given. `kwargs`
    go to ``gymnasium.make`` (over the recorded ones).

    Raises:
        DatasetEnvMismatchError: no env is known, or its observation/action sizes differ
            from the dataset's.
    """
    return make_env_from_metadata(dataset.metadata, dataset.obs_dim, dataset.act_dim, name=dataset.name, env_id=env_id, **kwargs)


def make_env_from_metadata(metadata: dict[str, Any], obs_dim: int, act_dim: int, *, name: str = "the data", env_id: str | None = None,
                           **kwargs: Any) -> Any:
    """``make_env`` from a dataset's recorded metadata and sizes alone (a run's config.json
    keeps both), so a policy can be evaluated where its data is not at hand."""
    import gymnasium as gym

    register_envs()
    target, recorded_kwargs = _env_for(metadata, name, env_id)
    with warnings.catch_warnings():
        if target in GYM_ENV_IDS.values():
            # v4 on purpose: it is the Gymnasium port of the envs D4RL v2 was collected in
            # (v5 changed the models), so Gymnasium's "v4 is out of date" is noise here.
            warnings.filterwarnings("ignore", message=".*is out of date.*")
        env = gym.make(target, **{**recorded_kwargs, **kwargs})
    obs_shape = getattr(env.observation_space, "shape", None)
    act_shape = getattr(env.action_space, "shape", None)
    if obs_shape != (obs_dim,) or act_shape != (act_dim,):
        env.close()
        env_name = target if isinstance(target, str) else target.id
        raise DatasetEnvMismatchError(
            f"env {env_name} has observations {obs_shape} and actions {act_shape} but dataset {name!r} has "
            f"({obs_dim},) and ({act_dim},); pass the env the data was collected in with env_id= "
            "(D4RL Ant data is 111-dim: hybrid_rl/D4RLAnt-v4)"
        )
    return env


def make_vector_env(dataset: OfflineDataset, num_envs: int, *, env_id: str | None = None, autoreset_mode: str = "NextStep", **kwargs: Any) -> Any:
    """`num_envs` copies of ``make_env(dataset, ...)`` in a ``gymnasium.vector.SyncVectorEnv``.

    Synchronous on purpose: MuJoCo steps take microseconds, so on a few CPU cores
    AsyncVectorEnv's inter-process traffic costs more than it parallelises.
    `autoreset_mode` is Gymnasium's (``NextStep``, ``SameStep`` or ``Disabled``).
    """
    import gymnasium as gym

    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    make_one = lambda: make_env(dataset, env_id=env_id, **kwargs)  # noqa: E731
    return gym.vector.SyncVectorEnv([make_one for _ in range(num_envs)], autoreset_mode=autoreset_mode)


__all__ = [
    "D4RL_BASE_URL",
    "DatasetUnavailableError",
    "d4rl_cache_path",
    "d4rl_dataset_ids",
    "d4rl_filename",
    "d4rl_url",
    "d4rl_cache_dir",
    "d4rl_cached_path",
    "download_file",
    "ensure_d4rl_file",
    "export_minari",
    "file_sha256",
    "generated_dataset_ids",
    "is_d4rl_id",
    "is_generated_id",
    "check_dataset_name",
    "known_dataset_ids",
    "load_dataset",
    "make_env",
    "make_vector_env",
    "minari_to_offline_dataset",
]
