"""Calibrated Q-Learning (Nakamoto, Zhai, Singh, Sodhani Mark, Ma, Finn, Kumar & Levine 2023,
"Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online Fine-Tuning", NeurIPS;
arXiv:2303.05479).

CQL learns a conservative Q, which can sit far below the true value of the behaviour
policy; when fine-tuning starts, the first online returns look better than Q says, the
policy chases them and "unlearns" (the dip at the switch). Cal-QL keeps CQL's objective but
calibrates it: in the conservative penalty, the Q-value of each action proposed by the
policy is replaced by max(Q(s, a), V^mu(s)), where V^mu(s) is a reference value of the
behaviour policy, the Monte-Carlo discounted return-to-go of the state in the data (eq. 5.1).
The penalty then pushes Q down only where it is above that reference, so the learned Q stays
a lower bound of the policy's value but not below the behaviour's.

Everything else is CQL (``cql.py``): SAC actor and temperature, twin critics, the
importance-sampled log-sum-exp with 3N proposals. The batch must carry ``mc_returns`` ``(B,)``
in the same (possibly scaled) reward units as ``rewards``: the trainer adds them for
algorithms that declare ``uses_mc_returns`` (``data.views.mc_returns_to_go``). Episodes cut by a time limit
have no known tail: their return-to-go is summed to the cut, which underestimates near it,
so the floor stays conservative there (docs/algorithms.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from . import cql
from .base import Batch, Metrics
from .cql import CQL, CQLConfig
from .spec import AlgorithmSpec, FinetuneRecipe
from .update import Phase


@dataclass(frozen=True)
class CalQLConfig(CQLConfig):
    """CQL's settings (CORL's MuJoCo defaults); the calibration needs no parameter of its own."""



def calibration_floor(batch: Batch) -> torch.Tensor:
    """The floor of the policy proposals' Q: the batch's Monte-Carlo returns-to-go."""
    if "mc_returns" not in batch:
        raise KeyError("Cal-QL needs batches with 'mc_returns' (the Monte-Carlo return-to-go of each transition)")
    return batch["mc_returns"]


def calql_step(nets: Any, batch: Batch, draws: None) -> tuple[dict[str, torch.Tensor], Metrics]:
    """CQL's phase with the proposals' Q floored at the Monte-Carlo returns-to-go."""
    return cql.cql_step(nets, batch, draws, q_floor=calibration_floor(batch))


CALQL_UPDATE = dataclasses.replace(cql.CQL_UPDATE, phases=(Phase("update", calql_step, ("alpha", "actor", "critic")),))


class CalQL(CQL):
    """CQL with the policy proposals' Q floored at the Monte-Carlo return-to-go of the data.

    ``update`` metrics: CQL's, plus ``calibration_bound_rate``, the fraction of policy
    proposals whose Q was below the floor (and was raised to it in the penalty).
    """

    name = "calql"
    update_rule = CALQL_UPDATE

    def __init__(self, obs_dim: int, act_dim: int, config: CalQLConfig = CalQLConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)


# Cal-QL's step is CQL's plus one elementwise max: CQL's rate and compile threshold.
SPEC = AlgorithmSpec(
    name="calql", display_name="Cal-QL", algorithm=CalQL, config=CalQLConfig,
    source="Nakamoto et al. 2023, NeurIPS", reference_settings=cql.REFERENCE_OVERRIDES,
    loss_variance_power=None, loss_variance_note=cql.CQL_LOSS_NOTE, uses_mc_returns=True, cpu_updates_per_second=5.8, compile_min_steps=1_000,
    finetune=FinetuneRecipe(parent_algos=("calql",), sampling="symmetric", utd=1, source="Nakamoto et al. 2023, Cal-QL"),
)
