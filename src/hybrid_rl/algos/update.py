"""An algorithm's update, declared once: what trains, in which phases, on which losses.

An algorithm with a critic declares its gradient step as an ``UpdateRule`` (the class
attribute ``update_rule``) instead of writing ``update`` by hand. Two steps are derived from
that one declaration:

- the single run's step, ``apply_rule`` (what ``Algorithm.update`` runs): each phase's losses
  at the current parameters, then ``zero_grad / backward / step`` per optimizer group in the
  declared order;
- the population step of ``engine.population``: the same phase functions evaluated through
  ``torch.func`` for P stacked agents (vmapped, optionally compiled).

The contract a phase's loss function keeps, so that both derivations compute the same
gradients: it returns one loss per optimizer group it steps, and each group's loss is
differentiated only with respect to that group's own parameters. A loss that reads a
network trained in the same phase without training it (CQL's actor loss reads the critic)
reads it through ``nets.fixed(name)``. A network trained in an earlier phase is read as it
is: the earlier phase has already stepped it (SAC's actor loss sees the updated critic).

``nets`` is what a loss function sees of the algorithm: its networks by name, ``log_alpha``
(algorithms with a learned temperature), ``config``, its constant numbers (``target_entropy``)
and ``fixed``. For the single run it is the algorithm object itself; for a population a
module whose parameters are one agent's, swapped in by ``functional_call``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from ..core.networks import grad_norm, soft_update

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]

# (nets, batch, draws) -> ({optimizer group: loss}, metrics); ``draws`` is what the rule's
# ``draws`` produced for this update (None without one).
LossFunction = Callable[[Any, Batch, Any], tuple[dict[str, torch.Tensor], Metrics]]

TEMPERATURE_GROUP = "alpha"  # the optimizer group of a learned temperature (the tensor log_alpha)

V = TypeVar("V")


@dataclass(frozen=True)
class Phase:
    """One phase of an update: its losses are computed at the parameters the phase starts
    from, then each group in ``groups`` takes its Adam step, in that order.

    ``every``: the name of a config field n; the phase then runs on the n-th, 2n-th, ...
    update only (RLPD's actor steps once per environment step), or with ``from_first`` on
    the first and every n-th after it, 1, n+1, 2n+1, ... (TD3's delayed actor), and its
    groups' optimizers count their own steps. ``keep_metrics``: on the updates it skips, the
    phase's metrics and gradient norms from its latest run are reported again (TD3+BC logs
    its actor's figures at every update; they are kept in the checkpoint).
    """

    name: str
    losses: LossFunction
    groups: tuple[str, ...]
    every: str | None = None
    from_first: bool = False
    keep_metrics: bool = False


def min_over_critics(q: torch.Tensor, config: Any) -> torch.Tensor:
    """The usual estimator of a twin-critic algorithm: the minimum over its ``(E, B)`` critics."""
    return q.min(dim=0).values


@dataclass(frozen=True)
class UpdateRule:
    """How an algorithm's gradient step is made (see the module docstring).

    ``networks``: the trained networks (attributes of the algorithm), each with its own
    optimizer group of the same name; ``temperature`` adds the group ``"alpha"``
    (``log_alpha``). ``targets``: (target, source) network pairs Polyak-averaged with
    ``config.tau`` after every update, or with ``targets_with`` only after the updates in
    which that phase runs (TD3's targets move with its delayed actor). ``grad_norms``: the groups whose gradient norm is
    logged as ``grad_norm_<group>``, in log order (None: every group, in step order).
    ``leading_metrics``: metric names logged first, in this order (the rest follow phase by
    phase, then the gradient norms). ``draws``: random tensors drawn before the update from
    ``(config, device)`` (RLPD's target subset), passed to every phase. ``random``: the
    losses draw random numbers (a population then draws per agent). ``cosine_lr``: (group,
    config field) — that group's learning rate follows a cosine decay to 0 over that many
    updates and then stays 0 (IQL's actor; the algorithm keeps the group's
    ``CosineAnnealingLR`` in ``schedulers[group]``). ``q_estimate``: the diagnostic Q from the
    critic's ``(E, B)`` outputs. ``member_critic_products``: the compiled CPU population
    step evaluates the critics member by member (measured faster for CQL:
    benchmarks/cql_reference.py).
    """

    networks: tuple[str, ...]
    phases: tuple[Phase, ...]
    temperature: bool = False
    targets: tuple[tuple[str, str], ...] = (("target_critic", "critic"),)
    targets_with: str | None = None
    grad_norms: tuple[str, ...] | None = None
    leading_metrics: tuple[str, ...] = ()
    draws: Callable[[Any, torch.device], torch.Tensor] | None = None
    random: bool = False
    cosine_lr: tuple[str, str] | None = None
    q_estimate: Callable[[torch.Tensor, Any], torch.Tensor] = min_over_critics
    member_critic_products: bool = False

    def __post_init__(self) -> None:
        stepped = [group for phase in self.phases for group in phase.groups]
        declared = [*self.networks, *([TEMPERATURE_GROUP] if self.temperature else [])]
        if sorted(stepped) != sorted(declared):
            raise ValueError(f"the phases step the groups {stepped}, the rule declares {declared}: each group must be stepped in exactly one phase")
        unknown = set(self.grad_norms or ()) - set(declared)
        if unknown:
            raise ValueError(f"grad_norms names groups {sorted(unknown)} that the rule does not train")
        if self.targets_with is not None and self.targets_with not in [phase.name for phase in self.phases]:
            raise ValueError(f"targets_with names no phase of the rule: {self.targets_with!r}")
        for phase in self.phases:
            if (phase.from_first or phase.keep_metrics) and phase.every is None:
                raise ValueError(f"phase {phase.name}: from_first and keep_metrics are for a phase that runs every n-th update (every=...)")

    @property
    def groups(self) -> tuple[str, ...]:
        """Every optimizer group, in step order."""
        return tuple(group for phase in self.phases for group in phase.groups)

    def phase_of(self, group: str) -> Phase:
        return next(phase for phase in self.phases if group in phase.groups)

    def due(self, update: int, config: Any) -> tuple[bool, ...]:
        """Which phases run in the ``update``-th update (1-based)."""
        return tuple(phase_runs(phase, update, config) for phase in self.phases)

    def optimizer_steps(self, group: str, updates: int, config: Any) -> int:
        """Adam steps ``group``'s optimizer has taken after ``updates`` updates."""
        return phase_runs_in(self.phase_of(group), updates, config)

    def kept(self, due: Sequence[bool], updates_done: int, config: Any) -> tuple[bool, ...]:
        """Which skipped phases report their kept metrics in the update after ``updates_done``
        updates: those that keep them and have run before."""
        return tuple(not runs and phase.keep_metrics and phase_runs_in(phase, updates_done, config) > 0 for phase, runs in zip(self.phases, due))

    def targets_due(self, due: Sequence[bool]) -> bool:
        """Whether the targets are averaged after an update running the phases in ``due``."""
        return self.targets_with is None or due[[phase.name for phase in self.phases].index(self.targets_with)]

    def logged_norms(self) -> tuple[str, ...]:
        return self.groups if self.grad_norms is None else self.grad_norms

    def assemble(self, phase_metrics: Sequence[Mapping[str, V]], norms: Mapping[str, V]) -> dict[str, V]:
        """The update's metrics in log order: every run phase's metrics, then the logged
        gradient norms of the groups that stepped, with ``leading_metrics`` moved first."""
        merged: dict[str, V] = {}
        for metrics in phase_metrics:
            merged.update(metrics)
        merged.update({f"grad_norm_{group}": norms[group] for group in self.logged_norms() if group in norms})
        leading = {name: merged.pop(name) for name in self.leading_metrics if name in merged}
        return {**leading, **merged}


def phase_runs(phase: Phase, update: int, config: Any) -> bool:
    """Whether ``phase`` runs in the ``update``-th update (1-based)."""
    if phase.every is None:
        return True
    every = int(getattr(config, phase.every))
    return (update - 1) % every == 0 if phase.from_first else update % every == 0


def phase_runs_in(phase: Phase, updates: int, config: Any) -> int:
    """How many times ``phase`` has run in the first ``updates`` updates."""
    if phase.every is None:
        return updates
    every = int(getattr(config, phase.every))
    return (updates + every - 1) // every if phase.from_first else updates // every


def split_kept(phase: Phase, kept: Mapping[str, V]) -> tuple[dict[str, V], dict[str, V]]:
    """A phase's kept metrics (its metrics, then its ``grad_norm_<group>``s) as (metrics, norms by group)."""
    norms = {group: kept[f"grad_norm_{group}"] for group in phase.groups if f"grad_norm_{group}" in kept}
    return {name: value for name, value in kept.items() if not name.startswith("grad_norm_")}, norms


def total_loss(losses: Mapping[str, torch.Tensor], groups: Sequence[str]) -> torch.Tensor:
    """The sum of a phase's losses in step order (the population differentiates it once:
    each group's parameters receive only their own loss's gradient, by the contract above)."""
    total = losses[groups[0]]
    for group in groups[1:]:
        total = total + losses[group]
    return total


def step_optimizer(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters) -> torch.Tensor:
    """zero_grad, backward, step; returns the gradient norm before the step (0-d tensor)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = grad_norm(parameters)
    optimizer.step()
    return norm


def group_parameters(algorithm: Any, group: str) -> list[torch.Tensor]:
    if group == TEMPERATURE_GROUP:
        return [algorithm.log_alpha]
    return list(algorithm.modules[group].parameters())


def apply_rule(algorithm: Any, rule: UpdateRule, batch: Batch) -> Metrics:
    """One gradient step of a single run (``Algorithm.update`` of an algorithm with a rule)."""
    config = algorithm.config
    draws = rule.draws(config, algorithm.device) if rule.draws is not None else None
    phase_metrics: list[Metrics] = []
    norms: Metrics = {}
    due = rule.due(algorithm.total_updates + 1, config)
    for phase, runs, kept in zip(rule.phases, due, rule.kept(due, algorithm.total_updates, config)):
        if kept:
            metrics, kept_norms = split_kept(phase, algorithm.kept_metrics[phase.name])
            phase_metrics.append(metrics)
            norms.update(kept_norms)
        if not runs:
            continue
        losses, metrics = phase.losses(algorithm, batch, draws)
        phase_metrics.append(metrics)
        for group in phase.groups:
            norms[group] = step_optimizer(algorithm.optimizers[group], losses[group], group_parameters(algorithm, group))
        if phase.keep_metrics:
            algorithm.kept_metrics[phase.name] = {**metrics, **{f"grad_norm_{group}": norms[group] for group in phase.groups
                                                               if group in rule.logged_norms()}}
    if rule.cosine_lr is not None:
        group, horizon = rule.cosine_lr
        # A cosine decay stays at 0 after its horizon; CosineAnnealingLR would climb back up
        # (it is periodic), so it is not stepped there.
        if algorithm.total_updates < int(getattr(config, horizon)):
            algorithm.schedulers[group].step()
    if rule.targets_due(due):
        for target, source in rule.targets:
            soft_update(algorithm.modules[target], algorithm.modules[source], config.tau)
    algorithm.total_updates += 1
    return rule.assemble(phase_metrics, norms)
