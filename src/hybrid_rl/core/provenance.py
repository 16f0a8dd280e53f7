"""Which code and packages made a result: recorded in every run's config.json and every
generated dataset, so a number can be traced to the source that produced it."""
from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Sequence

PACKAGES = ("hybrid-rl", "gymnasium", "mujoco", "torch", "numpy", "h5py")


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` ("not installed" for a missing one)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def source_revision() -> dict[str, object] | None:
    """``{"revision": commit, "dirty": uncommitted changes to tracked files}`` when this
    package runs from a git checkout (``src/hybrid_rl`` of the work tree, as an editable
    install does); None for an installed copy (a wheel), whose version says what it is, or
    without git."""
    package = Path(__file__).resolve().parents[1]  # core/ -> the hybrid_rl package
    root = package.parent.parent
    if package.parent.name != "src" or _git(root, "rev-parse", "--show-toplevel") != str(root):
        return None
    revision = _git(root, "rev-parse", "HEAD")
    if revision is None:
        return None
    changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"revision": revision, "dirty": bool(changes)}
