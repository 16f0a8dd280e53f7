"""Dataset corruptions: pure functions ``(dataset, parameters, seed) -> (new dataset, record)``.

Every function here
- never mutates its input (a changed field is a new array; unchanged fields are shared),
- is deterministic: the same dataset, parameters and seed give the same output,
- returns a JSON-serializable ``record`` whose ``"kind"`` and parameters (and ``"seed"`` for
  random ones) replay it: ``apply_corruptions(ds, [spec_from_record(r)], seed=0)`` gives
  the same dataset again. The rest of the record says exactly what changed.
- appends the replay spec to ``metadata["corruptions"]`` of the returned dataset.

Corruptions:

``remove_top_k_trajectories`` (kind ``remove_top_k``)
    Drop the k% best trajectories by undiscounted return (the project's "missing expert
    data" study).
``add_reward_noise`` (kind ``reward_noise``)
    Gaussian noise on every reward.
``corrupt_transitions`` (kind ``corrupt_transitions``), ``replace_rewards``,
``flip_reward_sign``
    The random and adversarial-reward corruptions of RIQL: Yang et al. 2024, "Towards
    Robust Offline Reinforcement Learning under Diverse Data Corruption" (ICLR 2024),
    defaults there: rate 0.3, scale 1.0.

Randomness: a ``numpy.random.Generator`` (PCG64) seeded with ``seed``; transitions are picked
first, then the noise is drawn.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from .dataset import OfflineDataset, trajectory_bounds, trajectory_rows

# Beyond this many changed transitions a record stores the count and a hash of the index
# array instead of the list (a 1M-transition dataset at rate 0.3 would be a 2 MB record).
INDEX_LIST_LIMIT = 100_000

# RIQL corruption targets -> OfflineDataset field ("dynamics" perturbs s', as in RIQL).
TRANSITION_TARGETS: dict[str, str] = {
    "observations": "observations",
    "actions": "actions",
    "rewards": "rewards",
    "dynamics": "next_observations",
}

# D4RL / Gymnasium MuJoCo locomotion actions live in [-1, 1]^act_dim.
ACTION_LOW, ACTION_HIGH = -1.0, 1.0

Record = dict[str, Any]


# ---------------------------------------------------------------------------------------
# Parameter checks (one-line ValueErrors) and small helpers
# ---------------------------------------------------------------------------------------
def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None, high_open: bool = False) -> float:
    """`value` as a finite float within [low, high] (or [low, high)), else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value:g}")
    return value


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _fraction_count(fraction_of: float, total: int, *, percent: bool = False) -> int:
    """floor(fraction * total) computed exactly (0.3 * 10 must be 3, not 2.9999...)."""
    exact = Fraction(str(fraction_of)) * total  # str() gives the decimal the user wrote
    if percent:
        exact /= 100
    return math.floor(exact)


def _as_param(value: float) -> int | float:
    """Keep integers integral in records (k=30, not 30.0) so specs read as written."""
    return int(value) if float(value).is_integer() else float(value)


def _index_record(indices: np.ndarray) -> Record:
    """Which transitions changed: always a count and the SHA-256 of the sorted int64 index
    array; the list itself only below INDEX_LIST_LIMIT entries."""
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    record: Record = {"num_changed": int(len(indices)), "indices_sha256": hashlib.sha256(indices.tobytes()).hexdigest()}
    if len(indices) < INDEX_LIST_LIMIT:
        record["indices"] = indices.tolist()
    return record


def _choose_transitions(rng: np.random.Generator, num_transitions: int, rate: float) -> np.ndarray:
    """floor(rate * N) distinct transition indices, uniformly at random, sorted ascending."""
    count = _fraction_count(rate, num_transitions)
    return np.sort(rng.choice(num_transitions, size=count, replace=False)).astype(np.int64)


def _derive(dataset: OfflineDataset, record: Record, **arrays: np.ndarray) -> OfflineDataset:
    """The corrupted dataset: replaced arrays plus the replay spec in metadata."""
    corruptions = list(dataset.metadata.get("corruptions", [])) + [spec_from_record(record)]
    return dataset.replace(**arrays, metadata={**dataset.metadata, "corruptions": corruptions})


# ---------------------------------------------------------------------------------------
# Trajectory removal
# ---------------------------------------------------------------------------------------
def remove_top_k_trajectories(dataset: OfflineDataset, k: float) -> tuple[OfflineDataset, Record]:
    """Remove the floor(k * N / 100) trajectories with the highest undiscounted return.

    N is the number of trajectories (a trailing partial trajectory counts as one). Among
    equal returns the earlier trajectory in file order is removed first (stable sort), so the
    removed set is fully determined by the data. At most N - 1 trajectories are removed
    because k < 100. The kept trajectories stay whole and in file order
    (``OfflineDataset.select_trajectories``).

    Args:
        dataset: the data; not modified.
        k: percentage of trajectories to remove, 0 <= k < 100. k = 0 changes nothing.

    Returns:
        (dataset, record) with record keys ``kind="remove_top_k"``, ``k``,
        ``num_trajectories``, ``removed_trajectory_indices`` (ascending, into the input's
        trajectories), ``removed_returns`` (same order), ``return_threshold`` (the lowest
        removed return; None if nothing was removed), ``trajectories_kept/removed``,
        ``transitions_kept/removed``.
    """
    k = _number("k (percent of trajectories to remove)", k, low=0.0, high=100.0, high_open=True)
    returns = dataset.trajectory_returns()
    lengths = dataset.trajectory_lengths()
    num_trajectories = len(returns)
    num_removed = _fraction_count(k, num_trajectories, percent=True)
    # Descending by return; a stable sort of the negated returns keeps file order among ties.
    order = np.argsort(-returns, kind="stable")
    removed = np.sort(order[:num_removed])
    kept = np.setdiff1d(np.arange(num_trajectories), removed)
    record: Record = {
        "kind": "remove_top_k",
        "k": _as_param(k),
        "num_trajectories": int(num_trajectories),
        "removed_trajectory_indices": removed.tolist(),
        "removed_returns": [float(returns[t]) for t in removed],
        "return_threshold": float(returns[removed].min()) if num_removed else None,
        "trajectories_kept": int(len(kept)),
        "trajectories_removed": int(num_removed),
        "transitions_kept": int(lengths[kept].sum()),
        "transitions_removed": int(lengths[removed].sum()),
    }
    if num_removed == 0:
        return _derive(dataset, record), record
    out = dataset.select_trajectories(kept)
    return _derive(out, record), record


def kept_rows(terminals: np.ndarray, timeouts: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """The rows of its input that a ``remove_top_k`` record keeps, in file order.

    ``terminals``/``timeouts`` are the end flags of the dataset the removal was applied to;
    the rows are those ``remove_top_k_trajectories`` keeps (whole trajectories, through
    ``OfflineDataset.select_trajectories``' row selection). A population uses them to express
    a member's dataset as rows of the shared base dataset (``data.views.DatasetView``).
    """
    bounds = trajectory_bounds(terminals, timeouts)
    removed = np.asarray(record.get("removed_trajectory_indices", []), dtype=np.int64)
    return trajectory_rows(bounds, np.setdiff1d(np.arange(len(bounds)), removed))


# ---------------------------------------------------------------------------------------
# Reward noise
# ---------------------------------------------------------------------------------------
def add_reward_noise(dataset: OfflineDataset, std: float, seed: int) -> tuple[OfflineDataset, Record]:
    """Add i.i.d. Gaussian noise N(0, std^2) to every reward.

    Args:
        dataset: the data; not modified.
        std: noise standard deviation in reward units (per transition), std >= 0.
        seed: seeds ``numpy.random.default_rng``.

    Returns:
        (dataset, record) with record keys ``kind="reward_noise"``, ``std``, ``seed``,
        ``num_transitions``, and the realized ``noise_mean`` / ``noise_std`` of the draw.
    """
    std = _number("std (reward noise, reward units)", std, low=0.0)
    seed = _seed(seed)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, std, size=len(dataset))
    rewards = (dataset.rewards.astype(np.float64) + noise).astype(dataset.rewards.dtype)
    record: Record = {
        "kind": "reward_noise",
        "std": _as_param(std),
        "seed": seed,
        "num_transitions": len(dataset),
        "noise_mean": float(noise.mean()),
        "noise_std": float(noise.std()),
    }
    return _derive(dataset, record, rewards=rewards), record


# ---------------------------------------------------------------------------------------
# RIQL corruptions (Yang et al. 2024)
# ---------------------------------------------------------------------------------------
def corrupt_transitions(dataset: OfflineDataset, target: str, rate: float, scale: float, seed: int) -> tuple[OfflineDataset, Record]:
    """RIQL's random corruption of one field (Yang et al. 2024, "Towards Robust Offline RL
    under Diverse Data Corruption", sec. 3 / app. D: random attacks).

    floor(rate * N) transitions are chosen uniformly without replacement; at each,
    ``x <- x + lambda * std(x)`` with ``lambda ~ Uniform[-scale, scale]^dim`` drawn
    independently per transition and dimension, and ``std(x)`` the per-dimension standard
    deviation of that field over the whole (uncorrupted) dataset. Actions are clipped to
    [-1, 1] afterwards. Targets: ``observations`` (s), ``actions`` (a), ``rewards`` (r, with
    the scalar reward std), ``dynamics`` (s' = ``next_observations``, leaving s untouched so
    the transition model is what is damaged).

    Differences from RIQL's code, on purpose: RIQL picks each transition with probability
    `rate` (a random count); this picks exactly floor(rate * N) so budgets are exact.
    RIQL's *random reward* attack replaces rewards with Uniform[-30 scale, 30 scale]; that is
    ``replace_rewards(ds, rate, seed, low=-30 * scale, high=30 * scale)``. ``target="rewards"``
    here is the additive variant.

    Args:
        dataset: the data; not modified.
        target: one of ``observations``, ``actions``, ``rewards``, ``dynamics``.
        rate: fraction of transitions corrupted, 0 <= rate <= 1 (RIQL default 0.3).
        scale: noise half-width in units of the field's std, scale >= 0 (RIQL default 1.0).
        seed: seeds ``numpy.random.default_rng``.

    Returns:
        (dataset, record): ``kind="corrupt_transitions"``, ``target``, ``field``, ``rate``,
        ``scale``, ``seed``, ``field_std`` (per dimension, or a float for rewards),
        ``num_changed``, ``indices_sha256`` and ``indices`` (if fewer than 100k), and for
        actions ``clipped_to`` and ``num_clipped`` (entries that hit a bound).
    """
    if target not in TRANSITION_TARGETS:
        raise ValueError(f"target must be one of {sorted(TRANSITION_TARGETS)}, got {target!r}")
    rate = _number("rate (fraction of transitions)", rate, low=0.0, high=1.0)
    scale = _number("scale (noise range in stds)", scale, low=0.0)
    seed = _seed(seed)
    field_name = TRANSITION_TARGETS[target]
    original = getattr(dataset, field_name)
    values = original.astype(np.float64)
    std = values.std(axis=0)  # scalar for rewards, (dim,) otherwise
    rng = np.random.default_rng(seed)
    indices = _choose_transitions(rng, len(dataset), rate)
    noise = rng.uniform(-scale, scale, size=(len(indices),) + values.shape[1:])
    values[indices] += noise * std
    record: Record = {
        "kind": "corrupt_transitions",
        "target": target,
        "field": field_name,
        "rate": _as_param(rate),
        "scale": _as_param(scale),
        "seed": seed,
        "field_std": std.tolist() if np.ndim(std) else float(std),
    }
    if target == "actions":
        record["clipped_to"] = [ACTION_LOW, ACTION_HIGH]
        record["num_clipped"] = int(((values[indices] < ACTION_LOW) | (values[indices] > ACTION_HIGH)).sum())
        # Only corrupted rows are clipped: untouched rows must stay bit-identical.
        values[indices] = np.clip(values[indices], ACTION_LOW, ACTION_HIGH)
    record.update(_index_record(indices))
    return _derive(dataset, record, **{field_name: values.astype(original.dtype)}), record


def replace_rewards(dataset: OfflineDataset, rate: float, seed: int, low: float | None = None, high: float | None = None) -> tuple[OfflineDataset, Record]:
    """Replace the rewards of floor(rate * N) random transitions with Uniform[low, high].

    Random reward corruption in the style of RIQL (Yang et al. 2024, "Towards Robust Offline
    RL under Diverse Data Corruption"). By default [low, high] is the observed reward range,
    so corrupted rewards are plausible in magnitude but carry no information; RIQL's exact
    random reward attack is ``low=-30 * scale, high=30 * scale``.

    Args:
        dataset: the data; not modified.
        rate: fraction of transitions changed, 0 <= rate <= 1.
        seed: seeds ``numpy.random.default_rng``.
        low, high: replacement range in reward units (default: min / max observed reward).

    Returns:
        (dataset, record): ``kind="replace_rewards"``, ``rate``, ``seed``, ``low``, ``high``
        (the values used), ``range_from_data``, ``num_changed``, ``indices_sha256`` and
        ``indices`` (if fewer than 100k).
    """
    rate = _number("rate (fraction of transitions)", rate, low=0.0, high=1.0)
    seed = _seed(seed)
    range_from_data = low is None and high is None
    low = float(dataset.rewards.min()) if low is None else _number("low (reward units)", low)
    high = float(dataset.rewards.max()) if high is None else _number("high (reward units)", high)
    if low > high:
        raise ValueError(f"low must be <= high, got low={low:g} high={high:g}")
    rng = np.random.default_rng(seed)
    indices = _choose_transitions(rng, len(dataset), rate)
    rewards = dataset.rewards.copy()
    rewards[indices] = rng.uniform(low, high, size=len(indices))
    record: Record = {
        "kind": "replace_rewards",
        "rate": _as_param(rate),
        "seed": seed,
        "low": low,
        "high": high,
        "range_from_data": range_from_data,
    }
    record.update(_index_record(indices))
    return _derive(dataset, record, rewards=rewards), record


def flip_reward_sign(dataset: OfflineDataset, rate: float, seed: int, scale: float = 1.0) -> tuple[OfflineDataset, Record]:
    """RIQL's adversarial reward attack: ``r <- -scale * r`` on floor(rate * N) random transitions.

    Yang et al. 2024, "Towards Robust Offline RL under Diverse Data Corruption": the
    adversarial reward corruption multiplies the chosen rewards by ``-corruption_range``
    (``scale`` here), turning good transitions into bad ones.

    Args:
        dataset: the data; not modified.
        rate: fraction of transitions changed, 0 <= rate <= 1 (RIQL default 0.3).
        seed: seeds ``numpy.random.default_rng``.
        scale: magnitude of the flipped reward relative to the original, scale >= 0.

    Returns:
        (dataset, record): ``kind="flip_reward_sign"``, ``rate``, ``scale``, ``seed``,
        ``num_changed``, ``indices_sha256`` and ``indices`` (if fewer than 100k).
    """
    rate = _number("rate (fraction of transitions)", rate, low=0.0, high=1.0)
    scale = _number("scale (flipped reward magnitude)", scale, low=0.0)
    seed = _seed(seed)
    rng = np.random.default_rng(seed)
    indices = _choose_transitions(rng, len(dataset), rate)
    rewards = dataset.rewards.copy()
    rewards[indices] = (-scale * dataset.rewards[indices].astype(np.float64)).astype(rewards.dtype)
    record: Record = {"kind": "flip_reward_sign", "rate": _as_param(rate), "scale": _as_param(scale), "seed": seed}
    record.update(_index_record(indices))
    return _derive(dataset, record, rewards=rewards), record


def check_shorthands(remove_top_k: float, reward_noise_std: float, *, flags: bool = False) -> None:
    """The one validation of the two corruption shorthands every config and command takes:
    ValueError naming the field (``flags``: the command-line flag) and its domain."""
    prefix = "--" if flags else ""
    if not 0 <= remove_top_k < 100:
        raise ValueError(f"{prefix}remove_top_k {remove_top_k:g} is outside [0, 100): it is a percentage of trajectories")
    if reward_noise_std < 0:
        raise ValueError(f"{prefix}reward_noise_std {reward_noise_std:g} is negative: it is a standard deviation")


# ---------------------------------------------------------------------------------------
# Composition and replay
# ---------------------------------------------------------------------------------------
# kind -> (function, required params, optional params, takes a seed)
_KINDS: dict[str, tuple[Callable[..., tuple[OfflineDataset, Record]], tuple[str, ...], tuple[str, ...], bool]] = {
    "remove_top_k": (remove_top_k_trajectories, ("k",), (), False),
    "reward_noise": (add_reward_noise, ("std",), (), True),
    "corrupt_transitions": (corrupt_transitions, ("target", "rate", "scale"), (), True),
    "replace_rewards": (replace_rewards, ("rate",), ("low", "high"), True),
    "flip_reward_sign": (flip_reward_sign, ("rate",), ("scale",), True),
}
CORRUPTION_KINDS = tuple(_KINDS)


def spec_from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The replay spec in a record: ``kind``, its parameters and (for random kinds) ``seed``.

    ``apply_corruptions(ds, [spec_from_record(r) for r in records], seed=any)`` reproduces
    the corrupted dataset exactly, because the spec carries the seed that was used.
    """
    kind = record.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; known kinds: {', '.join(CORRUPTION_KINDS)}")
    _, required, optional, seeded = _KINDS[kind]
    spec = {"kind": kind, **{key: record[key] for key in required + optional if key in record}}
    if seeded and "seed" in record:
        spec["seed"] = record["seed"]
    return spec


def derive_seed(seed: int, position: int) -> int:
    """Seed of the `position`-th corruption in a list: independent streams per position
    (numpy SeedSequence), so two noise specs in one list never share their noise."""
    return int(np.random.SeedSequence([_seed(seed), int(position)]).generate_state(1)[0])


def _checked(spec: Any, position: int) -> tuple[Callable[..., tuple[OfflineDataset, Record]], dict[str, Any], bool]:
    """The function, parameters and seededness of one spec; a one-line ValueError for an
    unknown kind, an unknown or missing parameter."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError(f"corruption spec #{position} must be a dict with a 'kind' key, got {spec!r}")
    kind = spec["kind"]
    if kind not in _KINDS:
        raise ValueError(f"corruption spec #{position}: unknown kind {kind!r}; known kinds: {', '.join(CORRUPTION_KINDS)}")
    function, required, optional, seeded = _KINDS[kind]
    allowed = {"kind", *required, *optional} | ({"seed"} if seeded else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(
            f"corruption spec #{position} ({kind}): unknown parameter(s) {unknown}; allowed: {sorted(allowed - {'kind'})} "
            "(to replay a record use spec_from_record)"
        )
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"corruption spec #{position} ({kind}): missing parameter(s) {missing}")
    return function, {key: spec[key] for key in required + optional if key in spec}, seeded


def apply_corruptions(dataset: OfflineDataset, specs: Sequence[Mapping[str, Any]], seed: int) -> tuple[OfflineDataset, list[Record]]:
    """Apply corruptions in order, e.g. ``[{"kind": "remove_top_k", "k": 30},
    {"kind": "reward_noise", "std": 0.5}]``.

    A spec is ``kind`` plus that function's parameters (see `CORRUPTION_KINDS`). A random
    kind uses ``spec["seed"]`` if given, else ``derive_seed(seed, position)``; the seed used
    is in its record. Unknown kinds or parameters raise a one-line ValueError (records carry
    result fields too: turn them into specs with `spec_from_record`).

    Returns:
        (corrupted dataset, one record per spec in order).
    """
    if isinstance(specs, Mapping) or not isinstance(specs, Sequence):
        raise ValueError(f"specs must be a list of dicts such as {{'kind': 'remove_top_k', 'k': 30}}, got {type(specs).__name__}")
    seed = _seed(seed)
    records: list[Record] = []
    for position, spec in enumerate(specs):
        function, kwargs, seeded = _checked(spec, position)
        if seeded:
            kwargs["seed"] = spec["seed"] if "seed" in spec else derive_seed(seed, position)
        dataset, record = function(dataset, **kwargs)
        records.append(record)
    return dataset, records


def _probe_dataset() -> OfflineDataset:
    """Two short trajectories (one terminal, one time-limited): enough for every kind's own
    checks of its parameters to run."""
    rewards = np.array([1.0, 2.0, 3.0, 0.5, 0.25, 0.75], dtype=np.float32)
    observations = np.arange(12, dtype=np.float32).reshape(6, 2)
    return OfflineDataset(observations=observations, actions=np.zeros((6, 1), dtype=np.float32), rewards=rewards,
                          next_observations=observations + 1.0, terminals=np.array([0, 0, 1, 0, 0, 0], dtype=bool),
                          timeouts=np.array([0, 0, 0, 0, 0, 1], dtype=bool), name="probe")


def check_corruptions(specs: Sequence[Mapping[str, Any]]) -> None:
    """The one validation of a list of corruption specs, before any data is loaded: names
    (as ``apply_corruptions`` checks them) and values (each kind's own checks, run on a tiny
    probe dataset). One-line ValueError."""
    probe = _probe_dataset()
    for position, spec in enumerate(specs):
        function, kwargs, seeded = _checked(spec, position)
        try:
            function(probe, **kwargs, **({"seed": 0} if seeded else {}))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"corruption {format_corruptions([spec])}: {exc}") from None


def _parse_value(name: str, text: str) -> Any:
    """Numbers are floats (so ``scale=1`` and ``scale=1.0`` name the same run), a seed an int;
    anything else stays text (``target=observations``)."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if name == "seed" else number


def parse_corruptions(text: str) -> tuple[dict[str, Any], ...]:
    """Corruption specs as the command line writes them: ``none``, or
    ``KIND:NAME=VALUE[:NAME=VALUE...]``, several joined by ``+`` and applied in that order
    (``corrupt_transitions:target=observations:rate=0.3:scale=1``). Checked with
    ``check_corruptions``; one-line ValueError naming the form for text that is not one."""
    raw = text.strip()
    if raw.lower() in ("none", "clean", ""):
        return ()
    specs = []
    for part in raw.split("+"):
        kind, *pairs = part.strip().split(":")
        spec: dict[str, Any] = {"kind": kind.strip()}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ValueError(f"corruption {text!r}: {pair!r} is not NAME=VALUE; write KIND:NAME=VALUE[:NAME=VALUE...], "
                                 f"e.g. corrupt_transitions:target=observations:rate=0.3:scale=1 (kinds: {', '.join(CORRUPTION_KINDS)})")
            spec[name.strip()] = _parse_value(name.strip(), value.strip())
        specs.append(spec)
    check_corruptions(specs)
    return tuple(specs)


def format_corruptions(specs: Sequence[Mapping[str, Any]]) -> str:
    """The command-line form of ``specs`` (``parse_corruptions`` reads it back); ``none`` for no spec."""
    if not specs:
        return "none"
    return "+".join(":".join([str(spec.get("kind")), *(f"{key}={value}" for key, value in spec.items() if key != "kind")]) for spec in specs)


__all__ = [
    "CORRUPTION_KINDS",
    "check_shorthands",
    "INDEX_LIST_LIMIT",
    "TRANSITION_TARGETS",
    "add_reward_noise",
    "apply_corruptions",
    "check_corruptions",
    "corrupt_transitions",
    "derive_seed",
    "flip_reward_sign",
    "format_corruptions",
    "parse_corruptions",
    "remove_top_k_trajectories",
    "replace_rewards",
    "spec_from_record",
]
