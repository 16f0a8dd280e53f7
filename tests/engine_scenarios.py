"""A fixed set of training scenarios whose outputs must not change when the engine is restructured.

The one-engine redesign promised "nothing changes for users": the same commands give
byte-identical files. This module runs the scenarios that cover every path through the
trainer and records what they write:

- single runs of IQL, CQL, BC and TD3+BC through ``hybrid-rl train`` (with evaluations);
- an IQL and a CQL population of 3 with corrupted members (``train_population``);
- an IQL run killed by SIGKILL mid-way (as soon as its first checkpoint exists) and rerun:
  it must equal the uninterrupted IQL run;
- a grid of 4 IQL runs on 2 local worker processes.

Recorded per run: ``metrics.jsonl`` (verbatim), ``summary.json`` without wall times,
``config.json`` without host, versions and paths, and a digest of every tensor and value
in the final ``checkpoint.pt``. ``tests/test_engine_equivalence.py`` compares a fresh
recording with ``tests/fixtures/engine_outputs.json``, which was written on the code
before the redesign:

    python tests/engine_scenarios.py --record tests/fixtures/engine_outputs.json

Floating-point results depend on the PyTorch build and the CPU's vector unit, so the
recording names both and the comparison runs only where they match.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TINY_DATASET = "gen-hopper-random-v0@3000"  # generated from a uniform-random policy: needs no policy file
SMALL_NETS = {
    "iql": {"hidden": [32, 32], "batch_size": 64},
    "cql": {"critic_hidden": [32, 32], "actor_hidden": [32, 32], "batch_size": 32, "num_sampled_actions": 4},
    "bc": {"hidden": [32, 32], "batch_size": 64},
    "td3bc": {"hidden": [32, 32], "batch_size": 64},
}
STEPS, EVAL_EVERY, LOG_EVERY, CHECKPOINT_EVERY, EVAL_EPISODES = 120, 60, 20, 40, 2
# Host and paths; and the update-path fields added after the recording (every scenario
# selects the eager reference with compile "off", which is what the recorded code ran).
VOLATILE_CONFIG_KEYS = ("hostname", "versions", "source", "wandb", "results_dir", "cache_dir", "device_resolved", "compile", "update_step")


def platform_key() -> dict[str, str]:
    """What floating-point results depend on: the PyTorch build and the CPU kernels it picks."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine()}


def _digest_leaf(value: Any) -> str:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().contiguous()
        payload = array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b""
        return hashlib.sha256(payload + f"{array.dtype}{tuple(array.shape)}".encode()).hexdigest()[:16]
    if isinstance(value, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(value).tobytes() + f"{value.dtype}{value.shape}".encode()).hexdigest()[:16]
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def checkpoint_digests(path: Path) -> dict[str, str]:
    """``{"algorithm/modules/actor/net.0.weight": digest, ...}`` for every leaf of a checkpoint."""
    import torch

    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)) and any(isinstance(item, (dict, list, tuple, torch.Tensor)) for item in value):
            for index, item in enumerate(value):
                walk(f"{prefix}/{index}", item)
        else:
            out[prefix] = _digest_leaf(value)

    walk("", torch.load(path, map_location="cpu", weights_only=False))
    return out


def run_outputs(run_dir: Path, root: Path) -> dict[str, Any]:
    """What one run directory holds, in comparable form."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time_s", None)
    config = json.loads((run_dir / "config.json").read_text().replace(str(root), "<ROOT>"))
    for key in VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return {
        "metrics.jsonl": (run_dir / "metrics.jsonl").read_text(),
        "summary.json": summary,
        "config.json": config,
        "checkpoint.pt": checkpoint_digests(run_dir / "checkpoint.pt"),
    }


def _train_args(algo: str, results: Path, cache: Path, seed: int = 0, **extra: Any) -> list[str]:
    args = [
        "train", "--algo", algo, "--env", TINY_DATASET, "--seed", str(seed), "--total_steps", str(STEPS),
        "--eval_every", str(EVAL_EVERY), "--eval_episodes", str(EVAL_EPISODES), "--log_every", str(LOG_EVERY),
        "--checkpoint_every", str(CHECKPOINT_EVERY), "--device", "cpu", "--threads", "1", "--results", str(results),
        "--cache_dir", str(cache), "--algo_overrides", json.dumps(SMALL_NETS[algo]), "--compile", "off",
    ]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


def _cli(args: list[str], **popen: Any) -> subprocess.Popen:
    env = {**os.environ, "HYBRID_RL_DATA_DIR": popen.pop("data_dir"), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, "-m", "hybrid_rl.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def _check(process: subprocess.Popen, what: str) -> None:
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{what} exited {process.returncode}: {err.decode()[-2000:]}")


def _kill_and_resume(args: list[str], run_dir: Path, data_dir: str) -> None:
    """Run the CLI command, SIGKILL it once the run's first checkpoint exists, run it again."""
    process = _cli(args, data_dir=data_dir)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed_mid_way = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not killed_mid_way:
        raise RuntimeError(f"{run_dir.name} finished before its first checkpoint: nothing was killed")
    _check(_cli(args, data_dir=data_dir), f"the resumed {run_dir.name}")


def _population_configs(algo: str, results: Path, cache: Path) -> list:
    from dataclasses import replace

    from hybrid_rl.runs.train import TrainConfig

    base = TrainConfig(
        algo=algo, dataset=TINY_DATASET, seed=0, total_steps=STEPS, eval_every=EVAL_EVERY, eval_episodes=EVAL_EPISODES,
        log_every=LOG_EVERY, checkpoint_every=CHECKPOINT_EVERY, device="cpu", threads=1, progress=False,
        results_dir=str(results), cache_dir=str(cache), algo_overrides=dict(SMALL_NETS[algo]), compile="off",
    )
    return [base, replace(base, seed=1, remove_top_k=30.0), replace(base, seed=2, reward_noise_std=0.1)]


def run_scenarios(root: Path) -> dict[str, Any]:
    """Run every scenario under ``root``; returns ``{scenario: {run_id: outputs}}``."""
    import torch

    cache = root / "cache"
    data_dir = str(cache)
    os.environ["HYBRID_RL_DATA_DIR"] = data_dir
    out: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(root)  # MuJoCo's MUJOCO_LOG.TXT lands here, not in the repository
    try:
        from hybrid_rl.data.loader import load_dataset

        load_dataset(TINY_DATASET, cache_dir=data_dir)  # generated once, before processes share the cache
        # Single runs, through the command line in their own processes (two at a time).
        singles = root / "single"
        for pair in (("iql", "cql"), ("bc", "td3bc")):
            processes = [(algo, _cli(_train_args(algo, singles, cache), data_dir=data_dir)) for algo in pair]
            for algo, process in processes:
                _check(process, f"hybrid-rl train --algo {algo}")
        out["single"] = {path.name: run_outputs(path, root) for path in sorted(singles.iterdir()) if path.is_dir()}

        # Killed with SIGKILL once its first checkpoint exists, then rerun: equals the IQL single run.
        killed = root / "killed"
        run_id = next(name for name in out["single"] if name.startswith("iql"))
        _kill_and_resume(_train_args("iql", killed, cache), killed / run_id, data_dir)
        out["killed_and_resumed"] = {run_id: run_outputs(killed / run_id, root)}

        # Populations of 3 (one member with top-k removal, one with reward noise).
        from hybrid_rl.runs.train import train_population

        torch.set_num_threads(1)
        for algo in ("iql", "cql"):
            results = root / f"population_{algo}"
            train_population(_population_configs(algo, results, cache))
            out[f"population_{algo}"] = {path.name: run_outputs(path, root) for path in sorted(results.iterdir()) if path.is_dir()}

        # A grid of 4 IQL runs on 2 worker processes.
        from hybrid_rl.studies.grid import GridSpec, run_grid

        results = root / "grid"
        spec = GridSpec(
            algos=("iql",), datasets=(TINY_DATASET,), remove_top_k=(0.0, 30.0), seeds=(0, 1), total_steps=STEPS, eval_every=EVAL_EVERY,
            eval_episodes=EVAL_EPISODES, log_every=LOG_EVERY, checkpoint_every=CHECKPOINT_EVERY, device="cpu", results_dir=str(results),
            algo_overrides={"iql": dict(SMALL_NETS["iql"])}, cache_dir=str(cache), compile="off",
        )
        status = run_grid(spec, workers=2, log=lambda line: None, progress=False, population="off")
        if status["failed"]:
            raise RuntimeError(f"grid runs failed: {status['failed']}")
        out["grid_2_workers"] = {path.name: run_outputs(path, root) for path in sorted(results.iterdir()) if path.is_dir()}
    finally:
        os.chdir(cwd)
    return out


def legacy_run_id(run_id: str) -> str:
    """A run id as the recorded code wrote it: since the settings sweeps, ids also name the
    non-default algorithm settings (``hidden=32x32``) and a non-default budget (``steps120``)."""
    return "__".join(part for part in run_id.split("__") if "=" not in part and not re.fullmatch(r"(steps|online)[0-9.]+[kM]?", part))


def comparable(scenarios: dict[str, Any]) -> dict[str, Any]:
    """A recording without what the environment, not the code, decides, and in the recorded
    code's naming. Left out: the package versions that the generated data file records in its
    metadata, and so that file's hash (mujoco 4.0.0 -> 4.0.1 changed both; the data's own
    checksum over its arrays, config.json's ``dataset_checksum``, stays compared), and
    config.json's ``settings`` (added with the sweeps: the run's non-default settings, which
    its ``algo_overrides`` already record), and the checkpoint's ``preprocessing`` (added for
    hybrid_rl.load_policy: the observation statistics and reward scale the run computed from
    its data, not new results). Run ids are compared in the recorded form (``legacy_run_id``)."""
    out: dict[str, Any] = {}
    for scenario, runs in json.loads(json.dumps(scenarios)).items():
        out[scenario] = {}
        for run_id, outputs in runs.items():
            if "summary.json" not in outputs:  # a behaviour training: no run directory
                out[scenario][run_id] = outputs
                continue
            config = outputs["config.json"]
            for key in ("versions", "sha256"):
                config.get("dataset_metadata", {}).pop(key, None)
            config.pop("settings", None)
            # The parent's checkpoint file hash: torch.save's bytes are not reproducible across
            # processes, its contents are (the parents' own recordings compare their digests).
            config.get("parent", {}).pop("checkpoint_sha256", None)
            outputs["checkpoint.pt"] = {key: value for key, value in outputs["checkpoint.pt"].items() if not key.startswith("preprocessing/")}
            config["run_id"] = legacy_run_id(config["run_id"])
            outputs["summary.json"]["run_id"] = legacy_run_id(outputs["summary.json"]["run_id"])
            if "population" in config:
                config["population"]["members"] = [legacy_run_id(member) for member in config["population"]["members"]]
            out[scenario][legacy_run_id(run_id)] = outputs
    return out


# ---------------------------------------------------------------------------------------
# Phase II and behaviour training (the contract of the "one run layer" redesign)
# ---------------------------------------------------------------------------------------
ONLINE_STEPS = 120
SCRATCH_NETS = {"rlpd": {"hidden": [16, 16], "batch_size": 32, "ensemble_size": 3}, "sac": {"hidden": [16, 16], "batch_size": 32}}


def _finetune_args(method: str, results: Path, cache: Path, parent: Path | None) -> list[str]:
    args = ["finetune", "--method", method, "--online_steps", str(ONLINE_STEPS), "--eval_every", "60", "--eval_episodes", str(EVAL_EPISODES),
            "--switch_episodes", "3", "--log_every", str(LOG_EVERY), "--checkpoint_every", str(CHECKPOINT_EVERY), "--seed", "2", "--device", "cpu",
            "--threads", "1", "--results", str(results), "--cache_dir", str(cache), "--compile", "off"]
    if parent is not None:
        return [*args, "--from", str(parent)]
    return [*args, "--from", "scratch", "--env", TINY_DATASET, "--remove_top_k", "30", "--warmup_steps", "40", "--utd", "2",
            "--algo_overrides", json.dumps(SCRATCH_NETS[method])]


def behavior_outputs(out: Path) -> dict[str, Any]:
    """A behaviour training's files in comparable form: progress.jsonl, config.json, and the
    digests of its checkpoint and snapshots."""
    return {
        # Every line but its wall time.
        "progress.jsonl": "".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "wall_time_s"}) + "\n"
                                  for line in (out / "progress.jsonl").read_text().splitlines()),
        "config.json": json.loads((out / "config.json").read_text()),
        "checkpoint.pt": checkpoint_digests(out / "checkpoint.pt"),
        **{f"snapshots/{path.name}": checkpoint_digests(path) for path in sorted((out / "snapshots").glob("*.pt"))},
    }


def run_phase2_scenarios(root: Path) -> dict[str, Any]:
    """Fine-tuning runs of every method (CLI processes), a fine-tuning population, a
    fine-tuning run killed by SIGKILL and resumed, a Phase II study on 2 workers, and a short
    behaviour-policy training; returns ``{scenario: {run_id: outputs}}``."""
    import torch

    cache = root / "cache"
    data_dir = str(cache)
    os.environ["HYBRID_RL_DATA_DIR"] = data_dir
    out: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(root)
    try:
        from dataclasses import replace

        from hybrid_rl.data.loader import load_dataset
        from hybrid_rl.runs.train import train

        load_dataset(TINY_DATASET, cache_dir=data_dir)
        torch.set_num_threads(1)
        parents = root / "parents"
        base = _population_configs("iql", parents, cache)[0]
        configs = {algo: replace(base, algo=algo, seed=1, remove_top_k=30.0, algo_overrides=dict(SMALL_NETS.get(algo, SMALL_NETS["cql"])))
                   for algo in ("iql", "cql", "calql")}
        for config in [*configs.values(), base]:
            train(config)
        parent_dirs = {algo: parents / config.run_id for algo, config in configs.items()}

        # One fine-tuning run per method through the command line, two processes at a time.
        singles = root / "finetune"
        jobs = [(method, parent_dirs.get(method)) for method in ("iql", "cql", "calql", "rlpd", "sac")]
        for pair in (jobs[:2], jobs[2:4], jobs[4:]):
            processes = [(method, _cli(_finetune_args(method, singles, cache, parent), data_dir=data_dir)) for method, parent in pair]
            for method, process in processes:
                _check(process, f"hybrid-rl finetune --method {method}")
        out["finetune"] = {path.name: run_outputs(path, root) for path in sorted(singles.iterdir()) if path.is_dir()}

        # The IQL fine-tuning run killed once its first checkpoint exists, then rerun.
        killed = root / "finetune_killed"
        run_id = next(name for name in out["finetune"] if name.startswith("ft-iql"))
        _kill_and_resume(_finetune_args("iql", killed, cache, parent_dirs["iql"]), killed / run_id, data_dir)
        out["finetune_killed_and_resumed"] = {run_id: run_outputs(killed / run_id, root)}

        # IQL fine-tuning of two parents (seed 0 clean, seed 1 at k = 30) as one population.
        from hybrid_rl.runs.finetune import FinetuneConfig, finetune_population

        population = root / "finetune_population"
        common = dict(method="iql", online_steps=ONLINE_STEPS, eval_every=60, eval_episodes=EVAL_EPISODES, switch_episodes=3, log_every=LOG_EVERY,
                      checkpoint_every=CHECKPOINT_EVERY, device="cpu", threads=1, progress=False, results_dir=str(population), cache_dir=data_dir,
                      compile="off")
        finetune_population([FinetuneConfig(parent=str(parents / base.run_id), seed=0, **common),
                             FinetuneConfig(parent=str(parent_dirs["iql"]), seed=1, **common)])
        out["finetune_population"] = {path.name: run_outputs(path, root) for path in sorted(population.iterdir()) if path.is_dir()}

        # The Phase II study (its parents included) on 2 worker processes.
        from hybrid_rl.studies.phase2 import Phase2Spec, run_phase2

        study = root / "study"
        spec = Phase2Spec(methods=("iql", "sac"), datasets=(TINY_DATASET,), remove_top_k=(0.0, 30.0), seeds=(0,), pretrain_steps=STEPS,
                          online_steps=ONLINE_STEPS, utd=1, eval_every=60, pretrain_eval_every=EVAL_EVERY, eval_episodes=EVAL_EPISODES,
                          switch_episodes=3, checkpoint_every=CHECKPOINT_EVERY, warmup_steps=40, device="cpu", compile="off", population="off",
                          results_dir=str(study / "results"), phase2_results=str(study / "results_phase2"), cache_dir=data_dir,
                          algo_overrides={"iql": dict(SMALL_NETS["iql"])}, method_overrides={"sac": dict(SCRATCH_NETS["sac"])})
        status = run_phase2(spec, workers=2, log=lambda line: None, progress=False)
        if status["failed"]:
            raise RuntimeError(f"study runs failed: {status['failed']}")
        out["study_2_workers"] = {f"{results}/{path.name}": run_outputs(path, root) for results in ("results", "results_phase2")
                                  for path in sorted((study / results).iterdir()) if path.is_dir()}

        # A short behaviour-policy training (the dataset factory's SAC).
        from hybrid_rl.algos.sac import SACConfig
        from hybrid_rl.runs.behavior import train_behavior_policy
        from hybrid_rl.runs.configs import BehaviorTrainingConfig

        behavior = BehaviorTrainingConfig(robot="hopper", total_steps=300, seed=0, random_steps=100, eval_every=100, eval_episodes=1,
                                          checkpoint_every=100, sac=SACConfig(hidden=(16, 16), batch_size=32), compile="off")
        out["behavior_training"] = {"hopper": behavior_outputs(train_behavior_policy(behavior, root / "behavior", progress=False))}
    finally:
        os.chdir(cwd)
    return out


SCENARIO_SETS = {"phase1": run_scenarios, "phase2": run_phase2_scenarios}


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Human-readable differences between two recordings (first differing line of a text)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual)):
            where = f"{path}/{key}" if path else key
            if key not in actual:
                found.append(f"{where}: missing")
            elif key not in expected:
                found.append(f"{where}: unexpected")
            else:
                found.extend(differences(expected[key], actual[key], where))
        return found
    if isinstance(expected, str) and isinstance(actual, str) and "\n" in expected:
        for number, (a, b) in enumerate(zip(expected.splitlines(), actual.splitlines()), 1):
            if a != b:
                return [f"{path} line {number}:\n  expected {a[:300]}\n  actual   {b[:300]}"]
        if expected != actual:
            return [f"{path}: {len(expected.splitlines())} lines expected, {len(actual.splitlines())} written"]
        return []
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", metavar="FILE", help="write the outputs of this code to FILE")
    group.add_argument("--compare", metavar="FILE", help="compare the outputs of this code with FILE")
    parser.add_argument("--scenarios", choices=sorted(SCENARIO_SETS), default="phase1", help="phase1 (engine_outputs.json) or phase2 (phase2_outputs.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="engine_scenarios_") as tmp:
        started = time.time()
        outputs = SCENARIO_SETS[args.scenarios](Path(tmp))
        elapsed = time.time() - started
    if args.record:
        Path(args.record).write_text(json.dumps({"platform": platform_key(), "scenarios": outputs}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {sum(len(runs) for runs in outputs.values())} runs of {len(outputs)} scenarios in {elapsed:.0f} s to {args.record}")
        return 0
    recorded = json.loads(Path(args.compare).read_text())
    found = differences(comparable(recorded["scenarios"]), comparable(outputs))
    print("\n".join(found) if found else f"identical: {sum(len(runs) for runs in outputs.values())} runs of {len(outputs)} scenarios ({elapsed:.0f} s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
