"""The one-engine redesign changed structure, not results: the fixed training scenarios of
``engine_scenarios.py`` (single runs of every algorithm, IQL and CQL populations with
corrupted members, a run killed by SIGKILL and resumed, a grid on 2 workers) write exactly
the files that the code before the redesign wrote, recorded in
``fixtures/engine_outputs.json``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine_scenarios import differences, platform_key, run_scenarios

RECORDED = Path(__file__).parent / "fixtures" / "engine_outputs.json"


@pytest.fixture(scope="module")
def recorded() -> dict:
    data = json.loads(RECORDED.read_text())
    if data["platform"] != platform_key():
        pytest.skip(f"outputs were recorded on {data['platform']}, this is {platform_key()}: floating-point results differ across builds")
    return data["scenarios"]


def test_killed_run_was_recorded_equal_to_the_uninterrupted_one(recorded: dict) -> None:
    (run_id, resumed), = recorded["killed_and_resumed"].items()
    single = recorded["single"][run_id]
    assert resumed["metrics.jsonl"] == single["metrics.jsonl"] and resumed["checkpoint.pt"] == single["checkpoint.pt"]


def test_scenarios_write_the_recorded_files(recorded: dict, tmp_path: Path) -> None:
    found = differences(recorded, run_scenarios(tmp_path))
    assert not found, "outputs differ from those recorded before the redesign:\n" + "\n".join(found[:20])
