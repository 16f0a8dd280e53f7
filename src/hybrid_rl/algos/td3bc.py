"""TD3+BC (Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning",
NeurIPS; arXiv:2106.06860): TD3 with a behaviour-cloning term in the actor loss.

- critic (TD3, Fujimoto et al. 2018): y = r + gamma (1 - d) min_j Qbar_j(s', a~'),
  a~' = clip(pibar(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma^2) (target policy
  smoothing); loss = sum over the twin critics of the mean squared TD error.
- actor (TD3+BC, sec. 5), every ``policy_freq`` critic steps:
      pi = argmax_pi E_(s,a)~D [ lambda Q_1(s, pi(s)) - (pi(s) - a)^2 ],
      lambda = alpha / mean_s |Q_1(s, pi(s))|   (detached; the paper writes the mean over
      dataset pairs, the authors' code and CORL use Q at the policy's actions, as here),
  with the squared error averaged over batch and action dims (the authors' ``F.mse_loss``).
  The target actor and target critics are Polyak-averaged on actor steps only.

Actor steps happen on updates 0, policy_freq, 2 policy_freq, ...; on the other updates the
returned actor metrics are those of the latest actor step (kept in the checkpoint, so a
resumed run reports exactly what an uninterrupted one would). The step is declared as an
update rule (``TD3BC_UPDATE``, algos/update.py), from which the single run's update and the
population step are derived.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .base import Algorithm, Batch, Metrics
from .update import Phase, UpdateRule
from .spec import AlgorithmSpec, check_reward_scaling
from ..core.networks import DeterministicPolicy, EnsembleCritic
from .sac import q_statistics, td_loss

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (obs, act) -> (E, B)
PolicyFunction = Callable[[torch.Tensor], torch.Tensor]  # obs -> actions in [-1, 1]


@dataclass(frozen=True)
class TD3BCConfig:
    """The paper's (and CORL's) MuJoCo hyperparameters."""

    hidden: tuple[int, ...] = (256, 256)
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    alpha: float = 2.5  # Q-term weight: lambda = alpha / mean |Q|
    policy_noise: float = 0.2  # std of the target smoothing noise (actions in [-1, 1])
    noise_clip: float = 0.5
    policy_freq: int = 2  # critic steps per actor step
    normalize_observations: bool = True
    reward_scaling: str = "none"

    def __post_init__(self) -> None:
        if self.policy_freq < 1:
            raise ValueError(f"policy_freq must be >= 1, got {self.policy_freq}")
        check_reward_scaling(self.reward_scaling)



def td3_target(
    target_critic: QFunction,
    target_actor: PolicyFunction,
    batch: Batch,
    discount: float,
    policy_noise: float,
    noise_clip: float,
) -> torch.Tensor:
    """Clipped double-Q target with target policy smoothing, ``(B,)`` (no gradient)."""
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_actions = target_actor(next_obs)
        noise = (torch.randn_like(next_actions) * policy_noise).clamp(-noise_clip, noise_clip)
        next_actions = (next_actions + noise).clamp(-1.0, 1.0)
        next_q = target_critic(next_obs, next_actions).min(dim=0).values
        return batch["rewards"] + discount * (1.0 - batch["dones"]) * next_q


def td3bc_actor_loss(critic: QFunction, policy: PolicyFunction, batch: Batch, alpha: float) -> tuple[torch.Tensor, Metrics]:
    """-lambda E[Q_1(s, pi(s))] + E[(pi(s) - a)^2], lambda = alpha / mean |Q_1(s, pi(s))|."""
    actions = policy(batch["observations"])
    q = critic(batch["observations"], actions)  # (E, B)
    q1 = q[0]
    lmbda = alpha / q1.abs().mean().detach()
    bc = (actions - batch["actions"]).pow(2).mean()
    loss = -lmbda * q1.mean() + bc
    return loss, {
        "actor_loss": loss.detach(),
        "bc_loss": bc.detach(),
        "lambda": lmbda,
        "q_policy_mean": q.detach().min(dim=0).values.mean(),
    }


def td3bc_critic_phase(nets: Any, batch: Batch, draws: Any) -> tuple[dict[str, torch.Tensor], Metrics]:
    """The critic's step: twin critics towards the smoothed clipped double-Q target."""
    cfg = nets.config
    target = td3_target(nets.target_critic, nets.target_actor, batch, cfg.discount, cfg.policy_noise, cfg.noise_clip)
    q = nets.critic(batch["observations"], batch["actions"])
    critic_loss = td_loss(q, target)
    return {"critic": critic_loss}, {"critic_loss": critic_loss.detach(), "target_q_mean": target.mean(), **q_statistics("q", q)}


def td3bc_actor_phase(nets: Any, batch: Batch, draws: Any) -> tuple[dict[str, torch.Tensor], Metrics]:
    """The delayed actor's step, on the critic just updated."""
    loss, metrics = td3bc_actor_loss(nets.critic, nets.actor, batch, nets.config.alpha)
    return {"actor": loss}, metrics


# The critic every update; the actor on updates 0, policy_freq, 2 policy_freq, ... (0-based),
# the targets averaged after those only; between actor steps the latest actor metrics are
# logged again. The smoothing noise is drawn inside the critic's target.
TD3BC_UPDATE = UpdateRule(
    networks=("critic", "actor"),
    phases=(Phase("critic", td3bc_critic_phase, ("critic",)),
            Phase("actor", td3bc_actor_phase, ("actor",), every="policy_freq", from_first=True, keep_metrics=True)),
    targets=(("target_critic", "critic"), ("target_actor", "actor")),
    targets_with="actor",
    leading_metrics=("critic_loss", "target_q_mean", "grad_norm_critic"),
    random=True,
)


class TD3BC(Algorithm):
    """TD3+BC with twin critics, target actor and delayed actor updates.

    ``update`` metrics (0-d tensors): critic_loss, target_q_mean, grad_norm_critic,
    q_mean/std/min/max, and from the latest actor step actor_loss, bc_loss, lambda,
    q_policy_mean (min critic at pi(s)), grad_norm_actor.
    """

    name = "td3bc"
    update_rule = TD3BC_UPDATE

    def __init__(self, obs_dim: int, act_dim: int, config: TD3BCConfig = TD3BCConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(
            actor=DeterministicPolicy(obs_dim, act_dim, config.hidden),
            critic=EnsembleCritic(obs_dim, act_dim, config.hidden, ensemble_size=2),
        )
        self.register(
            target_actor=copy.deepcopy(self.actor).requires_grad_(False),
            target_critic=copy.deepcopy(self.critic).requires_grad_(False),
        )
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr),
        }


SPEC = AlgorithmSpec(
    name="td3bc", display_name="TD3+BC", algorithm=TD3BC, config=TD3BCConfig, source="Fujimoto & Gu 2021, NeurIPS",
    color="#9467bd", cpu_updates_per_second=250.0,
)
