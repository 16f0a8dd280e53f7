"""Behaviour cloning: the baseline every offline RL method must beat (CORL's ``any_percent_bc``
with 100% of the data).

A deterministic tanh-MLP actor regresses the dataset actions:

    L(phi) = E_(s,a)~D [ mean_i (pi_phi(s)_i - a_i)^2 ]   (mean over batch and action dims)

BC has no critic: ``update`` reports ``actor_loss`` and ``grad_norm_actor`` only (no
``critic_loss``, no Q statistics) and ``q_values`` raises ``NotImplementedError``. Its step
is declared as a one-phase update rule (``algos/update.py``), so BC trains as vmapped
populations too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import Algorithm, Batch, Metrics
from .update import Phase, UpdateRule
from .spec import AlgorithmSpec, check_reward_scaling
from ..core.networks import DeterministicPolicy


@dataclass(frozen=True)
class BCConfig:
    """CORL's BC settings. ``reward_scaling`` is irrelevant to BC (rewards are unused) and
    kept only so every config answers the trainer's preprocessing questions."""

    hidden: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    batch_size: int = 256
    normalize_observations: bool = True
    reward_scaling: str = "none"

    def __post_init__(self) -> None:
        check_reward_scaling(self.reward_scaling)



def bc_loss(policy: DeterministicPolicy, batch: Batch) -> tuple[torch.Tensor, Metrics]:
    """MSE between pi(s) and the dataset action, averaged over batch and action dims."""
    loss = (policy(batch["observations"]) - batch["actions"]).pow(2).mean()
    return loss, {"actor_loss": loss.detach()}


def bc_phase(nets: Any, batch: Batch, draws: Any) -> tuple[dict[str, torch.Tensor], Metrics]:
    loss, metrics = bc_loss(nets.actor, batch)
    return {"actor": loss}, metrics


BC_UPDATE = UpdateRule(networks=("actor",), phases=(Phase("actor", bc_phase, ("actor",)),), targets=())


class BC(Algorithm):
    """Deterministic behaviour cloning."""

    name = "bc"
    update_rule = BC_UPDATE

    def __init__(self, obs_dim: int, act_dim: int, config: BCConfig = BCConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(actor=DeterministicPolicy(obs_dim, act_dim, config.hidden))
        self.optimizers = {"actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)}

    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("BC learns no critic: there are no Q-values to report")


SPEC = AlgorithmSpec(
    name="bc", display_name="BC", algorithm=BC, config=BCConfig, source="behaviour cloning (CORL's BC)",
    has_critic=False, loss_variance_power=None, color="#2ca02c", cpu_updates_per_second=600.0,
)
