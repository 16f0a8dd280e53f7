"""Populations: P runs of one algorithm trained in one process with stacked parameters.

A *population* is P independent runs of one algorithm on one base dataset: different seeds
and corruption variants (top-k trajectory removal, reward noise, ...). Instead of P
processes each doing small matrix products, the P parameter sets are stacked along a
leading agent dimension and every update is one vmapped call of the algorithm's pure loss
functions (``torch.func``): the same math, P times wider kernels, one Python dispatch.

The data side (each run's view of the base dataset, the shared device-resident sampler) is
``data.views``; the optimizer math on stacked tensors is ``engine.functional``. Here:

``IQLPopulation`` / ``CQLPopulation`` / ``CalQLPopulation``
    Stacked parameters (``torch.func.stack_module_state``), the losses of ``algos/iql.py``
    and ``algos/cql.py`` (``iql_losses`` / ``cql_losses``, the same wiring the single runs
    use) evaluated through ``functional_call`` + ``grad`` + ``vmap`` over the agent
    dimension, one Adam over the stacked tensors, Polyak-averaged target critics and, for
    IQL, the cosine actor-LR schedule of ``iql.IQL``. ``CalQLPopulation`` is CQL's with
    Cal-QL's floor (batches carry ``mc_returns``). ``compile=True`` wraps the whole step
    (batch gather, losses, gradients, Adam, Polyak) in ``torch.compile``, falling back to
    the eager vmapped step with a warning if compilation fails on this platform.

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
population is equivalent in distribution only (see ``CQLPopulation``). A population of ONE
draws what the single run draws, compiled or not (inductor is told to use PyTorch's own
random kernels, ``fallback_random``): so the compiled single-run step that ``--compile``
selects reproduces the eager reference up to rounding for CQL as well as IQL.
"""
from __future__ import annotations

import copy
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
from ..algos.calql import CalQL
from ..algos.cql import CQL, CQLConfig, cql_losses
from ..algos.iql import IQL, IQLConfig, iql_losses
from ..algos.registry import algorithm_spec
from ..algos.rlpd import RLPD, expected_subset_min
from ..algos.sac import SAC, actor_temperature_phase
from ..data.views import PopulationSampler
from ..core.networks import EnsembleCritic
from ..core.grid_options import COMPILE_MODES
from .functional import ParamGroup, adam_hyperparameters, adam_step_, cosine_lr_table, global_norm, polyak_

Tensors = dict[str, torch.Tensor]


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
# The population trainer, algorithm-independent part
# ---------------------------------------------------------------------------------------
class _LossModule(nn.Module):
    """Holds an algorithm's networks (on the meta device: structure only) so that
    ``functional_call`` can swap in one agent's parameters for every network at once."""

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:  # pragma: no cover - subclasses
        raise NotImplementedError


class _Population:
    """Stacked parameters of P agents, a vmapped gradient step and Adam over stacked tensors.

    Subclasses provide the loss module (``self._losses``), the parameter groups, the
    Polyak pairs and the per-agent extras. The update is
    ``grads, metrics = vmap(grad(loss))(params, frozen, batch)`` followed by Adam on every
    group and Polyak averaging of the target networks, all in place on device tensors.
    """

    algorithm_cls: type
    randomness: str = "error"  # vmap randomness: IQL draws nothing inside its update
    # The compiled CPU step evaluates the critics member by member (networks.EnsembleCritic.member_products).
    member_critic_products: bool = False

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
        self.config = first.config
        self.obs_dim, self.act_dim = first.obs_dim, first.act_dim
        self.device = first.device
        self.num_agents = len(agents)
        self.total_updates = first.total_updates  # host-side mirror of self.step (no sync to read)
        self._template = first

        # Trainable parameters by network, stacked: name "actor.net.0.weight" -> (P, ...).
        self.params: Tensors = {}
        self.frozen: Tensors = {}  # target networks (and anything else not optimised)
        self.network_keys: dict[str, list[str]] = {}
        for network in self._trainable_networks():
            stacked, buffers = stack_module_state([agent.modules[network] for agent in agents])
            if buffers:
                raise ValueError(f"{network} has buffers {sorted(buffers)}; populations support parameter-only networks")
            self.network_keys[network] = [f"{network}.{key}" for key in stacked]
            self.params.update({f"{network}.{key}": value.detach().clone() for key, value in stacked.items()})
        for network in self._frozen_networks():
            stacked, _ = stack_module_state([agent.modules[network] for agent in agents])
            self.frozen.update({f"{network}.{key}": value.detach().clone() for key, value in stacked.items()})
        self._add_extra_state(agents)

        # Adam state per stacked tensor, and the shared step counter: float64 so that the
        # bias corrections are computed in double precision, as torch.optim.Adam does, and
        # shape (1,) because torch.compile (2.13, CPU) silently drops in-place updates of a
        # 0-d float64 input tensor (the counter would stay at 0).
        self.step = torch.zeros(1, dtype=torch.float64, device=self.device)
        self.exp_avg: Tensors = {key: torch.zeros_like(value) for key, value in self.params.items()}
        self.exp_avg_sq: Tensors = {key: torch.zeros_like(value) for key, value in self.params.items()}
        self.groups = self._param_groups()
        self._load_optimizer_state(agents)

        self._losses = self._loss_module()
        self._grad_fn = vmap(self._agent_gradients, randomness=self.randomness)
        self.metric_names = self._probe_metric_names()

        self.compile_mode = self._resolve_compile(compile)
        if self.compile_mode is not None and self.device.type == "cpu" and self.member_critic_products:
            for module in self._losses.modules():
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
        del self._template  # agent 0's own tensors are no longer needed

    @classmethod
    def create(cls, obs_dim: int, act_dim: int, config: Any, seeds: Sequence[int], device: torch.device | str = "cpu", *, compile: bool | str = False) -> "_Population":
        """Agents initialised as the trainer does for each seed (``torch.manual_seed(seed)``
        then the algorithm's constructor); the global RNG is restored after."""
        agents = []
        with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
            for seed in seeds:
                torch.manual_seed(int(seed))
                agents.append(cls.algorithm_cls(obs_dim, act_dim, config, device))
        return cls(agents, compile=compile)

    # --- subclass hooks ------------------------------------------------------------------
    def _trainable_networks(self) -> list[str]:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _frozen_networks(self) -> list[str]:
        return ["target_critic"]

    def _add_extra_state(self, agents: Sequence[Any]) -> None:
        """Trainable tensors that are not module parameters (CQL's log_alpha)."""

    def _param_groups(self) -> list[ParamGroup]:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _load_optimizer_state(self, agents: Sequence[Any]) -> None:
        """Start from the agents' Adam moments (zeros for fresh agents). Every group's
        optimizer must be at the step the agents' update count implies
        (``_optimizer_steps``): a population steps all of them together from there."""
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

    def _optimizer_steps(self, group: str, updates: int) -> int:
        """Adam steps the optimizer of ``group`` has taken after ``updates`` updates."""
        return updates

    def _reduce_q(self, q: torch.Tensor) -> torch.Tensor:
        """The single run's ``q_values`` from the critics' ``(E, ...)`` outputs: the minimum."""
        return q.min(dim=0).values

    def _loss_module(self) -> _LossModule:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _polyak_pairs(self) -> list[tuple[str, str]]:
        """(target key, source key) pairs averaged with rate ``config.tau`` after each step."""
        return [(key, "critic." + key[len("target_critic."):]) for key in self.frozen if key.startswith("target_critic.")]

    # --- the math of one step ------------------------------------------------------------
    def _agent_gradients(self, params: Tensors, frozen: Tensors, batch: Batch) -> tuple[Tensors, Metrics]:
        """One agent (inside vmap): gradients of the summed losses and the step's metrics."""

        def loss(params: Tensors) -> tuple[torch.Tensor, Metrics]:
            return functional_call(self._losses, {**params, **frozen}, (batch,))

        grads, metrics = grad(loss, has_aux=True)(params)
        for group in self.groups:
            metrics[f"grad_norm_{group.name}"] = global_norm([grads[key] for key in group.keys])
        return grads, metrics

    def _apply_adam(self, grads: Tensors) -> None:
        adam_step_(self.groups, self.params, grads, self.exp_avg, self.exp_avg_sq, self.step)

    def _apply_polyak(self) -> None:
        pairs = self._polyak_pairs()
        polyak_([self.frozen[t] for t, _ in pairs], [self.params[s] for _, s in pairs], self.config.tau)

    def _update_impl(self, batch: Batch) -> torch.Tensor:
        """One update of every agent on ``batch`` (``(P, B, ...)`` tensors); returns the
        metrics stacked as ``(len(metric_names), P)``."""
        grads, metrics = self._grad_fn(self.params, self.frozen, batch)
        self._apply_adam(grads)
        self._apply_polyak()
        self.step.add_(1.0)
        return torch.stack([metrics[name] for name in self.metric_names])

    def _train_step_impl(self, sampler: PopulationSampler, rows: torch.Tensor) -> torch.Tensor:
        return self._update_impl(sampler.gather(rows))

    # --- compilation ---------------------------------------------------------------------
    def _resolve_compile(self, compile: bool | str) -> str | None:
        if compile is False or compile is None:
            return None
        if compile is True:
            # CUDA graphs remove the per-kernel launch cost that dominates small updates on
            # a GPU; on a CPU there is nothing to replay, so plain inductor code.
            return "reduce-overhead" if self.device.type == "cuda" else "default"
        return str(compile)

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*self.params.values(), *self.frozen.values(), *self.exp_avg.values(), *self.exp_avg_sq.values(), self.step]

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
    def _metrics(self, stacked: torch.Tensor, names: Sequence[str] | None = None) -> PopulationMetrics:
        if self._cudagraphs and self.compile_error is None:
            stacked = stacked.clone()  # CUDA-graph outputs are overwritten by the next replay
        return PopulationMetrics(self.metric_names if names is None else names, stacked)

    def update(self, batch: Batch) -> PopulationMetrics:
        """One gradient step of every agent; ``batch`` holds ``(P, B, ...)`` tensors.

        Returns ``{name: (P,) tensor}`` (a ``PopulationMetrics``) with the single-run
        algorithm's metric names; reading values syncs with the device, so do it only when
        logging.
        """
        args, names = self._host_arguments()
        out = self._update_fn(batch, *args)
        self.total_updates += 1
        return self._metrics(out, names)

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
        args, names = self._host_arguments()
        out = self._train_step_fn(sampler, rows, *args)
        self.total_updates += 1
        return self._metrics(out, names)

    def _host_arguments(self) -> tuple[tuple[Any, ...], list[str]]:
        """Further arguments of this update's step that the host decides (none here), and the
        names of the metrics it returns."""
        return (), self.metric_names

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

    def _probe_metric_names(self) -> list[str]:
        """Metric names, in the single-run order, from one eager call on a 2-row dummy batch."""
        batch = self._probe_batch()
        first = {key: value[0] for key, value in self.params.items()}
        frozen = {key: value[0] for key, value in self.frozen.items()}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            _, metrics = self._agent_gradients(first, frozen, batch)
        return list(metrics)

    def _agent_slice(self, tensors: Tensors, prefix: str, agent: int) -> Tensors:
        return {key[len(prefix):]: value[agent] for key, value in tensors.items() if key.startswith(prefix)}

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Deterministic actions of every agent: obs ``(P, N, obs_dim)`` (each agent its own
        normalised observations) or ``(N, obs_dim)`` (shared) -> ``(P, N, act_dim)`` in [-1, 1]."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not isinstance(obs, torch.Tensor) else obs, device=self.device)
        actor = {key[len("actor."):]: value for key, value in self.params.items() if key.startswith("actor.")}
        module = self._losses.actor

        def mean_action(params: Tensors, observations: torch.Tensor) -> torch.Tensor:
            return functional_call(_MethodCall(module, "deterministic"), {f"module.{k}": v for k, v in params.items()}, (observations,))

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
        module = self._losses.actor

        def noisy_action(params: Tensors, observations: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            return functional_call(_MethodCall(module, "act_from_noise"), {f"module.{k}": v for k, v in params.items()}, (observations, eps))

        if self.num_agents == 1:  # a compiled single run acts at every environment step: spare it vmap's overhead (~0.6 ms)
            return noisy_action({k: v[0] for k, v in actor.items()}, obs_t[0], noise_t[0]).clamp(-1.0, 1.0)
        return vmap(noisy_action)(actor, obs_t, noise_t)[:, 0].clamp(-1.0, 1.0)

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """min over the twin critics of every agent: ``(P, B, .)`` or shared ``(B, .)`` inputs -> ``(P, B)``."""
        critic = {key[len("critic."):]: value for key, value in self.params.items() if key.startswith("critic.")}
        module = self._losses.critic

        def q_min(params: Tensors, o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return self._reduce_q(functional_call(module, params, (o, a)))

        dims = (0, 0 if obs.ndim == 3 else None, 0 if actions.ndim == 3 else None)
        return vmap(q_min, in_dims=dims)(critic, obs, actions)

    @torch.no_grad()
    def agent_q_values(self, agent: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The single run's ``q_values`` (min over the twin critics; RLPD: the expected min over its target subsets)
        of one agent on its own ``(B, .)`` inputs -> ``(B,)``."""
        critic = self._agent_slice(self.params, "critic.", agent)
        return self._reduce_q(functional_call(self._losses.critic, critic, (obs, actions)))

    @torch.no_grad()
    def agent_entropy_bonus(self, agent: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        """The single run's ``entropy_bonus`` of one agent: None unless its critic learns soft Q."""
        return None

    def member(self, agent: int) -> Any:
        """Agent ``agent`` as a single-run algorithm object (networks, Adam state, LR
        schedule, update count): for evaluation with the existing tools, checkpoints in the
        single-run format, or continuing that run alone. Leaves the global RNG untouched."""
        if not 0 <= agent < self.num_agents:
            raise IndexError(f"agent {agent} out of range for a population of {self.num_agents}")
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            single = self.algorithm_cls(self.obs_dim, self.act_dim, self.config, self.device)
        with torch.no_grad():
            for network in [*self._trainable_networks(), *self._frozen_networks()]:
                source = self.params if network in self._trainable_networks() else self.frozen
                single.modules[network].load_state_dict({k: v.clone() for k, v in self._agent_slice(source, network + ".", agent).items()})
        self._export_extra_state(single, agent)
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
        self._export_schedulers(single, steps)
        return single

    def _export_extra_state(self, single: Any, agent: int) -> None:
        pass

    def _export_schedulers(self, single: Any, steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit on the same device (clones)."""
        clone = lambda tensors: {key: value.detach().clone() for key, value in tensors.items()}  # noqa: E731
        return {
            "params": clone(self.params),
            "frozen": clone(self.frozen),
            "exp_avg": clone(self.exp_avg),
            "exp_avg_sq": clone(self.exp_avg_sq),
            "step": self.step.clone(),
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
        self.total_updates = int(state["total_updates"])


class _MethodCall(nn.Module):
    """Calls ``module.<method>`` as ``forward``, so ``functional_call`` can reach methods
    other than ``forward`` (the actor's ``deterministic``) with swapped parameters."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: Any) -> Any:
        return getattr(self.module, self.method)(*args)


def _meta_copy(module: nn.Module) -> nn.Module:
    """Structure without storage: every parameter is swapped in by functional_call."""
    return copy.deepcopy(module).to("meta")


# ---------------------------------------------------------------------------------------
# IQL
# ---------------------------------------------------------------------------------------
class _IQLLosses(_LossModule):
    """IQL's three losses, in ``iql.IQL.update``'s order, from the pure functions of ``iql.py``.

    The losses share no trainable parameters (V's loss sees the critic only as the frozen
    target, Q's loss sees V under no_grad, the actor's loss gets detached advantages), so the
    gradient of their sum with respect to each network is exactly that network's own loss
    gradient: one ``grad`` call replaces the three backward passes of the single run.
    """

    def __init__(self, template: IQL) -> None:
        super().__init__()
        self.config: IQLConfig = template.config
        self.actor = _meta_copy(template.actor)
        self.critic = _meta_copy(template.critic)
        self.value = _meta_copy(template.value)
        self.target_critic = _meta_copy(template.target_critic)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        value_loss, critic_loss, actor_loss, metrics = iql_losses(self.actor, self.critic, self.target_critic, self.value, batch, self.config)
        return value_loss + critic_loss + actor_loss, metrics


class IQLPopulation(_Population):
    """P IQL agents (``iql.IQL`` semantics) trained together with stacked parameters.

    Build it from existing agents (``IQLPopulation(agents)``, all with the same config) or
    with ``IQLPopulation.create(obs_dim, act_dim, config, seeds)``, which initialises agent k
    the way the trainer does for seed k (``torch.manual_seed(seed)`` then ``IQL(...)``).

    ``update(batch)`` / ``train_step(sampler)`` return the metrics of ``IQL.update`` as
    ``(P,)`` tensors. The actor LR follows IQL's cosine schedule, read from a device table
    indexed by the device step counter (no host involvement), and stays 0 after
    ``config.max_steps`` as in ``IQL``.
    """

    algorithm_cls = IQL
    randomness = "error"

    def _trainable_networks(self) -> list[str]:
        return ["value", "critic", "actor"]

    def _param_groups(self) -> list[ParamGroup]:
        template: IQL = self._template
        groups = []
        for network in ("value", "critic", "actor"):
            lr, betas, eps = adam_hyperparameters(template.optimizers[network], f"IQL {network} optimizer")
            table = None
            if network == "actor":
                if template.total_updates < self.config.max_steps:
                    table = torch.as_tensor(cosine_lr_table(lr, self.config.max_steps), dtype=torch.float64, device=self.device)
                else:  # the schedule is over: IQL no longer steps it, the LR stays what the optimizer holds (fine-tuning resets it)
                    lr = float(template.optimizers["actor"].param_groups[0]["lr"])
            groups.append(ParamGroup(network, self.network_keys[network], lr, table, betas, eps))
        return groups

    def _loss_module(self) -> _LossModule:
        return _IQLLosses(self._template)

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*super()._state_tensors(), *(g.lr_table for g in self.groups if g.lr_table is not None)]

    def _export_schedulers(self, single: IQL, steps: int) -> None:
        scheduler = single.schedulers["actor"]
        epoch = min(steps, self.config.max_steps)
        actor = next(group for group in self.groups if group.name == "actor")
        if actor.lr_table is None:  # past the schedule: the constant LR
            lr = actor.lr
        else:
            lr = float(cosine_lr_table(single.optimizers["actor"].param_groups[0]["initial_lr"], self.config.max_steps)[epoch])
        state = scheduler.state_dict()
        state.update(last_epoch=epoch, _step_count=epoch + 1, _last_lr=[lr])
        scheduler.load_state_dict(state)
        single.optimizers["actor"].param_groups[0]["lr"] = lr


# ---------------------------------------------------------------------------------------
# CQL
# ---------------------------------------------------------------------------------------
class _CQLLosses(_LossModule):
    """CQL's losses in ``cql.CQL.update``'s order, from the pure functions of ``cql.py``/``sac.py``.

    The single run steps alpha, actor and critics on three separate losses; the actor loss
    backpropagates through the critic, and those critic gradients are discarded. Here each
    loss sees only its own network as differentiable (the others' parameters detached), so
    the gradient of the summed loss is, per network, exactly that network's own gradient.
    """

    def __init__(self, template: CQL) -> None:
        super().__init__()
        self.config: CQLConfig = template.config
        # Cal-QL: the policy proposals' Q floored at the batch's Monte-Carlo returns-to-go.
        self.calibrated = algorithm_spec(template.name).uses_mc_returns
        self.target_entropy = template.target_entropy
        self.actor = _meta_copy(template.actor)
        self.critic = _meta_copy(template.critic)
        self.target_critic = _meta_copy(template.target_critic)
        self.alpha = nn.Module()
        self.alpha.register_parameter("log_alpha", nn.Parameter(torch.zeros((), device="meta")))
        self.frozen_actor = _meta_copy(template.actor)
        self.frozen_critic = _meta_copy(template.critic)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        alpha_loss, actor_loss, critic_loss, metrics = cql_losses(
            self.actor, self.critic, self.target_critic, self.alpha.log_alpha, batch, self.config, self.target_entropy,
            critic_for_actor=self.frozen_critic, actor_for_critic=self.frozen_actor, q_floor=batch["mc_returns"] if self.calibrated else None,
        )
        return alpha_loss + actor_loss + critic_loss, metrics


class _TemperaturePopulation(_Population):
    """The SAC family's shared state: actor and critic trained, a learned temperature
    (``alpha.log_alpha``) as an extra trainable tensor, one Adam per network in
    ``group_order``, per-agent random draws inside the step."""

    randomness = "different"
    group_order: tuple[str, ...] = ("alpha", "actor", "critic")

    def _trainable_networks(self) -> list[str]:
        return ["critic", "actor"]

    def _add_extra_state(self, agents: Sequence[Any]) -> None:
        self.params["alpha.log_alpha"] = torch.stack([agent.log_alpha.detach() for agent in agents]).clone()
        self.network_keys["alpha"] = ["alpha.log_alpha"]

    def _param_groups(self) -> list[ParamGroup]:
        groups = []
        for name in self.group_order:
            lr, betas, eps = adam_hyperparameters(self._template.optimizers[name], f"{self.algorithm_cls.__name__} {name} optimizer")
            groups.append(ParamGroup(name, self.network_keys[name], lr, None, betas, eps))
        return groups

    def _export_extra_state(self, single: Any, agent: int) -> None:
        with torch.no_grad():
            single.log_alpha.copy_(self.params["alpha.log_alpha"][agent])


class CQLPopulation(_TemperaturePopulation):
    """P CQL agents (``cql.CQL`` semantics) trained together with stacked parameters.

    Randomness: CQL draws actions inside its losses; under ``vmap(randomness="different")``
    each agent gets its own draws (``cql_sample_actions`` creates them with
    ``obs.new_empty(...)``, which vmap batches per agent).

    The draws come from the global generator in another order than P separate
    runs would make them (and a compiled step uses inductor's own random streams), so a
    member matches its single run in distribution, not bitwise. One exception makes the
    update math testable: an eager population of one draws exactly what ``CQL.update``
    draws from the same global random state.
    """

    algorithm_cls = CQL
    member_critic_products = True  # measured: benchmarks/cql_reference.py

    def _loss_module(self) -> _LossModule:
        return _CQLLosses(self._template)

    def _agent_gradients(self, params: Tensors, frozen: Tensors, batch: Batch) -> tuple[Tensors, Metrics]:
        # The detached copies each loss sees of the networks it must not differentiate.
        detached = {f"frozen_{key}": value.detach() for key, value in params.items() if key.startswith(("actor.", "critic."))}
        grads, metrics = super()._agent_gradients(params, {**frozen, **detached}, batch)
        metrics.pop("grad_norm_alpha")  # CQL.update does not report it
        return grads, metrics


class CalQLPopulation(CQLPopulation):
    """P Cal-QL agents (``calql.CalQL``): CQL's population whose batches carry ``mc_returns``
    (``PopulationSampler``'s ``extras``, or the online stage's buffers), the floor of the
    policy proposals' Q in the penalty (``_CQLLosses``)."""

    algorithm_cls = CalQL


# ---------------------------------------------------------------------------------------
# SAC and RLPD (Phase II, from scratch): the critic first, then actor and temperature
# ---------------------------------------------------------------------------------------
class _ActorCriticLosses(_LossModule):
    """SAC's and RLPD's losses in their ``update``'s order, as two calls: ``critic_loss`` at
    the parameters of the step's start, then, after the critic's Adam step, ``actor_loss``
    (actor and temperature) through the updated critic. The temperature loss sees the
    log-probabilities only detached and the actor loss only a detached alpha, so the
    gradient of their sum is, per parameter, each loss's own."""

    def __init__(self, template: SAC | RLPD) -> None:
        super().__init__()
        self.config = template.config
        self.target_entropy = template.target_entropy
        # The algorithm's own two phases (sac.sac_critic_phase / rlpd.rlpd_critic_phase, and its actor loss).
        self.critic_phase, self.actor_loss_fn = type(template).critic_phase, type(template).actor_loss_fn
        self.actor = _meta_copy(template.actor)
        self.critic = _meta_copy(template.critic)
        self.target_critic = _meta_copy(template.target_critic)
        self.alpha = nn.Module()
        self.alpha.register_parameter("log_alpha", nn.Parameter(torch.zeros((), device="meta")))

    def critic_loss(self, batch: Batch, subset: torch.Tensor | None) -> tuple[torch.Tensor, Metrics]:
        alpha = self.alpha.log_alpha.exp().detach()
        return self.critic_phase(self.critic, self.target_critic, self.actor, batch, alpha, subset, self.config)

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        alpha = self.alpha.log_alpha.exp().detach()
        actor_loss, alpha_loss, metrics = actor_temperature_phase(self.actor_loss_fn, self.critic, self.actor, self.alpha.log_alpha,
                                                                  batch["observations"], alpha, self.target_entropy)
        return actor_loss + alpha_loss, metrics


class _ActorCriticPopulation(_TemperaturePopulation):
    """P SAC-family agents: a two-phase step, as ``SAC.update`` / ``RLPD.update`` do it.

    Phase 1: the critic's gradients at the step's start, its Adam step, Polyak averaging.
    Phase 2 (RLPD: on every ``actor_every``-th update only, decided on the host from the
    update count): actor and temperature gradients through the updated critic and their
    Adam step, counted by their own step counter. RLPD's target subsets are drawn before
    the step, one ``randperm`` per agent, as the single run draws its one. Randomness as in
    ``CQLPopulation``: a population of one draws what the single run draws.
    """

    group_order = ("critic", "actor", "alpha")

    def _add_extra_state(self, agents: Sequence[Any]) -> None:
        super()._add_extra_state(agents)
        self.actor_every = int(getattr(self.config, "actor_every", 1))
        self.actor_step = torch.zeros(1, dtype=torch.float64, device=self.device)  # Adam steps of actor and temperature

    def _loss_module(self) -> _LossModule:
        return _ActorCriticLosses(self._template)

    def _optimizer_steps(self, group: str, updates: int) -> int:
        return updates if group == "critic" else updates // self.actor_every

    def _load_optimizer_state(self, agents: Sequence[Any]) -> None:
        super()._load_optimizer_state(agents)
        self.actor_step.fill_(float(self._optimizer_steps("actor", agents[0].total_updates)))

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*super()._state_tensors(), self.actor_step]

    # --- the two-phase step -----------------------------------------------------------------
    def _phase_gradients(self, phase: str, keys: Sequence[str], params: Tensors, frozen: Tensors, *args: Any) -> tuple[Tensors, Metrics]:
        """One agent (inside vmap): gradients of ``phase``'s loss for the parameters in
        ``keys``; every other tensor enters as a constant."""
        trainable = {key: params[key] for key in keys}
        constant = {f"module.{key}": value for key, value in {**params, **frozen}.items() if key not in trainable}

        def loss(trainable: Tensors) -> tuple[torch.Tensor, Metrics]:
            swapped = {**constant, **{f"module.{key}": value for key, value in trainable.items()}}
            return functional_call(self._phase_calls[phase], swapped, args)

        return grad(loss, has_aux=True)(trainable)

    def _critic_gradients(self, params: Tensors, frozen: Tensors, batch: Batch, subset: torch.Tensor | None) -> tuple[Tensors, Metrics]:
        grads, metrics = self._phase_gradients("critic_loss", self.network_keys["critic"], params, frozen, batch, subset)
        metrics["grad_norm_critic"] = global_norm(list(grads.values()))
        return grads, metrics

    def _actor_gradients(self, params: Tensors, frozen: Tensors, batch: Batch) -> tuple[Tensors, Metrics]:
        grads, metrics = self._phase_gradients("actor_loss", [*self.network_keys["actor"], *self.network_keys["alpha"]], params, frozen, batch)
        metrics["grad_norm_actor"] = global_norm([grads[key] for key in self.network_keys["actor"]])
        return grads, metrics

    def _subsets(self) -> torch.Tensor | None:
        return None

    def _probe_metric_names(self) -> list[str]:
        """Both phases' metric names from one eager call each on a 2-row dummy batch; the
        names of a step without an actor phase are the first list (``critic_names``)."""
        # Built once, outside any traced call: a module constructed inside the compiled step
        # is a pending mutation that dynamo refuses to read ("getattr() on nn.Module with
        # pending mutation"), and the step would fall back to eager.
        self._phase_calls = {phase: _MethodCall(self._losses, phase) for phase in ("critic_loss", "actor_loss")}
        batch = self._probe_batch()
        first = {key: value[0] for key, value in self.params.items()}
        frozen = {key: value[0] for key, value in self.frozen.items()}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            subsets = self._subsets()
            _, critic_metrics = self._critic_gradients(first, frozen, batch, None if subsets is None else subsets[0])
            _, actor_metrics = self._actor_gradients(first, frozen, batch)
        # The vmapped phases (set up here, where the base class asks for the names).
        critic_dims = (0, 0, 0, None if subsets is None else 0)
        self._critic_grad_fn = vmap(self._critic_gradients, in_dims=critic_dims, randomness=self.randomness)
        self._actor_grad_fn = vmap(self._actor_gradients, randomness=self.randomness)
        self.critic_names = list(critic_metrics)
        return [*critic_metrics, *actor_metrics]

    def _update_impl(self, batch: Batch, subsets: torch.Tensor | None = None, actor_due: bool = True) -> torch.Tensor:
        critic_grads, metrics = self._critic_grad_fn(self.params, self.frozen, batch, subsets)
        adam_step_([g for g in self.groups if g.name == "critic"], self.params, critic_grads, self.exp_avg, self.exp_avg_sq, self.step)
        self._apply_polyak()  # the target critic is not read by the actor phase
        if actor_due:
            actor_grads, actor_metrics = self._actor_grad_fn(self.params, self.frozen, batch)
            adam_step_([g for g in self.groups if g.name != "critic"], self.params, actor_grads, self.exp_avg, self.exp_avg_sq, self.actor_step)
            self.actor_step.add_(1.0)
            metrics = {**metrics, **actor_metrics}
        self.step.add_(1.0)
        return torch.stack([metrics[name] for name in (self.metric_names if actor_due else self.critic_names)])

    def _train_step_impl(self, sampler: PopulationSampler, rows: torch.Tensor, subsets: torch.Tensor | None = None,
                         actor_due: bool = True) -> torch.Tensor:
        return self._update_impl(sampler.gather(rows), subsets, actor_due)

    def _host_arguments(self) -> tuple[tuple[Any, ...], list[str]]:
        """This update's target subsets (drawn eagerly, before anything else of the step, as
        the single run draws them) and whether the actor steps (on its ``actor_every``-th
        update, from the host's count: no device read)."""
        actor_due = (self.total_updates + 1) % self.actor_every == 0
        return (self._subsets(), actor_due), (self.metric_names if actor_due else self.critic_names)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "actor_step": self.actor_step.clone()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.actor_step.copy_(state["actor_step"])


    @torch.no_grad()
    def agent_entropy_bonus(self, agent: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        if not self.config.backup_entropy:
            return None
        actor = {f"module.{k}": v for k, v in self._agent_slice(self.params, "actor.", agent).items()}
        log_prob = functional_call(_MethodCall(self._losses.actor, "log_prob"), actor, (obs, actions))
        return -self.params["alpha.log_alpha"][agent].exp() * log_prob


class SACPopulation(_ActorCriticPopulation):
    """P ``sac.SAC`` agents (Phase II's from-scratch floor)."""

    algorithm_cls = SAC


class RLPDPopulation(_ActorCriticPopulation):
    """P ``rlpd.RLPD`` agents: LayerNorm critic ensembles, random-subset targets, the actor
    and temperature stepping once per ``actor_every`` updates (once per environment step)."""

    algorithm_cls = RLPD

    def _subsets(self) -> torch.Tensor:
        cfg = self.config
        return torch.stack([torch.randperm(cfg.ensemble_size, device=self.device)[: cfg.target_subset] for _ in range(self.num_agents)])

    def _reduce_q(self, q: torch.Tensor) -> torch.Tensor:
        return expected_subset_min(q, self.config.target_subset)


def population_class(algo: str) -> type[_Population] | None:
    """The population class whose agents are ``algo``'s declared algorithm class (None if it
    has none: the algorithm trains single runs only, eagerly)."""
    from ..algos.registry import is_known

    if not is_known(algo):
        return None
    wanted = algorithm_spec(algo).algorithm
    pending = list(_Population.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__dict__.get("algorithm_cls") is wanted:  # declared by the class itself, not inherited
            return cls
        pending.extend(cls.__subclasses__())
    return None


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


__all__ = ["COMPILE_MODES", "CQLPopulation", "CalQLPopulation", "RLPDPopulation", "SACPopulation", "IQLPopulation", "PopulationMetrics", "compiled_step_wanted", "cpp_compiler", "population_class"]
