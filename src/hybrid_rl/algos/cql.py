"""Conservative Q-Learning (Kumar, Zhou, Tucker & Levine 2020, "Conservative Q-Learning for
Offline Reinforcement Learning", NeurIPS; arXiv:2006.04779), SAC-based CQL(H).

Critic objective (eq. 4, CQL(H), no Lagrange: alpha fixed), for each twin critic Q_j:

    alpha * E_s~D [ log sum_a exp(Q_j(s, a)) - E_a~D[Q_j(s, a)] ]
      + E_(s,a,r,s')~D [ (Q_j(s, a) - (r + gamma (1 - d) min_k Qbar_k(s', a')))^2 ],   a' ~ pi(s')

with no entropy term in the backup and no max over several target actions (CORL's MuJoCo
settings). The log-sum-exp over the continuous action space is estimated by importance
sampling (appendix F): with N actions from each of Unif([-1, 1]^|A|), pi(.|s) and pi(.|s')
(all evaluated at s),

    log integral exp Q(s, a) da  ~=  T * ( logsumexp_i( (Q(s, a_i) - log p(a_i)) / T ) - log 3N ),

p the density each sample was drawn from (uniform: 0.5^|A|, policy: pi(a_i|s) resp.
pi(a_i|s') including the tanh correction), T the temperature (1). The reference
implementations (the CQL authors' code, CORL) leave out the constant -log 3N of the sample
mean. It changes no gradient, so training is identical, but keeping it makes the logged
``cql_penalty`` an estimate of the actual gap "soft-max of Q over actions minus Q on the
data" (CORL's logged ``cql_qf_diff`` = ours + log 3N; ``critic_loss`` differs by the
constant 2 alpha log 3N).

Actor and temperature are SAC's (Haarnoja et al. 2018, eq. 7 and 18; see ``sac.py``):
J_pi = E[alpha log pi(a|s) - min_j Q_j(s, a)], J_alpha = E[-alpha (log pi + target)] with
target entropy -|A|. As in CORL all losses of a step are computed with the parameters at
its start (alpha from before its update), then alpha, the actor and the critics each take
one Adam step and the target critics are Polyak-averaged.

Speed: the dataset actions and all 3N sampled actions are scored in ONE forward pass of the
ensemble critic (both critics in one batched matmul over (1 + 3N) B rows), and the 2N policy
samples come from one actor pass; nothing loops in Python.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .base import Algorithm, Batch, LearnedTemperature, Metrics
from .spec import AlgorithmSpec, FinetuneRecipe, check_reward_scaling
from .update import Phase, UpdateRule
from ..core.networks import EnsembleCritic, TanhGaussianPolicy
from .sac import q_statistics, sac_actor_loss, sac_target, td_loss, temperature_loss

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (obs, act) -> (E, B)


@dataclass(frozen=True)
class CQLConfig:
    """CQL hyperparameters; defaults are CORL's MuJoCo settings (docs/algorithms.md).

    ``normalize_observations`` and ``reward_scaling`` are read by the trainer when it builds
    the sampler (CORL: states normalized, rewards unscaled except hopper-medium).
    """

    critic_hidden: tuple[int, ...] = (256, 256, 256)  # CORL could not reach the scores with 2x256
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-5
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-5  # CORL steps log(alpha) with the policy LR
    batch_size: int = 256
    cql_alpha: float = 10.0  # weight of the conservative penalty (eq. 4's alpha)
    num_sampled_actions: int = 10  # N per source (uniform, pi(s), pi(s')): 3N per state
    cql_temperature: float = 1.0
    init_alpha: float = 1.0  # initial SAC entropy temperature
    target_entropy: float | None = None  # None: -|A|
    backup_entropy: bool = False
    orthogonal_init: bool = True
    normalize_observations: bool = True
    reward_scaling: str = "none"  # "none" | "iql" (x 1000 / (max - min trajectory return))

    def __post_init__(self) -> None:
        if self.num_sampled_actions < 1:
            raise ValueError(f"CQL needs at least one sampled action per source, got {self.num_sampled_actions}")
        if self.cql_temperature <= 0 or self.init_alpha <= 0:
            raise ValueError(f"cql_temperature and init_alpha must be positive, got {self.cql_temperature}, {self.init_alpha}")
        check_reward_scaling(self.reward_scaling)


# Per-dataset settings of CORL's CQL configs (configs/offline/cql/<robot>/<level>_v2.yaml):
# hopper-medium is the one MuJoCo dataset with normalize_reward: true, which in CORL's cql.py
# is the locomotion scaling 1000 / (max - min trajectory return). Keys are "<robot>-<level>".
REFERENCE_OVERRIDES: dict[str, dict[str, Any]] = {
    "hopper-medium": {"reward_scaling": "iql"},
}


# ---------------------------------------------------------------------------------------
# Losses: pure functions of networks (as callables) and a batch
# ---------------------------------------------------------------------------------------
def cql_sample_actions(
    policy: TanhGaussianPolicy, obs: torch.Tensor, next_obs: torch.Tensor, num_actions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3N proposal actions per state of the importance-sampled log-sum-exp (no gradient).

    Returns ``actions`` ``(3, N, B, A)`` (sources: uniform on [-1, 1]^A, pi(.|s), pi(.|s'))
    and their log-densities under the source they came from, ``(3, N, B)``.
    """
    batch_size, act_dim = obs.shape[0], policy.act_dim
    with torch.no_grad():
        # new_empty (not torch.empty) so that under vmap the draw is batched per agent.
        uniform = obs.new_empty(1, num_actions, batch_size, act_dim).uniform_(-1.0, 1.0)
        # One actor pass for both sources: rows ordered (source, sample, state).
        states = torch.stack([obs, next_obs]).unsqueeze(1).expand(2, num_actions, *obs.shape)
        policy_actions, policy_log_prob = policy.rsample(states.reshape(-1, obs.shape[-1]))
        actions = torch.cat([uniform, policy_actions.view(2, num_actions, batch_size, act_dim)])
        uniform_log_density = torch.full((1, num_actions, batch_size), act_dim * math.log(0.5), device=obs.device)
        log_density = torch.cat([uniform_log_density, policy_log_prob.view(2, num_actions, batch_size)])
    return actions, log_density


def cql_importance_sampled_logsumexp(
    q_samples: torch.Tensor, log_density: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """T * (logsumexp_k((Q_k - log p_k) / T) - log K) over K samples: ``(E, K, B), (K, B) -> (E, B)``.

    With T = 1 this is the log of the importance-sampling estimate
    (1/K) sum_k exp(Q_k) / p_k of integral exp(Q(s, a)) da (CQL appendix F), each sample
    weighted by the density of the proposal it came from. The log-densities are constants.
    """
    num_samples = q_samples.shape[1]
    weighted = q_samples - log_density.detach().unsqueeze(0)
    return temperature * (torch.logsumexp(weighted / temperature, dim=1) - math.log(num_samples))


def cql_penalty(logsumexp: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """Per-critic conservative gap E_s[logsumexp_a Q(s, a) - Q(s, a_data)]: ``(E, B), (E, B) -> (E,)``."""
    return (logsumexp - q_data).mean(dim=1)


def cql_critic_loss(
    critic: QFunction,
    policy: TanhGaussianPolicy,
    batch: Batch,
    target: torch.Tensor,
    cql_alpha: float,
    num_actions: int,
    temperature: float = 1.0,
    q_floor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """CQL(H) critic loss (eq. 4): sum over critics of TD MSE + cql_alpha * penalty.

    ``target`` ``(B,)`` is the (detached) Bellman target; the proposal actions are drawn
    here. Dataset actions and the 3N proposals per state go through ``critic`` in a single
    call with the observations repeated: ``(1 + 3N) B`` rows.

    ``q_floor`` ``(B,)`` (Cal-QL, Nakamoto et al. 2023, eq. 5.1): the Q-values of the
    *policy* proposals (pi(s) and pi(s')) enter the log-sum-exp as ``max(Q, floor)``, so the
    penalty stops pushing Q down where it is already below the floor (the Monte-Carlo
    return-to-go of the data). Uniform proposals are not floored, as in the reference code.
    """
    obs, actions = batch["observations"], batch["actions"]
    batch_size = obs.shape[0]
    sampled, log_density = cql_sample_actions(policy, obs, batch["next_observations"], num_actions)
    num_samples = 3 * num_actions
    all_actions = torch.cat([actions, sampled.reshape(num_samples * batch_size, -1)])
    all_obs = obs.repeat(1 + num_samples, 1)  # row r scores state r mod B
    q_all = critic(all_obs, all_actions)  # (E, (1 + 3N) B)
    ensemble = q_all.shape[0]
    q_data = q_all[:, :batch_size]
    q_samples = q_all[:, batch_size:].reshape(ensemble, num_samples, batch_size)
    floored: Metrics = {}
    if q_floor is not None:
        policy_q = q_samples[:, num_actions:]
        floor = q_floor.detach().reshape(1, 1, batch_size)
        floored = {"calibration_bound_rate": (policy_q.detach() < floor).float().mean()}
        q_samples = torch.cat([q_samples[:, :num_actions], torch.maximum(policy_q, floor)], dim=1)

    bellman = td_loss(q_data, target)
    logsumexp = cql_importance_sampled_logsumexp(q_samples, log_density.reshape(num_samples, batch_size), temperature)
    penalty = cql_penalty(logsumexp, q_data)  # (E,)
    loss = bellman + cql_alpha * penalty.sum()

    q_by_source = q_samples.detach().reshape(ensemble, 3, num_actions, batch_size)
    return loss, {
        "critic_loss": loss.detach(),
        "td_loss": bellman.detach(),
        "cql_penalty": penalty.detach().mean(),
        "logsumexp_mean": logsumexp.detach().mean(),
        "q_random_mean": q_by_source[:, 0].mean(),
        "q_policy_sample_mean": q_by_source[:, 1].mean(),
        "q_next_policy_sample_mean": q_by_source[:, 2].mean(),
        "target_q_mean": target.mean(),
        **q_statistics("q", q_data),
        **floored,
    }


def cql_losses(
    actor: TanhGaussianPolicy,
    critic: QFunction,
    target_critic: QFunction,
    log_alpha: torch.Tensor,
    batch: Batch,
    cfg: CQLConfig,
    target_entropy: float,
    *,
    critic_for_actor: QFunction | None = None,
    actor_for_critic: TanhGaussianPolicy | None = None,
    q_floor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Metrics]:
    """The three CQL losses of one step (temperature, actor, critic) and their diagnostics.

    All use the parameters from the start of the step (as CORL does): the SAC actor loss
    (eq. 7 of SAC) through the critic, the temperature loss from its log-probabilities, the
    Bellman target from the target critics at pi(s'), and the CQL(H) critic loss with
    proposals from the actor. Random draws happen in that order. ``critic_for_actor`` and
    ``actor_for_critic`` (default: ``critic`` and ``actor``) are the copies the actor loss
    and the critic loss see of the other network; a population passes detached copies so
    that the gradient of the summed losses is each network's own. ``q_floor``: Cal-QL's
    floor of the policy proposals' Q (see ``cql_critic_loss``). Shared by ``CQL.update``,
    ``calql.CalQL`` and the vmapped population so the wiring exists once.
    """
    critic_for_actor = critic if critic_for_actor is None else critic_for_actor
    actor_for_critic = actor if actor_for_critic is None else actor_for_critic
    alpha = log_alpha.exp().detach()
    actor_loss, actor_metrics = sac_actor_loss(critic_for_actor, actor, batch["observations"], alpha)
    alpha_loss = temperature_loss(log_alpha, actor_metrics.pop("log_prob"), target_entropy)
    target = sac_target(target_critic, actor_for_critic, batch, alpha, cfg.discount, backup_entropy=cfg.backup_entropy)
    critic_loss, critic_metrics = cql_critic_loss(
        critic, actor_for_critic, batch, target, cfg.cql_alpha, cfg.num_sampled_actions, cfg.cql_temperature, q_floor
    )
    metrics = {**critic_metrics, **actor_metrics, "alpha": alpha, "alpha_loss": alpha_loss.detach()}
    return alpha_loss, actor_loss, critic_loss, metrics


def cql_step(nets: Any, batch: Batch, draws: None, q_floor: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], Metrics]:
    """CQL's one phase: the three losses at the step's start, stepped temperature, actor,
    critic. The actor loss reads the critic, and the critic's target reads the actor, as
    networks they do not train (``nets.fixed``)."""
    alpha_loss, actor_loss, critic_loss, metrics = cql_losses(
        nets.actor, nets.critic, nets.target_critic, nets.log_alpha, batch, nets.config, nets.target_entropy,
        critic_for_actor=nets.fixed("critic"), actor_for_critic=nets.fixed("actor"), q_floor=q_floor,
    )
    return {"alpha": alpha_loss, "actor": actor_loss, "critic": critic_loss}, metrics


# The single run steps the actor before the critic: the actor loss backpropagates through
# the critic, whose parameters the critic step changes in place, and the critic gradients it
# leaves behind are cleared by the critic step's zero_grad. CQL logs no temperature gradient
# norm. Its compiled CPU population step evaluates the twin critics member by member
# (measured faster: benchmarks/cql_reference.py).
CQL_UPDATE = UpdateRule(networks=("critic", "actor"), temperature=True, phases=(Phase("update", cql_step, ("alpha", "actor", "critic")),),
                        grad_norms=("critic", "actor"), random=True, member_critic_products=True)


# ---------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------
class CQL(LearnedTemperature, Algorithm):
    """SAC-based CQL(H) with twin critics and automatic entropy tuning.

    ``update`` metrics (0-d tensors): critic_loss, td_loss, cql_penalty, logsumexp_mean,
    q_random_mean, q_policy_sample_mean, q_next_policy_sample_mean, target_q_mean,
    q_mean/std/min/max (at dataset actions), actor_loss, q_policy_mean (min critic at a
    sample of pi(s)), entropy, alpha, alpha_loss, grad_norm_critic, grad_norm_actor.
    """

    name = "cql"
    update_rule = CQL_UPDATE

    def __init__(self, obs_dim: int, act_dim: int, config: CQLConfig = CQLConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(
            actor=TanhGaussianPolicy(obs_dim, act_dim, config.actor_hidden, orthogonal_init=config.orthogonal_init),
            critic=EnsembleCritic(obs_dim, act_dim, config.critic_hidden, ensemble_size=2, orthogonal_init=config.orthogonal_init),
        )
        self.register(target_critic=copy.deepcopy(self.critic).requires_grad_(False))
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device, requires_grad=True)
        self.target_entropy = float(-act_dim if config.target_entropy is None else config.target_entropy)
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=config.alpha_lr),
        }


CQL_LOSS_NOTE = "its loss adds α·(logsumexp Q − Q), which does not scale as a power of the reward scale"

# Compiled: ~30 ms saved per update; a 1,000-step run is already 1.15x faster from a cold cache.
SPEC = AlgorithmSpec(
    name="cql", display_name="CQL", algorithm=CQL, config=CQLConfig,
    source="Kumar, Zhou, Tucker & Levine 2020, NeurIPS", reference_settings=REFERENCE_OVERRIDES,
    color="#d62728", loss_variance_power=None, loss_variance_note=CQL_LOSS_NOTE, cpu_updates_per_second=5.8, compile_min_steps=1_000,
    finetune=FinetuneRecipe(parent_algos=("cql",), sampling="uniform", utd=1, source="Kumar et al. 2020; CORL's CQL fine-tuning"),
)
