"""RLPD: Reinforcement Learning with Prior Data (Ball, Smith, Kostrikov & Levine 2023,
"Efficient Online Reinforcement Learning with Offline Data", ICML; arXiv:2302.02948).

No pretraining: SAC trained online from scratch, with three changes that let it use offline
data from the first step (sec. 3):

- symmetric sampling: half of every batch from the offline data, half from the online
  buffer (the trainer's ``MixedSampler`` in ``symmetric`` mode);
- LayerNorm in the critics, which bounds how far Q extrapolates beyond the data;
- a large ensemble with a random-subset target (REDQ, Chen et al. 2021): E = 10 critics,
  the Bellman target is the minimum over a random subset of 2 target critics, with SAC's
  entropy term (on for locomotion), and a high update-to-data ratio (UTD 20).

As in the reference code, every ``update`` is a critic update, and the actor and the
temperature take one step per environment step (on every ``actor_every``-th update; the
fine-tuning run sets it to its UTD). The actor maximises the mean over the ensemble.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..core.networks import EnsembleCritic, TanhGaussianPolicy
from .base import Algorithm, Batch, LearnedTemperature, Metrics
from .spec import AlgorithmSpec, FinetuneRecipe
from .sac import actor_temperature_phase, critic_regression
from .update import Phase, UpdateRule


@dataclass(frozen=True)
class RLPDConfig:
    """RLPD's locomotion settings (Ball et al. 2023, table 4)."""

    hidden: tuple[int, ...] = (256, 256)
    ensemble_size: int = 10
    target_subset: int = 2  # critics in the min of the target (REDQ's M)
    layer_norm: bool = True
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    batch_size: int = 256  # RLPD: 256, half offline and half online
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: -|A| / 2, RLPD's choice
    backup_entropy: bool = True
    actor_every: int = 1  # actor and temperature step on every n-th update (the run's UTD)

    def __post_init__(self) -> None:
        if not 1 <= self.target_subset <= self.ensemble_size:
            raise ValueError(f"RLPD needs 1 <= target_subset <= ensemble_size, got {self.target_subset} of {self.ensemble_size}")
        if self.actor_every < 1:
            raise ValueError(f"actor_every must be at least 1, got {self.actor_every}")



def rlpd_target(target_critic: EnsembleCritic, policy: TanhGaussianPolicy, batch: Batch, alpha: torch.Tensor, subset: torch.Tensor,
                discount: float, backup_entropy: bool = True) -> torch.Tensor:
    """y = r + gamma (1 - d) (min_{j in subset} Qbar_j(s', a') - alpha log pi(a'|s')), a' ~ pi(s'): ``(B,)``.

    ``subset`` ``(M,)`` holds the indices of the target critics whose minimum is taken.
    """
    with torch.no_grad():
        next_actions, next_log_prob = policy.rsample(batch["next_observations"])
        next_q = target_critic(batch["next_observations"], next_actions).index_select(0, subset).min(dim=0).values
        if backup_entropy:
            next_q = next_q - alpha * next_log_prob
        return batch["rewards"] + discount * (1.0 - batch["dones"]) * next_q


def rlpd_critic_step(nets: Any, batch: Batch, subset: torch.Tensor) -> tuple[dict[str, torch.Tensor], Metrics]:
    """The first phase of RLPD's step: the ensemble's TD loss on the random-subset target."""
    cfg = nets.config
    alpha = nets.log_alpha.exp().detach()
    target = rlpd_target(nets.target_critic, nets.actor, batch, alpha, subset, cfg.discount, cfg.backup_entropy)
    loss, metrics = critic_regression(nets.critic, target, batch, alpha)
    return {"critic": loss}, metrics


def target_subset(config: "RLPDConfig", device: torch.device) -> torch.Tensor:
    """This update's ``target_subset`` critics, drawn on the device from the global generator
    (no host sync), before anything else of the update."""
    return torch.randperm(config.ensemble_size, device=device)[: config.target_subset]


def expected_subset_min(q: torch.Tensor, subset_size: int) -> torch.Tensor:
    """E over a uniformly random ``subset_size``-subset of the ensemble of its minimum:
    ``(E, B) -> (B,)``, the value RLPD's target bootstraps with in expectation.

    With the E values sorted ascending, the k-th smallest (1-based) is the subset's minimum
    when it is drawn and the other M - 1 members come from the E - k larger ones:
    P = C(E - k, M - 1) / C(E, M).
    """
    ensemble = q.shape[0]
    weights = torch.tensor([math.comb(ensemble - k, subset_size - 1) / math.comb(ensemble, subset_size) for k in range(1, ensemble + 1)],
                           dtype=q.dtype, device=q.device)
    return (q.sort(dim=0).values * weights[:, None]).sum(dim=0)


def rlpd_actor_loss(critic: EnsembleCritic, policy: TanhGaussianPolicy, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """J_pi = E[alpha log pi(a|s) - mean_e Q_e(s, a)], a ~ pi(s) reparameterised (mean over the ensemble)."""
    actions, log_prob = policy.rsample(obs)
    q_pi = critic(obs, actions).mean(dim=0)
    loss = (alpha.detach() * log_prob - q_pi).mean()
    return loss, {"actor_loss": loss.detach(), "entropy": -log_prob.mean().detach(), "q_policy_mean": q_pi.mean().detach(), "log_prob": log_prob.detach()}


def rlpd_actor_step(nets: Any, batch: Batch, draws: torch.Tensor) -> tuple[dict[str, torch.Tensor], Metrics]:
    return actor_temperature_phase(rlpd_actor_loss, nets, batch["observations"])


def subset_min_estimate(q: torch.Tensor, config: "RLPDConfig") -> torch.Tensor:
    """The target's estimator in expectation (``expected_subset_min``): RLPD's diagnostic Q."""
    return expected_subset_min(q, config.target_subset)


# The critic every update; actor and temperature on every ``actor_every``-th (once per
# environment step), through the updated critic. The log order of the metrics is the one
# RLPD's runs have always written.
RLPD_UPDATE = UpdateRule(
    networks=("critic", "actor"), temperature=True, random=True, grad_norms=("critic", "actor"), draws=target_subset,
    phases=(Phase("critic", rlpd_critic_step, ("critic",)), Phase("actor", rlpd_actor_step, ("actor", "alpha"), every="actor_every")),
    leading_metrics=("critic_loss", "alpha", "grad_norm_critic"), q_estimate=subset_min_estimate,
)


class RLPD(LearnedTemperature, Algorithm):
    """SAC with a LayerNorm critic ensemble and a random-subset target (RLPD)."""

    name = "rlpd"
    update_rule = RLPD_UPDATE

    def __init__(self, obs_dim: int, act_dim: int, config: RLPDConfig = RLPDConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(
            actor=TanhGaussianPolicy(obs_dim, act_dim, config.hidden),
            critic=EnsembleCritic(obs_dim, act_dim, config.hidden, ensemble_size=config.ensemble_size, layer_norm=config.layer_norm),
        )
        self.register(target_critic=copy.deepcopy(self.critic).requires_grad_(False))
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device, requires_grad=True)
        self.target_entropy = float(-act_dim / 2 if config.target_entropy is None else config.target_entropy)
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=config.alpha_lr),
        }


# Compiled, end to end (2 cores, UTD 1, 2,000 updates): ~9.9 ms saved per update, ~18.5 s of
# cold compilation: break-even ~1,900 updates (docs/performance.md, "Phase II fine-tuning, end to end").
SPEC = AlgorithmSpec(
    name="rlpd", display_name="RLPD", algorithm=RLPD, config=RLPDConfig, source="Ball, Smith, Kostrikov & Levine 2023, ICML",
    offline=False, compile_min_steps=2_000,
    finetune=FinetuneRecipe(parent_algos=(), sampling="symmetric", utd=20, warmup_steps=5_000, random_warmup=True,
                            source="Ball et al. 2023, RLPD", actor_every_env_step=True),
)
