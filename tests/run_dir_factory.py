"""Synthetic but realistic run directories, in the trainer's format, for analysis tests.

Learning curves rise towards an asymptote that depends on (dataset, algo, corruption);
Q-values track the discounted return with an algorithm-specific bias (CQL pessimistic,
IQL mildly optimistic); a diverged run's Q-values and critic loss blow up until NaN.
Everything is a pure function of the arguments, so tests are reproducible.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

# Asymptotic normalized return on clean data per (robot, algo), roughly CORL's numbers.
_CLEAN_SCORE = {
    ("hopper", "iql"): 66.0,
    ("hopper", "cql"): 58.0,
    ("hopper", "bc"): 52.0,
    ("walker2d", "iql"): 79.0,
    ("walker2d", "cql"): 78.0,
    ("walker2d", "bc"): 62.0,
}
_BEHAVIOR_SCORE = {"hopper": 44.3, "walker2d": 62.1}


def run_id_of(algo: str, dataset: str, corruption: dict[str, float], seed: int) -> str:
    """The trainer's run id: ``iql__gen-hopper-medium-v0__k30__noise0__s0``."""
    k = corruption.get("remove_top_k", 0.0)
    noise = corruption.get("reward_noise_std", 0.0)
    # Dataset ids may contain "/" (Minari): the directory name must stay one path component.
    return f"{algo}__{dataset.replace('/', '_')}__k{k:g}__noise{noise:g}__s{seed}"


def _robot(dataset: str) -> str:
    return "walker2d" if "walker2d" in dataset else "hopper"


def _asymptote(dataset: str, algo: str, corruption: dict[str, float]) -> float:
    base = _CLEAN_SCORE.get((_robot(dataset), algo), 50.0)
    k = corruption.get("remove_top_k", 0.0)
    noise = corruption.get("reward_noise_std", 0.0)
    # Removing the best trajectories hurts BC most, noisy rewards hurt the Q-learners.
    k_penalty = (0.45 if algo == "bc" else 0.3) * k
    noise_penalty = (4.0 if algo == "bc" else 18.0) * noise
    return max(base - k_penalty - noise_penalty, 3.0)


def write_run(
    results_dir: str | Path,
    *,
    algo: str = "iql",
    dataset: str = "gen-hopper-medium-v0",
    seed: int = 0,
    corruption: dict[str, float] | None = None,
    status: str = "completed",
    total_steps: int = 100_000,
    eval_every: int = 5_000,
    log_every: int = 1_000,
    diverge_at: int | None = None,
    stop_at: int | None = None,
    truncate_last_line: bool = False,
    log_mc_return: bool = True,
    error: str = "RuntimeError: CUDA out of memory",
    reward_scale: float = 1.0,
) -> Path:
    """Write one run directory and return its path.

    Args:
        status: "completed", "diverged" (needs ``diverge_at``), "failed" or "in_progress"
            (no summary.json; metrics stop at ``stop_at``).
        truncate_last_line: cut the last metrics line in half, as a killed process does.
        log_mc_return: log ``mc_return_mean`` / ``q_minus_mc_mean`` in train lines.
        reward_scale: the trainer's reward scale (IQL's recipe): Q statistics are logged
            multiplied by it, the critic loss by its square and the loss variance by its
            fourth power, as a run trained on scaled rewards logs them.

    BC runs log what the real BC logs: actor loss and gradient norm, no critic metrics.
    """
    corruption = {"remove_top_k": 0.0, "reward_noise_std": 0.0, **(corruption or {})}
    run_id = run_id_of(algo, dataset, corruption, seed)
    run_dir = Path(results_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    # crc32, not hash(): str hashes change between processes, the data must not.
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))

    if status == "diverged" and diverge_at is None:
        diverge_at = total_steps // 2
    last_step = total_steps
    if status == "diverged":
        last_step = int(diverge_at)
    elif status in ("in_progress", "failed"):
        last_step = int(stop_at if stop_at is not None else total_steps // 3)

    behavior = _BEHAVIOR_SCORE[_robot(dataset)]
    k = corruption["remove_top_k"]
    noise = corruption["reward_noise_std"]
    config: dict[str, Any] = {
        "run_id": run_id,
        "algo": algo,
        "dataset": dataset,
        "dataset_checksum": "sha256:" + "ab" * 8,
        "env_name": _robot(dataset),
        "corruption": corruption,
        "corruption_records": [{"kind": "remove_top_k", "removed_trajectories": int(k * 10)}] if k else [],
        "seed": seed,
        "total_steps": total_steps,
        "eval_every": eval_every,
        "log_every": log_every,
        "eval_episodes": 10,
        "algo_config": {"discount": 0.99, "batch_size": 256,
                        "reward_scaling": "none" if reward_scale == 1.0 else "iql"},
        "reward_scale": reward_scale,
        "dataset_summary": {"normalized_return_mean": behavior, "num_trajectories": 1000},
        "corrupted_dataset_summary": {
            "normalized_return_mean": behavior * (1.0 - 0.6 * k / 100.0),
            "num_trajectories": int(1000 * (1 - k / 100.0)),
        },
        "versions": {"hybrid_rl": "0.1.0", "torch": "2.13.0"},
        "device": "cpu",
    }
    if dataset.startswith("gen-"):
        config["dataset_metadata"] = {
            "source": "generated", "generator": "hybrid_rl.data.factory",
            "recipe": "stochastic rollouts of the SAC medium policy (step 300000)",
            "not_d4rl": "generated by hybrid-rl's dataset factory following the D4RL recipe; this is not D4RL data",
        }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    asymptote = _asymptote(dataset, algo, corruption) + rng.normal(0.0, 2.5)
    true_return = 30.0 + asymptote  # discounted return scale of the sampled transitions
    q_bias = {"cql": -0.15, "iql": 0.05, "bc": 0.0}.get(algo, 0.0)

    lines: list[str] = []
    evals: list[float] = []
    for step in range(log_every, last_step + 1, log_every):
        progress = 1.0 - math.exp(-step / (0.2 * total_steps))
        blowup = 0.0
        if diverge_at is not None:
            # Exponential blow-up over the last quarter before the divergence step.
            onset = 0.75 * diverge_at
            blowup = max(0.0, step - onset) / (0.25 * diverge_at) * 25.0
        q_mean = true_return * progress * (1.0 + q_bias) + rng.normal(0.0, 0.5) + math.expm1(blowup)
        mc = true_return * (0.95 + 0.05 * progress)
        critic_loss = 2.0 * math.exp(-step / (0.3 * total_steps)) + 0.3 + abs(rng.normal(0.0, 0.05)) + math.expm1(2 * blowup)
        at_divergence = diverge_at is not None and step >= diverge_at
        # Critic-loss variance: decays, but stays higher (and noisier) on damaged data for CQL.
        instability = 1.0 + (0.04 if algo == "cql" else 0.01) * k + (3.0 if algo == "cql" else 1.0) * noise
        loss_var = (0.01 + 0.05 * math.exp(-step / 2e4)) * instability * math.exp(rng.normal(0.0, 0.15))
        # Logged in the scaled units of a run trained on rewards * reward_scale.
        c = reward_scale
        train: dict[str, Any] = {
            "step": step,
            "kind": "train",
            "critic_loss": float("nan") if at_divergence else critic_loss * c**2,
            "critic_loss_rolling_var": (float("nan") if at_divergence
                                        else loss_var * math.exp(3 * blowup) * c**4),
            "q_mean": float("nan") if at_divergence else q_mean * c,
            "q_std": (0.15 * abs(q_mean) + 1.0) * c,
            "q_min": (q_mean - 3.0) * c,
            "q_max": (q_mean + 3.0) * c,
            "q_policy_mean": (q_mean + 0.5) * c,
            "target_q_mean": (q_mean - 0.2) * c,
            "actor_loss": -q_mean * c if algo == "cql" else 1.0 + rng.normal(0.0, 0.1),
            "grad_norm_critic": 5.0 + blowup,
        }
        if log_mc_return:
            train["mc_return_mean"] = mc * c
            train["q_minus_mc_mean"] = float("nan") if at_divergence else (q_mean - mc) * c
        if algo == "bc":  # no critic: BC logs only its actor
            train = {"step": step, "kind": "train", "actor_loss": 0.05 + abs(rng.normal(0.0, 0.01)),
                     "grad_norm_actor": 0.1}
        if algo == "iql":
            train.update({"value_loss": 0.2 + rng.normal(0.0, 0.01), "adv_mean": -0.3})
        elif algo == "cql":
            train.update({"cql_penalty": 5.0 * math.exp(-step / 3e4), "alpha": 0.2, "entropy": -3.0})
        lines.append(json.dumps(train))

        if step % eval_every == 0:
            score = asymptote * progress + rng.normal(0.0, 2.0)
            if diverge_at is not None and step > 0.75 * diverge_at:
                score = max(score * 0.3, 1.0)
            if at_divergence:
                score = float("nan")
            evals.append(score)
            lines.append(json.dumps({
                "step": step,
                "kind": "eval",
                "return_mean": 30.0 * score,
                "return_std": 40.0,
                "normalized_return_mean": score,
                "normalized_return_std": 1.5,
                "episode_returns": [30.0 * score] * 3,
            }))

    text = "\n".join(lines) + "\n"
    if truncate_last_line:
        # A killed process leaves a half-written last line and no newline.
        text = "\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2]
    (run_dir / "metrics.jsonl").write_text(text)

    if status == "in_progress":
        return run_dir
    finite = [e for e in evals if math.isfinite(e)]
    tail = max(1, int(round(len(evals) * 0.1)))  # the trainer's rule
    summary = {
        "status": status,
        "steps_done": last_step,
        "final_normalized_return": float(np.mean(evals[-tail:])) if status == "completed" else None,
        "last_normalized_return": finite[-1] if finite else None,
        "best_normalized_return": max(finite) if finite else None,
        "diverged_at_step": diverge_at if status == "diverged" else None,
        "error": error if status == "failed" else None,
        "wall_time_s": 12.5,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


# The standard synthetic grid: what the tests expect from `make_results_dir`.
GRID_DATASETS = ("gen-hopper-medium-v0", "walker2d-medium-v2")
GRID_ALGOS = ("cql", "iql")
GRID_LEVELS: tuple[dict[str, float], ...] = (
    {},
    {"remove_top_k": 30.0},
    {"remove_top_k": 60.0},
    {"reward_noise_std": 0.5},
)
GRID_SEEDS = (0, 1, 2)
DIVERGED_RUN = ("walker2d-medium-v2", "cql", {"remove_top_k": 60.0}, 2)
IN_PROGRESS_RUN = ("gen-hopper-medium-v0", "iql", {"remove_top_k": 30.0}, 3)
FAILED_RUN = ("gen-hopper-medium-v0", "cql", {}, 3)
TRUNCATED_RUN = ("gen-hopper-medium-v0", "iql", {}, 1)
EARLY_FAILED_RUN_ID = "cql__gen-hopper-medium-v0__k0__noise0__s9"


def make_results_dir(results_dir: str | Path, total_steps: int = 100_000) -> Path:
    """Write the standard grid: 2 datasets x 2 algos x 4 levels x 3 seeds (48 results).

    On top of it: walker2d CQL k=60% seed 2 diverges; an extra in-progress run (hopper
    IQL k=30% seed 3), an extra failed run (hopper CQL clean seed 3) and a run that failed
    before writing config.json (summary.json only); hopper IQL clean seed 1 has a truncated
    last metrics line. gen-hopper runs do not log the MC return
    (so the Q-overestimation panel must be left out there); walker2d runs do.
    A non-run directory (no config.json) is added as well.
    """
    results_dir = Path(results_dir)
    for dataset in GRID_DATASETS:
        for algo in GRID_ALGOS:
            for level in GRID_LEVELS:
                for seed in GRID_SEEDS:
                    key = (dataset, algo, level, seed)
                    write_run(
                        results_dir,
                        algo=algo,
                        dataset=dataset,
                        seed=seed,
                        corruption=level,
                        total_steps=total_steps,
                        status="diverged" if key == DIVERGED_RUN else "completed",
                        diverge_at=int(total_steps * 0.62) if key == DIVERGED_RUN else None,
                        truncate_last_line=key == TRUNCATED_RUN,
                        log_mc_return=dataset.startswith("walker2d"),
                    )
    for (dataset, algo, level, seed), status in ((IN_PROGRESS_RUN, "in_progress"), (FAILED_RUN, "failed")):
        write_run(results_dir, algo=algo, dataset=dataset, seed=seed, corruption=level,
                  total_steps=total_steps, status=status, log_mc_return=False)
    # A run that failed before writing config.json (the trainer writes summary.json only).
    early = results_dir / EARLY_FAILED_RUN_ID
    early.mkdir(exist_ok=True)
    (early / "summary.json").write_text(json.dumps({
        "status": "failed", "run_id": EARLY_FAILED_RUN_ID, "wall_time_s": 0.1,
        "error": "ValueError: overrides: unknown CQLConfig field(s) ['hidden']"}))
    (results_dir / "not_a_run").mkdir(exist_ok=True)
    (results_dir / "not_a_run" / "notes.txt").write_text("scratch files, no config.json\n")
    return results_dir


# Report built once per test session and shared by test_plotting and test_report:
# rendering every figure of the standard grid is the slow part of these tests.
_STANDARD_BUILD: dict[str, tuple[Path, Path, dict[str, Any]]] = {}
STANDARD_REPS = 500


def standard_report(tmp_path_factory: Any) -> tuple[Path, Path, dict[str, Any]]:
    """``(results_dir, plots_dir, build_report output)`` of the standard grid, built once."""
    if "standard" not in _STANDARD_BUILD:
        from hybrid_rl.eval.report import build_report

        root = tmp_path_factory.mktemp("standard_grid")
        results_dir = make_results_dir(root / "results")
        plots_dir = root / "plots"
        _STANDARD_BUILD["standard"] = (results_dir, plots_dir,
                                       build_report(results_dir, plots_dir, reps=STANDARD_REPS))
    return _STANDARD_BUILD["standard"]
