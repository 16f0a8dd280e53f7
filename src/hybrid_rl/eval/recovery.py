"""Recovery metrics of fine-tuning runs, computed from run directories only (docs/recovery.md).

A fine-tuning run (``hybrid-rl finetune``) writes, at online step 0 and before any update,
the *switch measurement*: its starting policy evaluated over ``switch_episodes`` episodes
(an ``"eval"`` record with ``"switch": true``); then evaluations against online steps (or,
for the ``offline`` control, gradient steps on the same schedule) and an ``"episode"``
record per finished online episode. Every metric is defined so that a policy that does not
change reads "no change" in expectation (tests/test_recovery.py checks each on many
synthetic noisy curves):

- ``switch``: the switch measurement's mean normalized return, with its standard error
  over episodes. Every other metric is measured against it, never against the parent's
  Phase I score.
- ``final``: the mean of the last ``max(3, 10%)`` evaluations; ``gain`` = final - switch,
  a paired difference inside the run (no change: 0).
- ``dip``: the mean of the evaluations in the first 10% of online steps (at least the first
  evaluation) minus the switch score: signed, negative for a drop (no change: 0). The
  lowest early evaluation would be biased low by the evaluation noise alone (about
  -0.4 sigma for one evaluation, more with more), so it is not used.
- ``steps_to[reference]``: the first step of a *sustained* crossing, two consecutive
  evaluations at or above the reference (the switch measurement counts as the one at step
  0), or None with ``censored[reference] = True`` when there is none: a right-censored
  observation at the run's last evaluation, summarised over seeds by a Kaplan-Meier median
  (``kaplan_meier_median``, scipy's censored-data ECDF). References: ``clean_offline``, the
  clean-data counterpart's switch measurement (the same algorithm, dataset, seed and
  pretraining budget without corruption; its Phase I final score when no fine-tuning run of
  it is in the results directory; for runs from scratch the mean over the pretraining
  algorithms present), and ``behavior``, the clean data's behaviour score.
- ``regret``: 1 - score / 100 of the online training episodes, weighted by their
  environment steps (each step counts its episode's score); ``warmup_regret`` the same over
  the episodes that started in the random warm-up, kept apart because random actions are
  not the method's choice. A policy that does not change has the regret of its own level.
- ``auc``: the mean score over the run, trapezoidal from step 0 (the switch measurement)
  to the last evaluation.
- Q calibration through fine-tuning: each online episode's mean of Q(s, a) minus its
  Monte-Carlo return (``engine.online.q_calibration``: the method's own estimator, soft
  returns for soft-Q methods), in the original reward units; ``q_minus_mc_final`` is the
  mean over the episodes of the last 10% of online steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..core.naming import settings_parts
from ..core.run_format import CONFIG_FILE, SUMMARY_FILE
from .runs import RunRecord, finetune_run_dirs, load_run, read_metrics

EARLY_FRACTION = 0.1  # the dip's window: the first 10% of online steps
LATE_FRACTION = 0.1  # final Q - MC: the episodes of the last 10% of online steps
FINAL_EVALUATIONS = 3  # the final score averages at least this many evaluations (or 10% of them)
SUSTAINED_EVALUATIONS = 2  # a recovery counts when this many consecutive evaluations reach the reference
REFERENCES = ("clean_offline", "behavior")
# Variants that are controls of the study (paired against the methods in the report).
CONTROL_VARIANTS = ("offline", "frozen")


def is_control(variant: str) -> bool:
    """The study's controls: continued offline training, the frozen policy, and any method
    run without offline data (``... online_only``) as the control of its data-using self."""
    return variant in CONTROL_VARIANTS or variant.endswith(" online_only")


@dataclass(frozen=True)
class Measured:
    """A score with its standard error over evaluation episodes (NaN when unknown)."""

    value: float
    se: float = math.nan


@dataclass(frozen=True)
class Evaluations:
    """A run's evaluations after the switch: steps, mean scores and each mean's variance."""

    steps: np.ndarray
    scores: np.ndarray
    variances: np.ndarray  # of each evaluation's mean score (sample variance / episodes)


def evaluation_variance(record: Mapping[str, Any]) -> float:
    """Variance of an evaluation record's mean normalized score: ``std^2 / (n - 1)`` with the
    recorded population std (ddof 0) of its n episodes, i.e. the unbiased variance over n."""
    episodes = len(record.get("episode_returns") or ())
    std = record.get("normalized_return_std")
    if episodes < 2 or not isinstance(std, (int, float)) or not math.isfinite(std):
        return math.nan
    return float(std) ** 2 / (episodes - 1)


def read_evaluations(records: Iterable[Mapping[str, Any]]) -> tuple[Measured | None, int, Evaluations]:
    """(the switch measurement or None, its episodes, the finite evaluations after it)."""
    switch, switch_episodes, rows = None, 0, []
    for record in records:
        if record.get("kind") != "eval":
            continue
        score = record.get("normalized_return_mean")
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            continue
        if record.get("switch"):
            switch = Measured(float(score), math.sqrt(evaluation_variance(record)))
            switch_episodes = len(record.get("episode_returns") or ())
        else:
            rows.append((int(record["step"]), float(score), evaluation_variance(record)))
    steps, scores, variances = (np.array(column, dtype=float) for column in zip(*rows)) if rows else (np.zeros(0),) * 3
    return switch, switch_episodes, Evaluations(steps.astype(np.int64), scores, variances)


def _mean_of(scores: np.ndarray, variances: np.ndarray) -> Measured:
    """The mean of independent evaluations and its standard error."""
    if len(scores) == 0:
        return Measured(math.nan)
    return Measured(float(scores.mean()), float(math.sqrt(variances.sum()) / len(scores)))


def _difference(a: Measured, b: Measured) -> Measured:
    return Measured(a.value - b.value, math.hypot(a.se, b.se))


def final_evaluations(count: int) -> int:
    """How many of ``count`` evaluations the final score averages: max(3, 10%), at most all."""
    return min(count, max(FINAL_EVALUATIONS, math.ceil(0.1 * count)))


def final_measure(evals: Evaluations) -> Measured:
    """Mean of the last ``final_evaluations`` evaluations, with its standard error."""
    k = final_evaluations(len(evals.scores))
    return _mean_of(evals.scores[len(evals.scores) - k:], evals.variances[len(evals.scores) - k:])


def dip_measure(evals: Evaluations, switch: Measured, online_steps: int) -> Measured:
    """Mean of the evaluations in the first EARLY_FRACTION of online steps (at least the first)
    minus the switch score: signed (< 0: a drop), 0 in expectation for an unchanged policy."""
    if len(evals.scores) == 0 or not math.isfinite(switch.value):
        return Measured(math.nan)
    early = evals.steps <= EARLY_FRACTION * online_steps
    early[0] = True
    return _difference(_mean_of(evals.scores[early], evals.variances[early]), switch)


def steps_to_reach(steps: np.ndarray, scores: np.ndarray, reference: float, sustained: int = SUSTAINED_EVALUATIONS) -> int | None:
    """The first step of ``sustained`` consecutive scores at or above ``reference``; None if
    there is no such run of scores (right-censored) or no reference."""
    if not math.isfinite(reference):
        return None
    above = np.asarray(scores) >= reference
    for start in range(len(above) - sustained + 1):
        if above[start:start + sustained].all():
            return int(steps[start])
    return None


def kaplan_meier_median(times: Sequence[int | None], censored_at: Sequence[float]) -> float:
    """Kaplan-Meier median of times to an event, with None marking a run right-censored at
    ``censored_at`` (its last evaluation): the first time at which the estimated share of
    runs still waiting drops to 0.5 or below (scipy.stats.ecdf on CensoredData). NaN when it
    never does (the median lies beyond the budgets) or there are no runs."""
    from scipy.stats import CensoredData, ecdf

    reached = [float(t) for t in times if t is not None]
    waiting = [float(c) for t, c in zip(times, censored_at) if t is None]
    if not reached:
        return math.nan
    survival = ecdf(CensoredData(uncensored=reached, right=waiting)).sf
    below = np.flatnonzero(survival.probabilities <= 0.5)
    return float(survival.quantiles[below[0]]) if len(below) else math.nan


def step_weighted_regret(scores: np.ndarray, lengths: np.ndarray) -> float:
    """1 - score / 100 weighted by each episode's environment steps; NaN without episodes."""
    total = float(np.sum(lengths))
    return float(np.sum(lengths * (1.0 - scores / 100.0)) / total) if total > 0 else math.nan


def late_mean(steps: np.ndarray, values: np.ndarray, online_steps: int) -> float:
    """Mean of the values logged in the last LATE_FRACTION of online steps (the last value if
    none falls there); NaN without values."""
    if len(values) == 0:
        return math.nan
    late = values[steps >= (1.0 - LATE_FRACTION) * online_steps]
    return float(late.mean()) if len(late) else float(values[-1])


def binned_means(steps: np.ndarray, values: np.ndarray, online_steps: int, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode values averaged in ``bins`` equal spans of online steps: ``(bin centres,
    means)``, empty bins left out. Seeds finish episodes at different steps; binning puts
    them on one grid before averaging over seeds."""
    if len(values) == 0 or online_steps <= 0:
        return np.zeros(0), np.zeros(0)
    edges = np.linspace(0, online_steps, bins + 1)
    index = np.clip(np.searchsorted(edges, steps, side="left") - 1, 0, bins - 1)
    centres, means = [], []
    for b in range(bins):
        chosen = values[index == b]
        if len(chosen):
            centres.append((edges[b] + edges[b + 1]) / 2)
            means.append(float(chosen.mean()))
    return np.array(centres), np.array(means)


def area_under_curve(steps: np.ndarray, scores: np.ndarray, start_score: float) -> float:
    """Trapezoidal area under the evaluation curve from step 0, where it starts at
    ``start_score``, to the last evaluation, divided by that span: the mean score."""
    if len(scores) == 0:
        return math.nan
    x = np.concatenate([[0.0], steps.astype(float)])
    y = np.concatenate([[start_score if math.isfinite(start_score) else scores[0]], scores])
    span = x[-1] - x[0]
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / span) if span > 0 else float(y[-1])


@dataclass(frozen=True)
class Recovery:
    """One fine-tuning run's recovery metrics (scores are D4RL normalized returns)."""

    run_id: str
    method: str
    variant: str  # the method as the study names it: "iql", "frozen", "offline", "rlpd online_only" ...
    algo: str  # the parent's algorithm, or the method for runs from scratch
    settings: str  # its non-default algorithm settings ("beta=10"; "" for the published ones): a sweep's groups
    dataset: str
    corruption: str  # the level's label, e.g. "k=60%"
    seed: int
    status: str
    online_steps: int
    pretrained: bool  # starts from a Phase I run (else from scratch)
    pretrain_steps: int | None
    eval_steps: np.ndarray
    eval_scores: np.ndarray
    switch: Measured
    switch_episodes: int
    final: Measured
    gain: Measured
    dip: Measured
    references: dict[str, float] = field(default_factory=dict)
    steps_to: dict[str, int | None] = field(default_factory=dict)
    censored: dict[str, bool] = field(default_factory=dict)
    regret: float = math.nan
    warmup_regret: float = math.nan
    auc: float = math.nan
    episodes: int = 0
    q_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # online step at which each calibrated episode ended
    q_minus_mc: np.ndarray = field(default_factory=lambda: np.zeros(0))  # its mean Q - MC return, original reward units
    q_minus_mc_final: float = math.nan
    uses_offline_data: bool = True  # False for methods that train on online data alone (SAC from scratch)
    utd: int | None = None  # gradient steps per environment step
    sampling: str = ""

    @property
    def label(self) -> str:
        """The variant with a sweep's settings, as figures name a line: ``iql beta=10``."""
        return " ".join(part for part in (self.variant, self.settings) if part)

    @property
    def switch_score(self) -> float:
        return self.switch.value

    @property
    def final_score(self) -> float:
        return self.final.value

    @property
    def budget(self) -> int:
        """Where a run that never recovered is censored: its last evaluation's step."""
        return int(self.eval_steps[-1]) if len(self.eval_steps) else 0


def phase1_final_score(config: Mapping[str, Any]) -> float:
    """The Phase I final score of the parent's clean-data counterpart (same algorithm, dataset,
    seed and budget, no corruption), read from the parent's results directory; NaN if not there."""
    parent = config.get("parent") or {}
    if not parent.get("run_dir"):
        return math.nan
    results = Path(parent["run_dir"]).parent
    identity = config.get("parent_identity") or {}
    keys = ("algo", "dataset", "seed", "total_steps")
    for run_dir in sorted(results.iterdir()) if results.is_dir() else []:
        path = run_dir / CONFIG_FILE
        if not path.exists():
            continue
        try:
            other = json.loads(path.read_text()).get("identity", {})
        except json.JSONDecodeError:
            continue
        same = {key: other.get(key) for key in keys} == {key: identity.get(key) for key in keys}
        clean = not other.get("remove_top_k") and not other.get("reward_noise_std") and not other.get("extra_corruptions")
        if same and clean and (run_dir / SUMMARY_FILE).exists():
            value = json.loads((run_dir / SUMMARY_FILE).read_text()).get("final_normalized_return")
            return float(value) if isinstance(value, (int, float)) else math.nan
    return math.nan


def recovery_of(run: RunRecord) -> Recovery:
    """One fine-tuning run's metrics; its references are attached by ``with_references``."""
    config = run.config
    online = config.get("online") or {}
    online_steps = int(config.get("online_steps") or run.total_steps or 0)
    records, _ = read_metrics(run.run_dir / "metrics.jsonl")
    switch, switch_episodes, evals = read_evaluations(records)
    if switch is None:  # runs written before the switch was measured: the parent's Phase I score
        recorded = (config.get("parent") or {}).get("switch_score")
        switch = Measured(float(recorded) if isinstance(recorded, (int, float)) else math.nan)
    final = final_measure(evals)
    episodes = [r for r in records if r.get("kind") == "episode"]
    scores = np.array([r["normalized_return"] for r in episodes], dtype=float)
    lengths = np.array([r.get("length", 1) for r in episodes], dtype=float)
    started = np.array([r["step"] - r.get("length", 0) for r in episodes], dtype=float)
    warm = started < int(online.get("warmup_steps") or 0) if online.get("random_warmup") else np.zeros(len(episodes), dtype=bool)
    calibrated = [r for r in episodes if "q_minus_mc_mean" in r]
    reward_scale = float(config.get("reward_scale") or 1.0)  # Q and MC are logged in the run's scaled reward units
    q_steps = np.array([r["step"] for r in calibrated], dtype=float)
    q_minus_mc = np.array([r["q_minus_mc_mean"] / reward_scale for r in calibrated], dtype=float)
    pretrain_steps = (config.get("parent_identity") or {}).get("total_steps")
    return Recovery(
        run_id=run.run_id, method=str(config["method"]), variant=str(config.get("variant") or config["method"]), algo=run.algo,
        settings=" ".join(settings_parts(run.settings)), dataset=run.dataset,
        corruption=run.level.label, seed=run.seed, status=run.status, online_steps=online_steps,
        pretrained=bool((config.get("parent") or {}).get("run_id")), pretrain_steps=int(pretrain_steps) if pretrain_steps else None,
        eval_steps=evals.steps, eval_scores=evals.scores, switch=switch, switch_episodes=switch_episodes, final=final,
        gain=_difference(final, switch), dip=dip_measure(evals, switch, online_steps),
        regret=step_weighted_regret(scores[~warm], lengths[~warm]), warmup_regret=step_weighted_regret(scores[warm], lengths[warm]),
        auc=area_under_curve(evals.steps, evals.scores, switch.value), episodes=len(episodes),
        q_steps=q_steps, q_minus_mc=q_minus_mc, q_minus_mc_final=late_mean(q_steps, q_minus_mc, online_steps),
        uses_offline_data=online.get("sampling") != "online_only", utd=online.get("utd"), sampling=str(online.get("sampling", "")),
        references={"behavior": run.behavior_score, "clean_offline": phase1_final_score(config)},
    )


def with_references(recoveries: Sequence[Recovery]) -> list[Recovery]:
    """Attach each run's references and its steps to reach them.

    ``clean_offline`` is the switch measurement of the clean-data counterpart (a run from the
    parent of the same algorithm, dataset, seed and pretraining budget without corruption:
    every method from one parent measures the same policy on the same episodes), else the
    counterpart's Phase I final score; runs from scratch take the mean of the clean
    counterparts' measurements of their dataset and seed over the pretraining algorithms (and
    settings) present.
    """
    clean: dict[tuple, float] = {}
    for r in recoveries:
        if r.pretrained and r.corruption == "clean" and math.isfinite(r.switch.value):
            clean.setdefault((r.algo, r.settings, r.dataset, r.seed, r.pretrain_steps), r.switch.value)
    out = []
    for r in recoveries:
        references = dict(r.references)
        if r.pretrained:
            references["clean_offline"] = clean.get((r.algo, r.settings, r.dataset, r.seed, r.pretrain_steps), references["clean_offline"])
        else:
            matches = [value for (_, _, dataset, seed, _), value in clean.items() if dataset == r.dataset and seed == r.seed]
            references["clean_offline"] = float(np.mean(matches)) if matches else math.nan
        curve_steps = np.concatenate([[0], r.eval_steps])
        curve_scores = np.concatenate([[r.switch.value], r.eval_scores])
        reached = {name: steps_to_reach(curve_steps, curve_scores, references.get(name, math.nan)) for name in REFERENCES}
        censored = {name: reached[name] is None and math.isfinite(references.get(name, math.nan)) for name in REFERENCES}
        out.append(dataclasses.replace(r, references=references, steps_to=reached, censored=censored))
    return out


def load_recoveries(results_dir: str | Path) -> list[Recovery]:
    """Recovery metrics of every finished (completed or diverged) fine-tuning run directly
    under ``results_dir``: runs still in progress or failed have no final numbers to report."""
    runs = [load_run(run_dir) for run_dir in finetune_run_dirs(results_dir)]
    return with_references([recovery_of(run) for run in runs if run.is_result])
