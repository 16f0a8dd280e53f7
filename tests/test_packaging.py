"""The install files agree: every dependency of pyproject.toml is pinned in requirements.txt
to a version its range allows, and requirements.txt installs the package itself."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

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
    from hybrid_rl.core.provenance import source_revision

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


@pytest.mark.slow
def test_a_built_wheel_carries_the_policies_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    """Installed as a user installs it (a wheel, not editable): the shipped behaviour policies
    are in the package (a generated medium dataset needs them) and the CLI trains a run from
    a directory outside the checkout. The new environment reuses this one's dependencies
    through a path entry (their own .pth files, the editable install's among them, are not run)."""
    import os
    import site
    import subprocess
    import sys
    import venv

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = wheels.glob("hybrid_rl-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                                   text=True, check=True).stdout.strip())
    (own_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(own_site), str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HYBRID_RL_DATA_DIR": str(tmp_path / "data"), "MPLBACKEND": "Agg", "PYTHONPATH": ""}

    def cli(*args: str) -> str:
        done = subprocess.run([str(python), "-m", "hybrid_rl.cli", *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = subprocess.run([str(python), "-c", "import hybrid_rl; print(hybrid_rl.__file__)"], cwd=work, env=env, capture_output=True, text=True)
    assert str(own_site) in where.stdout, where.stdout + where.stderr  # the wheel's copy, not the checkout
    assert "gen-hopper-medium-v1" in cli("dataset", "list")
    cli("dataset", "make", "gen-hopper-medium-v1", "--size", "2000")  # reads the shipped policies/hopper-v1.pt
    summary = json.loads(cli("train", "--algo", "bc", "--env", "gen-hopper-medium-v1@2000", "--total_steps", "20", "--eval_episodes", "1",
                             "--set", "hidden=8x8", "--device", "cpu", "--compile", "off"))
    assert summary["status"] == "completed" and (work / "results" / summary["run_id"] / "config.json").exists()
