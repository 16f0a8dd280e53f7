"""Replay buffers for online data: on the training device (with exact checkpoints) and on the host.

Phase II's online stage appends the transitions its environments produce and samples
minibatches from them (alone, or mixed with the offline data) many times per environment
step. Keeping the buffer as device tensors makes a sample one gather on the device, with
no host-to-device copy of a batch; its own ``torch.Generator`` makes the sequence of
batches a function of the seed. ``state_dict`` holds the filled rows, the write position
and the generator, so a checkpointed run resumes with the very same buffer and draws.

``ReplayBuffer`` is the host (numpy) buffer of the behaviour-policy training, which turns
its contents into a medium-replay dataset.

Conventions are those of ``OfflineDataset``: ``terminals`` are true terminations (no
bootstrap), ``timeouts`` are time-limit truncations (bootstrapped), and a sampled batch's
``dones`` are the terminals only.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .dataset import OfflineDataset, TransitionSampler

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


class DeviceReplayBuffer:
    """Fixed-capacity FIFO buffer of transitions held as tensors on ``device``.

    Shapes: observations ``(capacity, obs_dim)``, actions ``(capacity, act_dim)``, rewards,
    terminals and timeouts ``(capacity,)`` (float32; flags as 0/1). When full, new rows
    overwrite the oldest.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device | str = "cpu", *, seed: int = 0,
                 extra_fields: tuple[str, ...] = ()) -> None:
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = int(obs_dim), int(act_dim), int(capacity)
        self.device = torch.device(device)
        # extra_fields: per-transition scalars that batches carry too (Cal-QL's "mc_returns").
        self.fields = (*FIELDS, *extra_fields)
        shapes = {"observations": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_observations": (obs_dim,), "terminals": (), "timeouts": (),
                  **{name: () for name in extra_fields}}
        self.tensors = {key: torch.zeros((self.capacity, *shape), dtype=torch.float32, device=self.device) for key, shape in shapes.items()}
        self.position = 0  # next row to write
        self.size = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __len__(self) -> int:
        return self.size

    def add(self, transitions: Mapping[str, Any]) -> None:
        """Append ``n`` transitions: every field of ``FIELDS`` as an array or tensor with a
        leading dimension ``n`` (for example one step of ``n`` environments)."""
        missing = [key for key in self.fields if key not in transitions]
        if missing:
            raise ValueError(f"transitions lack {missing}; give all of {list(self.fields)}")
        values = {key: torch.as_tensor(np.asarray(transitions[key]) if not isinstance(transitions[key], torch.Tensor) else transitions[key],
                                       dtype=torch.float32, device=self.device) for key in self.fields}
        n = len(values["rewards"])
        if n > self.capacity:
            raise ValueError(f"adding {n} transitions to a buffer of capacity {self.capacity}")
        for key, value in values.items():
            expected = tuple(self.tensors[key].shape[1:])
            if tuple(value.shape) != (n, *expected):
                raise ValueError(f"'{key}' has shape {tuple(value.shape)}, expected {(n, *expected)}")
        rows = (self.position + torch.arange(n, device=self.device)) % self.capacity
        for key, value in values.items():
            self.tensors[key][rows] = value
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A uniform minibatch: observations, actions, rewards, next_observations and dones
        (terminals only: a timeout is bootstrapped)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.rows(torch.randint(self.size, (batch_size,), device=self.device, generator=self.generator))

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of the given stored rows (``sample``'s fields)."""
        batch = {key: self.tensors[key][index] for key in ("observations", "actions", "rewards", "next_observations")}
        batch["dones"] = self.tensors["terminals"][index]
        for key in self.fields[len(FIELDS):]:
            batch[key] = self.tensors[key][index]
        return batch

    def _ordered_rows(self) -> torch.Tensor:
        """Stored rows, oldest first."""
        if self.size < self.capacity:
            return torch.arange(self.size, device=self.device)
        return (self.position + torch.arange(self.capacity, device=self.device)) % self.capacity

    def as_dataset(self, name: str, metadata: dict | None = None) -> OfflineDataset:
        """Everything stored, oldest first, as an OfflineDataset (host arrays)."""
        rows = self._ordered_rows()
        host = {key: self.tensors[key][rows].cpu().numpy() for key in FIELDS}
        return OfflineDataset(
            observations=host["observations"], actions=host["actions"], rewards=host["rewards"],
            next_observations=host["next_observations"], terminals=host["terminals"] > 0.5, timeouts=host["timeouts"] > 0.5,
            name=name, metadata=metadata or {},
        )

    def state_dict(self) -> dict[str, Any]:
        """The filled rows (clones), write position, size and the sampling generator."""
        return {
            "capacity": self.capacity,
            "position": self.position,
            "size": self.size,
            "tensors": {key: value[:self.size].clone() for key, value in self.tensors.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` exactly (a buffer of the same capacity and sizes)."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay state was saved with capacity {state['capacity']}, this buffer has {self.capacity}")
        size = int(state["size"])
        for key, value in self.tensors.items():
            saved = state["tensors"][key]
            if tuple(saved.shape) != (size, *value.shape[1:]):
                raise ValueError(f"replay state's '{key}' has shape {tuple(saved.shape)}, expected {(size, *value.shape[1:])}")
            value.zero_()
            value[:size] = saved.to(self.device)
        self.position, self.size = int(state["position"]), size
        self.generator.set_state(state["generator"])


SAMPLING_MODES = ("symmetric", "uniform", "online_only")


class MixedSampler:
    """Minibatches from offline data and an online replay buffer, in one of three modes:

    ``symmetric``   a fixed fraction ``online_fraction`` of every batch from the online
                    buffer, the rest from the offline data (RLPD, Ball et al. 2023; Cal-QL);
                    all offline while the online buffer is still empty;
    ``uniform``     one combined buffer: every row of both equally likely, so the online share
                    grows with the buffer (IQL fine-tuning, Kostrikov et al. 2022; CORL);
    ``online_only`` the online buffer alone, the offline data dropped (WSRL; SAC from scratch).

    Both sources hold transitions already preprocessed the same way (normalised observations,
    scaled rewards). Random streams: the offline sampler's and the buffer's own generators,
    plus this sampler's generator for the ``uniform`` split; all three are in ``state_dict``
    except the buffer's (the buffer checkpoints itself with its contents).
    """

    def __init__(self, offline: TransitionSampler | None, online: DeviceReplayBuffer, mode: str, online_fraction: float = 0.5, *, seed: int = 0) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; use one of {', '.join(SAMPLING_MODES)}")
        if offline is None and mode != "online_only":
            raise ValueError(f"sampling mode {mode!r} needs offline data; use online_only without it")
        if not 0.0 < online_fraction <= 1.0:
            raise ValueError(f"online_fraction must be in (0, 1], got {online_fraction}")
        self.offline, self.online, self.mode, self.online_fraction = offline, online, mode, float(online_fraction)
        self.generator = torch.Generator(device=online.device)
        self.generator.manual_seed(int(seed))

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        if self.mode == "online_only":
            return self.online.sample(batch_size)
        if self.mode == "symmetric":
            num_online = int(round(batch_size * self.online_fraction)) if len(self.online) else 0
            parts = [self.offline.sample(batch_size - num_online)] if num_online < batch_size else []
            if num_online:
                parts.append(self.online.sample(num_online))
            return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        offline_size = self.offline.size
        index = torch.randint(offline_size + len(self.online), (batch_size,), device=self.online.device, generator=self.generator)
        from_offline = index < offline_size
        offline_rows = {key: value[index[from_offline]] for key, value in self.offline.tensors.items()}
        online_rows = self.online.rows(index[~from_offline] - offline_size)
        return {key: torch.cat([offline_rows[key], online_rows[key]]) for key in offline_rows}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "offline": self.offline.state_dict() if self.offline is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        if self.offline is not None:
            self.offline.load_state_dict(state["offline"])


class ReplayBuffer:
    """Fixed-capacity FIFO buffer of transitions for online RL (SAC, Phase II fine-tuning).

    Stores numpy arrays (cheap appends from vectorized envs); samples with a numpy Generator.
    ``as_dataset()`` returns everything stored in insertion order as an OfflineDataset,
    which is how the dataset factory turns SAC's buffer into a medium-replay dataset.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, *, seed: int = 0, info_dims: dict[str, int] | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.observations = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), np.float32)
        self.terminals = np.zeros(capacity, bool)
        self.timeouts = np.zeros(capacity, bool)
        self.infos = {key: np.zeros((capacity, dim), np.float32) for key, dim in (info_dims or {}).items()}
        self.position = 0  # next row to write
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add_batch(self, obs, actions, rewards, next_obs, terminals, timeouts, infos: dict[str, np.ndarray] | None = None) -> None:
        """Append a batch of transitions (e.g. one step of a vectorized env)."""
        n = len(obs)
        rows = (self.position + np.arange(n)) % self.capacity
        self.observations[rows] = obs
        self.actions[rows] = actions
        self.rewards[rows] = rewards
        self.next_observations[rows] = next_obs
        self.terminals[rows] = terminals
        self.timeouts[rows] = timeouts
        for key, value in (infos or {}).items():
            self.infos[key][rows] = value
        self.position = int((self.position + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        index = self.rng.integers(0, self.size, size=batch_size)
        return {
            "observations": self.observations[index],
            "actions": self.actions[index],
            "rewards": self.rewards[index],
            "next_observations": self.next_observations[index],
            "dones": self.terminals[index].astype(np.float32),
        }

    def _ordered_rows(self) -> np.ndarray:
        if self.size < self.capacity:
            return np.arange(self.size)
        return (self.position + np.arange(self.capacity)) % self.capacity

    _ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")

    def state_dict(self) -> dict[str, Any]:
        """The filled rows (copies, in storage order), write position, size, the sampling
        generator's state and any info arrays."""
        return {
            **{key: getattr(self, key)[:self.size].copy() for key in self._ARRAYS},
            "infos": {key: value[:self.size].copy() for key, value in self.infos.items()},
            "position": self.position,
            "size": self.size,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` exactly into a buffer of the same capacity. A buffer of
        a larger capacity (a behaviour training continued with more steps) gets the rows
        oldest first, as a buffer that had the larger capacity from the start holds them:
        the saved layout would point the next write at the oldest row of a full buffer."""
        size, position = int(state["size"]), int(state["position"])
        if size > self.capacity:
            raise ValueError(f"replay state holds {size} rows, more than this buffer's capacity {self.capacity}")
        rows = np.arange(size)
        if size != self.capacity:
            rows = (position + rows) % max(size, 1)  # the saved rows are a full ring or unwrapped
            position = size
        for key in self._ARRAYS:
            getattr(self, key)[:size] = state[key][rows]
        for key, value in state.get("infos", {}).items():
            self.infos[key][:size] = value[rows]
        self.position, self.size = position, size
        self.rng.bit_generator.state = state["rng"]

    def as_dataset(self, name: str, metadata: dict | None = None) -> OfflineDataset:
        rows = self._ordered_rows()
        return OfflineDataset(
            observations=self.observations[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            next_observations=self.next_observations[rows],
            terminals=self.terminals[rows],
            timeouts=self.timeouts[rows],
            name=name,
            infos={key: value[rows] for key, value in self.infos.items()},
            metadata=metadata or {},
        )
