"""Optimizer math on stacked parameters: Adam, Polyak averaging and the cosine LR schedule.

A population keeps the parameters of P agents stacked along a leading dimension and updates
them in place with the functions here, which mirror ``torch.optim.Adam``,
``networks.soft_update`` and ``CosineAnnealingLR`` exactly. Adam and Polyak averaging are
elementwise, so each agent's slice follows its own optimizer. Step counts and learning
rates are device tensors: nothing here waits for the host, so a compiled step can contain it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

Tensors = dict[str, torch.Tensor]


def cosine_lr_table(base_lr: float, max_steps: int) -> np.ndarray:
    """``(max_steps + 1,)`` float64: the LR ``CosineAnnealingLR(T_max=max_steps, eta_min=0)``
    sets after 0, 1, ..., max_steps scheduler steps.

    The scheduler computes each LR recursively from the previous one (its "chainable" form,
    not the closed form); this loop repeats that arithmetic in the same order, so the values
    are bit-identical to what ``iql.IQL``'s optimizer uses.
    """
    table = np.empty(max_steps + 1, dtype=np.float64)
    lr = float(base_lr)
    table[0] = lr
    for epoch in range(1, max_steps + 1):
        lr = (1 + math.cos(math.pi * epoch / max_steps)) / (1 + math.cos(math.pi * (epoch - 1) / max_steps)) * (lr - 0.0) + 0.0
        table[epoch] = lr
    return table


@dataclass
class ParamGroup:
    """Stacked parameters optimised by one Adam with one learning rate (a table or a constant)."""

    name: str
    keys: list[str]  # names in the stacked parameter dict, in the module's parameter order
    lr: float
    lr_table: torch.Tensor | None  # (T + 1,) float64, indexed by min(step, T); None: constant lr
    betas: tuple[float, float]
    eps: float


def adam_hyperparameters(optimizer: torch.optim.Optimizer, what: str) -> tuple[float, tuple[float, float], float]:
    """(lr, betas, eps) of a plain one-group Adam; ValueError for anything this module does not implement."""
    if not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) != 1:
        raise ValueError(f"{what}: populations implement plain Adam with one parameter group, got {optimizer!r}")
    group = optimizer.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group.get("maximize") or group.get("decoupled_weight_decay"):
        raise ValueError(f"{what}: weight decay, AMSGrad and maximize are not implemented for populations")
    return float(group["initial_lr"] if "initial_lr" in group else group["lr"]), tuple(group["betas"]), float(group["eps"])


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all tensors, computed as ``networks.grad_norm`` does (norm of norms)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


@torch.no_grad()
def adam_step_(groups: Sequence[ParamGroup], params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, step: torch.Tensor) -> None:
    """Adam (Kingma & Ba 2015, as torch.optim.Adam) on every stacked tensor, in place.

    ``step`` ``(1,)`` float64 is the number of steps taken before this one (not changed
    here). Learning rates from a group's table are read at ``min(step, T)``.
    """
    t = step.squeeze(0) + 1.0
    for group in groups:
        beta1, beta2 = group.betas
        if group.lr_table is None:
            lr: torch.Tensor | float = group.lr
        else:
            # index_select with a (1,) index tensor, not table[tensor]: a 0-d tensor used
            # as an index is read back as a Python int (a host sync, a graph break).
            position = torch.clamp(step, max=len(group.lr_table) - 1).long()
            lr = group.lr_table.index_select(0, position).squeeze(0)
        step_size = (lr / (1.0 - beta1**t)).float()
        bias_correction2_sqrt = torch.sqrt(1.0 - beta2**t).float()
        group_params = [params[key] for key in group.keys]
        grad_list = [grads[key] for key in group.keys]
        exp_avgs = [exp_avg[key] for key in group.keys]
        exp_avg_sqs = [exp_avg_sq[key] for key in group.keys]
        torch._foreach_lerp_(exp_avgs, grad_list, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grad_list, grad_list, value=1.0 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, group.eps)
        updates = torch._foreach_div(exp_avgs, denom)
        torch._foreach_mul_(updates, -step_size)
        torch._foreach_add_(group_params, updates)


@torch.no_grad()
def polyak_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau source, in place (``networks.soft_update``)."""
    torch._foreach_lerp_(list(targets), list(sources), tau)
