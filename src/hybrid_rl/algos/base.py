"""The interface every algorithm exposes to the trainer.

An algorithm owns its networks and optimizers and offers:
- ``update(batch) -> metrics``: one gradient step on a batch of (normalized) transitions.
  ``batch`` maps ``observations, actions, rewards, next_observations, dones`` to tensors
  (``(B, obs_dim)``, ``(B, act_dim)``, ``(B,)``, ``(B, obs_dim)``, ``(B,)``). Metrics are
  0-d tensors, never Python floats: reading them forces a host sync, so the trainer does it
  only every ``log_every`` steps.
- ``act(obs, deterministic=True)``: actions for a ``(N, obs_dim)`` numpy batch of
  (normalized) observations, as a ``(N, act_dim)`` numpy array in [-1, 1];
  ``explore(obs, noise)``: the stochastic policy's actions driven by given standard-normal
  ``noise`` ``(N, act_dim)`` (online stages draw it from their own seeded streams).
- ``q_values(obs, actions)``: the critic's estimate used for diagnostics, ``(B,)``.
- ``state_dict()`` / ``load_state_dict()``: networks + optimizers + schedulers, enough to
  resume bit-for-bit.

The losses themselves live in module-level pure functions (``*_loss``) that take the
networks as callables and a batch, and return ``(loss, metrics)``: no optimizer, no logging,
no I/O, so they can be unit-tested on hand-made inputs and vmapped over populations.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from .update import Batch, Metrics, UpdateRule, apply_rule


class Algorithm:
    """Shared plumbing: device, module/optimizer registries, acting, checkpoints."""

    name: str = "base"

    def __init__(self, obs_dim: int, act_dim: int, config: Any, device: torch.device | str = "cpu") -> None:
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.config = config
        self.device = torch.device(device)
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.total_updates = 0
        self.kept_metrics: dict[str, Metrics] = {}  # the latest metrics of the rule's phases that keep theirs (algos/update.py)

    # The actor used for evaluation; subclasses set self.actor.
    actor: nn.Module

    def register(self, **modules: nn.Module) -> None:
        for key, module in modules.items():
            module.to(self.device)
            self.modules[key] = module
            setattr(self, key, module)

    # The declared gradient step (algos/update.py); None: the class writes ``update`` itself.
    update_rule: "UpdateRule | None" = None

    def update(self, batch: Batch) -> Metrics:
        if self.update_rule is None:  # pragma: no cover - interface
            raise NotImplementedError(f"{type(self).__name__} declares no update_rule and writes no update()")
        return apply_rule(self, self.update_rule, batch)

    def fixed(self, name: str) -> nn.Module:
        """Network ``name`` as a loss reads it without training it (algos/update.py). In a
        single run that is the network itself: the declared step order keeps the gradients
        such a read leaves behind out of every optimizer step."""
        return self.modules[name]

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The critic's diagnostic estimate ``(B,)`` (the rule's ``q_estimate`` of its ``(E, B)`` outputs)."""
        if self.update_rule is None:  # pragma: no cover - interface
            raise NotImplementedError(f"{type(self).__name__} declares no update_rule and writes no q_values()")
        return self.update_rule.q_estimate(self.modules["critic"](obs, actions), self.config)

    def entropy_bonus(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        """``(B,)`` the soft bonus -alpha log pi(a|s) the critic's backup adds for taking ``a``
        in ``s`` (soft-Q methods), or None when the critic learns the plain return. A
        Monte-Carlo return comparable with this critic's Q adds it at every later step."""
        return None

    def start_online(self) -> None:
        """Called once when a pretrained agent starts fine-tuning online, after its Phase I
        checkpoint is loaded and before any online update: where an algorithm's offline
        schedule must not carry over (IQL's actor LR). Default: nothing changes."""

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        single = obs_t.ndim == 1
        if single:
            obs_t = obs_t.unsqueeze(0)
        action = self.actor.deterministic(obs_t) if deterministic else self.actor.sample(obs_t)
        action = action.clamp(-1.0, 1.0).cpu().numpy()
        return action[0] if single else action

    @torch.no_grad()
    def explore(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        noise_t = torch.as_tensor(np.asarray(noise, dtype=np.float32), device=self.device)
        return self.actor.act_from_noise(obs_t, noise_t).clamp(-1.0, 1.0).cpu().numpy()

    def train_mode(self, training: bool = True) -> None:
        for module in self.modules.values():
            module.train(training)

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {key: module.state_dict() for key, module in self.modules.items()},
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
            "schedulers": {key: sched.state_dict() for key, sched in self.schedulers.items()},
            "total_updates": self.total_updates,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
        self.total_updates = int(state["total_updates"])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Tensors that are neither module parameters nor optimizer state: the kept metrics of
        the rule's phases that keep theirs, as ``<phase>_metrics`` (subclasses add log_alpha)."""
        return {f"{phase.name}_metrics": {key: value.detach().clone() for key, value in self.kept_metrics.get(phase.name, {}).items()}
                for phase in self._keeping_phases()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kept_metrics = {phase.name: {key: value.to(self.device) for key, value in state[f"{phase.name}_metrics"].items()}
                             for phase in self._keeping_phases() if state.get(f"{phase.name}_metrics")}

    def _keeping_phases(self) -> list[Any]:
        return [phase for phase in self.update_rule.phases if phase.keep_metrics] if self.update_rule is not None else []


class LearnedTemperature:
    """For algorithms with SAC's learned entropy temperature (a ``log_alpha`` tensor, not a
    module parameter): it goes into the checkpoint with the networks, and a soft backup's
    entropy bonus is computed from it."""

    log_alpha: torch.Tensor

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    @torch.no_grad()
    def entropy_bonus(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        """-alpha log pi(a|s) ``(B,)`` when the critic's backup subtracts the entropy term
        (``config.backup_entropy``): eq. 3 of SAC's 2018 paper, the soft value
        V(s) = E[Q(s, a) - alpha log pi(a|s)]. None otherwise."""
        if not self.config.backup_entropy:
            return None
        return -self.log_alpha.exp().detach() * self.actor.log_prob(obs, actions)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "log_alpha": self.log_alpha.detach().clone()}  # type: ignore[misc]

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)  # type: ignore[misc]
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
