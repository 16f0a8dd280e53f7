"""Atomic writes and file locks (core/fileio.py)."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from hybrid_rl.runs import book as run_book
from hybrid_rl.core.fileio import LockHeld, atomic_write_text, file_lock
from hybrid_rl.core.run_format import RUN_LOCK_FILE


def test_lock_file_is_removed_and_waiters_relock(tmp_path):
    """The download lock leaves no file behind, and a process that waited on a lock file
    its holder removed takes the lock again on the path's current file."""
    lock = tmp_path / "f.hdf5.lock"
    order: list[str] = []
    lock_file_seen_by_second: list[bool] = []  # asserted in the main thread: a failed assert
    errors: list[BaseException] = []  # inside a thread would only print a warning
    inside = threading.Event()

    def second() -> None:
        try:
            inside.wait()
            with file_lock(lock):
                order.append("second in")
                lock_file_seen_by_second.append((tmp_path / "f.hdf5.lock").exists())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    with file_lock(lock):
        inside.set()
        time_waited = 0.0
        while time_waited < 0.3:  # the second thread is now blocked on our lock
            threading.Event().wait(0.05)
            time_waited += 0.05
        order.append("first out")
    thread.join(timeout=10)
    assert not thread.is_alive(), "the waiting thread never got the lock"
    assert not errors, errors
    assert order == ["first out", "second in"]
    assert lock_file_seen_by_second == [True], "the second holder did not hold a lock file at the path"
    assert not (tmp_path / "f.hdf5.lock").exists()


def test_nonblocking_lock_names_its_holder(tmp_path):
    lock = tmp_path / "run.lock"
    with file_lock(lock, owner="pid 123 on node-a"):
        with pytest.raises(LockHeld, match="pid 123 on node-a"):
            with file_lock(lock, blocking=False):
                pass
    with file_lock(lock, blocking=False):  # free again once released
        pass
    assert not lock.exists()


def test_filesystem_without_locks_goes_on_unlocked(tmp_path, monkeypatch):
    import fcntl

    def unsupported(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with pytest.warns(UserWarning, match="does not support file locks"):
        with file_lock(tmp_path / "x.lock", blocking=False):
            pass
    assert not (tmp_path / "x.lock").exists()


def test_run_lock_waits_for_a_holder_that_lets_go(tmp_path, monkeypatch):
    """A Ray retry waits for the lock a dead node's lease still holds (ray_launcher.RUN_LOCK_WAIT_S)."""
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with file_lock(tmp_path / RUN_LOCK_FILE, owner="the old attempt"):
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait(5)
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    with run_book.run_lock(tmp_path, wait_s=10.0):
        waited = time.monotonic() - started
    thread.join(5)
    assert 0.4 < waited < 9
    with file_lock(tmp_path / RUN_LOCK_FILE, owner="pid 9"):
        with pytest.raises(run_book.RunBusyError, match="pid 9"):
            with run_book.run_lock(tmp_path):
                pass


def test_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
