"""Recovery metrics of fine-tuning runs, computed from run directories only (docs/recovery.md).

A fine-tuning run (``hybrid-rl finetune``) writes evaluations against online environment
steps, an ``"episode"`` record per finished online episode, and in config.json its parent
(run id, status, final score: the score at the switch). From these, per run:

- ``switch_score``: the parent's final normalized return (NaN for runs from scratch);
- ``final_score``: mean of the last 10% of evaluations (at least one), as Phase I;
  ``best_score``: the best evaluation;
- ``dip``: min(0, lowest evaluation in the first 10% of online steps - switch_score), the
  "unlearning" drop (0 when no evaluation falls below the switch; NaN from scratch). With
  no evaluation inside the first 10%, the first evaluation stands in;
- ``steps_to[reference]``: the first online step whose evaluation reaches the reference
  score, or None with ``censored[reference] = True`` when no evaluation reached it (a
  right-censored observation: never reported as the budget). References: ``clean_offline``
  (the Phase I score of the same algorithm, dataset and seed on clean data, when that run
  is in the parent's results directory) and ``behavior`` (the clean data's behaviour score);
- ``regret``: mean over finished online episodes of (1 - normalized return / 100), CORL's
  success-based regret made dense (0 = expert throughout, 1 = random throughout);
- ``auc``: the area under the evaluation curve per online step (trapezoid from step 0, where
  the curve starts at the switch score, or at the first evaluation from scratch), i.e. the
  mean normalized score over the run;
- Q calibration through fine-tuning: each online episode's mean of Q(s, a) minus the
  discounted Monte-Carlo return on its own transitions (``engine.online.q_calibration``),
  converted to the original reward units; ``q_minus_mc_final`` is the mean over the
  episodes of the last 10% of online steps (> 0: the critic overestimates what its policy
  actually collects).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..run_format import CONFIG_FILE, SUMMARY_FILE
from .runs import RunRecord, load_run, read_metrics
from .stats import final_score

EARLY_FRACTION = 0.1  # the dip is measured in the first 10% of online steps
LATE_FRACTION = 0.1  # final Q - MC: the episodes of the last 10% of online steps
REFERENCES = ("clean_offline", "behavior")


def is_finetune_run(config: dict[str, Any]) -> bool:
    return "method" in config and "online" in config


@dataclass(frozen=True)
class Recovery:
    """One fine-tuning run's recovery metrics (scores are D4RL normalized returns)."""

    run_id: str
    method: str
    algo: str  # the parent's algorithm, or the method for runs from scratch
    dataset: str
    corruption: str  # the level's label, e.g. "k=60%"
    seed: int
    status: str
    online_steps: int
    eval_steps: np.ndarray
    eval_scores: np.ndarray
    switch_score: float
    final_score: float
    best_score: float
    dip: float
    references: dict[str, float] = field(default_factory=dict)
    steps_to: dict[str, int | None] = field(default_factory=dict)
    censored: dict[str, bool] = field(default_factory=dict)
    regret: float = math.nan
    auc: float = math.nan
    episodes: int = 0
    q_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # online step at which each calibrated episode ended
    q_minus_mc: np.ndarray = field(default_factory=lambda: np.zeros(0))  # its mean Q - MC return, original reward units
    q_minus_mc_final: float = math.nan
    uses_offline_data: bool = True  # False for methods that train on online data alone (SAC from scratch)
    utd: int | None = None  # gradient steps per environment step
    sampling: str = ""


def dip(steps: np.ndarray, scores: np.ndarray, switch: float, online_steps: int) -> float:
    """min(0, lowest evaluation in the first EARLY_FRACTION of online steps - switch); NaN without a switch score."""
    if not math.isfinite(switch) or len(scores) == 0:
        return math.nan
    early = scores[steps <= EARLY_FRACTION * online_steps]
    lowest = float(early.min()) if len(early) else float(scores[0])
    return min(0.0, lowest - switch)


def steps_to_reach(steps: np.ndarray, scores: np.ndarray, reference: float) -> int | None:
    """First evaluation step whose score reaches ``reference``; None if none did (censored)."""
    if not math.isfinite(reference):
        return None
    reached = np.flatnonzero(scores >= reference)
    return int(steps[reached[0]]) if len(reached) else None


def regret(episode_scores: np.ndarray) -> float:
    """Mean over online episodes of (1 - normalized return / 100); NaN without episodes."""
    return float(np.mean(1.0 - episode_scores / 100.0)) if len(episode_scores) else math.nan


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


def area_under_curve(steps: np.ndarray, scores: np.ndarray, start_score: float, online_steps: int) -> float:
    """Trapezoidal area under the evaluation curve from step 0 to the last evaluation,
    divided by that span (a mean score). The curve starts at ``start_score`` at step 0."""
    if len(scores) == 0:
        return math.nan
    x = np.concatenate([[0.0], steps.astype(float)]) if steps[0] > 0 else steps.astype(float)
    y = np.concatenate([[start_score if math.isfinite(start_score) else scores[0]], scores]) if steps[0] > 0 else scores
    span = x[-1] - x[0]
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / span) if span > 0 else float(y[-1])


def clean_offline_score(config: dict[str, Any]) -> float:
    """The Phase I final score of the parent's clean-data counterpart (same algorithm, dataset
    and seed, no corruption), read from the parent's results directory; NaN if not there."""
    parent = config.get("parent") or {}
    if not parent.get("run_dir"):
        return math.nan
    results = Path(parent["run_dir"]).parent
    identity = (config.get("parent_identity") or {})
    for run_dir in sorted(results.iterdir()) if results.is_dir() else []:
        path = run_dir / CONFIG_FILE
        if not path.exists():
            continue
        try:
            other = json.loads(path.read_text()).get("identity", {})
        except json.JSONDecodeError:
            continue
        same = {key: other.get(key) for key in ("algo", "dataset", "seed", "total_steps")} == {key: identity.get(key) for key in ("algo", "dataset", "seed", "total_steps")}
        clean = not other.get("remove_top_k") and not other.get("reward_noise_std") and not other.get("extra_corruptions")
        if same and clean and (run_dir / SUMMARY_FILE).exists():
            value = json.loads((run_dir / SUMMARY_FILE).read_text()).get("final_normalized_return")
            return float(value) if isinstance(value, (int, float)) else math.nan
    return math.nan


def recovery_of(run: RunRecord) -> Recovery:
    """The recovery metrics of one fine-tuning run."""
    config = run.config
    online_steps = int(config.get("online_steps") or run.total_steps or 0)
    switch = (config.get("parent") or {}).get("switch_score")
    switch = float(switch) if isinstance(switch, (int, float)) else math.nan
    steps, scores = run.eval_steps, run.eval_scores
    finite = np.isfinite(scores)
    steps, scores = steps[finite], scores[finite]
    references = {"clean_offline": clean_offline_score(config), "behavior": run.behavior_score}
    reached = {name: steps_to_reach(steps, scores, value) for name, value in references.items()}
    records, _ = read_metrics(run.run_dir / "metrics.jsonl")
    episode_scores = np.array([r["normalized_return"] for r in records if r.get("kind") == "episode"], dtype=float)
    calibrated = [r for r in records if r.get("kind") == "episode" and "q_minus_mc_mean" in r]
    reward_scale = float(config.get("reward_scale") or 1.0)  # Q and MC are logged in the run's scaled reward units
    q_steps = np.array([r["step"] for r in calibrated], dtype=float)
    q_minus_mc = np.array([r["q_minus_mc_mean"] / reward_scale for r in calibrated], dtype=float)
    return Recovery(
        run_id=run.run_id, method=str(config["method"]), algo=run.algo, dataset=run.dataset, corruption=run.level.label, seed=run.seed,
        status=run.status, online_steps=online_steps, eval_steps=steps, eval_scores=scores, switch_score=switch,
        final_score=final_score(scores) if len(scores) else math.nan, best_score=float(scores.max()) if len(scores) else math.nan,
        dip=dip(steps, scores, switch, online_steps), references=references, steps_to=reached,
        censored={name: value is None and math.isfinite(references[name]) for name, value in reached.items()},
        regret=regret(episode_scores), auc=area_under_curve(steps, scores, switch, online_steps), episodes=len(episode_scores),
        q_steps=q_steps, q_minus_mc=q_minus_mc, q_minus_mc_final=late_mean(q_steps, q_minus_mc, online_steps),
        uses_offline_data=(config.get("online") or {}).get("sampling") != "online_only",
        utd=(config.get("online") or {}).get("utd"), sampling=str((config.get("online") or {}).get("sampling", "")),
    )


def load_recoveries(results_dir: str | Path) -> list[Recovery]:
    """Recovery metrics of every fine-tuning run directly under ``results_dir`` (other runs are skipped)."""
    out = []
    for child in sorted(Path(results_dir).iterdir()):
        if (child / CONFIG_FILE).exists() and is_finetune_run(json.loads((child / CONFIG_FILE).read_text())):
            out.append(recovery_of(load_run(child)))
    return out
