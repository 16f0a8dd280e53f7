"""OfflineDataset (D4RL-layout arrays + trajectory boundaries) and its device-resident sampler.

Conventions (those of D4RL and its ``qlearning_dataset``):
- Arrays are aligned by transition index ``i``: ``observations[i]``, ``actions[i]``,
  ``rewards[i]``, ``next_observations[i]``, ``terminals[i]``, ``timeouts[i]``.
- An episode ends at ``i`` when ``terminals[i] or timeouts[i]``. A trailing run of
  transitions with neither flag (a file that stops mid-episode) is the last, partial
  trajectory.
- For Q-learning, ``done`` is the true terminal only: a timeout is a truncation, and the
  value of the next state must still be bootstrapped.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

ARRAY_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def trajectory_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """``(num_trajectories, 2)`` int64 [start, end) rows of the episodes that the end flags
    delimit: an episode ends at a terminal or a timeout, and the rows after the last flag
    form a trailing partial episode."""
    ends = np.flatnonzero(np.logical_or(terminals, timeouts)) + 1
    if len(ends) == 0 or ends[-1] != len(terminals):
        ends = np.append(ends, len(terminals))
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([starts, ends], axis=1).astype(np.int64)


def trajectory_rows(bounds: np.ndarray, trajectory_indices: np.ndarray) -> np.ndarray:
    """The rows of the given trajectories (``bounds`` as ``trajectory_bounds``), in the order given."""
    return np.concatenate([np.arange(bounds[t, 0], bounds[t, 1]) for t in trajectory_indices]).astype(np.int64)


def truncated_tail_steps(discount: float) -> int:
    """Steps before a time-limit cut whose Monte-Carlo return is not a fair value target:
    3 / (1 - gamma) (300 at gamma 0.99), beyond which the missing tail weighs gamma^300 ~ 5%."""
    return int(round(3.0 / (1.0 - discount)))


def discounted_returns_to_go(rewards: np.ndarray, bounds: np.ndarray, discount: float) -> np.ndarray:
    """Per transition, sum_t gamma^t r_t to its trajectory's end (float64), via lfilter."""
    from scipy.signal import lfilter

    out = np.empty(len(rewards), dtype=np.float64)
    for start, end in bounds:
        segment = rewards[start:end][::-1].astype(np.float64)
        out[start:end] = lfilter([1.0], [1.0, -discount], segment)[::-1]
    return out


@dataclass(frozen=True, eq=False)
class OfflineDataset:
    """A D4RL-style dataset held as numpy arrays.

    Shapes: observations/next_observations ``(N, obs_dim)`` float32, actions ``(N, act_dim)``
    float32, rewards ``(N,)`` float32, terminals/timeouts ``(N,)`` bool. ``infos`` holds
    optional per-transition arrays (``qpos``, ``qvel``, ``action_log_probs``), ``metadata``
    free-form provenance (source, env id, generation recipe, checksums ...).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    name: str = "unnamed"
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.observations)
        if n == 0:
            raise ValueError(f"dataset {self.name!r} is empty: it has no transitions")
        for key in ARRAY_FIELDS:
            if len(getattr(self, key)) != n:
                raise ValueError(
                    f"dataset {self.name!r}: '{key}' has {len(getattr(self, key))} rows but "
                    f"'observations' has {n}; every array must have one row per transition"
                )
        for key, value in self.infos.items():
            if len(value) != n:
                raise ValueError(f"dataset {self.name!r}: infos/{key} has {len(value)} rows, expected {n}")
        if self.observations.ndim != 2 or self.next_observations.shape != self.observations.shape:
            raise ValueError(
                f"dataset {self.name!r}: observations {self.observations.shape} and next_observations "
                f"{self.next_observations.shape} must both be (N, obs_dim)"
            )
        if self.actions.ndim != 2:
            raise ValueError(f"dataset {self.name!r}: actions must be (N, act_dim), got {self.actions.shape}")
        if self.rewards.ndim != 1 or self.terminals.ndim != 1 or self.timeouts.ndim != 1:
            raise ValueError(f"dataset {self.name!r}: rewards, terminals and timeouts must be 1-D")

    # --- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    # --- trajectories ------------------------------------------------------------------
    def trajectory_bounds(self) -> np.ndarray:
        """``(num_trajectories, 2)`` int64 array of [start, end) transition index ranges."""
        return trajectory_bounds(self.terminals, self.timeouts)

    @property
    def num_trajectories(self) -> int:
        return len(self.trajectory_bounds())

    def trajectory_returns(self) -> np.ndarray:
        """Undiscounted return of every trajectory, in file order, float64."""
        bounds = self.trajectory_bounds()
        cumulative = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        return cumulative[bounds[:, 1]] - cumulative[bounds[:, 0]]

    def trajectory_lengths(self) -> np.ndarray:
        bounds = self.trajectory_bounds()
        return bounds[:, 1] - bounds[:, 0]

    def trajectory_ids(self) -> np.ndarray:
        """For every transition, the index of the trajectory it belongs to."""
        return np.repeat(np.arange(self.num_trajectories), self.trajectory_lengths())

    def discounted_returns_to_go(self, discount: float) -> np.ndarray:
        """Monte-Carlo discounted return from each transition to its trajectory's end (float64).

        Used to measure Q-value over/under-estimation against the data. For a trajectory cut
        by a timeout the tail is simply truncated, so this underestimates the true value there.
        """
        return discounted_returns_to_go(self.rewards, self.trajectory_bounds(), discount)

    # --- derived datasets ---------------------------------------------------------------
    def replace(self, **changes: Any) -> "OfflineDataset":
        """A copy with some fields replaced (arrays are shared unless replaced)."""
        return dataclasses.replace(self, **changes)

    def select_transitions(self, index: np.ndarray, *, name: str | None = None) -> "OfflineDataset":
        """A new dataset made of the transitions at `index` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        arrays = {key: getattr(self, key)[index] for key in ARRAY_FIELDS}
        infos = {key: value[index] for key, value in self.infos.items()}
        return OfflineDataset(**arrays, name=name or self.name, infos=infos, metadata=dict(self.metadata))

    def select_trajectories(self, trajectory_indices: np.ndarray, *, name: str | None = None) -> "OfflineDataset":
        """A new dataset holding whole trajectories, in file order of the given indices.

        A partial trailing trajectory stays partial; a kept trajectory never gets glued to
        its successor because its end flag (terminal or timeout) is kept with it. The one
        exception is a partial trajectory (no end flag) that is not last any more: it gets
        a timeout on its final transition so the episode structure is preserved.
        """
        bounds = self.trajectory_bounds()
        keep = np.sort(np.asarray(trajectory_indices, dtype=np.int64))
        if len(keep) == 0:
            raise ValueError(f"selecting no trajectories from {self.name!r} leaves an empty dataset")
        out = self.select_transitions(trajectory_rows(bounds, keep), name=name)
        # Mark the end of every selected trajectory that had no end flag (only possible for
        # the original trailing partial one) unless it is still last.
        ends = np.cumsum(bounds[keep, 1] - bounds[keep, 0]) - 1
        flagged = out.terminals[ends] | out.timeouts[ends]
        if not flagged[:-1].all():
            timeouts = out.timeouts.copy()
            timeouts[ends[:-1][~flagged[:-1]]] = True
            out = out.replace(timeouts=timeouts)
        return out

    # --- statistics ---------------------------------------------------------------------
    def observation_stats(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (std floored at `eps`) of observations, for state normalization."""
        mean = self.observations.mean(axis=0).astype(np.float32)
        std = (self.observations.std(axis=0) + eps).astype(np.float32)
        return mean, std

    def iql_reward_scale(self) -> float:
        """IQL's locomotion reward scale 1000 / (max - min trajectory return).

        Implicit Q-learning (Kostrikov et al. 2022), official code: rewards are multiplied by
        this factor so that the temperature beta means the same across datasets.
        """
        returns = self.trajectory_returns()
        spread = float(returns.max() - returns.min())
        if spread <= 0:
            raise ValueError(
                f"dataset {self.name!r}: all trajectory returns are equal ({returns.max():.3f}); "
                "IQL reward scaling 1000/(max-min) is undefined - disable reward scaling"
            )
        return 1000.0 / spread

    def summary(self) -> dict[str, Any]:
        """Sizes and return statistics, for printing and for run configs."""
        from .refs import normalized_score

        returns = self.trajectory_returns()
        info: dict[str, Any] = {
            "name": self.name,
            "transitions": len(self),
            "trajectories": self.num_trajectories,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "terminals": int(self.terminals.sum()),
            "timeouts": int(self.timeouts.sum()),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
        }
        env_name = self.metadata.get("env_name") or self.name
        try:
            info["normalized_return_mean"] = normalized_score(env_name, float(returns.mean()))
        except ValueError:
            pass  # not a locomotion robot: no reference scores
        return info

    def checksum(self) -> str:
        """SHA-256 over the array contents: identifies the exact data a run trained on."""
        import hashlib

        digest = hashlib.sha256()
        for key in ARRAY_FIELDS:
            array = np.ascontiguousarray(getattr(self, key))
            digest.update(key.encode())
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def concatenate_datasets(datasets: list[OfflineDataset], *, name: str, metadata: dict | None = None) -> OfflineDataset:
    """Concatenate datasets (e.g. D4RL's medium-expert = medium + expert).

    A dataset whose last trajectory is partial gets a timeout on its final transition so it
    does not merge with the first trajectory of the next one.
    """
    if not datasets:
        raise ValueError("nothing to concatenate")
    parts = []
    for ds in datasets:
        if not (ds.terminals[-1] or ds.timeouts[-1]):
            timeouts = ds.timeouts.copy()
            timeouts[-1] = True
            ds = ds.replace(timeouts=timeouts)
        parts.append(ds)
    arrays = {key: np.concatenate([getattr(ds, key) for ds in parts]) for key in ARRAY_FIELDS}
    common_infos = set.intersection(*(set(ds.infos) for ds in parts))
    infos = {key: np.concatenate([ds.infos[key] for ds in parts]) for key in sorted(common_infos)}
    return OfflineDataset(**arrays, name=name, infos=infos, metadata=metadata or {})


def build_next_observations(observations: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """next_observations for a file that lacks them, the way d4rl's ``qlearning_dataset`` does.

    ``next_observations[i] = observations[i + 1]`` is only valid inside an episode. d4rl drops
    the final transition of every timed-out episode (its successor is unknown) and the very
    last transition of the file; it keeps terminal transitions (their successor is never
    bootstrapped). Returns (next_observations for kept rows, boolean mask of kept rows).
    """
    n = len(observations)
    keep = np.ones(n, dtype=bool)
    keep[timeouts.astype(bool)] = False
    keep[-1] = False
    next_obs = np.empty_like(observations)
    next_obs[:-1] = observations[1:]
    next_obs[-1] = observations[-1]
    # A terminal's successor is never used (done = 1); keep it anyway for shape.
    return next_obs[keep], keep


# ---------------------------------------------------------------------------------------
# Device-resident sampling
# ---------------------------------------------------------------------------------------
class TransitionSampler:
    """Uniform minibatches from a dataset, held as tensors on `device`.

    Observations may be normalized ((x - mean) / std) and rewards scaled before upload, so
    sampling is a single gather per field. Randomness comes from an explicit
    ``torch.Generator`` on the same device, which makes the sequence of batches a function of
    the seed (and resumable through ``generator.get_state()``).
    """

    def __init__(
        self,
        dataset: OfflineDataset,
        device: torch.device | str = "cpu",
        *,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        reward_scale: float = 1.0,
        reward_bias: float = 0.0,
        seed: int = 0,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.device = torch.device(device)
        obs, next_obs = dataset.observations, dataset.next_observations
        if obs_mean is not None and obs_std is not None:
            obs = (obs - obs_mean) / obs_std
            next_obs = (next_obs - obs_mean) / obs_std
        to = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)  # noqa: E731
        self.tensors: dict[str, torch.Tensor] = {
            "observations": to(obs),
            "actions": to(dataset.actions),
            "rewards": to(dataset.rewards * reward_scale + reward_bias),
            "next_observations": to(next_obs),
            # done: true terminals only (a timeout is bootstrapped).
            "dones": to(dataset.terminals.astype(np.float32)),
        }
        for key, value in (extra or {}).items():
            self.tensors[key] = to(value)
        self.size = len(dataset)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        index = torch.randint(self.size, (batch_size,), device=self.device, generator=self.generator)
        return {key: value[index] for key, value in self.tensors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # The sampler of one run serves one member (the interface PopulationSampler shares).
    def member_state_dict(self, member: int) -> dict[str, Any]:
        return self.state_dict()

    def load_member_state_dict(self, member: int, state: dict[str, Any]) -> None:
        self.load_state_dict(state)
