"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications").

Used online to train the behaviour policies of the dataset factory, as the base of CQL, and
(Phase II) for offline-to-online fine-tuning. Equations refer to the 2018 applications paper:
- critic (eq. 5-6): J_Q = E[(Q(s,a) - (r + gamma (1-d) (min_j Qbar_j(s',a') - alpha log pi(a'|s'))))^2], a' ~ pi(s')
- actor (eq. 7):    J_pi = E[alpha log pi(a|s) - min_j Q_j(s,a)], a ~ pi(s) reparameterised
- temperature (eq. 18): J_alpha = E[-alpha (log pi(a|s) + target_entropy)], target -|A|
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .base import Algorithm, Batch, LearnedTemperature, Metrics
from .spec import AlgorithmSpec, FinetuneRecipe
from .update import Phase, UpdateRule
from ..core.networks import EnsembleCritic, TanhGaussianPolicy

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (obs, act) -> (E, B)


@dataclass(frozen=True)
class SACConfig:
    """Standard MuJoCo SAC hyperparameters (Haarnoja et al. 2018, table 1)."""

    hidden: tuple[int, ...] = (256, 256)
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    batch_size: int = 256
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: -act_dim
    backup_entropy: bool = True  # subtract alpha * log pi(a'|s') in the target


def sac_target(
    target_q: QFunction,
    policy: TanhGaussianPolicy,
    batch: Batch,
    alpha: torch.Tensor,
    discount: float,
    backup_entropy: bool = True,
) -> torch.Tensor:
    """Soft Bellman target y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')), ``(B,)``."""
    with torch.no_grad():
        next_actions, next_log_prob = policy.rsample(batch["next_observations"])
        next_q = target_q(batch["next_observations"], next_actions).min(dim=0).values
        if backup_entropy:
            next_q = next_q - alpha * next_log_prob
        return batch["rewards"] + discount * (1.0 - batch["dones"]) * next_q


def td_loss(q_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over critics of the mean squared TD error: q_pred ``(E, B)``, target ``(B,)``."""
    return ((q_pred - target.unsqueeze(0)) ** 2).mean(dim=1).sum()


def sac_actor_loss(critic: QFunction, policy: TanhGaussianPolicy, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """J_pi = E[alpha log pi(a|s) - min_j Q_j(s, a)] with reparameterised a ~ pi(s)."""
    actions, log_prob = policy.rsample(obs)
    q_pi = critic(obs, actions).min(dim=0).values
    loss = (alpha.detach() * log_prob - q_pi).mean()
    return loss, {"actor_loss": loss.detach(), "entropy": -log_prob.mean().detach(), "q_policy_mean": q_pi.mean().detach(), "log_prob": log_prob.detach()}


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """J_alpha = E[-alpha (log pi + target_entropy)]; written with log_alpha as the variable
    (as in most implementations) so the gradient sign is the same and alpha stays positive."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


def sac_critic_step(nets: Any, batch: Batch, draws: None) -> tuple[dict[str, torch.Tensor], Metrics]:
    """The first phase of SAC's step: the critics' TD loss on the soft target."""
    cfg = nets.config
    alpha = nets.log_alpha.exp().detach()
    loss, metrics = critic_regression(nets.critic, sac_target(nets.target_critic, nets.actor, batch, alpha, cfg.discount, cfg.backup_entropy), batch, alpha)
    return {"critic": loss}, metrics


def critic_regression(critic: QFunction, target: torch.Tensor, batch: Batch, alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """Every critic regressed onto ``target`` (the SAC family's critic loss, whatever its
    target), with the diagnostics the trainer logs."""
    q_pred = critic(batch["observations"], batch["actions"])
    loss = td_loss(q_pred, target)
    return loss, {"critic_loss": loss.detach(), "alpha": alpha, "target_q_mean": target.mean(), **q_statistics("q", q_pred)}


def actor_temperature_phase(actor_loss_fn: Callable[..., tuple[torch.Tensor, Metrics]], nets: Any, obs: torch.Tensor) -> tuple[dict[str, torch.Tensor], Metrics]:
    """The second phase of the SAC family's step, through the critic the first phase just
    updated: the actor loss (``actor_loss_fn``: SAC's, or RLPD's ensemble-mean one) and the
    temperature loss on its detached log-probabilities (the two share no parameters)."""
    alpha = nets.log_alpha.exp().detach()
    actor_loss, metrics = actor_loss_fn(nets.critic, nets.actor, obs, alpha)
    alpha_loss = temperature_loss(nets.log_alpha, metrics.pop("log_prob"), nets.target_entropy)
    return {"actor": actor_loss, "alpha": alpha_loss}, {**metrics, "alpha_loss": alpha_loss.detach()}


def sac_actor_step(nets: Any, batch: Batch, draws: None) -> tuple[dict[str, torch.Tensor], Metrics]:
    return actor_temperature_phase(sac_actor_loss, nets, batch["observations"])


# The critic first, then actor and temperature through the updated critic. The log order of
# the metrics is the one SAC's runs have always written.
SAC_UPDATE = UpdateRule(
    networks=("critic", "actor"), temperature=True, random=True, grad_norms=("critic", "actor"),
    phases=(Phase("critic", sac_critic_step, ("critic",)), Phase("actor", sac_actor_step, ("actor", "alpha"))),
    leading_metrics=("critic_loss", "alpha", "alpha_loss", "grad_norm_critic", "grad_norm_actor"),
)


def q_statistics(prefix: str, q: torch.Tensor) -> Metrics:
    """Mean/std/min/max of a ``(B,)`` or ``(E, B)`` tensor of Q-values, as 0-d tensors."""
    q = q.detach()
    return {f"{prefix}_mean": q.mean(), f"{prefix}_std": q.std(), f"{prefix}_min": q.min(), f"{prefix}_max": q.max()}


class SAC(LearnedTemperature, Algorithm):
    """SAC with twin critics and automatic entropy tuning."""

    name = "sac"
    update_rule = SAC_UPDATE

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig = SACConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(
            actor=TanhGaussianPolicy(obs_dim, act_dim, config.hidden),
            critic=EnsembleCritic(obs_dim, act_dim, config.hidden, ensemble_size=2),
        )
        self.register(target_critic=copy.deepcopy(self.critic).requires_grad_(False))
        self.log_alpha = torch.tensor(float(torch.log(torch.tensor(config.init_alpha))), device=self.device, requires_grad=True)
        self.target_entropy = float(-act_dim if config.target_entropy is None else config.target_entropy)
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=config.alpha_lr),
        }


# Compiled (2x256, from scratch): ~3.2 ms saved per update, ~30 s cold: break-even ~9,500 updates.
SPEC = AlgorithmSpec(
    name="sac", display_name="SAC", algorithm=SAC, config=SACConfig, source="Haarnoja et al. 2018",
    offline=False, compile_min_steps=10_000,
    finetune=FinetuneRecipe(parent_algos=(), sampling="online_only", utd=1, warmup_steps=5_000, random_warmup=True,
                            source="Haarnoja et al. 2018, SAC from scratch"),
)
