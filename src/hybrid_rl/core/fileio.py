"""How hybrid-rl writes and hashes files: the one home of atomic writes.

Every file a reader may look at while it is being written (run summaries, checkpoints,
tables, figures, datasets, policy files) goes through a temporary file in the same
directory and ``os.replace``: readers never see half a file, a crash leaves the previous
version (or nothing) in place, and a failed write removes its temporary file.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator


def current_umask() -> int:
    # os.umask can only be read by setting it; restored at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path` to write to; it replaces `path` if the block succeeds
    and is deleted if it fails. The result gets the permissions a plain ``open()`` would
    give (mkstemp's are 0600, which would lock other users out of a shared cache)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, writer: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``writer(handle)`` (binary), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer(handle)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (checkpoints, policy files)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_of_file(path: str | Path, block_bytes: int = 4 << 20) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


_LOCKS_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(OSError):
    """A non-blocking ``file_lock`` found the lock held by another process."""


# ---------------------------------------------------------------------------------------
# Checksum record kept next to a cached file (``<file>.sha256``)
# ---------------------------------------------------------------------------------------
def sidecar_path(path: Path) -> Path:
    """Where the checksum record of ``path`` is kept."""
    return path.with_name(path.name + ".sha256")


def read_file_record(path: str | Path) -> dict[str, Any]:
    """The record kept next to a cached file (``{}`` if none or unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(sidecar_path(Path(path)).read_text())
        if isinstance(record, dict):
            return record
    return {}


def write_file_record(path: str | Path, record: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # an unwritable cache only costs a re-hash next time
        atomic_write_text(sidecar_path(Path(path)), json.dumps(record, sort_keys=True) + "\n")


def file_sha256(path: str | Path, *, cache: bool = True) -> str:
    """SHA-256 of a file; with `cache`, kept in ``<file>.sha256`` keyed by size and mtime.

    Hashing a 1 GB dataset takes seconds; the sidecar makes every later load free, and a
    file that changes size or modification time is hashed again. Files that hybrid-rl does
    not own (a user's local file) are hashed with ``cache=False``: nothing is written next
    to them.
    """
    path = Path(path)
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = read_file_record(path) if cache else {}
    if record.get("size") == key["size"] and record.get("mtime_ns") == key["mtime_ns"] and len(str(record.get("sha256", ""))) == 64:
        return str(record["sha256"])
    value = sha256_of_file(path)
    if cache:
        write_file_record(path, {**record, **key, "sha256": value})
    return value


@contextlib.contextmanager
def file_lock(lock_path: str | Path, *, blocking: bool = True, owner: str = "", wait_s: float = 0.0) -> Iterator[None]:
    """Exclusive inter-process lock on the file `lock_path` (fcntl.flock; a no-op where
    fcntl is missing). The lock is released when the holder exits, however it exits, so a
    killed process never leaves a stale lock.

    blocking=False raises LockHeld if another process still holds it after `wait_s` seconds
    (polled; its message is the `owner` text the holder wrote into the file). The lock file is removed on release, so it
    never stays behind; a waiter that then holds a lock on the removed file sees that the
    path no longer names it and locks again.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return
    lock_path = Path(lock_path)
    deadline = time.monotonic() + wait_s
    while True:
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if time.monotonic() < deadline:
                time.sleep(min(2.0, max(0.05, deadline - time.monotonic())))
                continue
            raise LockHeld(f"{lock_path} is held by {holder or 'another process'}") from None
        except OSError as exc:
            handle.close()
            if exc.errno not in _LOCKS_UNSUPPORTED:
                raise
            # A filesystem without locks (some NFS mounts): go on unprotected rather than fail.
            warnings.warn(f"{lock_path.parent} does not support file locks ({exc.strerror}); going on without one", stacklevel=3)
            handle = None
            break
        try:
            if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                break  # we hold the lock of the file the path names
        except FileNotFoundError:
            pass  # removed by the previous holder while we waited
        handle.close()
    if handle is None:
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
        return
    try:
        if owner:
            handle.truncate(0)
            handle.write(owner)
            handle.flush()
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # before unlocking: waiters then retry on a new file
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def held_exclusively(lock_path: str | Path, busy: Callable[[LockHeld], Exception], *, role: str = "", wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``file_lock(lock_path)`` without blocking, naming this process (``role pid N on
    HOST``) as its holder; if another process still holds it after `wait_s` seconds, raise
    ``busy(LockHeld)`` instead (a one-line error that says what to do)."""
    owner = f"{role + ' ' if role else ''}pid {os.getpid()} on {platform.node()}"
    acquired = False
    try:
        with file_lock(lock_path, blocking=False, owner=owner, wait_s=wait_s):
            acquired = True
            yield
    except LockHeld as exc:
        if acquired:  # raised by the caller's block, not by taking this lock
            raise
        raise busy(exc) from None
