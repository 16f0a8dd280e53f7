"""The install files agree: every dependency of pyproject.toml is pinned in requirements.txt
to a version its range allows, and requirements.txt installs the package itself."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"requirements.txt pins exact versions: {line}"
            pins[requirement.name.lower()] = specifier.version
    return pins


def test_requirements_pin_every_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = pinned()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = requirement.name.lower()
        assert name in pins, f"{name} (pyproject.toml) is not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside pyproject's {requirement.specifier}"
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "-e ." in lines, "requirements.txt installs the package itself"
    assert re.fullmatch(r"2\.13\.0", pins["torch"]), "torch stays at 2.13.0: another version pulls gigabytes of CUDA packages"


def test_runs_record_the_source_revision_of_a_checkout() -> None:
    import subprocess

    import hybrid_rl
    from hybrid_rl.provenance import source_revision

    source = source_revision()
    package = Path(hybrid_rl.__file__).resolve().parent
    if package.parent.name != "src":
        assert source is None  # an installed copy: its version says what it is
        return
    head = subprocess.run(["git", "-C", str(package.parent.parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return  # a source tree without git: nothing to record
    assert source["revision"] == head.stdout.strip() and isinstance(source["dirty"], bool)
    assert hybrid_rl.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
