"""The run layer every training run stands on, Phase I and Phase II alike: the run's book
(its directory: config.json, metrics.jsonl, checkpoints, summary.json, TensorBoard and
Weights & Biases), its lock, the compatibility check that lets a run resume only under the
configuration that wrote it, the failure record, the device, and the dispatch of single runs
and populations. ``train.py`` builds Phase I runs on it, ``finetune.py`` the runs with an
online stage.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..core.errors import HybridRLError
from ..core.fileio import LockHeld, atomic_torch_save, atomic_write_text, held_exclusively
from ..core.provenance import source_revision
from ..data.dataset import OfflineDataset, truncated_tail_steps
from ..data.refs import normalized_score
from ..data.views import mc_returns_to_go, run_preprocessing
from ..core.run_format import (CHECKPOINT_FILE, CONFIG_FILE, FAILED, METRICS_FILE, RUN_FORMAT_VERSION, RUN_LOCK_FILE, SUMMARY_FILE, COMPLETED,
                         DIVERGED, final_score, finished_summary)


ProgressCallback = Callable[[str, int], None]  # (run_id, step), called at every train log
RunConfig = Any  # a run's configuration: configs.TrainConfig, or configs.FinetuneConfig for a run with an online stage


class ConfigMismatchError(HybridRLError):
    """An existing run directory was written by a different configuration."""


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


def mc_diagnostic_indices(dataset: OfflineDataset, discount: float, size: int, seed: int) -> np.ndarray:
    """Transitions whose Monte-Carlo return is a fair value target.

    A trajectory cut by a timeout loses its tail: from a state within ~1/(1-gamma) steps of
    the cut, the MC return underestimates the true value. Keep transitions of terminated
    trajectories, and of timed-out ones only if at least 3/(1-gamma) steps remain (the
    missing tail then weighs gamma^300 ~ 5% at gamma 0.99).
    """
    bounds = dataset.trajectory_bounds()
    horizon = truncated_tail_steps(discount)
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
    from ..core.provenance import package_versions as versions

    return {**versions(), "python": platform.python_version()}


def to_float(value: torch.Tensor | float) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


@contextlib.contextmanager
def run_lock(run_dir: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the run directory's lock while training it: never two writers of one run (a
    second grid on the same results, a worker left over from a killed grid). Raises
    RunBusyError if another process still holds it after ``wait_s`` seconds; a lock is
    released when its holder exits.

    Locally a busy run means a second grid, so the default is not to wait. A Ray task
    waits longer (``ray_launcher.RUN_LOCK_WAIT_S``): a network filesystem keeps the lock of
    a node that died until its lease runs out (about 90 s on NFSv4), and the retried task
    must still resume the run.
    """
    def busy(exc: LockHeld) -> Exception:
        return RunBusyError(f"run {run_dir.name} is being trained by another process ({exc}); wait for it to finish or stop it")

    with held_exclusively(run_dir / RUN_LOCK_FILE, busy, wait_s=wait_s):
        yield


class RunBusyError(HybridRLError):
    """Another process is training this run directory right now."""


def finished_summary_for(run_dir: Path, config: RunConfig, resume: bool) -> dict[str, Any] | None:
    """The summary of a finished run in ``run_dir`` (None if it must still run); raises
    ConfigMismatchError if the directory belongs to another configuration."""
    check_compatible(run_dir, config)
    return finished_summary(run_dir) if resume else None


def record_failure(run_dir: Path, config: RunConfig, exc: BaseException | str, started: float | None = None) -> None:
    """summary.json with status "failed" and the error, so reports list the run."""
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    summary = {"status": FAILED, "error": error, "run_id": config.run_id, "wall_time_s": time.time() - started if started else None}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))


def check_compatible(run_dir: Path, config: RunConfig, *, identity_of: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                     remedy: str = "use another --results directory or delete that run directory") -> None:
    """Raise ConfigMismatchError (ending with ``remedy``) if run_dir holds a run of another
    configuration: its config.json's recorded ``identity``, or for a directory that records
    only its fields (a behaviour training's), ``identity_of`` those fields."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text())
    except json.JSONDecodeError:
        return  # written atomically, so this is foreign junk: it will be overwritten
    recorded = existing.get("identity", {}) if identity_of is None else identity_of(existing)
    wanted = config.identity()
    if recorded != wanted:
        differing = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        raise ConfigMismatchError(f"{run_dir} holds a run with a different configuration (fields {differing}); {remedy}")


class RunBook:
    """One run's bookkeeping, shared by the single-run and the population trainers.

    Everything about a run except its gradient steps: the data-derived preprocessing and
    diagnostics (observation statistics, reward scale, the Monte-Carlo batch, the
    divergence bound), its evaluation envs, its files (config.json, metrics.jsonl,
    checkpoint.pt, summary.json) and its progress (step, evaluations, best score, status).
    A population keeps one RunBook per member, so every member's run directory has exactly
    the form and content rules of a single run's.
    """

    def __init__(self, config: RunConfig, run_dir: Path, device: torch.device, original: OfflineDataset,
                 dataset: OfflineDataset, records: list[dict], algo_config: Any, started: float,
                 on_progress: ProgressCallback | None = None) -> None:
        from ..data.loader import make_env

        self.config, self.run_dir, self.device = config, run_dir, device
        self.original, self.dataset, self.records, self.algo_config = original, dataset, records, algo_config
        self.started = started
        self.on_progress = on_progress
        self.discount = float(getattr(algo_config, "discount", 0.99))
        self.preprocessing = preprocessing = run_preprocessing(dataset, algo_config)
        self.obs_mean, self.obs_std, self.reward_scale = preprocessing.obs_mean, preprocessing.obs_std, preprocessing.reward_scale

        # Fixed diagnostic batch: Q(s, a) against the discounted Monte-Carlo return (scaled rewards).
        mc_returns = self.mc_returns = mc_returns_to_go(dataset, self.discount, self.reward_scale)
        mc_index = mc_diagnostic_indices(dataset, self.discount, size=2048, seed=config.seed)
        mc_obs = dataset.observations[mc_index]
        if self.obs_mean is not None:
            mc_obs = (mc_obs - self.obs_mean) / self.obs_std
        self.mc_size = len(mc_index)
        self.mc_batch = {
            "observations": torch.as_tensor(mc_obs, dtype=torch.float32, device=device),
            "actions": torch.as_tensor(dataset.actions[mc_index], device=device),
            "mc_returns": torch.as_tensor(mc_returns[mc_index], dtype=torch.float32, device=device),
        }
        self.q_bound = config.q_divergence_factor * float(np.abs(dataset.rewards * self.reward_scale).max() or 1.0) / (1.0 - self.discount)

        self.env_name = original.metadata.get("env_name", config.dataset)
        self.envs = [make_env(dataset) for _ in range(config.eval_episodes)]
        self.eval_seed = 1_000_000 + 10_000 * config.seed
        self.dataset_checksum = original.checksum()
        self.metrics_path = run_dir / METRICS_FILE
        self.checkpoint_path = run_dir / CHECKPOINT_FILE
        self.loss_window = torch.zeros(config.loss_variance_window, device=device)
        self.step = 0
        self.evals: list[float] = []
        self.best = -math.inf
        self.status, self.diverged_at = COMPLETED, None
        self.done = False
        self._metrics_file = None
        self._writer = None
        self._wandb = None
        self.written_config: dict[str, Any] = {}

    # --- start ------------------------------------------------------------------------------
    def resume_state(self, resume: bool) -> dict[str, Any] | None:
        """The run's checkpoint (progress restored here; the caller restores the algorithm,
        sampler and RNG from it), or None for a fresh start (metrics.jsonl emptied)."""
        if not (resume and self.checkpoint_path.exists()):
            self.metrics_path.write_text("")
            return None
        _check_same_data(self.run_dir, self.dataset_checksum)
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as exc:
            raise HybridRLError(f"checkpoint {self.checkpoint_path} is unreadable ({type(exc).__name__}); delete it to restart the run from scratch") from None
        self.loss_window = state["loss_window"].to(self.device)
        self.step, self.evals, self.best = state["step"], state["evals"], state["best"]
        with open(self.metrics_path, "r+b") as handle:  # drop lines logged after the checkpoint
            handle.truncate(state["metrics_bytes"])
        return state

    def write_config(self, **extra: Any) -> None:
        config = self.config
        full_config = {
            "run_format_version": RUN_FORMAT_VERSION,
            "run_id": config.run_id,
            "identity": config.identity(),
            **json.loads(json.dumps(dataclasses.asdict(config))),
            "env_name": self.env_name,
            "dataset_checksum": self.dataset_checksum,
            "dataset_metadata": _jsonable(self.original.metadata),
            "dataset_summary": self.original.summary(),
            "corrupted_dataset_summary": self.dataset.summary(),
            "corruption": {"remove_top_k": config.remove_top_k, "reward_noise_std": config.reward_noise_std, "extra": list(config.extra_corruptions)},
            "corruption_records": _jsonable(self.records),
            "algo_config": _jsonable(dataclasses.asdict(self.algo_config)),
            "settings": _jsonable(config.settings()),
            "reward_scale": self.reward_scale,
            "observation_normalization": self.obs_mean is not None,
            "q_divergence_bound": self.q_bound,
            "versions": package_versions(),
            **({"source": source} if (source := source_revision()) else {}),
            "device_resolved": str(self.device),
            "hostname": platform.node(),
            **_jsonable(extra),
        }
        atomic_write_text(self.run_dir / CONFIG_FILE, json.dumps(full_config, indent=2))
        self.written_config = full_config

    def open_log(self) -> None:
        self._metrics_file = open(self.metrics_path, "a")
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.config.wandb:
            from ..core.trackers import start_wandb_run

            job = "finetune" if "online" in self.written_config else "train"
            self._wandb = start_wandb_run(self.config.wandb, self.run_dir, self.config.run_id, json.loads(json.dumps(self.written_config, default=str)), job)

    # --- during training ---------------------------------------------------------------------
    def due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.config.total_steps

    def log(self, record: dict[str, Any]) -> None:
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self._writer is not None or self._wandb is not None:
            from ..core.trackers import scalars

            values = scalars(record)
            for key, value in values.items() if self._writer is not None else ():
                self._writer.add_scalar(key, value, record["step"])
            if self._wandb is not None and values:
                self._wandb.log(values, step=record["step"])

    def log_train(self, values: dict[str, float], loss_window: torch.Tensor, q_mc: torch.Tensor | None) -> bool:
        """Write a "train" record (losses, rolling critic-loss statistics, Q against the MC
        return); True if the run diverged, in which case it is marked so."""
        record = {"step": self.step, "kind": "train", **values}
        if self.on_progress is not None:
            self.on_progress(self.config.run_id, self.step)
        if "critic_loss" in values:
            filled = min(self.step, self.config.loss_variance_window)
            record["critic_loss_rolling_var"] = to_float(loss_window[:filled].var()) if filled > 1 else 0.0
            record["critic_loss_rolling_mean"] = to_float(loss_window[:filled].mean())
            if q_mc is not None:
                record["mc_return_mean"] = to_float(self.mc_batch["mc_returns"].mean())
                record["q_dataset_mean"] = to_float(q_mc.mean())
                record["q_minus_mc_mean"] = to_float((q_mc - self.mc_batch["mc_returns"]).mean())
        self.log(record)
        reason = _divergence_reason(record, self.q_bound)
        if reason:
            self.status, self.diverged_at = DIVERGED, self.step
            self.log({"step": self.step, "kind": "event", "event": "diverged", "reason": reason})
        return reason is not None

    def eval_record(self, returns: list[float]) -> dict[str, Any]:
        """The "eval" record of these episode returns at the current step."""
        mean_return = float(np.mean(returns))
        scores = [normalized_score(self.env_name, r) for r in returns]
        return {
            "step": self.step, "kind": "eval", "return_mean": mean_return, "return_std": float(np.std(returns)),
            "normalized_return_mean": normalized_score(self.env_name, mean_return), "normalized_return_std": float(np.std(scores)),
            "episode_returns": returns,
        }

    def log_eval(self, returns: list[float]) -> float:
        record = self.eval_record(returns)
        score = record["normalized_return_mean"]
        self.evals.append(score)
        self.best = max(self.best, score)
        self.log(record)
        return score

    def save_checkpoint(self, algorithm_state: dict[str, Any], stage_states: Sequence[dict[str, Any]], loss_window: torch.Tensor) -> None:
        """Atomically write checkpoint.pt (the single-run format, whichever learner trained it).

        The first stage's state (the offline sampler's) is stored under "sampler", as in
        the format's first version; the states of later stages, if the schedule has any,
        under "stages".
        """
        self._metrics_file.flush()
        state = {
            "algorithm": algorithm_state,
            "sampler": stage_states[0],
            **({"stages": list(stage_states[1:])} if len(stage_states) > 1 else {}),
            # What a policy needs to act on raw observations (hybrid_rl.runs.policy.load_policy).
            "preprocessing": {"obs_mean": self.obs_mean, "obs_std": self.obs_std, "reward_scale": self.reward_scale},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "loss_window": loss_window,
            "step": self.step,
            "evals": self.evals,
            "best": self.best,
            "metrics_bytes": self.metrics_path.stat().st_size,
        }
        atomic_torch_save(state, self.checkpoint_path)

    # --- end ---------------------------------------------------------------------------------
    def finish(self, algorithm_state: dict[str, Any], stage_states: Sequence[dict[str, Any]], loss_window: torch.Tensor) -> dict[str, Any]:
        """Final checkpoint (the finished run's weights stay available), then summary.json."""
        self.save_checkpoint(algorithm_state, stage_states, loss_window)
        self.close()
        summary = {
            "status": self.status,
            "run_id": self.config.run_id,
            "steps_done": self.step,
            "diverged_at_step": self.diverged_at,
            "final_normalized_return": final_score(self.evals),
            "last_normalized_return": self.evals[-1] if self.evals else float("nan"),
            "best_normalized_return": self.best if self.evals else float("nan"),
            "num_evaluations": len(self.evals),
            "dataset_normalized_return": self.dataset.summary().get("normalized_return_mean"),
            "wall_time_s": time.time() - self.started,
        }
        atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        self.done = True
        return summary

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        for env in self.envs:
            env.close()
        self.envs = []


def mc_extra(book: RunBook) -> dict[str, np.ndarray] | None:
    """The Monte-Carlo returns-to-go that batches must carry for algorithms that use them
    (Cal-QL's floor): the book's, in the run's reward units."""
    from ..algos.registry import algorithm_spec

    return {"mc_returns": book.mc_returns} if algorithm_spec(book.config.algo).uses_mc_returns else None


def run_population(configs: Sequence[Any], locked: Callable[..., dict[str, dict[str, Any]] | None], single: Callable[..., dict[str, Any]], *,
                   resume: bool, lock_wait_s: float, on_progress: ProgressCallback | None) -> dict[str, dict[str, Any]]:
    """The population frame shared by ``train_population`` and ``finetune.finetune_population``:
    finished members are skipped, every other member's run lock is held while ``locked``
    trains them together; if it returns None (members at different steps), or only one is
    left, they run one by one with ``single``."""
    if len({config.run_id for config in configs}) != len(configs):
        raise ValueError("a population's configs must be distinct runs (two have the same run id)")
    one_by_one = dict(resume=resume, lock_wait_s=lock_wait_s, on_progress=on_progress)
    summaries: dict[str, dict[str, Any]] = {}
    todo = []
    for config in configs:
        finished = finished_summary_for(Path(config.results_dir) / config.run_id, config, resume)
        if finished is not None:
            summaries[config.run_id] = finished
        else:
            todo.append(config)
    if len(todo) <= 1:
        return {**summaries, **{config.run_id: single(config, **one_by_one) for config in todo}}
    run_dirs = [Path(config.results_dir) / config.run_id for config in todo]
    with contextlib.ExitStack() as locks:
        for run_dir in run_dirs:
            run_dir.mkdir(parents=True, exist_ok=True)
            locks.enter_context(run_lock(run_dir, lock_wait_s))
        trained = locked(todo, run_dirs, resume=resume, on_progress=on_progress)
    if trained is None:  # members at different steps: one by one (each takes its own lock)
        trained = {config.run_id: single(config, **one_by_one) for config in todo}
    return {**summaries, **trained}


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _check_same_data(run_dir: Path, dataset_checksum: str) -> None:
    """A checkpoint may only be resumed on the very data it was trained on: a dataset id can
    come to mean other data (a regenerated dataset, a replaced local file)."""
    path = run_dir / CONFIG_FILE
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


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples so json.dumps accepts the value."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
