"""The one-engine redesign changed structure, not results: the fixed training scenarios of
``engine_scenarios.py`` (single runs of every algorithm, IQL and CQL populations with
corrupted members, a run killed by SIGKILL and resumed, a grid on 2 workers) write exactly
the files that the code before the redesign wrote, recorded in
``fixtures/engine_outputs.json``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine_scenarios import comparable, differences, platform_key, run_scenarios

RECORDED = Path(__file__).parent / "fixtures" / "engine_outputs.json"


def emulated_capability(recorded_platform: dict) -> str | None:
    """The kernel set to ask PyTorch for (ATEN_CPU_CAPABILITY) so that this CPU computes what
    the recording's did: an AVX-512 CPU runs the AVX2 kernels of an AVX2 recording. None when
    the platforms already match or cannot be matched (another PyTorch build or machine)."""
    here = platform_key()
    same_build = {k: v for k, v in here.items() if k != "cpu_capability"} == {k: v for k, v in recorded_platform.items() if k != "cpu_capability"}
    if same_build and recorded_platform["cpu_capability"] == "AVX2" and here["cpu_capability"] == "AVX512":
        return "avx2"
    return None


@pytest.fixture(scope="module")
def recorded_file() -> dict:
    return json.loads(RECORDED.read_text())


def test_killed_run_was_recorded_equal_to_the_uninterrupted_one(recorded_file: dict) -> None:
    recorded = recorded_file["scenarios"]
    (run_id, resumed), = recorded["killed_and_resumed"].items()
    single = recorded["single"][run_id]
    assert resumed["metrics.jsonl"] == single["metrics.jsonl"] and resumed["checkpoint.pt"] == single["checkpoint.pt"]


def test_scenarios_write_the_recorded_files(recorded_file: dict, tmp_path: Path) -> None:
    if recorded_file["platform"] == platform_key():
        found = differences(comparable(recorded_file["scenarios"]), comparable(run_scenarios(tmp_path)))
        assert not found, "outputs differ from those recorded before the redesign:\n" + "\n".join(found[:20])
        return
    capability = emulated_capability(recorded_file["platform"])
    if capability is None:
        pytest.skip(f"outputs were recorded on {recorded_file['platform']}, this is {platform_key()}: floating-point results differ across builds")
    # Every process of the scenarios (the CLI runs it starts too) must pick the recorded kernels,
    # which PyTorch reads from the environment at start-up: compare in a fresh process.
    script = Path(__file__).parent / "engine_scenarios.py"
    done = subprocess.run([sys.executable, str(script), "--compare", str(RECORDED)], env={**os.environ, "ATEN_CPU_CAPABILITY": capability},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"outputs differ from those recorded (run with ATEN_CPU_CAPABILITY={capability}):\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
