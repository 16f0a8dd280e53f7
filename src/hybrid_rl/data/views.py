"""Per-run views of one base dataset, and the sampler a population of runs shares.

A run's training data is its (possibly corrupted) dataset with the preprocessing its
algorithm asks for: observation normalisation with the dataset's own statistics and a
reward scale. ``run_preprocessing`` is the one place that decides both, for single runs
(``TransitionSampler``) and population members alike.

Runs whose corruptions only remove trajectories or change rewards hold no new data: their
dataset is a *view* of the base dataset (a row index plus a reward array). ``DatasetView``
expresses one run that way, from the records of ``corruption.apply_corruptions`` and the
corruption module's own row selection; ``PopulationSampler`` serves P such views from one
device-resident copy of the base arrays.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .corruption import kept_rows
from .dataset import OfflineDataset, discounted_returns_to_go

Batch = dict[str, torch.Tensor]
Tensors = dict[str, torch.Tensor]

# Corruption kinds that only change rewards: the corrupted dataset is the base dataset's
# rows with another reward array. corrupt_transitions is a view only with target "rewards".
REWARD_ONLY_KINDS = ("reward_noise", "replace_rewards", "flip_reward_sign")


def is_view_corruption(spec: Mapping[str, Any]) -> bool:
    """Whether a corruption spec (or record) leaves a view of the base dataset: trajectory
    removal or a change of rewards only. Others (observations, actions, dynamics) are not."""
    kind = spec.get("kind")
    return kind == "remove_top_k" or kind in REWARD_ONLY_KINDS or (kind == "corrupt_transitions" and spec.get("target") == "rewards")


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """How a run's transitions enter its batches: observations ``(x - obs_mean) / obs_std``
    (None: raw) and rewards ``rewards * reward_scale``."""

    obs_mean: np.ndarray | None
    obs_std: np.ndarray | None
    reward_scale: float


def run_preprocessing(dataset: OfflineDataset, algo_config: Any) -> Preprocessing:
    """The preprocessing an algorithm config asks for, computed from the run's own
    (corrupted) dataset: ``normalize_observations`` (CORL: state statistics of the training
    data) and ``reward_scaling`` "iql" (1000 / (max - min trajectory return))."""
    mean, std = dataset.observation_stats() if getattr(algo_config, "normalize_observations", False) else (None, None)
    scale = dataset.iql_reward_scale() if getattr(algo_config, "reward_scaling", "none") == "iql" else 1.0
    return Preprocessing(mean, std, float(scale))


def mc_returns_to_go(dataset: OfflineDataset, discount: float, reward_scale: float = 1.0) -> np.ndarray:
    """``(n,)`` float64 Monte-Carlo discounted return-to-go of every transition, in the run's
    (scaled) reward units, each trajectory summed to its end. A trajectory cut by a time limit
    is summed to the cut: near it the value is underestimated (the tail is unknown)."""
    return discounted_returns_to_go(dataset.rewards * reward_scale, dataset.trajectory_bounds(), discount)


@dataclass(frozen=True, eq=False)
class DatasetView:
    """One run's dataset expressed as rows of a shared base dataset.

    Attributes:
        index: ``(n,)`` int64 rows of the base dataset, in the order the run's own dataset
            holds them (sampling index ``i`` of the run means base row ``index[i]``).
        rewards: ``(n,)`` float32 rewards of the run's dataset (corrupted, not yet scaled).
        obs_mean, obs_std: ``(obs_dim,)`` float32 normalisation statistics of the run's own
            dataset, or None for raw observations (as ``TransitionSampler``).
        reward_scale, reward_bias: rewards enter the batch as ``rewards * scale + bias``.
        name: for messages.
    """

    index: np.ndarray
    rewards: np.ndarray
    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.index.ndim != 1 or self.rewards.shape != self.index.shape:
            raise ValueError(f"view {self.name!r}: index {self.index.shape} and rewards {self.rewards.shape} must both be (n,)")
        if len(self.index) == 0:
            raise ValueError(f"view {self.name!r} keeps no transitions")
        if (self.obs_mean is None) != (self.obs_std is None):
            raise ValueError(f"view {self.name!r}: give both obs_mean and obs_std, or neither")

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def full(cls, base: OfflineDataset, *, normalize_observations: bool = False, reward_scale: float = 1.0, name: str = "") -> "DatasetView":
        """The whole base dataset, uncorrupted."""
        mean, std = base.observation_stats() if normalize_observations else (None, None)
        return cls(np.arange(len(base), dtype=np.int64), base.rewards, mean, std, float(reward_scale), 0.0, name or base.name)

    @classmethod
    def from_corrupted(
        cls,
        base: OfflineDataset,
        corrupted: OfflineDataset,
        records: Sequence[Mapping[str, Any]],
        *,
        normalize_observations: bool = False,
        reward_scale: float = 1.0,
        verify: bool = True,
        name: str = "",
    ) -> "DatasetView":
        """The view of ``base`` that ``corrupted`` is, from the corruption ``records``.

        ``records`` are those of ``apply_corruptions(base, specs, seed)`` that produced
        ``corrupted``. Top-k trajectory removal narrows the row index; reward corruptions
        keep it (their rewards are taken from ``corrupted``). Corruptions of observations,
        actions or dynamics are not views and raise ValueError. With ``verify`` the
        non-reward fields of ``corrupted`` are compared with the base rows (a few
        hundred ms for a 1M-transition dataset), so a wrong record can never pass silently.

        Observation statistics (if ``normalize_observations``) come from ``corrupted``, as in
        the trainer; ``reward_scale`` is the caller's (the trainer uses
        ``corrupted.iql_reward_scale()`` when the config asks for "iql" scaling).
        """
        index = np.arange(len(base), dtype=np.int64)
        for position, record in enumerate(records):
            kind = record.get("kind")
            if kind == "remove_top_k":
                index = index[kept_rows(base.terminals[index], base.timeouts[index], record)]
            elif is_view_corruption(record):
                continue
            else:
                raise ValueError(
                    f"corruption #{position} ({kind!r}{', target ' + repr(record.get('target')) if 'target' in record else ''}) "
                    "changes more than rewards, so that run's dataset is not a view of the base dataset; "
                    "train it with its own TransitionSampler"
                )
        label = name or corrupted.name
        if len(index) != len(corrupted):
            raise ValueError(f"view {label!r}: the records keep {len(index)} transitions but the corrupted dataset has {len(corrupted)}")
        if verify:
            for key in ("observations", "actions", "next_observations", "terminals"):
                if not np.array_equal(getattr(base, key)[index], getattr(corrupted, key)):
                    raise ValueError(f"view {label!r}: '{key}' of the corrupted dataset differs from the base rows the records select")
        mean, std = corrupted.observation_stats() if normalize_observations else (None, None)
        return cls(index, np.asarray(corrupted.rewards, dtype=np.float32), mean, std, float(reward_scale), 0.0, label)

    @classmethod
    def for_run(cls, base: OfflineDataset, corrupted: OfflineDataset, records: Sequence[Mapping[str, Any]], algo_config: Any, **kwargs: Any) -> "DatasetView":
        """``from_corrupted`` with the preprocessing of ``run_preprocessing`` (as a single run's sampler)."""
        preprocessing = run_preprocessing(corrupted, algo_config)
        return cls.from_corrupted(
            base, corrupted, records, normalize_observations=preprocessing.obs_mean is not None, reward_scale=preprocessing.reward_scale, **kwargs
        )


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.blake2b(array.tobytes() + str((array.dtype, array.shape)).encode(), digest_size=16).hexdigest()


def _deduplicated(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """``arrays`` concatenated with each distinct array once, and where each one starts."""
    starts: dict[str, int] = {}
    kept: list[np.ndarray] = []
    offsets = []
    for array in arrays:
        key = _digest(array)
        if key not in starts:
            starts[key] = sum(len(a) for a in kept)
            kept.append(array)
        offsets.append(starts[key])
    return np.concatenate(kept), offsets


class PopulationSampler:
    """Uniform minibatches for P runs from one device-resident base dataset.

    Device memory: the base arrays once (observations and next observations raw; each
    run's normalisation is applied to the gathered batch, which gives the same float32
    values as normalising the whole array first), plus one int64 index set and one float32
    reward array per *distinct* view (runs with equal index sets or rewards share them).

    Sampling for run k is ``torch.randint(n_k, (B,), generator=g_k)`` with ``g_k`` seeded
    by ``seeds[k]``: the call ``TransitionSampler(dataset_k, seed=seeds[k]).sample(B)``
    makes, so the batches are identical to the single run's.

    ``extras``: per run, further per-transition float arrays in the order of its view's rows
    (Cal-QL's ``mc_returns``), which batches carry under their names as ``TransitionSampler``'s
    ``extra`` does; every run names the same fields, and equal arrays are stored once.

    ``sample_indices`` (eager: P generator calls) and ``gather`` (pure tensor code, safe to
    compile) are separate so a compiled step can include the gather.
    """

    def __init__(self, base: OfflineDataset, views: Sequence[DatasetView], seeds: Sequence[int], device: torch.device | str = "cpu",
                 extras: Sequence[Mapping[str, np.ndarray]] | None = None) -> None:
        if len(views) == 0 or len(views) != len(seeds):
            raise ValueError(f"need one seed per view, got {len(views)} views and {len(seeds)} seeds")
        extras = list(extras) if extras is not None else [{} for _ in views]
        if len(extras) != len(views) or any(set(extra) != set(extras[0]) for extra in extras):
            raise ValueError("extras need one mapping per view, all with the same field names")
        for view, extra in zip(views, extras):
            if any(len(array) != len(view) for array in extra.values()):
                raise ValueError(f"an extra field of view {view.name!r} does not have one value per row ({len(view)})")
        self.device = torch.device(device)
        self.num_agents = len(views)
        self.base_size = len(base)
        for view in views:
            if view.index.min() < 0 or view.index.max() >= len(base):
                raise ValueError(f"view {view.name!r} indexes rows outside the base dataset ({len(base)} rows)")
        to = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)  # noqa: E731
        self.base: Tensors = {
            "observations": to(base.observations),
            "actions": to(base.actions),
            "next_observations": to(base.next_observations),
            "dones": to(base.terminals.astype(np.float32)),  # true terminals only, as TransitionSampler
        }
        # Deduplicated segments, concatenated: run k's index set is
        # flat_index[index_offsets[k] : index_offsets[k] + sizes[k]], and likewise its rewards
        # (scaled on the host in float32, exactly as TransitionSampler does it) and extras.
        flat_index, index_offsets = _deduplicated([view.index.astype(np.int64) for view in views])
        flat_rewards, reward_offsets = _deduplicated(
            [np.asarray(view.rewards * view.reward_scale + view.reward_bias, dtype=np.float32) for view in views])
        self.num_index_sets, self.num_reward_arrays = len(set(index_offsets)), len(set(reward_offsets))
        self.flat_index = to(flat_index, torch.int64)
        self.flat_rewards = to(flat_rewards)
        self.index_offsets = to(index_offsets, torch.int64).unsqueeze(1)  # (P, 1)
        self.reward_offsets = to(reward_offsets, torch.int64).unsqueeze(1)  # (P, 1)
        self.flat_extras: Tensors = {}
        self.extra_offsets: Tensors = {}
        for name in extras[0]:
            flat, offsets = _deduplicated([np.asarray(extra[name], dtype=np.float32) for extra in extras])
            self.flat_extras[name] = to(flat)
            self.extra_offsets[name] = to(offsets, torch.int64).unsqueeze(1)
        self.sizes = [len(view) for view in views]
        obs_dim = base.obs_dim
        # Runs without normalisation get mean 0, std 1: (x - 0) / 1 == x exactly.
        self.obs_mean = to(np.stack([view.obs_mean if view.obs_mean is not None else np.zeros(obs_dim, np.float32) for view in views])).unsqueeze(1)
        self.obs_std = to(np.stack([view.obs_std if view.obs_std is not None else np.ones(obs_dim, np.float32) for view in views])).unsqueeze(1)
        self.seeds = [int(seed) for seed in seeds]
        self.generators = []
        for seed in self.seeds:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self.generators.append(generator)

    def sample_indices(self, batch_size: int) -> torch.Tensor:
        """``(P, batch_size)`` int64 rows of each run's own dataset (not base rows)."""
        return torch.stack(
            [torch.randint(size, (batch_size,), device=self.device, generator=generator) for size, generator in zip(self.sizes, self.generators)]
        )

    def gather(self, rows: torch.Tensor) -> Batch:
        """The batch for ``rows`` ``(P, B)``: observations/next_observations ``(P, B, obs_dim)``
        (normalised per run), actions ``(P, B, act_dim)``, rewards and dones ``(P, B)``."""
        base_rows = self.flat_index[rows + self.index_offsets]
        return {
            "observations": (self.base["observations"][base_rows] - self.obs_mean) / self.obs_std,
            "actions": self.base["actions"][base_rows],
            "rewards": self.flat_rewards[rows + self.reward_offsets],
            "next_observations": (self.base["next_observations"][base_rows] - self.obs_mean) / self.obs_std,
            "dones": self.base["dones"][base_rows],
            **{name: flat[rows + self.extra_offsets[name]] for name, flat in self.flat_extras.items()},
        }

    def sample(self, batch_size: int) -> Batch:
        return self.gather(self.sample_indices(batch_size))

    def static_tensors(self) -> list[torch.Tensor]:
        """The tensors a compiled step reads every call (none of them changes address)."""
        return [*self.base.values(), self.flat_index, self.flat_rewards, self.index_offsets, self.reward_offsets, self.obs_mean, self.obs_std,
                *self.flat_extras.values(), *self.extra_offsets.values()]

    def device_bytes(self) -> int:
        """Bytes of device memory the sampler holds (base arrays + index sets + rewards + extras + stats)."""
        tensors = [*self.base.values(), self.flat_index, self.flat_rewards, *self.flat_extras.values(), self.obs_mean, self.obs_std]
        return sum(t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> dict[str, Any]:
        return {"generators": [generator.get_state() for generator in self.generators], "seeds": list(self.seeds)}

    def member_state_dict(self, member: int) -> dict[str, Any]:
        """Member ``member``'s random stream, in ``TransitionSampler.state_dict``'s format
        (so a population member's checkpoint resumes as a single run, and vice versa)."""
        return {"generator": self.generators[member].get_state()}

    def load_member_state_dict(self, member: int, state: dict[str, Any]) -> None:
        self.generators[member].set_state(state["generator"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["seeds"]) != self.seeds:
            raise ValueError(f"sampler state was saved for seeds {state['seeds']}, this sampler has {self.seeds}")
        for generator, generator_state in zip(self.generators, state["generators"]):
            generator.set_state(generator_state)


