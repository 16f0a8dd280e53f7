"""One offline training run, start to finish: dataset -> corruption -> algorithm -> evaluation -> run dir.

The run directory is self-describing (see docs/run_format.md):
- ``config.json``: everything needed to rerun it (dataset id and checksum, corruption
  records, algorithm config, package versions, device);
- ``metrics.jsonl``: one JSON object per logged step (``kind`` "train" diagnostics or
  "eval" returns);
- ``summary.json``: final status (completed / diverged / failed) and scores, written last;
- ``checkpoint.pt``: written atomically every ``checkpoint_every`` steps; ``resume``
  continues from it, and on CPU the resumed run's metrics equal an uninterrupted run's
  (RNG states are restored and metrics written after the checkpoint are discarded).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.dataset import OfflineDataset, TransitionSampler
from .data.refs import normalized_score
from .errors import HybridRLError
from .eval.stats import final_score
from .rollouts import episode_returns

RUN_FORMAT_VERSION = 1
# Config fields that do not change what a run computes: a run may resume under new values.
NON_IDENTITY_FIELDS = ("device", "threads", "tensorboard", "progress", "results_dir", "cache_dir", "mirror", "checkpoint_every")


class ConfigMismatchError(HybridRLError):
    """An existing run directory was written by a different configuration."""


@dataclass(frozen=True)
class TrainConfig:
    """One run. Steps are gradient updates; returns are undiscounted episode returns."""

    algo: str = "iql"
    dataset: str = "gen-hopper-medium-v0"
    remove_top_k: float = 0.0  # percent of highest-return trajectories removed
    reward_noise_std: float = 0.0  # std of Gaussian noise added to rewards (reward units)
    extra_corruptions: tuple[dict, ...] = ()  # further corruption specs (see data.corruption)
    seed: int = 0
    total_steps: int = 500_000
    eval_every: int = 5_000
    eval_episodes: int = 10
    log_every: int = 1_000
    checkpoint_every: int = 10_000
    loss_variance_window: int = 1_000  # updates in the rolling critic-loss variance
    q_divergence_factor: float = 100.0  # diverged if |Q| > factor * max|r| / (1 - gamma)
    algo_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    threads: int | None = None
    tensorboard: bool = False
    progress: bool = True
    results_dir: str = "results"
    cache_dir: str | None = None
    mirror: str | None = None

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        if not 0 <= self.remove_top_k < 100:
            raise ValueError(f"remove_top_k is a percentage in [0, 100), got {self.remove_top_k}")
        if self.reward_noise_std < 0:
            raise ValueError(f"reward_noise_std must be >= 0, got {self.reward_noise_std}")
        for name in ("eval_every", "log_every", "checkpoint_every", "eval_episodes", "loss_variance_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def run_id(self) -> str:
        parts = [self.algo, self.dataset.replace("/", "_"), f"k{self.remove_top_k:g}", f"noise{self.reward_noise_std:g}"]
        for spec in self.extra_corruptions:
            parts.append("-".join(f"{value}" for key, value in sorted(spec.items()) if key != "seed"))
        parts.append(f"s{self.seed}")
        return "__".join(parts)

    def identity(self) -> dict[str, Any]:
        """The fields that define what a run computes."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        for name in NON_IDENTITY_FIELDS:
            data.pop(name, None)
        return data


# ---------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------
def resolve_device(requested: str) -> torch.device:
    """'auto' -> cuda, else mps, else cpu; an unavailable explicit device is an error."""
    requested = requested.lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise HybridRLError("--device cuda asked for, but this PyTorch build sees no CUDA GPU; use --device cpu or --device auto")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise HybridRLError("--device mps asked for, but MPS is not available here; use --device cpu or --device auto")
    if requested not in ("cpu", "mps") and not requested.startswith("cuda"):
        raise HybridRLError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(requested)


def discounted_returns_to_go(rewards: np.ndarray, bounds: np.ndarray, discount: float) -> np.ndarray:
    """Per transition, sum_t gamma^t r_t to its trajectory's end (float64), via lfilter."""
    from scipy.signal import lfilter

    out = np.empty(len(rewards), dtype=np.float64)
    for start, end in bounds:
        segment = rewards[start:end][::-1].astype(np.float64)
        out[start:end] = lfilter([1.0], [1.0, -discount], segment)[::-1]
    return out


def mc_diagnostic_indices(dataset: OfflineDataset, discount: float, size: int, seed: int) -> np.ndarray:
    """Transitions whose Monte-Carlo return is a fair value target.

    A trajectory cut by a timeout loses its tail: from a state within ~1/(1-gamma) steps of
    the cut, the MC return underestimates the true value. Keep transitions of terminated
    trajectories, and of timed-out ones only if at least 3/(1-gamma) steps remain (the
    missing tail then weighs gamma^300 ~ 5% at gamma 0.99).
    """
    bounds = dataset.trajectory_bounds()
    horizon = int(round(3.0 / (1.0 - discount)))
    candidates = []
    for start, end in bounds:
        if dataset.terminals[end - 1]:
            candidates.append(np.arange(start, end))
        elif end - start > horizon:
            candidates.append(np.arange(start, end - horizon))
    if not candidates:
        return np.zeros(0, dtype=np.int64)
    pool = np.concatenate(candidates)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))


def package_versions() -> dict[str, str]:
    from .data.factory import package_versions as versions

    return {**versions(), "python": platform.python_version()}


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_float(value: torch.Tensor | float) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------
def evaluate(algorithm, envs: list, obs_mean: np.ndarray | None, obs_std: np.ndarray | None, seed: int) -> list[float]:
    """Undiscounted returns of one episode per env with the deterministic policy."""

    def policy(obs: np.ndarray) -> np.ndarray:
        return algorithm.act((obs - obs_mean) / obs_std if obs_mean is not None else obs, deterministic=True)

    algorithm.train_mode(False)
    returns = episode_returns(envs, policy, seed)
    algorithm.train_mode(True)
    return returns


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def prepare_dataset(config: TrainConfig) -> tuple[OfflineDataset, OfflineDataset, list[dict]]:
    """Load the dataset and apply the configured corruptions: (original, corrupted, records)."""
    from .data.corruption import apply_corruptions
    from .data.loader import load_dataset

    original = load_dataset(config.dataset, cache_dir=config.cache_dir, mirror=config.mirror)
    specs: list[dict] = []
    if config.remove_top_k > 0:
        specs.append({"kind": "remove_top_k", "k": config.remove_top_k})
    if config.reward_noise_std > 0:
        specs.append({"kind": "reward_noise", "std": config.reward_noise_std})
    specs.extend(dict(spec) for spec in config.extra_corruptions)
    corrupted, records = apply_corruptions(original, specs, seed=config.seed)
    return original, corrupted, records


def train(config: TrainConfig, run_dir: str | Path | None = None, *, resume: bool = True) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one training run; returns its summary.

    A run that is already complete (summary.json present) is returned as is. A failure
    writes summary.json with status "failed" and re-raises, so a grid can record it and
    go on with the other runs.
    """
    run_dir = Path(run_dir or Path(config.results_dir) / config.run_id)
    summary_path = run_dir / "summary.json"
    check_compatible(run_dir, config)
    if resume and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") in ("completed", "diverged"):
            return summary
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        return _train(config, run_dir, resume=resume, started=started)
    except Exception as exc:
        summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "run_id": config.run_id, "wall_time_s": time.time() - started}
        atomic_write_text(summary_path, json.dumps(summary, indent=2))
        raise


def check_compatible(run_dir: Path, config: TrainConfig) -> None:
    """Raise ConfigMismatchError if run_dir holds a run of another configuration."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text())
    except json.JSONDecodeError:
        return  # written atomically, so this is foreign junk: it will be overwritten
    recorded, wanted = existing.get("identity", {}), config.identity()
    if recorded != wanted:
        differing = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        raise ConfigMismatchError(
            f"{run_dir} holds a run with a different configuration (fields {differing}); "
            "use another --results directory or delete that run directory"
        )


def _train(config: TrainConfig, run_dir: Path, *, resume: bool, started: float) -> dict[str, Any]:
    from tqdm import tqdm

    from .algos.registry import make_algorithm, make_config
    from .data.loader import make_env

    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    original, dataset, records = prepare_dataset(config)
    overrides = dict(config.algo_overrides)
    if hasattr(make_config(config.algo, config.dataset, overrides), "max_steps"):
        overrides.setdefault("max_steps", config.total_steps)  # LR schedules span the run
    algorithm = make_algorithm(config.algo, dataset.obs_dim, dataset.act_dim, device, dataset_name=config.dataset, overrides=overrides)
    algo_config = algorithm.config
    discount = float(getattr(algo_config, "discount", 0.99))

    obs_mean = obs_std = None
    if getattr(algo_config, "normalize_observations", False):
        obs_mean, obs_std = dataset.observation_stats()
    reward_scale = dataset.iql_reward_scale() if getattr(algo_config, "reward_scaling", "none") == "iql" else 1.0
    bounds = dataset.trajectory_bounds()
    sampler = TransitionSampler(dataset, device, obs_mean=obs_mean, obs_std=obs_std, reward_scale=reward_scale, seed=config.seed)

    # Fixed diagnostic batch: Q(s, a) against the discounted Monte-Carlo return (scaled rewards).
    mc_returns = discounted_returns_to_go(dataset.rewards * reward_scale, bounds, discount)
    mc_index = mc_diagnostic_indices(dataset, discount, size=2048, seed=config.seed)
    mc_obs = dataset.observations[mc_index]
    if obs_mean is not None:
        mc_obs = (mc_obs - obs_mean) / obs_std
    mc_batch = {
        "observations": torch.as_tensor(mc_obs, dtype=torch.float32, device=device),
        "actions": torch.as_tensor(dataset.actions[mc_index], device=device),
        "mc_returns": torch.as_tensor(mc_returns[mc_index], dtype=torch.float32, device=device),
    }
    q_bound = config.q_divergence_factor * float(np.abs(dataset.rewards * reward_scale).max() or 1.0) / (1.0 - discount)

    env_name = original.metadata.get("env_name", config.dataset)
    envs = [make_env(dataset) for _ in range(config.eval_episodes)]
    eval_seed = 1_000_000 + 10_000 * config.seed

    metrics_path = run_dir / "metrics.jsonl"
    checkpoint_path = run_dir / "checkpoint.pt"
    loss_window = torch.zeros(config.loss_variance_window, device=device)
    step = 0
    evals: list[float] = []
    best = -math.inf
    dataset_checksum = original.checksum()
    if resume and checkpoint_path.exists():
        _check_same_data(run_dir, dataset_checksum)
        try:
            state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        except Exception as exc:
            raise HybridRLError(f"checkpoint {checkpoint_path} is unreadable ({type(exc).__name__}); delete it to restart the run from scratch") from None
        algorithm.load_state_dict(state["algorithm"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        loss_window = state["loss_window"].to(device)
        step, evals, best = state["step"], state["evals"], state["best"]
        with open(metrics_path, "r+b") as handle:  # drop lines logged after the checkpoint
            handle.truncate(state["metrics_bytes"])
    else:
        metrics_path.write_text("")

    corrupted_summary = dataset.summary()
    full_config = {
        "run_format_version": RUN_FORMAT_VERSION,
        "run_id": config.run_id,
        "identity": config.identity(),
        **json.loads(json.dumps(dataclasses.asdict(config))),
        "env_name": env_name,
        "dataset_checksum": dataset_checksum,
        "dataset_metadata": _jsonable(original.metadata),
        "dataset_summary": original.summary(),
        "corrupted_dataset_summary": corrupted_summary,
        "corruption": {"remove_top_k": config.remove_top_k, "reward_noise_std": config.reward_noise_std, "extra": list(config.extra_corruptions)},
        "corruption_records": _jsonable(records),
        "algo_config": _jsonable(dataclasses.asdict(algo_config)),
        "reward_scale": reward_scale,
        "observation_normalization": obs_mean is not None,
        "q_divergence_bound": q_bound,
        "versions": package_versions(),
        "device_resolved": str(device),
        "hostname": platform.node(),
    }
    atomic_write_text(run_dir / "config.json", json.dumps(full_config, indent=2))

    writer = None
    if config.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))

    status, diverged_at = "completed", None
    bar = tqdm(total=config.total_steps, initial=step, desc=config.run_id, disable=not config.progress, mininterval=2, leave=False)
    with open(metrics_path, "a") as metrics_file:

        def log(record: dict[str, Any]) -> None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "step":
                        writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

        while step < config.total_steps:
            metrics = algorithm.update(sampler.sample(algo_config.batch_size))
            if "critic_loss" in metrics:
                loss_window[step % config.loss_variance_window] = metrics["critic_loss"].detach()
            step += 1
            bar.update(1)

            if step % config.log_every == 0 or step == config.total_steps:
                record = {"step": step, "kind": "train", **{k: to_float(v) for k, v in metrics.items()}}
                filled = min(step, config.loss_variance_window)
                if "critic_loss" in metrics:
                    record["critic_loss_rolling_var"] = to_float(loss_window[:filled].var()) if filled > 1 else 0.0
                    record["critic_loss_rolling_mean"] = to_float(loss_window[:filled].mean())
                    with torch.no_grad():
                        q_mc = algorithm.q_values(mc_batch["observations"], mc_batch["actions"]) if len(mc_index) else None
                    if q_mc is not None:
                        record["mc_return_mean"] = to_float(mc_batch["mc_returns"].mean())
                        record["q_dataset_mean"] = to_float(q_mc.mean())
                        record["q_minus_mc_mean"] = to_float((q_mc - mc_batch["mc_returns"]).mean())
                log(record)
                reason = _divergence_reason(record, q_bound)
                if reason:
                    status, diverged_at = "diverged", step
                    log({"step": step, "kind": "event", "event": "diverged", "reason": reason})
                    break

            if step % config.eval_every == 0 or step == config.total_steps:
                returns = evaluate(algorithm, envs, obs_mean, obs_std, seed=eval_seed)
                mean_return = float(np.mean(returns))
                score = normalized_score(env_name, mean_return)
                scores = [normalized_score(env_name, r) for r in returns]
                evals.append(score)
                best = max(best, score)
                log({
                    "step": step, "kind": "eval", "return_mean": mean_return, "return_std": float(np.std(returns)),
                    "normalized_return_mean": score, "normalized_return_std": float(np.std(scores)), "episode_returns": returns,
                })
                bar.set_postfix(score=f"{score:.1f}")

            if step % config.checkpoint_every == 0 and step < config.total_steps:
                metrics_file.flush()
                _save_checkpoint(checkpoint_path, algorithm, sampler, loss_window, step, evals, best, metrics_path.stat().st_size, device)
    bar.close()
    if writer is not None:
        writer.close()
    for env in envs:
        env.close()

    summary = {
        "status": status,
        "run_id": config.run_id,
        "steps_done": step,
        "diverged_at_step": diverged_at,
        "final_normalized_return": final_score(evals),
        "last_normalized_return": evals[-1] if evals else float("nan"),
        "best_normalized_return": best if evals else float("nan"),
        "num_evaluations": len(evals),
        "dataset_normalized_return": corrupted_summary.get("normalized_return_mean"),
        "wall_time_s": time.time() - started,
    }
    # The final checkpoint makes the finished run's weights available for later analysis.
    _save_checkpoint(checkpoint_path, algorithm, sampler, loss_window, step, evals, best, metrics_path.stat().st_size, device)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _check_same_data(run_dir: Path, dataset_checksum: str) -> None:
    """A checkpoint may only be resumed on the very data it was trained on: a dataset id can
    come to mean other data (a regenerated dataset, a replaced local file)."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    recorded = json.loads(path.read_text()).get("dataset_checksum")
    if recorded is not None and recorded != dataset_checksum:
        raise ConfigMismatchError(
            f"{run_dir} was trained on different data under the same dataset id (checksum {recorded[:12]} != {dataset_checksum[:12]}); "
            "delete that run directory to train on the current data, or restore the original dataset file"
        )


def _divergence_reason(record: dict[str, Any], q_bound: float) -> str | None:
    for key in ("critic_loss", "actor_loss", "value_loss"):
        if key in record and not math.isfinite(record[key]):
            return f"{key} is {record[key]}"
    for key in ("q_max", "q_min", "q_mean"):
        if key in record and (not math.isfinite(record[key]) or abs(record[key]) > q_bound):
            return f"{key} = {record[key]:.3g} beyond the bound {q_bound:.3g}"
    return None


def _save_checkpoint(path: Path, algorithm, sampler, loss_window, step, evals, best, metrics_bytes, device) -> None:
    state = {
        "algorithm": algorithm.state_dict(),
        "sampler": sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "loss_window": loss_window,
        "step": step,
        "evals": evals,
        "best": best,
        "metrics_bytes": metrics_bytes,
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples so json.dumps accepts the value."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
