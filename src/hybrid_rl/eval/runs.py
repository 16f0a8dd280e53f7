"""Reading run directories: the only input of the analysis stage.

A run directory ``<results>/<run_id>/`` is written by the trainer and holds:

- ``config.json``: what was run (algo, dataset, corruption, seed, behaviour scores ...).
- ``metrics.jsonl``: one JSON object per logged step, ``"kind": "eval"`` or ``"train"``.
- ``summary.json``: final status (``completed`` / ``diverged`` / ``failed``); absent while
  the run is in progress (or if its process was killed before it could write one).

Analysis never imports the trainer: everything here is parsed from those files, so
reports can be rebuilt from results produced on any machine.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..core.errors import HybridRLError
from ..core.run_format import (COMPLETED, CONFIG_FILE, DIVERGED, FAILED, IN_PROGRESS, KNOWN_STATUSES, METRICS_FILE, RESULT_STATUSES,
                          SUMMARY_FILE, final_score)
from ..core.naming import format_steps, settings_parts

# Canonical order and label format of the built-in corruption parameters (top-level keys
# of config["corruption"]); other numeric keys are shown as ``key=value`` after these.
_CORRUPTION_LABELS: dict[str, str] = {
    "remove_top_k": "k={value:g}%",
    "reward_noise_std": "noise σ={value:g}",
}
# Parameter that measures the strength of an "extra" corruption spec, by preference.
_STRENGTH_PARAMS = ("rate", "k", "std", "scale")


class RunFormatError(ValueError):
    """A run directory's files do not follow the run-directory format."""


class ResultsDirError(HybridRLError, ValueError):
    """A results directory cannot be reported on (the CLI prints the message alone)."""


class ResultsDirMissingError(ResultsDirError, FileNotFoundError):
    """The results directory does not exist."""


class ResultsDirNotADirectoryError(ResultsDirError, NotADirectoryError):
    """The results path exists but is a file, not a directory."""


def is_generated_dataset(dataset: str, config: Mapping[str, Any] | None = None) -> bool:
    """True for data made by hybrid-rl's dataset factory (``gen-*`` ids), which follows the
    D4RL recipe but is not D4RL data: reports must never present it as D4RL."""
    metadata = (config or {}).get("dataset_metadata") or {}
    return dataset.startswith("gen-") or (isinstance(metadata, Mapping) and metadata.get("source") == "generated")


@dataclass(frozen=True, order=True)
class CorruptionComponent:
    """One active corruption: a name (the axis it varies along) and its strength.

    Built-in parameters (``remove_top_k``, ``reward_noise_std``) have only a value. An
    "extra" spec from ``config["corruption"]["extra"]`` (e.g. ``{"kind":
    "corrupt_transitions", "target": "observations", "rate": 0.3, "scale": 1.0}``) is named
    by its kind and non-numeric qualifiers (``corrupt_transitions[observations]``), has
    its ``rate`` (or first numeric parameter) as strength, and keeps every numeric
    parameter in ``params`` so that two specs differing in any of them stay apart.
    """

    sort_key: tuple = field(repr=False)
    name: str
    value: float
    params: tuple[tuple[str, float], ...] = ()

    @property
    def label(self) -> str:
        """'k=30%', 'noise σ=0.5', 'corrupt_transitions[observations] rate=0.3, scale=1'."""
        template = _CORRUPTION_LABELS.get(self.name)
        if template is not None:
            return template.format(value=self.value)
        if not self.params:
            return f"{self.name}={self.value:g}"
        return f"{self.name} " + ", ".join(f"{key}={value:g}" for key, value in self.params)


def _builtin_component(name: str, value: float) -> CorruptionComponent:
    known = list(_CORRUPTION_LABELS)
    rank = known.index(name) if name in known else len(known)
    return CorruptionComponent(sort_key=(rank, name, value, ()), name=name, value=value)


def _extra_component(spec: Mapping[str, Any]) -> CorruptionComponent | None:
    """Component of one extra corruption spec; None when its strength is zero."""
    kind = str(spec.get("kind", "corruption"))
    qualifiers = [str(v) for k, v in sorted(spec.items()) if k not in ("kind", "seed") and isinstance(v, str)]
    numeric = {k: float(v) for k, v in spec.items()
               if k != "seed" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    name = f"{kind}[{','.join(qualifiers)}]" if qualifiers else kind
    strength_key = next((k for k in _STRENGTH_PARAMS if k in numeric), min(numeric, default=None))
    value = numeric[strength_key] if strength_key is not None else 1.0
    if value == 0.0:
        return None
    params = tuple(sorted(numeric.items(), key=lambda kv: (kv[0] != strength_key, kv[0])))
    return CorruptionComponent(sort_key=(len(_CORRUPTION_LABELS) + 1, name, value, params),
                               name=name, value=value, params=params)


@dataclass(frozen=True, order=True)
class CorruptionLevel:
    """One corruption setting, e.g. top-30% trajectories removed, no reward noise.

    Holds only the active (non-zero) corruptions, so ``{"remove_top_k": 0,
    "reward_noise_std": 0, "extra": []}`` and ``{}`` are the same level ("clean").
    Ordering: clean first, then single corruptions by kind and strength, then combinations.
    """

    sort_key: tuple = field(repr=False)
    components: tuple[CorruptionComponent, ...]

    @classmethod
    def from_config(cls, corruption: Mapping[str, Any] | None) -> "CorruptionLevel":
        """Level of a config's ``corruption`` dict (zero, None and False mean "off")."""
        components: list[CorruptionComponent] = []
        for key, value in (corruption or {}).items():
            if key == "extra" and isinstance(value, (list, tuple)):
                extras = (_extra_component(spec) for spec in value if isinstance(spec, Mapping))
                components += [c for c in extras if c is not None]
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) != 0.0:
                components.append(_builtin_component(str(key), float(value)))
            # Anything else (None, strings, nested records) carries no strength.
        components.sort()
        sort_key = (len(components), tuple(c.sort_key for c in components))
        return cls(sort_key=sort_key, components=tuple(components))

    @property
    def is_clean(self) -> bool:
        """True when no corruption is active."""
        return not self.components

    @property
    def label(self) -> str:
        """Short human label: 'clean', 'k=30%', 'noise σ=0.5', 'k=30%, noise σ=0.5'."""
        if self.is_clean:
            return "clean"
        return ", ".join(c.label for c in self.components)

    def value_of(self, name: str) -> float:
        """Strength of one corruption at this level (0.0 when inactive)."""
        return next((c.value for c in self.components if c.name == name), 0.0)

    def active_keys(self) -> tuple[str, ...]:
        """Names of the active corruptions (the axes this level lies on)."""
        return tuple(c.name for c in self.components)


def corruption_label(corruption: Mapping[str, Any] | None) -> str:
    """Human label of a config's corruption dict: 'clean', 'k=30%', 'noise σ=0.5', ..."""
    return CorruptionLevel.from_config(corruption).label


@dataclass(frozen=True, eq=False)
class RunRecord:
    """Everything the analysis needs from one run directory.

    Scores are D4RL normalized returns (0 = random policy, 100 = expert). Steps are
    gradient steps. ``train`` maps each numeric train-diagnostic key to an array aligned
    with ``train_steps`` (NaN where a line did not log that key).
    """

    run_dir: Path
    run_id: str
    config: dict[str, Any]
    algo: str
    dataset: str
    seed: int
    level: CorruptionLevel
    status: str
    summary: dict[str, Any] | None
    eval_steps: np.ndarray
    eval_scores: np.ndarray
    eval_score_stds: np.ndarray
    train_steps: np.ndarray
    train: dict[str, np.ndarray]
    metrics_truncated: bool
    behavior_score: float
    corrupted_behavior_score: float
    settings: dict[str, Any] = field(default_factory=dict)  # algorithm settings off the published defaults (config.json)
    show_budget: bool = False  # set by load_runs when the results hold runs of several budgets

    @property
    def method(self) -> str:
        """The algorithm with its non-default settings (and its budget, among runs of several
        budgets), as tables and figures name a group of runs: ``cql``, ``cql cql_alpha=5``,
        ``iql steps20k``."""
        budget = [f"steps{format_steps(self.total_steps)}"] if self.show_budget and self.total_steps else []
        return " ".join([self.algo, *settings_parts(self.settings), *budget])

    @property
    def is_result(self) -> bool:
        """Completed or diverged: the run's final score belongs in the tables."""
        return self.status in RESULT_STATUSES

    @property
    def diverged(self) -> bool:
        """True when the trainer stopped the run because it diverged."""
        return self.status == DIVERGED

    @property
    def diverged_at_step(self) -> int | None:
        """Gradient step at which divergence was detected (None if it did not diverge)."""
        if self.summary is None:
            return None
        step = self.summary.get("diverged_at_step")
        return None if step is None else int(step)

    @property
    def total_steps(self) -> int | None:
        """Planned number of gradient steps (from config.json)."""
        steps = self.config.get("total_steps")
        return None if steps is None else int(steps)

    @property
    def last_step(self) -> int:
        """Last gradient step seen in metrics.jsonl (0 if nothing was logged)."""
        candidates = [int(a[-1]) for a in (self.eval_steps, self.train_steps) if len(a)]
        return max(candidates, default=0)

    @property
    def final_score(self) -> float:
        """The run's final normalized return (NaN if it has none).

        Completed: ``summary.json``'s ``final_normalized_return`` (mean over the last 10%
        of evaluations), recomputed from metrics.jsonl if missing. Diverged: the last
        finite evaluation at or before the divergence step, NaN if there was none. Failed
        and in-progress runs have no final score.
        """
        if self.status == DIVERGED:
            finite = np.isfinite(self.eval_scores)
            if self.diverged_at_step is not None:
                finite &= self.eval_steps <= self.diverged_at_step
            return float(self.eval_scores[finite][-1]) if finite.any() else math.nan
        if self.status == COMPLETED:
            value = (self.summary or {}).get("final_normalized_return")
            if _is_finite_number(value):
                return float(value)
            return final_score(self.eval_scores)
        return math.nan

    @property
    def reward_scale(self) -> float | None:
        """Factor the trainer multiplied the rewards by (config.json ``reward_scale``).

        Q statistics and critic losses in metrics.jsonl are in these scaled units. Runs
        written before the key existed: 1.0 when the algorithm did not scale rewards,
        None (unknown) when it did, so figures can say they could not convert them.
        """
        value = self.config.get("reward_scale")
        if _is_finite_number(value) and value > 0:
            return float(value)
        scaling = (self.config.get("algo_config") or {}).get("reward_scaling", "none")
        return 1.0 if scaling in (None, "none") else None

    @property
    def generated_dataset(self) -> bool:
        """True when the run trained on a dataset of hybrid-rl's factory, not on D4RL data."""
        return is_generated_dataset(self.dataset, self.config)

    def train_metric(self, key: str) -> np.ndarray | None:
        """One train-diagnostic series aligned with ``train_steps``, or None if never logged."""
        values = self.train.get(key)
        if values is None or not np.any(np.isfinite(values)):
            return None
        return values


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object file, naming the file in the error if it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunFormatError(
            f"{path} is not valid JSON ({err}); the run directory is damaged: "
            "rerun that run or delete its directory"
        ) from err
    if not isinstance(data, dict):
        raise RunFormatError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Parse metrics.jsonl into a list of records; return ``(records, truncated)``.

    Tolerates what a killed process leaves behind: an unparsable *last* line is skipped
    (``truncated`` is then True). An unparsable line anywhere else means the file was
    damaged after writing, and raises ``RunFormatError`` naming the line. ``NaN`` and
    ``Infinity`` (what Python's json writes for non-finite floats) parse as floats.
    """
    if not path.exists():
        return [], False
    raw_lines = path.read_bytes().split(b"\n")
    numbered = [(i + 1, line) for i, line in enumerate(raw_lines) if line.strip()]
    records: list[dict[str, Any]] = []
    truncated = False
    for position, (lineno, raw) in enumerate(numbered):
        is_last = position == len(numbered) - 1
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, found {type(record).__name__}")
        except (UnicodeDecodeError, ValueError) as err:
            if is_last:
                truncated = True
                continue
            snippet = raw[:80].decode("utf-8", errors="replace")
            raise RunFormatError(
                f"{path}, line {lineno}: not a JSON object ({err}): {snippet!r}. Only the last "
                "line may be cut off (a killed run); a damaged line in the middle means the "
                "file was corrupted: rerun that run or delete its directory"
            ) from err
        records.append(record)
    return records, truncated


def _as_float(value: Any) -> float:
    """Numeric JSON value as float; None (JSON null) and non-numbers become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _eval_arrays(records: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # A fine-tuning run's switch measurement (step 0, "switch": true) is read by eval.recovery.
    evals = [r for r in records if r.get("kind") == "eval" and not r.get("switch")]
    steps = np.array([int(r["step"]) for r in evals], dtype=np.int64)
    scores = np.array([_as_float(r.get("normalized_return_mean")) for r in evals], dtype=float)
    stds = np.array([_as_float(r.get("normalized_return_std")) for r in evals], dtype=float)
    return steps, scores, stds


def _train_arrays(records: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    trains = [r for r in records if r.get("kind") == "train"]
    steps = np.array([int(r["step"]) for r in trains], dtype=np.int64)
    keys: dict[str, None] = {}  # insertion-ordered set: keeps the trainer's key order
    for record in trains:
        for key, value in record.items():
            if key not in ("step", "kind") and (value is None or isinstance(value, (int, float))):
                keys.setdefault(key)
    series = {
        key: np.array([_as_float(r.get(key)) for r in trains], dtype=float) for key in keys
    }
    return steps, series


def _behavior_score(config: Mapping[str, Any], key: str) -> float:
    summary = config.get(key) or {}
    return _as_float(summary.get("normalized_return_mean"))


def load_run(run_dir: str | Path) -> RunRecord:
    """Read one run directory (it must contain config.json)."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise RunFormatError(f"{run_dir} has no config.json: it is not a run directory")
    config = read_json(config_path)
    missing = [k for k in ("algo", "dataset", "seed") if k not in config]
    if missing:
        raise RunFormatError(f"{config_path} lacks required keys {missing}")

    records, truncated = read_metrics(run_dir / METRICS_FILE)
    for record in records:
        if "step" not in record:
            raise RunFormatError(f"{run_dir / METRICS_FILE}: a record has no 'step': {record}")

    summary_path = run_dir / SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.exists() else None
    if summary is None:
        status = IN_PROGRESS
    else:
        status = str(summary.get("status"))
        if status not in KNOWN_STATUSES:
            raise RunFormatError(
                f"{summary_path}: unknown status {status!r}; expected one of {KNOWN_STATUSES}"
            )

    eval_steps, eval_scores, eval_stds = _eval_arrays(records)
    train_steps, train = _train_arrays(records)
    return RunRecord(
        run_dir=run_dir,
        run_id=str(config.get("run_id", run_dir.name)),
        config=config,
        algo=str(config["algo"]),
        dataset=str(config["dataset"]),
        seed=int(config["seed"]),
        level=CorruptionLevel.from_config(config.get("corruption")),
        status=status,
        summary=summary,
        eval_steps=eval_steps,
        eval_scores=eval_scores,
        eval_score_stds=eval_stds,
        train_steps=train_steps,
        train=train,
        metrics_truncated=truncated,
        behavior_score=_behavior_score(config, "dataset_summary"),
        corrupted_behavior_score=_behavior_score(config, "corrupted_dataset_summary"),
        settings={key: tuple(value) if isinstance(value, list) else value for key, value in (config.get("settings") or {}).items()},
    )


def is_finetune_run(config: Mapping[str, Any]) -> bool:
    """A Phase II fine-tuning run's config.json (it names a method and its online settings)."""
    return "method" in config and "online" in config


def finetune_run_dirs(results_dir: str | Path) -> list[Path]:
    """The fine-tuning run directories directly under ``results_dir`` (eval.recovery reads them)."""
    results_dir = Path(results_dir)
    check_results_dir(results_dir)
    return [child for child in sorted(results_dir.iterdir()) if (child / CONFIG_FILE).exists() and is_finetune_run(read_json(child / CONFIG_FILE))]


def load_runs(results_dir: str | Path) -> list[RunRecord]:
    """Read every Phase I run directory directly under ``results_dir``.

    Sub-directories without config.json (plots, caches, half-created dirs) are skipped, and
    so are fine-tuning runs (``finetune_run_dirs``: their recovery report reads them).
    Runs are sorted by (dataset, algo, corruption level, seed). Raises ``RunFormatError``
    if two directories hold the same (dataset, algo, corruption, seed), because counting
    one seed twice would make the error bars dishonest.
    """
    results_dir = Path(results_dir)
    check_results_dir(results_dir)
    runs = [
        load_run(child)
        for child in sorted(results_dir.iterdir())
        if child.is_dir() and (child / CONFIG_FILE).exists()
    ]
    runs = [run for run in runs if not is_finetune_run(run.config)]
    if len({run.total_steps for run in runs}) > 1:  # runs of other budgets are other groups, named so
        runs = [dataclasses.replace(run, show_budget=True) for run in runs]
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = (run.dataset, run.method, run.level, run.seed)
        if key in seen:
            raise RunFormatError(
                f"{seen[key]} and {run.run_dir} are the same run (dataset={run.dataset}, "
                f"algo={run.method}, corruption={run.level.label}, seed={run.seed}); "
                "keep only one of them"
            )
        seen[key] = run.run_dir
    runs.sort(key=lambda r: (r.dataset, r.method, r.level, r.seed))
    return runs


def check_results_dir(results_dir: str | Path) -> None:
    """Raise a one-line error naming what is wrong with a results path (missing, a file)."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise ResultsDirMissingError(f"results directory {results_dir} does not exist")
    if not results_dir.is_dir():
        raise ResultsDirNotADirectoryError(
            f"results path {results_dir} is not a directory (it is a file); pass the directory "
            "that holds the run directories"
        )


def failed_before_start(results_dir: str | Path) -> list[dict[str, Any]]:
    """Runs that failed before writing config.json (e.g. a bad algo override).

    Such a directory holds only ``summary.json`` with ``"status": "failed"``; it is no run
    directory for ``load_runs``, but the report must not lose it. Returns
    ``[{"run_id", "error", "run_dir"}, ...]`` sorted by run id.
    """
    results_dir = Path(results_dir)
    failures = []
    for child in sorted(results_dir.iterdir()) if results_dir.is_dir() else []:
        summary_path = child / SUMMARY_FILE
        if not child.is_dir() or (child / CONFIG_FILE).exists() or not summary_path.exists():
            continue
        summary = read_json(summary_path)
        if summary.get("status") == FAILED:
            failures.append({"run_id": str(summary.get("run_id", child.name)),
                             "error": str(summary.get("error") or "no error message"),
                             "run_dir": child})
    return sorted(failures, key=lambda f: f["run_id"])
