"""Populations: P runs of one algorithm trained in one process with stacked parameters.

A *population* is P independent runs of one algorithm on one base dataset: different seeds
and corruption variants (top-k trajectory removal, reward noise, ...). Instead of P
processes each doing small matrix products, the P parameter sets are stacked along a
leading agent dimension and every update is one vmapped call of the algorithm's pure loss
functions (``torch.func``): the same math, P times wider kernels, one Python dispatch.

The data side (each run's view of the base dataset, the shared device-resident sampler) is
``data.views``; the optimizer math on stacked tensors is ``engine.functional``. Here:

``Population`` (``population_for(algorithm_cls)``, ``population_class(algo)``)
    Derived from the algorithm's declared update rule (``algos/update.py``): stacked
    parameters (``torch.func.stack_module_state``), each phase's loss function (the very
    function the single run's step calls) evaluated through ``functional_call`` + ``grad``
    + ``vmap`` over the agent dimension, Adam over the stacked tensors, Polyak-averaged
    targets, a cosine LR schedule read from a device table where the rule declares one
    (IQL's actor), phases that run on every n-th update only (RLPD's actor; TD3+BC's, with
    its targets and its kept metrics). No algorithm has code here. ``compile=True`` wraps the whole step (batch gather, losses, gradients,
    Adam, Polyak) in ``torch.compile``, falling back to the eager vmapped step with a
    warning if compilation fails on this platform.

``compiled_step_wanted``
    The policy behind ``--compile auto`` (the default of ``hybrid-rl train`` and the grid):
    which runs take the compiled step, a population of one for a single run.

Hot-loop rules (the point of the exercise): no host synchronisation inside ``update`` /
``train_step`` (no ``.item()``, ``.cpu()``, data-dependent Python control flow). The step
counter, the learning rates and Adam's bias corrections live in device tensors; metrics
come back as one ``(P,)`` tensor per name and are read by the caller only when it logs.

Equivalence: IQL's update draws no random numbers, so a population member reproduces the
single run ``iql.IQL`` with the same initial weights and batches up to floating-point
rounding (batched matrix products round differently from unbatched ones);
``tests/test_population.py`` checks this. CQL samples actions inside its loss, and a
vmapped random draw cannot reproduce P separate draws from the global generator, so a CQL
population is equivalent in distribution only (each agent draws its own numbers under
``vmap(randomness="different")``, in another order than P separate runs would). A population of ONE
draws what the single run draws, compiled or not (inductor is told to use PyTorch's own
random kernels, ``fallback_random``): so the compiled single-run step that ``--compile``
selects reproduces the eager reference up to rounding for CQL as well as IQL.
"""
from __future__ import annotations

import copy
import functools
import itertools
import os
import shutil
import traceback
import warnings
import weakref
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from ..algos.base import Batch, Metrics
from ..algos.bc import BC
from ..algos.calql import CalQL
from ..algos.cql import CQL
from ..algos.iql import IQL
from ..algos.registry import algorithm_spec
from ..algos.rlpd import RLPD
from ..algos.sac import SAC
from ..algos.td3bc import TD3BC
from ..algos.update import TEMPERATURE_GROUP, Phase, UpdateRule, split_kept, total_loss
from ..data.views import PopulationSampler
from ..core.networks import EnsembleCritic
from ..core.grid_options import COMPILE_MODES
from .functional import ParamGroup, adam_hyperparameters, adam_step_, cosine_lr_table, global_norm, polyak_

Tensors = dict[str, torch.Tensor]
TEMPERATURE_KEY = f"{TEMPERATURE_GROUP}.log_alpha"  # the learned temperature among the stacked parameters


class PopulationMetrics(Mapping[str, torch.Tensor]):
    """One step's metrics: ``metrics[name]`` is a ``(P,)`` tensor (agent k at index k).

    Backed by one ``(num_metrics, P)`` tensor (``.stacked``); a name's row is sliced out
    only when asked for, because a dict of 19 views would cost 38 host-side operator calls
    per step, a noticeable share of a compiled GPU step.
    """

    def __init__(self, names: Sequence[str], stacked: torch.Tensor) -> None:
        self.names = list(names)
        self.stacked = stacked
        self._rows = {name: row for row, name in enumerate(self.names)}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.stacked[self._rows[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def agent(self, index: int) -> dict[str, float]:
        """Agent ``index``'s metrics as Python floats (one host sync for all of them)."""
        return dict(zip(self.names, self.stacked[:, index].tolist()))


# ---------------------------------------------------------------------------------------
# What a loss function sees of one agent
# ---------------------------------------------------------------------------------------
def _meta_copy(module: nn.Module) -> nn.Module:
    """Structure without storage: every parameter is swapped in by functional_call."""
    return copy.deepcopy(module).to("meta")


class _Networks(nn.Module):
    """The ``nets`` of ``algos/update.py`` for one agent of a population: the algorithm's
    networks on the meta device (``functional_call`` swaps in the agent's parameters), a
    ``fixed_<name>`` copy of each trained network (swapped in detached), the temperature
    (``alpha.log_alpha``), the config and the algorithm's constant numbers."""

    def __init__(self, template: Any, rule: UpdateRule) -> None:
        super().__init__()
        for name in [*rule.networks, *(target for target, _ in rule.targets)]:
            setattr(self, name, _meta_copy(template.modules[name]))
        for name in rule.networks:
            setattr(self, f"fixed_{name}", _meta_copy(template.modules[name]))
        if rule.temperature:
            self.alpha = nn.Module()
            self.alpha.register_parameter("log_alpha", nn.Parameter(torch.zeros((), device="meta")))
        self.config = template.config
        for key, value in vars(template).items():  # target_entropy, obs_dim, ...: fixed for the run
            if isinstance(value, (bool, int, float, str)) and key != "total_updates":
                setattr(self, key, value)

    @property
    def log_alpha(self) -> torch.Tensor:
        return self.alpha.log_alpha

    def fixed(self, name: str) -> nn.Module:
        return getattr(self, f"fixed_{name}")


class _PhaseCall(nn.Module):
    """One phase's loss function as a module's ``forward``, for ``functional_call``."""

    def __init__(self, networks: _Networks, phase: Phase) -> None:
        super().__init__()
        self.module = networks
        self.phase = phase

    def forward(self, batch: Batch, draws: Any) -> tuple[dict[str, torch.Tensor], Metrics]:
        return self.phase.losses(self.module, batch, draws)


class _MethodCall(nn.Module):
    """``function(module, *args)`` as ``forward`` (a network's method such as the actor's
    ``deterministic``, or the algorithm's own ``entropy_bonus`` on the agent's networks), so
    ``functional_call`` can reach it with swapped parameters."""

    def __init__(self, module: nn.Module, function: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.function = function

    def forward(self, *args: Any) -> Any:
        return self.function(self.module, *args)


# ---------------------------------------------------------------------------------------
# The population trainer: every algorithm's, derived from its update rule
# ---------------------------------------------------------------------------------------
class Population:
    """Stacked parameters of P agents of one algorithm, trained by its declared update rule.

    The rule (``algorithm_cls.update_rule``, algos/update.py) names the trained networks,
    the target networks and the phases. Each phase is
    ``grads, metrics = vmap(grad(losses))(params, frozen, batch, draws)`` with respect to the
    parameters of the phase's groups (every other tensor enters as a constant), followed by
    Adam on those groups, all in place on device tensors; after the last phase, Polyak
    averaging of the targets. Use ``population_for(algorithm_cls)`` (or ``population_class``)
    for the class of an algorithm.
    """

    algorithm_cls: type
    # None: as the rule declares (benchmarks/cql_reference.py overrides it to compare layouts).
    member_critic_products: bool | None = None

    def __init__(self, agents: Sequence[Any], *, compile: bool | str = False) -> None:
        if len(agents) == 0:
            raise ValueError("a population needs at least one agent")
        first = agents[0]
        for agent in agents:
            if type(agent) is not self.algorithm_cls:
                raise TypeError(f"{type(self).__name__} needs {self.algorithm_cls.__name__} agents, got {type(agent).__name__}")
            if agent.config != first.config or (agent.obs_dim, agent.act_dim) != (first.obs_dim, first.act_dim) or agent.device != first.device:
                raise ValueError("all agents of a population must share config, dimensions and device")
            if agent.total_updates != first.total_updates:
                raise ValueError("all agents of a population must have done the same number of updates")
        self.rule: UpdateRule = self.algorithm_cls.update_rule
        self.config = first.config
        self.obs_dim, self.act_dim = first.obs_dim, first.act_dim
        self.device = first.device
        self.num_agents = len(agents)
        self.total_updates = first.total_updates  # host-side mirror of self.step (no sync to read)

        # Trainable parameters by network, stacked: name "actor.net.0.weight" -> (P, ...).
        self.params: Tensors = {}
        self.frozen: Tensors = {}  # the target networks
        self.network_keys: dict[str, list[str]] = {}
        for network in self.rule.networks:
            stacked, buffers = stack_module_state([agent.modules[network] for agent in agents])
            if buffers:
                raise ValueError(f"{network} has buffers {sorted(buffers)}; populations support parameter-only networks")
            self.network_keys[network] = [f"{network}.{key}" for key in stacked]
            self.params.update({f"{network}.{key}": value.detach().clone() for key, value in stacked.items()})
        for network, _ in self.rule.targets:
            stacked, _ = stack_module_state([agent.modules[network] for agent in agents])
            self.frozen.update({f"{network}.{key}": value.detach().clone() for key, value in stacked.items()})
        if self.rule.temperature:
            self.params[TEMPERATURE_KEY] = torch.stack([agent.log_alpha.detach() for agent in agents]).clone()
            self.network_keys[TEMPERATURE_GROUP] = [TEMPERATURE_KEY]

        # Adam state per stacked tensor, and the shared step counter: float64 so that the
        # bias corrections are computed in double precision, as torch.optim.Adam does, and
        # shape (1,) because torch.compile (2.13, CPU) silently drops in-place updates of a
        # 0-d float64 input tensor (the counter would stay at 0). A phase that runs on every
        # n-th update only counts its own Adam steps.
        self.step = torch.zeros(1, dtype=torch.float64, device=self.device)
        self.phase_steps: Tensors = {phase.name: torch.zeros(1, dtype=torch.float64, device=self.device)
                                     for phase in self.rule.phases if phase.every is not None}
        self.exp_avg: Tensors = {key: torch.zeros_like(value) for key, value in self.params.items()}
        self.exp_avg_sq: Tensors = {key: torch.zeros_like(value) for key, value in self.params.items()}
        self.groups = self._param_groups(first)
        self._load_optimizer_state(agents)

        self._networks = _Networks(first, self.rule)
        # Built once, outside any traced call: a module constructed inside the compiled step
        # is a pending mutation that dynamo refuses to read, and the step would fall back to eager.
        self._phase_calls = {phase.name: _PhaseCall(self._networks, phase) for phase in self.rule.phases}
        randomness = "different" if self.rule.random else "error"
        draw_dim = 0 if self.rule.draws is not None else None
        self._phase_grad_fns = {phase.name: vmap(functools.partial(self._phase_gradients, phase), in_dims=(0, 0, 0, draw_dim), randomness=randomness)
                                for phase in self.rule.phases}
        self._phase_metric_names = self._probe_metric_names()
        # A phase that keeps its metrics (TD3+BC's delayed actor) keeps them here between its
        # runs, one row per name (its metrics, then its gradient norms), as the single run does.
        self._kept_names: dict[str, list[str]] = {
            phase.name: [*self._phase_metric_names[phase.name], *(f"grad_norm_{group}" for group in phase.groups if group in self.rule.logged_norms())]
            for phase in self.rule.phases if phase.keep_metrics}
        self.kept_metrics: Tensors = {name: torch.zeros(len(names), self.num_agents, device=self.device) for name, names in self._kept_names.items()}
        self._load_kept_metrics(agents)
        self._names_by_due: dict[tuple[tuple[bool, ...], tuple[bool, ...]], list[str]] = {}
        self.metric_names = self._names(tuple(True for _ in self.rule.phases), tuple(False for _ in self.rule.phases))

        self.compile_mode = self._resolve_compile(compile)
        member_products = self.rule.member_critic_products if self.member_critic_products is None else self.member_critic_products
        if self.compile_mode is not None and self.device.type == "cpu" and member_products:
            for module in self._networks.modules():
                if isinstance(module, EnsembleCritic):
                    module.member_products = True
        # Modes that capture CUDA graphs: replays overwrite outputs and copy every input
        # whose address is not marked static.
        self._cudagraphs = self.device.type == "cuda" and self.compile_mode in ("reduce-overhead", "max-autotune")
        self._static_samplers: weakref.WeakSet[PopulationSampler] = weakref.WeakSet()
        self.compile_error: str | None = None
        self.compile_traceback: str | None = None  # the whole failure, for a bug report (the warning has one line)
        self._update_fn: Callable[..., torch.Tensor] = self._maybe_compile(self._update_impl)
        self._train_step_fn: Callable[..., torch.Tensor] = self._maybe_compile(self._train_step_impl)

    @classmethod
    def create(cls, obs_dim: int, act_dim: int, config: Any, seeds: Sequence[int], device: torch.device | str = "cpu", *, compile: bool | str = False) -> "Population":
        """Agents initialised as the trainer does for each seed (``torch.manual_seed(seed)``
        then the algorithm's constructor); the global RNG is restored after."""
        agents = []
        with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
            for seed in seeds:
                torch.manual_seed(int(seed))
                agents.append(cls.algorithm_cls(obs_dim, act_dim, config, device))
        return cls(agents, compile=compile)

    # --- optimizer state ---------------------------------------------------------------------
    def _param_groups(self, template: Any) -> list[ParamGroup]:
        """One Adam group per optimizer of the agents, in the rule's step order; a group
        with a cosine schedule reads its learning rate from a device table."""
        groups = []
        for name in self.rule.groups:
            lr, betas, eps = adam_hyperparameters(template.optimizers[name], f"{self.algorithm_cls.__name__} {name} optimizer")
            table = None
            if self.rule.cosine_lr is not None and self.rule.cosine_lr[0] == name:
                horizon = int(getattr(self.config, self.rule.cosine_lr[1]))
                if template.total_updates < horizon:
                    table = torch.as_tensor(cosine_lr_table(lr, horizon), dtype=torch.float64, device=self.device)
                else:  # the schedule is over: it is no longer stepped, the LR stays what the optimizer holds
                    lr = float(template.optimizers[name].param_groups[0]["lr"])
            groups.append(ParamGroup(name, self.network_keys[name], lr, table, betas, eps))
        return groups

    def _optimizer_steps(self, group: str, updates: int) -> int:
        return self.rule.optimizer_steps(group, updates, self.config)

    def _load_optimizer_state(self, agents: Sequence[Any]) -> None:
        """Start from the agents' Adam moments (zeros for fresh agents). Every group's
        optimizer must be at the step the agents' update count implies: a population steps
        all of them together from there."""
        updates = agents[0].total_updates
        for group in self.groups:
            expected = self._optimizer_steps(group.name, updates)
            for agent_index, agent in enumerate(agents):
                optimizer = agent.optimizers[group.name]
                for param, key in zip(optimizer.param_groups[0]["params"], group.keys):
                    state = optimizer.state.get(param)
                    step = int(state["step"]) if state else 0
                    if step != expected:
                        raise ValueError(f"{group.name} optimizer of agent {agent_index} is at step {step}, expected {expected} after {updates} updates")
                    if state:
                        self.exp_avg[key][agent_index].copy_(state["exp_avg"])
                        self.exp_avg_sq[key][agent_index].copy_(state["exp_avg_sq"])
        self.step.fill_(float(updates))
        for phase in self.rule.phases:
            if phase.name in self.phase_steps:
                self.phase_steps[phase.name].fill_(float(self._optimizer_steps(phase.groups[0], updates)))

    # --- the math of one step ------------------------------------------------------------
    def _phase_gradients(self, phase: Phase, params: Tensors, frozen: Tensors, batch: Batch, draws: Any) -> tuple[Tensors, Metrics]:
        """One agent (inside vmap): gradients of ``phase``'s summed losses with respect to its
        groups' parameters, and its metrics with the logged gradient norms. Every other tensor
        enters as a constant; the ``fixed_`` copies are the trained networks detached."""
        keys = [key for group in phase.groups for key in self.network_keys[group]]
        trainable = {key: params[key] for key in keys}
        constant = {f"module.{key}": value for key, value in {**params, **frozen}.items() if key not in trainable}
        constant.update({f"module.fixed_{key}": params[key].detach() for key in params if key.split(".", 1)[0] in self.rule.networks})

        def loss(trainable: Tensors) -> tuple[torch.Tensor, Metrics]:
            swapped = {**constant, **{f"module.{key}": value for key, value in trainable.items()}}
            losses, metrics = functional_call(self._phase_calls[phase.name], swapped, (batch, draws))
            return total_loss(losses, phase.groups), metrics

        grads, metrics = grad(loss, has_aux=True)(trainable)
        for group in phase.groups:
            if group in self.rule.logged_norms():
                metrics[f"grad_norm_{group}"] = global_norm([grads[key] for key in self.network_keys[group]])
        return grads, metrics

    def _load_kept_metrics(self, agents: Sequence[Any]) -> None:
        for phase in self.rule.phases:
            if phase.keep_metrics and phase.name in agents[0].kept_metrics:
                names = self._kept_names[phase.name]
                self.kept_metrics[phase.name].copy_(torch.stack([torch.stack([agent.kept_metrics[phase.name][name] for name in names])
                                                                 for agent in agents], dim=1))

    def _apply_polyak(self) -> None:
        pairs = [(target_key, source + target_key[len(target):]) for target, source in self.rule.targets
                 for target_key in self.frozen if target_key.startswith(target + ".")]
        polyak_([self.frozen[t] for t, _ in pairs], [self.params[s] for _, s in pairs], self.config.tau)

    def _update_impl(self, batch: Batch, draws: torch.Tensor | None = None, due: tuple[bool, ...] | None = None,
                     kept: tuple[bool, ...] | None = None) -> torch.Tensor:
        """One update of every agent on ``batch`` (``(P, B, ...)`` tensors), running the phases
        in ``due`` (all by default) and reporting the kept metrics of the skipped phases in
        ``kept``; returns the metrics stacked as ``(len(names), P)``."""
        due = tuple(True for _ in self.rule.phases) if due is None else due
        kept = tuple(False for _ in self.rule.phases) if kept is None else kept
        metrics: Metrics = {}
        for phase, runs, reported in zip(self.rule.phases, due, kept):
            if reported:
                metrics.update(zip(self._kept_names[phase.name], self.kept_metrics[phase.name]))
            if not runs:
                continue
            grads, phase_metrics = self._phase_grad_fns[phase.name](self.params, self.frozen, batch, draws)
            counter = self.phase_steps.get(phase.name, self.step)
            adam_step_([group for group in self.groups if group.name in phase.groups], self.params, grads, self.exp_avg, self.exp_avg_sq, counter)
            if phase.name in self.phase_steps:
                counter.add_(1.0)
            metrics.update(phase_metrics)
            if phase.keep_metrics:
                self.kept_metrics[phase.name].copy_(torch.stack([phase_metrics[name] for name in self._kept_names[phase.name]]))
        if self.rule.targets and self.rule.targets_due(due):
            self._apply_polyak()  # after the last phase: no phase reads the targets after its own start
        self.step.add_(1.0)
        return torch.stack([metrics[name] for name in self._names(due, kept)])

    def _train_step_impl(self, sampler: PopulationSampler, rows: torch.Tensor, draws: torch.Tensor | None = None,
                         due: tuple[bool, ...] | None = None, kept: tuple[bool, ...] | None = None) -> torch.Tensor:
        return self._update_impl(sampler.gather(rows), draws, due, kept)

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*self.params.values(), *self.frozen.values(), *self.exp_avg.values(), *self.exp_avg_sq.values(), self.step,
                *self.phase_steps.values(), *self.kept_metrics.values(), *(group.lr_table for group in self.groups if group.lr_table is not None)]

    # --- compilation ---------------------------------------------------------------------
    def _resolve_compile(self, compile: bool | str) -> str | None:
        if compile is False or compile is None:
            return None
        if compile is True:
            # CUDA graphs remove the per-kernel launch cost that dominates small updates on
            # a GPU; on a CPU there is nothing to replay, so plain inductor code.
            return "reduce-overhead" if self.device.type == "cuda" else "default"
        return str(compile)


    def _maybe_compile(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``torch.compile(fn)``, or ``fn`` with a warning if compilation fails.

        The first call compiles. If it raises, the state it may have touched is restored
        from a snapshot and the eager function runs instead (same math, slower).
        """
        if self.compile_mode is None:
            return fn
        # Imported under their own names: a plain `import torch._inductor` here would make
        # `torch` a local name of this function.
        import torch._dynamo as dynamo
        import torch._inductor as inductor

        if self._cudagraphs:
            # CUDA graphs may replay in place only on tensors whose address never changes.
            for tensor in self._state_tensors():
                dynamo.mark_static_address(tensor)
        # Inductor's own random kernels would give other numbers than eager PyTorch: with
        # PyTorch's (fallback_random), a compiled CQL step draws exactly what the eager step
        # draws. (Options instead of mode=..., which torch.compile does not take together.)
        options = {**inductor.list_mode_options(self.compile_mode), "fallback_random": True}
        if self.device.type == "cuda":
            # torch 2.11 on an H200 failed to compile this step with an AssertionError in the
            # scheduler's loop reordering for fusion (Scheduler.reorder_loops_by_dep_pair,
            # docs/performance.md "GPU measurements"); inductor skips that step on CPU nodes
            # anyway. Turned off on GPUs until a GPU run shows it is not needed.
            options.update(loop_ordering_after_fusion=False, loop_reindexing_after_fusion=False)
        compiled = torch.compile(fn, dynamic=False, fullgraph=True, options=options)
        state = {"compiled": False}

        def call(*args: Any) -> torch.Tensor:
            if self.compile_error is not None:
                return fn(*args)
            if self._cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            if state["compiled"]:
                return compiled(*args)
            snapshot = [tensor.clone() for tensor in self._state_tensors()]
            try:
                out = compiled(*args)
            except Exception as exc:  # any failure of dynamo/inductor/the C++ toolchain
                with torch.no_grad():
                    for tensor, saved in zip(self._state_tensors(), snapshot):
                        tensor.copy_(saved)
                self.compile_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self.compile_traceback = traceback.format_exc()
                warnings.warn(
                    f"torch.compile failed on this platform ({self.compile_error}); {type(self).__name__} continues with the "
                    "eager vmapped step (same results, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return fn(*args)
            state["compiled"] = True
            return out

        return call

    @property
    def compiled(self) -> bool:
        """Whether updates run through torch.compile (False before the first update if that fails)."""
        return self.compile_mode is not None and self.compile_error is None


    # --- public API ------------------------------------------------------------------------
    def _metrics(self, stacked: torch.Tensor, names: Sequence[str]) -> PopulationMetrics:
        if self._cudagraphs and self.compile_error is None:
            stacked = stacked.clone()  # CUDA-graph outputs are overwritten by the next replay
        return PopulationMetrics(names, stacked)

    def update(self, batch: Batch) -> PopulationMetrics:
        """One gradient step of every agent; ``batch`` holds ``(P, B, ...)`` tensors.

        Returns ``{name: (P,) tensor}`` (a ``PopulationMetrics``) with the single run's
        metric names, in its order; reading values syncs with the device, so do it only
        when logging.
        """
        draws, due, kept = self._host_arguments()
        out = self._update_fn(batch, draws, due, kept)
        self.total_updates += 1
        return self._metrics(out, self._names(due, kept))

    def train_step(self, sampler: PopulationSampler, batch_size: int | None = None) -> PopulationMetrics:
        """Sample every agent's batch and update: the hot loop's one call.

        The row draws run eagerly (one generator call per agent, so the batches match the
        single runs'); the gather from the base dataset is part of the (compiled) step.
        """
        if sampler.num_agents != self.num_agents:
            raise ValueError(f"sampler serves {sampler.num_agents} agents, the population has {self.num_agents}")
        if self._cudagraphs and sampler not in self._static_samplers:
            # Without this, every replay would copy the whole base dataset into the graph.
            for tensor in sampler.static_tensors():
                torch._dynamo.mark_static_address(tensor)
            self._static_samplers.add(sampler)
        rows = sampler.sample_indices(batch_size or self.config.batch_size)
        draws, due, kept = self._host_arguments()
        out = self._train_step_fn(sampler, rows, draws, due, kept)
        self.total_updates += 1
        return self._metrics(out, self._names(due, kept))

    def _host_arguments(self) -> tuple[torch.Tensor | None, tuple[bool, ...], tuple[bool, ...]]:
        """What the host decides for this update: the rule's random draws, one per agent,
        made eagerly before anything else of the step (as the single run makes its one),
        which phases run and which skipped ones report their kept metrics (from the host's
        update count: no device read)."""
        draws = None
        if self.rule.draws is not None:
            draws = torch.stack([self.rule.draws(self.config, self.device) for _ in range(self.num_agents)])
        due = self.rule.due(self.total_updates + 1, self.config)
        return draws, due, self.rule.kept(due, self.total_updates, self.config)

    def _names(self, due: tuple[bool, ...], kept: tuple[bool, ...]) -> list[str]:
        """The metric names of an update running the phases in ``due`` and reporting the kept
        metrics of those in ``kept``, in the single run's order (``UpdateRule.assemble``, as
        ``apply_rule`` calls it); a plain lookup, so a compiled step can read it."""
        if not self._names_by_due:
            states = [("run",) if phase.every is None else ("run", "skip", *(("kept",) if phase.keep_metrics else ())) for phase in self.rule.phases]
            for pattern in itertools.product(*states):
                phase_names: list[dict[str, None]] = []
                norms: dict[str, None] = {}
                for phase, state in zip(self.rule.phases, pattern):
                    if state == "kept":
                        metrics, kept_norms = split_kept(phase, dict.fromkeys(self._kept_names[phase.name]))
                        phase_names.append(metrics)
                        norms.update(kept_norms)
                    elif state == "run":
                        phase_names.append(dict.fromkeys(self._phase_metric_names[phase.name]))
                        norms.update(dict.fromkeys(phase.groups))
                key = (tuple(state == "run" for state in pattern), tuple(state == "kept" for state in pattern))
                self._names_by_due[key] = list(self.rule.assemble(phase_names, norms))
        return self._names_by_due[(due, kept)]

    def _probe_batch(self) -> Batch:
        """A 2-row batch of zeros with every field the losses read (names and shapes only)."""
        batch = {
            "observations": torch.zeros(2, self.obs_dim, device=self.device),
            "actions": torch.zeros(2, self.act_dim, device=self.device),
            "rewards": torch.zeros(2, device=self.device),
            "next_observations": torch.zeros(2, self.obs_dim, device=self.device),
            "dones": torch.zeros(2, device=self.device),
        }
        if algorithm_spec(self.algorithm_cls.name).uses_mc_returns:
            batch["mc_returns"] = torch.zeros(2, device=self.device)
        return batch

    def _probe_metric_names(self) -> dict[str, list[str]]:
        """Each phase's metric names (gradient norms apart), from one eager call of each on a
        2-row dummy batch with agent 0's parameters."""
        batch = self._probe_batch()
        first = {key: value[0] for key, value in self.params.items()}
        frozen = {key: value[0] for key, value in self.frozen.items()}
        names = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            draws = self.rule.draws(self.config, self.device) if self.rule.draws is not None else None
            for phase in self.rule.phases:
                _, metrics = self._phase_gradients(phase, first, frozen, batch, draws)
                names[phase.name] = [name for name in metrics if not name.startswith("grad_norm_")]
        return names

    def _agent_slice(self, tensors: Tensors, prefix: str, agent: int) -> Tensors:
        return {key[len(prefix):]: value[agent] for key, value in tensors.items() if key.startswith(prefix)}

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Deterministic actions of every agent: obs ``(P, N, obs_dim)`` (each agent its own
        normalised observations) or ``(N, obs_dim)`` (shared) -> ``(P, N, act_dim)`` in [-1, 1]."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not isinstance(obs, torch.Tensor) else obs, device=self.device)
        actor = {key[len("actor."):]: value for key, value in self.params.items() if key.startswith("actor.")}
        call = _MethodCall(self._networks.actor, lambda module, observations: module.deterministic(observations))

        def mean_action(params: Tensors, observations: torch.Tensor) -> torch.Tensor:
            return functional_call(call, {f"module.{k}": v for k, v in params.items()}, (observations,))

        actions = vmap(mean_action, in_dims=(0, 0 if obs_t.ndim == 3 else None))(actor, obs_t)
        return actions.clamp(-1.0, 1.0)

    @torch.no_grad()
    def explore(self, obs: np.ndarray, noise: np.ndarray) -> torch.Tensor:
        """Every agent's stochastic action for its own observation, driven by given
        standard-normal noise: obs ``(P, obs_dim)``, noise ``(P, act_dim)`` -> ``(P, act_dim)``
        in [-1, 1] (``act_from_noise`` of the single-run actor)."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)[:, None]
        noise_t = torch.as_tensor(np.asarray(noise, dtype=np.float32), device=self.device)[:, None]
        actor = {key[len("actor."):]: value for key, value in self.params.items() if key.startswith("actor.")}
        call = _MethodCall(self._networks.actor, lambda module, observations, eps: module.act_from_noise(observations, eps))

        def noisy_action(params: Tensors, observations: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            return functional_call(call, {f"module.{k}": v for k, v in params.items()}, (observations, eps))

        if self.num_agents == 1:  # a compiled single run acts at every environment step: spare it vmap's overhead (~0.6 ms)
            return noisy_action({k: v[0] for k, v in actor.items()}, obs_t[0], noise_t[0]).clamp(-1.0, 1.0)
        return vmap(noisy_action)(actor, obs_t, noise_t)[:, 0].clamp(-1.0, 1.0)

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Every agent's diagnostic Q (the rule's ``q_estimate``, as the single run's
        ``q_values``): ``(P, B, .)`` or shared ``(B, .)`` inputs -> ``(P, B)``."""
        critic = {key[len("critic."):]: value for key, value in self.params.items() if key.startswith("critic.")}
        module = self._networks.critic

        def estimate(params: Tensors, o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return self.rule.q_estimate(functional_call(module, params, (o, a)), self.config)

        dims = (0, 0 if obs.ndim == 3 else None, 0 if actions.ndim == 3 else None)
        return vmap(estimate, in_dims=dims)(critic, obs, actions)

    @torch.no_grad()
    def agent_q_values(self, agent: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The single run's ``q_values`` of one agent on its own ``(B, .)`` inputs -> ``(B,)``."""
        critic = self._agent_slice(self.params, "critic.", agent)
        return self.rule.q_estimate(functional_call(self._networks.critic, critic, (obs, actions)), self.config)

    @torch.no_grad()
    def agent_entropy_bonus(self, agent: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        """The algorithm's own ``entropy_bonus`` evaluated with one agent's parameters
        (None unless its critic learns soft Q)."""
        call = _MethodCall(self._networks, self.algorithm_cls.entropy_bonus)
        params = {f"module.{key}": value for key, value in self._agent_slice(self.params, "", agent).items()}
        return functional_call(call, params, (obs, actions))

    def member(self, agent: int) -> Any:
        """Agent ``agent`` as a single-run algorithm object (networks, Adam state, LR
        schedule, update count): for evaluation with the existing tools, checkpoints in the
        single-run format, or continuing that run alone. Leaves the global RNG untouched."""
        if not 0 <= agent < self.num_agents:
            raise IndexError(f"agent {agent} out of range for a population of {self.num_agents}")
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            single = self.algorithm_cls(self.obs_dim, self.act_dim, self.config, self.device)
        with torch.no_grad():
            for network in self.rule.networks:
                single.modules[network].load_state_dict({k: v.clone() for k, v in self._agent_slice(self.params, network + ".", agent).items()})
            for network, _ in self.rule.targets:
                single.modules[network].load_state_dict({k: v.clone() for k, v in self._agent_slice(self.frozen, network + ".", agent).items()})
            if self.rule.temperature:
                single.log_alpha.copy_(self.params[TEMPERATURE_KEY][agent])
        steps = self.total_updates
        for group in self.groups:
            optimizer = single.optimizers[group.name]
            for param, key in zip(optimizer.param_groups[0]["params"], group.keys):
                optimizer.state[param] = {
                    "step": torch.tensor(float(self._optimizer_steps(group.name, steps))),
                    "exp_avg": self.exp_avg[key][agent].clone(),
                    "exp_avg_sq": self.exp_avg_sq[key][agent].clone(),
                }
        single.total_updates = steps
        for phase in self.rule.phases:
            if phase.keep_metrics and self.rule.optimizer_steps(phase.groups[0], steps, self.config) > 0:
                single.kept_metrics[phase.name] = {name: row[agent].clone() for name, row in zip(self._kept_names[phase.name], self.kept_metrics[phase.name])}
        self._export_cosine_schedule(single, steps)
        return single

    def _export_cosine_schedule(self, single: Any, steps: int) -> None:
        """The single run's scheduler and LR where the population read the LR from a table."""
        if self.rule.cosine_lr is None:
            return
        name, horizon_field = self.rule.cosine_lr
        horizon = int(getattr(self.config, horizon_field))
        scheduler = single.schedulers[name]
        epoch = min(steps, horizon)
        group = next(group for group in self.groups if group.name == name)
        if group.lr_table is None:  # past the schedule: the constant LR
            lr = group.lr
        else:
            lr = float(cosine_lr_table(single.optimizers[name].param_groups[0]["initial_lr"], horizon)[epoch])
        state = scheduler.state_dict()
        state.update(last_epoch=epoch, _step_count=epoch + 1, _last_lr=[lr])
        scheduler.load_state_dict(state)
        single.optimizers[name].param_groups[0]["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit on the same device (clones)."""
        clone = lambda tensors: {key: value.detach().clone() for key, value in tensors.items()}  # noqa: E731
        return {
            "params": clone(self.params),
            "frozen": clone(self.frozen),
            "exp_avg": clone(self.exp_avg),
            "exp_avg_sq": clone(self.exp_avg_sq),
            "step": self.step.clone(),
            **{f"{name}_step": counter.clone() for name, counter in self.phase_steps.items()},
            **{f"{name}_metrics": kept.clone() for name, kept in self.kept_metrics.items()},
            "total_updates": self.total_updates,
            "num_agents": self.num_agents,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copies into the existing tensors (their addresses matter to a compiled step)."""
        if state["num_agents"] != self.num_agents:
            raise ValueError(f"state holds {state['num_agents']} agents, this population has {self.num_agents}")
        for name in ("params", "frozen", "exp_avg", "exp_avg_sq"):
            mine = getattr(self, name)
            if set(mine) != set(state[name]):
                raise ValueError(f"state's {name} tensors {sorted(state[name])} do not match this population's {sorted(mine)}")
            for key, value in state[name].items():
                mine[key].copy_(value)
        self.step.copy_(state["step"])
        for name, counter in self.phase_steps.items():
            counter.copy_(state[f"{name}_step"])
        for name, kept in self.kept_metrics.items():
            kept.copy_(state[f"{name}_metrics"])
        self.total_updates = int(state["total_updates"])


_POPULATIONS: dict[type, type[Population]] = {}


def population_for(algorithm_cls: type) -> type[Population]:
    """The population class of an algorithm class with an ``update_rule`` (made once)."""
    if getattr(algorithm_cls, "update_rule", None) is None:
        raise TypeError(f"{algorithm_cls.__name__} declares no update_rule: it has no population step")
    if algorithm_cls not in _POPULATIONS:
        _POPULATIONS[algorithm_cls] = type(f"{algorithm_cls.__name__}Population", (Population,), {
            "algorithm_cls": algorithm_cls,
            "__doc__": f"P ``{algorithm_cls.__module__}.{algorithm_cls.__name__}`` agents trained together by its update rule.",
        })
    return _POPULATIONS[algorithm_cls]


# The built-in algorithms' populations under their usual names (tests, benchmarks, behaviour training).
BCPopulation = population_for(BC)
TD3BCPopulation = population_for(TD3BC)
IQLPopulation = population_for(IQL)
CQLPopulation = population_for(CQL)
CalQLPopulation = population_for(CalQL)
SACPopulation = population_for(SAC)
RLPDPopulation = population_for(RLPD)


def population_class(algo: str) -> type[Population] | None:
    """The population class of algorithm ``algo`` (None if it declares no update rule: it
    trains single runs only, eagerly)."""
    from ..algos.registry import is_known

    if not is_known(algo) or getattr(algorithm_spec(algo).algorithm, "update_rule", None) is None:
        return None
    return population_for(algorithm_spec(algo).algorithm)


# ---------------------------------------------------------------------------------------
# Which runs take the compiled step
# ---------------------------------------------------------------------------------------
# Under --compile auto, a CPU run takes the compiled step from its algorithm's declared
# ``compile_min_steps`` on (algos/*.py: SPEC): where the time it saves exceeds a cold
# compilation (inductor's on-disk cache empty), measured in docs/performance.md ("The default
# update path"). No declared threshold: no measurement shows that compiling pays, so eager.


def cpp_compiler() -> str | None:
    """The C++ compiler inductor's CPU backend would use, if there is one ($CXX first)."""
    return os.environ.get("CXX") or next(filter(None, (shutil.which(name) for name in ("g++", "c++", "clang++"))), None)


def compiled_step_wanted(algo: str, mode: str, device: torch.device, total_steps: int) -> bool:
    """Whether a run of ``algo`` with ``total_steps`` gradient steps on ``device`` takes the
    compiled (population) step under ``--compile mode``.

    ``off``: never (the eager reference of ``algos/``). ``on``: whenever ``algo`` has a
    population step. ``auto``: on a CPU with a C++ compiler, for runs long enough that the
    measured gain pays for a cold compilation (the declaration's ``compile_min_steps``); on GPUs not yet,
    because no GPU measurement shows what pays there (docs/performance.md). The answer
    depends on the configuration only, never on how far a run got, so a resumed run takes
    the same path as an uninterrupted one.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "off" or population_class(algo) is None:
        return False
    if mode == "on":
        return True
    threshold = algorithm_spec(algo).compile_min_steps
    return device.type == "cpu" and threshold is not None and total_steps >= threshold and cpp_compiler() is not None


__all__ = ["BCPopulation", "COMPILE_MODES", "CQLPopulation", "CalQLPopulation", "IQLPopulation", "Population", "PopulationMetrics", "RLPDPopulation", "SACPopulation",
           "TD3BCPopulation", "compiled_step_wanted", "cpp_compiler", "population_class", "population_for"]
