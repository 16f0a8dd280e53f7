"""Behaviour cloning: the baseline every offline RL method must beat (CORL's ``any_percent_bc``
with 100% of the data).

A deterministic tanh-MLP actor regresses the dataset actions:

    L(phi) = E_(s,a)~D [ mean_i (pi_phi(s)_i - a_i)^2 ]   (mean over batch and action dims)

BC has no critic: ``update`` reports ``actor_loss`` and ``grad_norm_actor`` only (no
``critic_loss``, no Q statistics) and ``q_values`` raises ``NotImplementedError``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Algorithm, Batch, Metrics
from .update import step_optimizer
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


class BC(Algorithm):
    """Deterministic behaviour cloning."""

    name = "bc"

    def __init__(self, obs_dim: int, act_dim: int, config: BCConfig = BCConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(actor=DeterministicPolicy(obs_dim, act_dim, config.hidden))
        self.optimizers = {"actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)}

    def update(self, batch: Batch) -> Metrics:
        loss, metrics = bc_loss(self.actor, batch)
        metrics["grad_norm_actor"] = step_optimizer(self.optimizers["actor"], loss, list(self.actor.parameters()))
        self.total_updates += 1
        return metrics

    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("BC learns no critic: there are no Q-values to report")


SPEC = AlgorithmSpec(
    name="bc", display_name="BC", algorithm=BC, config=BCConfig, source="behaviour cloning (CORL's BC)",
    has_critic=False, loss_variance_power=None, color="#2ca02c", cpu_updates_per_second=600.0,
)
