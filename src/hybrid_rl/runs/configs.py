"""The configuration of a run (Phase I, Phase II, behaviour training): each field declared
once, with its default, help text and check; the command line derives its flags from these
declarations (``cli.add_config_arguments``, ``cli.add_study_flag``).

``TrainConfig`` is one offline run (``runs.train.train``), ``FinetuneConfig`` one fine-tuning
run (``runs.finetune.finetune``), ``BehaviorTrainingConfig`` the training of a behaviour policy
for the dataset factory (``runs.behavior.train_behavior_policy``). The first two are their
data (``data.dataspec.DataOptions``), the options every run takes
(``core.run_options.RunOptions``) and their own fields below. The module loads without
torch: the registry, the replay buffer and the data code load when a config is checked or
named, so that the command line builds its flags (and ``--help`` answers) from here alone.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import HybridRLError
from ..core.grid_options import COMPILE_MODES, DEFAULT_DATASET, DEFAULT_ONLINE_STEPS, DEFAULT_SWITCH_EPISODES, DEFAULT_TOTAL_STEPS
from ..core.naming import format_steps, settings_parts
from ..core.run_options import FinetuneRunOptions, RunOptions, check_options, non_identity_options, option, redeclared
from ..data.dataspec import DataOptions

if TYPE_CHECKING:
    from ..algos.sac import SACConfig
    from ..algos.spec import FinetuneRecipe

# The run options that do not change what a run computes: left out of its identity.
NON_IDENTITY_FIELDS = non_identity_options()


@dataclass(frozen=True)
class TrainConfig(DataOptions, RunOptions):
    """One run. Steps are gradient updates; returns are undiscounted episode returns."""

    algo: str = option("iql", "a Phase I algorithm (`hybrid-rl algorithms` lists them)", parse=str.lower)
    dataset: str = redeclared(DataOptions, "dataset", DEFAULT_DATASET)  # with remove_top_k, reward_noise_std, extra_corruptions: DataOptions
    total_steps: int = option(DEFAULT_TOTAL_STEPS, "gradient steps of the run", positive=True)
    # seed, the evaluation/log/checkpoint schedule, algo_overrides, device, threads, compile,
    # trackers and directories: the run options every run takes (core/run_options.py).

    def __post_init__(self) -> None:
        check_options(self)
        self.data  # the data spec checks itself (corruption levels and specs), before any data loads

    @property
    def run_id(self) -> str:
        """``algo__dataset__kK__noiseN[__corruption...][__setting=value...][__stepsB]__sS``:
        every algorithm setting that departs from the published defaults, and the budget when
        it is not the default 500k, so runs of other settings and budgets coexist in one
        results directory (runs of the default budget and settings keep their short ids)."""
        parts = [self.algo, *self.data.id_parts(), *settings_parts(self.settings())]
        if self.total_steps != DEFAULT_TOTAL_STEPS:
            parts.append(f"steps{format_steps(self.total_steps)}")
        parts.append(f"s{self.seed}")
        return "__".join(parts)

    def settings(self) -> dict[str, Any]:
        """The algorithm settings this run changes from the published defaults
        (``algos.registry.non_default_settings``; ValueError for a field the algorithm lacks)."""
        from ..algos.registry import available_algorithms, non_default_settings

        return non_default_settings(self.algo, self.algo_overrides) if self.algo in available_algorithms() else {}

    def identity(self) -> dict[str, Any]:
        """The fields that define what a run computes."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        for name in NON_IDENTITY_FIELDS:
            data.pop(name, None)
        return data


SCRATCH = "scratch"


OFFLINE_CONTROL = "offline"


def methods() -> dict[str, FinetuneRecipe]:
    """Every fine-tuning method by name: each algorithm's declared Phase II recipe
    (algos/*.py: ``SPEC.finetune``) and the control that separates recovery from more
    training, ``offline`` (the parent keeps training offline, for any pretrained method)."""
    from ..algos.registry import finetune_recipes
    from ..algos.spec import FinetuneRecipe

    recipes = finetune_recipes()
    pretrained = tuple(dict.fromkeys(algo for recipe in recipes.values() for algo in recipe.parent_algos))  # every pretrained parent's algorithm
    control = FinetuneRecipe(parent_algos=pretrained, sampling="offline", utd=1, source="control: continued offline training of the parent",
                             interacts=False)
    return {**recipes, OFFLINE_CONTROL: control}


@dataclass(frozen=True)
class FinetuneConfig(DataOptions, FinetuneRunOptions):
    """One fine-tuning run. Steps are online environment steps."""

    method: str = option("iql", "fine-tuning method: one `hybrid-rl algorithms` lists with a Phase II recipe (from a Phase I run of that algorithm, "
                         "or from scratch), or the control offline (the parent keeps training offline); see docs/recovery.md",
                         parse=str.lower, required=True)
    parent: str = option(SCRATCH, "RESULTS/RUN_ID of a finished Phase I run, or 'scratch' (then --env)", flag="--from", required=True)
    # The data (DataOptions): the parent's (filled in by with_parent), or for "scratch" the
    # dataset whose environment (and, for rlpd, offline data) the run uses, with its corruptions.
    online_steps: int = option(DEFAULT_ONLINE_STEPS, "online environment steps", positive=True)
    utd: int | None = option(None, "gradient steps per environment step (0: a frozen policy, evaluated only); default: the method's", minimum=0)
    sampling: str | None = option(None, "symmetric, uniform or online_only: how batches mix offline and online data; default: the method's")
    online_fraction: float = option(0.5, "online share of a symmetric batch", positive=True, maximum=1.0)
    warmup_steps: int | None = option(None, "environment steps before the first update; default: the method's", minimum=0)
    buffer_size: int | None = option(None, "online replay capacity; default: --online_steps", positive=True)
    exploration_noise: float | None = option(None, "Gaussian action noise; default 0.1 for a deterministic actor, else 0")
    switch_episodes: int = option(DEFAULT_SWITCH_EPISODES, "episodes of the starting policy's evaluation at step 0 (the switch score)", positive=True)
    parent_identity: dict[str, Any] = option(None, "the parent's identity, filled from its config.json", command_line=False, default_factory=dict)
    # The run options every run takes (core/run_options.py); algo_overrides are, for
    # "scratch", the algorithm's settings.

    def __post_init__(self) -> None:
        if self.method not in methods():
            raise HybridRLError(f"unknown fine-tuning method {self.method!r}; choose from {sorted(methods())}")
        check_options(self)
        from ..data.replay import SAMPLING_MODES

        if not self.recipe.interacts and self.sampling not in (None, self.recipe.sampling):
            raise HybridRLError(f"method {self.method} samples its parent's offline data only: drop --sampling {self.sampling}")
        if self.sampling is not None and self.recipe.interacts and self.sampling not in SAMPLING_MODES:
            raise HybridRLError(f"unknown sampling mode {self.sampling!r}; use one of {', '.join(SAMPLING_MODES)}")
        if self.utd == 0 and not self.recipe.interacts:
            raise HybridRLError(f"method {self.method} at --utd 0 would do nothing: the frozen-policy control is a pretrained method at --utd 0 (e.g. --method iql --utd 0)")
        if self.utd == 0 and not self.recipe.parent_algos:
            raise HybridRLError(f"--utd 0 freezes a pretrained policy; method {self.method} starts from scratch, so there is none to freeze")
        if self.parent == SCRATCH and not self.dataset:
            raise HybridRLError("fine-tuning from scratch needs the dataset whose environment to use: add --env DATASET")
        self.data  # the data spec checks its corruptions (levels and specs) here, before any data loads
        if self.parent == SCRATCH and self.recipe.parent_algos and not self.recipe.interacts:
            raise HybridRLError(f"method {self.method} continues a pretrained agent's offline training: pass --from RESULTS/RUN_ID, not --from scratch")

    # --- the recipe with defaults filled in ---------------------------------------------------
    @property
    def recipe(self) -> FinetuneRecipe:
        return methods()[self.method]

    @property
    def resolved_utd(self) -> int:
        return self.utd if self.utd is not None else self.recipe.utd

    @property
    def resolved_sampling(self) -> str:
        return self.sampling or self.recipe.sampling

    @property
    def resolved_warmup_steps(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else self.recipe.warmup_steps

    @property
    def variant(self) -> str:
        """The method as the study's tables name it: "offline" and "frozen" (UTD 0) for the
        controls, else the method with any UTD or sampling that departs from its recipe
        (``"rlpd online_only"``: RLPD without offline data)."""
        if not self.recipe.interacts:
            return self.method
        if self.resolved_utd == 0:
            return "frozen"
        parts = [self.method]
        if self.utd is not None and self.utd != self.recipe.utd:
            parts.append(f"utd{self.utd}")
        if self.sampling is not None and self.sampling != self.recipe.sampling:
            parts.append(self.sampling)
        return " ".join(parts)

    @property
    def gradient_steps(self) -> int:
        """Updates the run makes: UTD per online step after the warm-up (which makes none)."""
        return max(self.online_steps - self.resolved_warmup_steps, 0) * self.resolved_utd

    # --- what RunBook and the analysis read of a run's config ---------------------------------
    @property
    def total_steps(self) -> int:
        return self.online_steps

    @property
    def algo(self) -> str:
        """The pretraining algorithm (the parent's), or the method's own for scratch runs."""
        return self.parent_identity.get("algo", self.method)

    @property
    def run_id(self) -> str:
        """``ft-METHOD__from__PARENT_ID`` (or ``__scratch__`` and the Phase I run-id parts of the
        data and the method's non-default settings) ``__utdU__SAMPLING[__onlineB]__sS``, the
        budget written when it is not the default 250k."""
        if self.parent != SCRATCH:
            start = f"from__{Path(self.parent).name}"
        else:
            start = "__".join(["scratch", *self.data.id_parts(), *settings_parts(self.settings())])
        budget = [f"online{format_steps(self.online_steps)}"] if self.online_steps != DEFAULT_ONLINE_STEPS else []
        return "__".join([f"ft-{self.method}", start, f"utd{self.resolved_utd}", self.resolved_sampling, *budget, f"s{self.seed}"])

    def settings(self) -> dict[str, Any]:
        """The algorithm settings that depart from the published defaults: a from-scratch
        method's own, else its parent's (what the report groups sweeps by)."""
        from ..algos.registry import non_default_settings

        if self.parent == SCRATCH:
            return non_default_settings(self.method, self.algo_overrides)
        if self.parent_identity:
            return non_default_settings(self.parent_identity["algo"], self.parent_identity.get("algo_overrides") or {})
        return {}

    def identity(self) -> dict[str, Any]:
        """The fields that define what a run computes (the parent by its identity, not its path)."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        for name in (*NON_IDENTITY_FIELDS, "parent"):
            data.pop(name, None)
        return data


# ---------------------------------------------------------------------------------------
# Behaviour-policy training (the dataset factory's SAC agents)
# ---------------------------------------------------------------------------------------
def behavior_sac() -> SACConfig:
    """A behaviour policy's SAC: v0's 2x128 rather than SAC's 2x256, half the time per update
    on this CPU (benchmarks/behavior_sac.py); v1 trains 2x256 (``train-policy --hidden
    256,256``) to reach D4RL's expert level (docs/datasets.md)."""
    from ..algos.sac import SACConfig

    return SACConfig(hidden=(128, 128))


@dataclass(frozen=True)
class BehaviorTrainingConfig:
    """One behaviour-policy training: SAC online on a robot, an actor snapshot at every
    evaluation (D4RL's recipe; docs/datasets.md). Steps are environment steps."""

    robot: str = option(dataclasses.MISSING, "the robot: hopper, halfcheetah, walker2d or ant")
    total_steps: int = option(300_000, "environment steps of the training", flag="--steps", positive=True, identity=False)
    seed: int = option(0, "random seed: networks, warm-up actions, exploration and the first reset")
    random_steps: int = option(10_000, "uniformly random warm-up actions before the first update, as in SAC's MuJoCo setup", minimum=0)
    eval_every: int = option(10_000, "environment steps between evaluations (each keeps an actor snapshot)", positive=True)
    eval_episodes: int = option(5, "episodes per evaluation, of the stochastic and of the deterministic policy", positive=True)
    checkpoint_every: int = option(25_000, "environment steps between checkpoints", positive=True, identity=False)
    update_every: int = option(1, "one SAC update per N environment steps (N > 1: a slower learner, for medium-replay)", positive=True)
    sac: SACConfig = option(None, "the agent's SAC settings (train-policy: --hidden, --lr)", command_line=False, default_factory=behavior_sac)
    # The update path: "off" is SAC.update; "on" a population of one under torch.compile
    # (engine.population.SACPopulation: the same math, 1.8-1.9x the updates/s at 2x256 on
    # this CPU, benchmarks/behavior_sac.py).
    compile: str = option("auto", "SAC's update as a compiled population of one (auto: where a C++ compiler exists; off: SAC.update)",
                          choices=COMPILE_MODES, identity=False)

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def run_id(self) -> str:
        return f"behavior-{self.robot}"

    def identity(self) -> dict[str, Any]:
        """What the training computes: every setting but how far it goes, how often it
        checkpoints and which update path it takes (the same math), which a resumed
        training may change."""
        return identity_of_recorded(BehaviorTrainingConfig, json.loads(json.dumps(dataclasses.asdict(self))))


def identity_of_recorded(config_class: type, recorded: dict[str, Any]) -> dict[str, Any]:
    """The identity of a config recorded as its fields (a config.json without an ``identity``
    entry: a behaviour training's): the fields that change what the run computes."""
    excluded = non_identity_options(config_class)
    return {key: value for key, value in recorded.items() if key not in excluded}
