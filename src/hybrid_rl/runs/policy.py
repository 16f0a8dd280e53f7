"""A trained policy outside its run: load it from a run directory (or an exported file), act
on raw environment observations, evaluate or film it, hand it over as one file.

    from hybrid_rl import load_policy
    policy = load_policy("results/iql__gen-hopper-medium-v1__k60__noise0__s0")
    env = policy.make_env()
    obs, _ = env.reset(seed=0)
    action = policy.act(obs)                       # deterministic (the evaluation's action)
    policy.save("hopper-k60.pt")                   # self-contained: hybrid-rl loads it anywhere

A policy is the run's actor with everything it needs to act as in the run's evaluations:
the observation normalisation of the data it trained on, the action bounds and the
environment the data records. ``hybrid-rl policy export RUN_DIR --out FILE`` writes the file.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import HybridRLError
from ..core.fileio import atomic_torch_save
from ..core.run_format import CHECKPOINT_FILE, CONFIG_FILE, read_summary

POLICY_FORMAT = "hybrid-rl-policy"
POLICY_FORMAT_VERSION = 1
ENV_KEYS = ("gym_env_id", "gym_env_kwargs", "gym_env_spec")


@dataclass
class Policy:
    """An algorithm's actor with its observation normalisation, action bounds and environment."""

    algorithm: Any  # an algos.base.Algorithm whose actor acts
    obs_mean: np.ndarray | None
    obs_std: np.ndarray | None
    action_low: np.ndarray
    action_high: np.ndarray
    env: dict[str, Any]  # the data's recorded environment (gym_env_id, gym_env_kwargs, gym_env_spec)
    info: dict[str, Any]  # where it came from: run id, algorithm, dataset, step, versions

    @property
    def obs_dim(self) -> int:
        return self.algorithm.obs_dim

    @property
    def act_dim(self) -> int:
        return self.algorithm.act_dim

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for raw observations ``(obs_dim,)`` or ``(N, obs_dim)``: normalised as in
        training, then the actor's mean action (``deterministic``, the evaluation's) or a sample,
        within the action bounds."""
        obs = np.asarray(obs, dtype=np.float32)
        if self.obs_mean is not None:
            obs = ((obs - self.obs_mean) / self.obs_std).astype(np.float32)
        self.algorithm.train_mode(False)
        return np.clip(self.algorithm.act(obs, deterministic=deterministic), self.action_low, self.action_high)

    def make_env(self, **kwargs: Any) -> Any:
        """The environment of the policy's data (``gymnasium.make`` kwargs on top)."""
        from ..data.loader import make_env_from_metadata

        return make_env_from_metadata(self.env, self.obs_dim, self.act_dim, name=str(self.info.get("dataset", "the policy's data")), **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write the policy as one file (atomically) that ``load_policy`` reads anywhere."""
        path = Path(path)
        atomic_torch_save({
            "format": POLICY_FORMAT, "format_version": POLICY_FORMAT_VERSION, "algo": self.info["algo"],
            "algo_config": _jsonable(dataclasses.asdict(self.algorithm.config)), "obs_dim": self.obs_dim, "act_dim": self.act_dim,
            "actor": self.algorithm.actor.state_dict(), "obs_mean": self.obs_mean, "obs_std": self.obs_std,
            "action_low": self.action_low, "action_high": self.action_high, "env": self.env, "info": self.info,
        }, path)
        return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _build(algo: str, algo_config: dict[str, Any], obs_dim: int, act_dim: int) -> Any:
    from ..algos.registry import algorithm_class, config_from_dict

    return algorithm_class(algo)(obs_dim, act_dim, config_from_dict(algo, algo_config), "cpu")


def load_policy(path: str | Path) -> Policy:
    """The policy of a run directory (its final checkpoint) or of a file ``Policy.save`` wrote.
    One-line ``HybridRLError`` for anything else."""
    path = Path(path)
    if path.is_dir():
        return _from_run(path)
    if not path.is_file():
        raise HybridRLError(f"{path} is neither a run directory nor a policy file; pass RESULTS/RUN_ID or a file from hybrid-rl policy export")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise HybridRLError(f"{path} is not a readable policy file ({type(exc).__name__}); export one with hybrid-rl policy export RUN_DIR") from None
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise HybridRLError(f"{path} is not a hybrid-rl policy file; export one with hybrid-rl policy export RUN_DIR")
    algorithm = _build(payload["algo"], payload["algo_config"], payload["obs_dim"], payload["act_dim"])
    algorithm.actor.load_state_dict(payload["actor"])
    return Policy(algorithm, payload["obs_mean"], payload["obs_std"], np.asarray(payload["action_low"]), np.asarray(payload["action_high"]),
                  dict(payload["env"]), dict(payload["info"]))


def _from_run(run_dir: Path) -> Policy:
    if not (run_dir / CONFIG_FILE).exists() or not (run_dir / CHECKPOINT_FILE).exists():
        raise HybridRLError(f"{run_dir} holds no trained policy (no {CONFIG_FILE} and {CHECKPOINT_FILE}); pass RESULTS/RUN_ID of a run that has checkpointed")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    checkpoint = torch.load(run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    sizes = config["dataset_summary"]
    algorithm = _build(config["algo"], config["algo_config"], int(sizes["obs_dim"]), int(sizes["act_dim"]))
    algorithm.load_state_dict(checkpoint["algorithm"])
    preprocessing = checkpoint.get("preprocessing") or _recomputed_preprocessing(run_dir, config)
    env = {key: config["dataset_metadata"][key] for key in ENV_KEYS if key in config.get("dataset_metadata", {})}
    summary = read_summary(run_dir) or {}
    info = {"run_id": config.get("run_id", run_dir.name), "algo": config["algo"], "dataset": config.get("dataset"), "step": checkpoint.get("step"),
            "status": summary.get("status", "in progress"), "final_normalized_return": summary.get("final_normalized_return"),
            "versions": config.get("versions"), "source": config.get("source")}
    policy = Policy(algorithm, _array(preprocessing.get("obs_mean")), _array(preprocessing.get("obs_std")), np.zeros(0), np.zeros(0), env, info)
    space = policy.make_env().action_space
    policy.action_low, policy.action_high = np.asarray(space.low, dtype=np.float32), np.asarray(space.high, dtype=np.float32)
    return policy


def _array(value: Any) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float32)


def _recomputed_preprocessing(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint from before the preprocessing was stored in it: the normalisation again
    from the run's (corrupted) data, checked against its recorded checksum."""
    from ..data.views import run_preprocessing
    from .finetune import train_config_from
    from .train import prepare_dataset

    data_config = config.get("parent_identity") or config
    original, dataset, _ = prepare_dataset(train_config_from({**data_config, "results_dir": str(run_dir.parent)}))
    if config.get("dataset_checksum") and original.checksum() != config["dataset_checksum"]:
        raise HybridRLError(f"the data of {run_dir.name} changed since it was trained (checksum differs): its observation normalisation cannot be rebuilt")
    algo_config = _build(config["algo"], config["algo_config"], dataset.obs_dim, dataset.act_dim).config
    preprocessing = run_preprocessing(dataset, algo_config)
    return {"obs_mean": preprocessing.obs_mean, "obs_std": preprocessing.obs_std}
