"""What an algorithm declares about itself: the one place the rest of the toolkit reads it from.

Every algorithm module ends with ``SPEC = AlgorithmSpec(...)`` and ``algos/registry.py``
lists the modules. Training, fine-tuning, the study launchers, the command line and the
figures ask the registry for these facts instead of keeping tables of their own, so an
algorithm's display name, its per-dataset settings, its Phase II recipe or its compile
threshold is written once (docs/extending.md walks through adding an algorithm).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

REWARD_SCALINGS = ("none", "iql")
"""Reward preprocessing a config may ask for: "iql" multiplies rewards by
1000 / (max - min trajectory return) (the official IQL locomotion scaling)."""


def check_reward_scaling(value: str) -> None:
    """The one validation of every config's ``reward_scaling`` field."""
    if value not in REWARD_SCALINGS:
        raise ValueError(f"reward_scaling must be one of {REWARD_SCALINGS}, got {value!r}")


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a method trains online in Phase II (docs/recovery.md has the sources)."""

    parent_algos: tuple[str, ...]  # the Phase I algorithms it starts from; () = from scratch
    sampling: str  # symmetric | uniform | online_only | offline (the offline control)
    utd: int  # gradient steps per environment step
    warmup_steps: int = 0  # environment steps before the first update
    random_warmup: bool = False  # uniformly random actions during the warm-up (else the policy acts)
    source: str = ""
    interacts: bool = True  # False: the offline control (no environment, no online buffer)
    actor_every_env_step: bool = False  # the actor steps once per environment step (config field actor_every = utd)


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm's declaration.

    ``offline``: a Phase I algorithm (trains from a dataset alone: ``--algo``); methods that
    only learn online (SAC, RLPD) are ``offline=False`` and reachable as Phase II methods.
    ``loss_variance_power``: the power of the reward scale in the variance of the logged
    ``critic_loss`` (4 for a plain squared TD error; None where the loss is no power of
    it, e.g. CQL's penalty), which the figures use to draw every run in the dataset's units.
    ``cpu_updates_per_second``: a single run's rate on a 2-core CPU, used only for the time
    estimate a grid prints before it starts (docs/performance.md: IQL and CQL measured with 2
    threads; BC and TD3+BC rough guesses).
    ``compile_min_steps``: under ``--compile auto``, CPU runs of at least this many
    gradient steps take the compiled step: where the time it saves exceeds a cold
    compilation, measured end to end (docs/performance.md, "The default update path").
    None: no measurement shows that compiling pays, so the run stays eager.
    """

    name: str
    display_name: str
    algorithm: type
    config: type
    source: str
    offline: bool = True
    reference_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "<robot>-<level>" -> config fields
    has_critic: bool = True
    loss_variance_power: int | None = 4
    loss_variance_note: str = "its loss has no known power of the reward scale"  # why, when the power is None
    uses_mc_returns: bool = False  # batches carry "mc_returns" (the Monte-Carlo return-to-go)
    color: str | None = None  # a fixed figure colour (others get spare colours)
    cpu_updates_per_second: float | None = None
    compile_min_steps: int | None = None
    finetune: FinetuneRecipe | None = None  # None: not a Phase II method

    def reference_overrides(self, task: str | None) -> dict[str, Any]:
        """Config fields the reference implementation changes for ``task`` (``"<robot>-<level>"``,
        ``data.loader.dataset_task`` of the source dataset, the same for every form of an id);
        ``{}`` if none or unknown."""
        return dict(self.reference_settings.get(task or "", {}))
