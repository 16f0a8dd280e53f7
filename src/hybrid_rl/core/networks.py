"""Neural network building blocks shared by every algorithm and by the dataset factory.

Below both layers (it imports only torch), so ``data/`` can load and run the shipped
behaviour policies without importing the algorithms.

Shapes: observations ``(B, obs_dim)``, actions ``(B, act_dim)`` in [-1, 1], Q and V values
``(B,)``. Twin critics are an *ensemble* layer (one batched matmul for both heads) rather
than two separate MLPs: the same math, half the kernel launches, which matters for CQL's
many sampled actions and on GPUs.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.distributions import Normal

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

# Distributions are built with validate_args=False: torch's argument/support validation
# evaluates `if not valid.all()` on device tensors, a host sync per check (several per
# update). Values are unchanged; a NaN parameter now propagates to the loss (where the
# trainer's non-finite check sees it) instead of raising inside torch.distributions.


def init_linear(layer: nn.Linear, *, orthogonal: bool, gain: float = math.sqrt(2)) -> None:
    """Orthogonal init (CORL's CQL) or PyTorch's default; biases zeroed for orthogonal."""
    if orthogonal:
        nn.init.orthogonal_(layer.weight, gain=gain)
        nn.init.zeros_(layer.bias)


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    orthogonal_init: bool = False,
    layer_norm: bool = False,
    output_gain: float = 1.0,
) -> nn.Sequential:
    """ReLU MLP ``in_dim -> hidden... -> out_dim`` (no output activation)."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        linear = nn.Linear(last, width)
        init_linear(linear, orthogonal=orthogonal_init)
        layers.append(linear)
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(nn.ReLU())
        last = width
    head = nn.Linear(last, out_dim)
    init_linear(head, orthogonal=orthogonal_init, gain=output_gain)
    layers.append(head)
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied as one batched matmul: ``(E, B, in) -> (E, B, out)``."""

    def __init__(self, ensemble_size: int, in_dim: int, out_dim: int, *, orthogonal_init: bool = False, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim))
        for member in range(ensemble_size):
            # Same initialisation as nn.Linear (or orthogonal) for every member.
            linear = nn.Linear(in_dim, out_dim)
            init_linear(linear, orthogonal=orthogonal_init, gain=gain)
            with torch.no_grad():
                self.weight[member] = linear.weight.T
                self.bias[member, 0] = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the features of each of E members, with each member's own gain and bias."""

    def __init__(self, ensemble_size: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, width))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleCritic(nn.Module):
    """E Q-functions Q_e(s, a) evaluated together; ``forward`` returns ``(E, B)``.

    Inputs may carry extra leading dims as long as the batch is flattened: pass
    ``(B, obs_dim)`` and ``(B, act_dim)``. ``layer_norm``: LayerNorm after every hidden
    linear layer (RLPD's critics, Ball et al. 2023, sec. 3.2: it bounds Q's extrapolation).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        ensemble_size: int = 2,
        orthogonal_init: bool = False,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        dims = [obs_dim + act_dim, *hidden]
        self.hidden_layers = nn.ModuleList(
            EnsembleLinear(ensemble_size, d_in, d_out, orthogonal_init=orthogonal_init) for d_in, d_out in zip(dims[:-1], dims[1:])
        )
        self.norms = nn.ModuleList(EnsembleLayerNorm(ensemble_size, width) for width in hidden) if layer_norm else None
        self.head = EnsembleLinear(ensemble_size, dims[-1], 1, orthogonal_init=orthogonal_init, gain=1.0)

    # True: each member's layers as their own matrix products instead of one batched product
    # over the members (the same math; on a CPU the plain products run ~1.1x faster at CQL's
    # shapes, benchmarks/critic_layout.py). A compiled step may choose it; the eager
    # reference keeps the batched layout.
    member_products: bool = False

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1)
        if self.member_products and self.norms is None:
            return torch.stack([self._member(x, member) for member in range(self.ensemble_size)])
        x = x.unsqueeze(0).expand(self.ensemble_size, *x.shape)
        for index, layer in enumerate(self.hidden_layers):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[index](x)
            x = torch.relu(x)
        return self.head(x).squeeze(-1)

    def _member(self, x: torch.Tensor, member: int) -> torch.Tensor:
        for layer in self.hidden_layers:
            x = torch.relu(torch.addmm(layer.bias[member, 0], x, layer.weight[member]))
        return torch.addmm(self.head.bias[member, 0], x, self.head.weight[member]).squeeze(-1)


class ValueNetwork(nn.Module):
    """State value V(s): ``(B, obs_dim) -> (B,)``."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), *, orthogonal_init: bool = False) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, orthogonal_init=orthogonal_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class GaussianPolicy(nn.Module):
    """IQL's actor: N(tanh(mu(s)), diag(exp(log_std))) with a state-independent log-std.

    As in the official IQL code, the mean is squashed by tanh but samples are not, and the
    log-likelihood of dataset actions is that of the plain Gaussian (advantage-weighted
    regression). Evaluation uses the mean.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), *, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def _mean(self, obs: torch.Tensor) -> torch.Tensor:
        """tanh(mu(s)); dropout (if any) after every hidden ReLU, as in the official IQL MLP.

        Applied by walking ``self.net`` rather than inserting nn.Dropout layers into it, so
        the parameter names (``net.0``, ``net.2``, ...) are the same with or without dropout.
        """
        if self.dropout is None:
            return torch.tanh(self.net(obs))
        x = obs
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = self.dropout(x)
        return torch.tanh(x)

    def distribution(self, obs: torch.Tensor) -> Normal:
        mean = self._mean(obs)
        std = torch.exp(self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX))
        return Normal(mean, std.expand_as(mean), validate_args=False)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sum over action dims of log N(a | mu(s), sigma): ``(B,)``."""
        return self.distribution(obs).log_prob(actions).sum(-1)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self._mean(obs)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        return self.distribution(obs).sample().clamp(-1.0, 1.0)

    def act_from_noise(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The sample ``mu(s) + sigma * noise`` for given standard-normal ``noise``, clipped to [-1, 1]."""
        dist = self.distribution(obs)
        return (dist.loc + dist.scale * noise).clamp(-1.0, 1.0)


class TanhGaussianPolicy(nn.Module):
    """SAC/CQL actor: a = tanh(u), u ~ N(mu(s), sigma(s)), with state-dependent log-std.

    ``rsample`` returns reparameterised actions and their log-probabilities including the
    tanh change-of-variables correction (Haarnoja et al. 2018, appendix C, eq. 21), computed
    in the numerically stable form ``2 * (log 2 - u - softplus(-2u))``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        orthogonal_init: bool = False,
        log_std_min: float = LOG_STD_MIN,
        log_std_max: float = LOG_STD_MAX,
    ) -> None:
        super().__init__()
        self.trunk = mlp(obs_dim, 2 * act_dim, hidden, orthogonal_init=orthogonal_init, output_gain=1e-2 if orthogonal_init else 1.0)
        self.act_dim = act_dim
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def mean_and_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.trunk(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def rsample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample: actions ``(B, act_dim)`` in (-1, 1) and log-probs ``(B,)``."""
        mean, log_std = self.mean_and_log_std(obs)
        std = log_std.exp()
        pre_tanh = mean + std * torch.randn_like(mean)
        log_prob = Normal(mean, std, validate_args=False).log_prob(pre_tanh).sum(-1)
        log_prob = log_prob - tanh_log_det_jacobian(pre_tanh).sum(-1)
        return torch.tanh(pre_tanh), log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mean_and_log_std(obs)[0])

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        return self.rsample(obs)[0]

    def act_from_noise(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The sample ``tanh(mu(s) + sigma(s) * noise)`` for given standard-normal ``noise``."""
        mean, log_std = self.mean_and_log_std(obs)
        return torch.tanh(mean + log_std.exp() * noise)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """log pi(a|s) of given actions in (-1, 1) (clipped away from +-1 for atanh): ``(B,)``."""
        mean, log_std = self.mean_and_log_std(obs)
        actions = actions.clamp(-1.0 + eps, 1.0 - eps)
        pre_tanh = torch.atanh(actions)
        log_prob = Normal(mean, log_std.exp(), validate_args=False).log_prob(pre_tanh).sum(-1)
        return log_prob - tanh_log_det_jacobian(pre_tanh).sum(-1)


def tanh_log_det_jacobian(pre_tanh: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u) / du| = log(1 - tanh(u)^2), elementwise, in a stable form."""
    return 2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))


class DeterministicPolicy(nn.Module):
    """a = tanh(mu(s)): the actor of BC and TD3+BC."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)

    def act_from_noise(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The deterministic action: this actor explores with action noise added by its caller (TD3)."""
        return self(obs)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) * target + tau * source."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(param, tau)


def grad_norm(parameters) -> torch.Tensor:
    """Global L2 norm of gradients (a 0-d tensor; no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
