"""Implicit Q-Learning (Kostrikov, Nair & Levine 2022, "Offline Reinforcement Learning with
Implicit Q-Learning", ICLR; arXiv:2110.06169).

IQL never evaluates the critic at an action outside the dataset. Equations (sec. 4 of the
paper; Qbar = the Polyak-averaged target critics, min over the twin pair):

- value, expectile regression (eq. 5):
      L_V(psi) = E_(s,a)~D [ L2_tau( Qbar(s, a) - V_psi(s) ) ],   L2_tau(u) = |tau - 1(u < 0)| u^2
- critic, SARSA-style backup through V (eq. 6), for each of the twin critics:
      L_Q(theta) = E_(s,a,r,s')~D [ (r + gamma (1 - d) V_psi(s') - Q_theta(s, a))^2 ]
- actor, advantage-weighted regression (eq. 7; AWR, Peng et al. 2019):
      L_pi(phi) = -E_(s,a)~D [ min(exp(beta (Qbar(s, a) - V_psi(s))), 100) log pi_phi(a | s) ]

Update order follows CORL (the source of the published scores in docs/algorithms.md): all three
losses are computed from the parameters at the start of the step (the advantage and the
bootstrap value V(s') come from the V *before* its update), then V, Q and the actor each
take one Adam step, the actor's LR follows a cosine decay to 0 over ``max_steps`` and the
target critics are Polyak-averaged. (The official JAX code updates the actor and Q with the
freshly updated V; the difference is one step of V lag.)

Data preprocessing is the trainer's job, steered by the config: ``normalize_observations``
(CORL: True) and ``reward_scaling`` ("iql": rewards times 1000 / (max - min trajectory
return), the official code's locomotion scaling, which CORL uses only for hopper-medium and
hopper-medium-replay; see ``reference_overrides``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from .base import Algorithm, Batch, Metrics
from .update import Phase, UpdateRule
from .spec import AlgorithmSpec, FinetuneRecipe, check_reward_scaling
from ..core.networks import DeterministicPolicy, EnsembleCritic, GaussianPolicy, ValueNetwork
from .sac import q_statistics, td_loss

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (obs, act) -> (E, B)
VFunction = Callable[[torch.Tensor], torch.Tensor]  # obs -> (B,)


@dataclass(frozen=True)
class IQLConfig:
    """IQL hyperparameters; defaults are the paper's MuJoCo settings as run by CORL.

    ``max_steps`` is the length of training in gradient steps: the trainer must set it (the
    actor's cosine LR schedule reaches 0 there). ``normalize_observations`` and
    ``reward_scaling`` are read by the trainer when it builds the sampler.
    """

    hidden: tuple[int, ...] = (256, 256)  # V, both critics and the actor
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critics
    expectile: float = 0.7  # tau in L2_tau of eq. 5
    beta: float = 3.0  # inverse temperature of the AWR weights (eq. 7)
    max_weight: float = 100.0  # clip of exp(beta * A), as in the official code
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    batch_size: int = 256
    max_steps: int = 1_000_000  # cosine decay horizon of the actor LR
    deterministic_actor: bool = False  # CORL's hopper setting: tanh-MLP actor, weighted MSE
    normalize_observations: bool = True
    reward_scaling: str = "none"  # "none" | "iql" (x 1000 / (max - min trajectory return))

    def __post_init__(self) -> None:
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"IQL expectile must be in (0, 1), got {self.expectile}")
        if self.beta < 0 or self.max_weight <= 0:
            raise ValueError(f"IQL needs beta >= 0 and max_weight > 0, got beta={self.beta}, max_weight={self.max_weight}")
        if self.max_steps <= 0:
            raise ValueError(f"IQL max_steps (the cosine LR horizon) must be positive, got {self.max_steps}")
        check_reward_scaling(self.reward_scaling)


# Per-dataset settings of CORL's IQL configs (configs/offline/iql/<robot>/<level>_v2.yaml);
# every other dataset uses the defaults. Keys are "<robot>-<level>".
REFERENCE_OVERRIDES: dict[str, dict[str, Any]] = {
    "hopper-medium": {"reward_scaling": "iql", "deterministic_actor": True, "tau": 0.001},
    "hopper-medium-replay": {"reward_scaling": "iql", "deterministic_actor": True, "tau": 0.001},
}


# ---------------------------------------------------------------------------------------
# Losses: pure functions of networks (as callables) and a batch
# ---------------------------------------------------------------------------------------
def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean asymmetric squared loss L2_tau(u) = |tau - 1(u < 0)| u^2 (IQL eq. 3/5).

    ``diff`` = target - prediction, any shape. With tau > 0.5, predictions *below* the target
    (u > 0) cost tau and those above cost 1 - tau, so the minimiser is an upper expectile.
    """
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def iql_value_loss(q_target_fn: QFunction, v_fn: VFunction, batch: Batch, expectile: float) -> tuple[torch.Tensor, Metrics]:
    """IQL eq. 5: expectile regression of V(s) onto min_j Qbar_j(s, a) over dataset actions.

    Returns the loss and metrics. Besides 0-d diagnostics the metrics carry ``advantages``,
    the detached per-sample A(s, a) = min_j Qbar_j(s, a) - V(s) ``(B,)``, which the actor loss
    reuses (the caller pops it before logging, as with ``sac_actor_loss``'s ``log_prob``).
    """
    with torch.no_grad():
        target_q = q_target_fn(batch["observations"], batch["actions"]).min(dim=0).values
    v = v_fn(batch["observations"])
    diff = target_q - v
    loss = expectile_loss(diff, expectile)
    adv = diff.detach()
    return loss, {
        "value_loss": loss.detach(),
        "v_mean": v.detach().mean(),
        "adv_mean": adv.mean(),
        "adv_std": adv.std(),
        "adv_max": adv.max(),
        "advantages": adv,
    }


def iql_q_loss(q_fn: QFunction, v_fn: VFunction, batch: Batch, discount: float) -> tuple[torch.Tensor, Metrics]:
    """IQL eq. 6: regress each critic onto y = r + gamma (1 - d) V(s'); summed over critics.

    No bootstrap through terminals (d = 1); timeouts are not terminals and are bootstrapped.
    The sum over the twin critics matches the official code (CORL averages: a factor of 2
    that Adam cancels).
    """
    with torch.no_grad():
        next_v = v_fn(batch["next_observations"]).detach()
        target = batch["rewards"] + discount * (1.0 - batch["dones"]) * next_v
    q = q_fn(batch["observations"], batch["actions"])
    loss = td_loss(q, target)
    return loss, {"critic_loss": loss.detach(), "target_q_mean": target.mean(), **q_statistics("q", q)}


def awr_weights(adv: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """exp(beta * A) clipped above at ``max_weight`` (IQL eq. 7, official code's clip of 100)."""
    return torch.exp(beta * adv).clamp(max=max_weight)


def iql_actor_loss(
    policy: GaussianPolicy | DeterministicPolicy,
    batch: Batch,
    advantages: torch.Tensor,
    beta: float,
    max_weight: float = 100.0,
) -> tuple[torch.Tensor, Metrics]:
    """IQL eq. 7: advantage-weighted behaviour cloning of the dataset actions.

    Gaussian actor: -E[w log pi(a|s)] (log-likelihood of the untransformed Gaussian with a
    tanh mean, as in the official code). Deterministic actor (CORL's hopper setting):
    E[w ||pi(s) - a||^2]. ``advantages`` ``(B,)`` are treated as constants.
    """
    adv = advantages.detach()
    weights = awr_weights(adv, beta, max_weight)
    if isinstance(policy, GaussianPolicy):
        bc_losses = -policy.log_prob(batch["observations"], batch["actions"])
    else:
        bc_losses = (policy(batch["observations"]) - batch["actions"]).pow(2).sum(dim=-1)
    loss = (weights * bc_losses).mean()
    # exp(beta A) > max_weight <=> beta A > log(max_weight): no overflow-prone comparison.
    clipped = (beta * adv > math.log(max_weight)).float().mean()
    return loss, {
        "actor_loss": loss.detach(),
        "weight_mean": weights.mean(),
        "weight_max": weights.max(),
        "weight_clipped_frac": clipped,
    }


# ---------------------------------------------------------------------------------------
# The algorithm: networks, optimizers, and the order of the steps
# ---------------------------------------------------------------------------------------
def iql_losses(actor, critic, target_critic, value, batch: Batch, cfg: "IQLConfig") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Metrics]:
    """The three IQL losses of one step (value, Q, actor) and their diagnostics.

    All use the parameters from the start of the step (as CORL does); the actor's
    advantages come from the value loss's forward pass. Shared by ``IQL.update`` and the
    vmapped population so the wiring exists once.
    """
    value_loss, value_metrics = iql_value_loss(target_critic, value, batch, cfg.expectile)
    advantages = value_metrics.pop("advantages")
    critic_loss, critic_metrics = iql_q_loss(critic, value, batch, cfg.discount)
    actor_loss, actor_metrics = iql_actor_loss(actor, batch, advantages, cfg.beta, cfg.max_weight)
    with torch.no_grad():
        # Like every other diagnostic, measured with the parameters before this step.
        q_policy = critic(batch["observations"], actor.deterministic(batch["observations"])).min(dim=0).values
    metrics = {**value_metrics, **critic_metrics, **actor_metrics, "q_policy_mean": q_policy.mean()}
    return value_loss, critic_loss, actor_loss, metrics


def iql_step(nets: Any, batch: Batch, draws: None) -> tuple[dict[str, torch.Tensor], Metrics]:
    """IQL's one phase: the three losses at the step's start, stepped value, Q, actor."""
    value_loss, critic_loss, actor_loss, metrics = iql_losses(nets.actor, nets.critic, nets.target_critic, nets.value, batch, nets.config)
    return {"value": value_loss, "critic": critic_loss, "actor": actor_loss}, metrics


# The three losses share no parameters (V's loss sees the critic only as the frozen target,
# Q's loss sees V under no_grad, the actor's loss gets detached advantages), so each group's
# gradient is its own loss's. The actor LR decays by cosine over ``max_steps`` (optax's
# cosine_decay_schedule, as the official code).
IQL_UPDATE = UpdateRule(networks=("value", "critic", "actor"), phases=(Phase("update", iql_step, ("value", "critic", "actor")),),
                        cosine_lr=("actor", "max_steps"))


class IQL(Algorithm):
    """IQL with twin critics, an expectile value network and an AWR actor.

    ``update`` metrics (0-d tensors): value_loss, v_mean, adv_mean/std/max, critic_loss,
    target_q_mean, q_mean/std/min/max (critics at dataset actions), q_policy_mean (min
    critic at the actor's mean action), actor_loss, weight_mean/max/clipped_frac,
    grad_norm_value/critic/actor.
    """

    name = "iql"
    update_rule = IQL_UPDATE

    def __init__(self, obs_dim: int, act_dim: int, config: IQLConfig = IQLConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        if config.deterministic_actor:
            actor: GaussianPolicy | DeterministicPolicy = DeterministicPolicy(obs_dim, act_dim, config.hidden)
        else:
            actor = GaussianPolicy(obs_dim, act_dim, config.hidden)
        self.register(
            actor=actor,
            critic=EnsembleCritic(obs_dim, act_dim, config.hidden, ensemble_size=2),
            value=ValueNetwork(obs_dim, config.hidden),
        )
        self.register(target_critic=copy.deepcopy(self.critic).requires_grad_(False))
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr),
            "value": torch.optim.Adam(self.value.parameters(), lr=config.value_lr),
        }
        # CosineAnnealingLR(T_max=max_steps, eta_min=0) = optax.cosine_decay_schedule(lr, max_steps).
        self.schedulers = {"actor": CosineAnnealingLR(self.optimizers["actor"], T_max=config.max_steps)}

    def start_online(self) -> None:
        """The cosine schedule ended with pretraining; online the actor LR is the constant
        ``actor_lr`` (the official fine-tuning configuration; CORL's periodic scheduler would
        climb back by accident)."""
        self.config = dataclasses.replace(self.config, max_steps=max(1, self.total_updates))
        self.optimizers["actor"].param_groups[0]["lr"] = self.config.actor_lr


# Compiled: ~7 ms saved per update on 2 cores, ~35-50 s cold compilation: break-even ~6k steps.
SPEC = AlgorithmSpec(
    name="iql", display_name="IQL", algorithm=IQL, config=IQLConfig,
    source="Kostrikov, Nair & Levine 2022, ICLR", reference_settings=REFERENCE_OVERRIDES,
    color="#1f77b4", cpu_updates_per_second=113.0, compile_min_steps=10_000,
    finetune=FinetuneRecipe(parent_algos=("iql",), sampling="uniform", utd=1, source="Kostrikov et al. 2022, IQL fine-tuning"),
)
