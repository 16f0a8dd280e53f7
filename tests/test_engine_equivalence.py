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

from engine_scenarios import SCENARIO_SETS, comparable, differences, platform_key

RECORDED = Path(__file__).parent / "fixtures" / "engine_outputs.json"
# Phase II runs, a fine-tuning population, a killed and resumed fine-tuning run, a 2-worker
# study and a behaviour training, recorded after the Phase II, sweep and interoperability
# issues landed: the contract of the "one run layer" redesign.
RECORDED_PHASE2 = Path(__file__).parent / "fixtures" / "phase2_outputs.json"
# One change was made to a recording on purpose: when the population step came to be derived
# from the algorithms' declared update rules (algos/update.py), the CQL population's
# metrics.jsonl (scenario population_cql) took the single CQL run's column order,
# grad_norm_critic before grad_norm_actor (it had them the other way round). Every value,
# every checkpoint and every other file stayed byte-identical; the two keys were swapped in
# engine_outputs.json and nothing else was re-recorded.


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


def test_killed_fine_tuning_run_was_recorded_equal_to_the_uninterrupted_one() -> None:
    recorded = json.loads(RECORDED_PHASE2.read_text())["scenarios"]
    (run_id, resumed), = recorded["finetune_killed_and_resumed"].items()
    single = recorded["finetune"][run_id]
    assert resumed["metrics.jsonl"] == single["metrics.jsonl"] and resumed["checkpoint.pt"] == single["checkpoint.pt"]


@pytest.mark.parametrize("scenarios, fixture", [("phase1", RECORDED), ("phase2", RECORDED_PHASE2)])
def test_scenarios_write_the_recorded_files(scenarios: str, fixture: Path, tmp_path: Path) -> None:
    recorded_file = json.loads(fixture.read_text())
    if recorded_file["platform"] == platform_key():
        found = differences(comparable(recorded_file["scenarios"]), comparable(SCENARIO_SETS[scenarios](tmp_path)))
        assert not found, "outputs differ from those recorded:\n" + "\n".join(found[:20])
        return
    capability = emulated_capability(recorded_file["platform"])
    if capability is None:
        pytest.skip(f"outputs were recorded on {recorded_file['platform']}, this is {platform_key()}: floating-point results differ across builds")
    # Every process of the scenarios (the CLI runs it starts too) must pick the recorded kernels,
    # which PyTorch reads from the environment at start-up: compare in a fresh process.
    script = Path(__file__).parent / "engine_scenarios.py"
    done = subprocess.run([sys.executable, str(script), "--scenarios", scenarios, "--compare", str(fixture)],
                          env={**os.environ, "ATEN_CPU_CAPABILITY": capability}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"outputs differ from those recorded (run with ATEN_CPU_CAPABILITY={capability}):\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
