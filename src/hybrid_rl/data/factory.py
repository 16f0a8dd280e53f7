"""D4RL-recipe datasets generated offline from behaviour policies the project ships.

Dataset ids: ``gen-{robot}-{level}-{version}`` with robot in halfcheetah, hopper, walker2d,
level in random, medium, medium-replay, expert, medium-expert, and version the version of
the shipped behaviour policies (``hybrid_rl/policies/{robot}-{version}.pt``: ``v0``, and
``v1`` where it is shipped, docs/datasets.md); an optional ``@SIZE`` suffix
(``gen-hopper-medium-v0@50000``, ``@50k``, ``@1m``) asks for another number of
transitions. The ``gen-`` prefix and ``-v0``/``-v1`` suffixes make them impossible to
mistake for D4RL's ``-v2`` ids, and every file's metadata says how it was made. Older
versions stay loadable, so results made on them stay reproducible.

The recipe follows D4RL (Fu et al. 2020, sec. 5 and appendix):
- random: uniform random actions;
- medium: the stochastic SAC policy stopped at about one third of expert return;
- expert: the best policy SAC training reached (see the policy file for its level);
- medium-expert: medium followed by expert (twice the size);
- medium-replay: SAC's replay buffer up to the medium point. The buffer itself is not
  shipped (it is data); it is re-created from the training's actor snapshots: uniform
  random actions for the warm-up steps, then each snapshot's stochastic policy for the
  steps it was in charge of, in one continuous stream of episodes. This matches the
  buffer's size, order and policy mix at snapshot granularity (documented in metadata).
  The replay training may be a separate, slower one (``ship-policy --replay_from``, named
  in the policy file) where slowing the learner brings the buffer nearer D4RL's size;
  otherwise it is the main training, as in D4RL (docs/datasets.md).
Episodes are capped at 1000 steps (``timeouts``); ``terminals`` mark true terminations only
(a step that both terminates and reaches the cap is a termination: it is never bootstrapped).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.provenance import package_versions
from ..core.fileio import atomic_torch_save, file_sha256, read_file_record, sha256_of_file, write_file_record
from .robots import EPISODE_LIMIT, FACTORY_ROBOTS, MEDIUM_TARGET_RANGE, evaluate_actor, make_robot_env, read_progress, robot_dimensions
from .dataset import OfflineDataset, concatenate_datasets
from .hdf5io import DatasetFileError, read_hdf5, validate_hdf5, write_hdf5
from .refs import GYM_ENV_IDS, normalized_score
from ..core.networks import TanhGaussianPolicy

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
POLICY_VERSIONS = ("v0", "v1")  # shipped behaviour-policy versions, oldest first
# The version that defaults and examples use: v1, whose expert levels are nearest D4RL's
# (docs/datasets.md); v0 stays shipped so results made on it stay reproducible.
DEFAULT_POLICY_VERSION = "v1"
POLICY_FORMAT = "hybrid-rl-behavior-policies/1"
DEFAULT_SIZE = 1_000_000
POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
_ID_PATTERN = re.compile(r"^gen-(?P<robot>[a-z0-9]+)-(?P<level>[a-z-]+)-(?P<version>v\d+)(?:@(?P<size>\d+(?:\.\d+)?[kKmM]?))?$")


class GeneratedDatasetError(ValueError):
    """Bad generated-dataset id, size, or a missing/corrupt behaviour policy file."""


@dataclass(frozen=True)
class GeneratedId:
    robot: str
    level: str
    size: int | None  # None: the level's default size
    version: str = DEFAULT_POLICY_VERSION

    @property
    def base_name(self) -> str:
        return f"gen-{self.robot}-{self.level}-{self.version}"

    @property
    def name(self) -> str:
        return self.base_name if self.size is None else f"{self.base_name}@{self.size}"


def parse_size(text: str) -> int:
    """'50000', '50k', '1m', '1.5M' -> number of transitions."""
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if factor > 1 else text
    try:
        value = float(number) * factor
    except ValueError:
        raise GeneratedDatasetError(f"cannot read dataset size {text!r}; write e.g. 50000, 50k or 1m") from None
    if value <= 0 or value != int(value):
        raise GeneratedDatasetError(f"dataset size must be a positive whole number of transitions, got {text!r}")
    return int(value)


def generated_ids() -> list[str]:
    """Every generated id whose behaviour policies this installation ships."""
    return [f"gen-{robot}-{level}-{version}" for version in POLICY_VERSIONS for robot in FACTORY_ROBOTS
            if policy_path(robot, version).exists() for level in LEVELS]


def parse_generated_id(name: str) -> GeneratedId:
    match = _ID_PATTERN.match(name)
    if not match:
        raise GeneratedDatasetError(
            f"{name!r} is not a generated dataset id; the form is gen-ROBOT-LEVEL-VERSION[@SIZE], "
            f"e.g. gen-hopper-medium-{DEFAULT_POLICY_VERSION} or gen-hopper-medium-{DEFAULT_POLICY_VERSION}@50k"
        )
    robot, level, version = match["robot"], match["level"], match["version"]
    if robot not in FACTORY_ROBOTS:
        raise GeneratedDatasetError(f"no generated datasets for robot {robot!r}; choose one of {list(FACTORY_ROBOTS)}")
    if level not in LEVELS:
        raise GeneratedDatasetError(f"unknown level {level!r} in {name!r}; choose one of {list(LEVELS)}")
    if version not in POLICY_VERSIONS:
        raise GeneratedDatasetError(f"{name!r}: this release ships behaviour policies {' and '.join(POLICY_VERSIONS)}, not {version}")
    return GeneratedId(robot, level, parse_size(match["size"]) if match["size"] else None, version)


# ---------------------------------------------------------------------------------------
# Shipped behaviour policies
# ---------------------------------------------------------------------------------------
def policy_path(robot: str, version: str = DEFAULT_POLICY_VERSION) -> Path:
    return POLICY_DIR / f"{robot}-{version}.pt"


def shipped_policy_file(robot: str, version: str) -> dict[str, Any]:
    """The package's behaviour policy file of ``robot`` at ``version``, loaded and checked."""
    path = policy_path(robot, version)
    if not path.exists() and version != POLICY_VERSIONS[0]:
        raise GeneratedDatasetError(
            f"behaviour policies {version} of {robot} are not shipped in this installation yet; use gen-{robot}-...-"
            f"{POLICY_VERSIONS[0]} (docs/datasets.md lists what each version ships)"
        )
    return load_policy_file(path)


def load_policy_file(path: str | Path) -> dict[str, Any]:
    """Load and check a behaviour policy file; one clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise GeneratedDatasetError(
            f"behaviour policy file {path} is missing; reinstall hybrid-rl or retrain it with "
            "`hybrid-rl dataset train-policy --robot ROBOT` then `hybrid-rl dataset ship-policy` (docs/datasets.md)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for damaged zip/pickle data
        raise GeneratedDatasetError(f"behaviour policy file {path} is corrupt ({type(exc).__name__}); reinstall or retrain it") from None
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise GeneratedDatasetError(f"{path} is not a hybrid-rl behaviour policy file (format {POLICY_FORMAT})")
    payload["sha256"] = sha256_of_file(path)
    return payload


def build_actor(payload: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> TanhGaussianPolicy:
    actor = TanhGaussianPolicy(payload["obs_dim"], payload["act_dim"], tuple(payload["hidden"]))
    actor.load_state_dict({key: value.float() for key, value in state_dict.items()})
    return actor.eval()


def select_and_ship(training_dir: str | Path, robot: str, out_file: str | Path | None = None, *, version: str = DEFAULT_POLICY_VERSION,
                    medium_step: int | None = None, expert_step: int | None = None, replay_dir: str | Path | None = None,
                    replay_step: int | None = None, shipping_episodes: int = 30, expert_candidates: int = 5) -> Path:
    """Pick the medium and expert snapshots of a behaviour training and write the policy file.

    medium: unless given, the earliest snapshot whose stochastic-policy score lies inside
    the middle 70% of the robot's target window (early stopping as in D4RL), the score
    re-measured over ``shipping_episodes`` episodes for the evaluations near the window
    (``_medium_step``). expert: unless given, the best of the
    ``expert_candidates`` snapshots with the best training evaluations, re-measured over
    ``shipping_episodes`` stochastic episodes (a training evaluation has few episodes, and
    the best of many noisy evaluations overstates its policy). Both chosen policies'
    ``shipping_evaluation`` holds that re-measurement (0: none is made).

    medium-replay comes from ``replay_dir`` when given (a separate, slower training whose
    buffer ends where its policy first reached the medium level, ``replay_end_step``,
    unless ``replay_step`` is given), else from ``training_dir`` up to its medium step. The file holds the
    two actors, the replay snapshots (the medium-replay schedule) and every evaluation.
    """
    if version not in POLICY_VERSIONS:
        raise GeneratedDatasetError(f"unknown policy version {version!r}; choose one of {list(POLICY_VERSIONS)}")
    training_dir = Path(training_dir)
    progress = _training_progress(training_dir)
    replay_dir = Path(replay_dir) if replay_dir is not None else training_dir
    replay_progress = progress if replay_dir == training_dir else _training_progress(replay_dir)
    if replay_step is None and replay_dir != training_dir:
        replay_step = replay_end_step(replay_progress, robot, replay_dir)
    config = json.loads((training_dir / "config.json").read_text())
    replay_config = json.loads((replay_dir / "config.json").read_text())
    if replay_config["sac"]["hidden"] != config["sac"]["hidden"]:
        raise GeneratedDatasetError(f"{replay_dir} trains {replay_config['sac']['hidden']} actors, {training_dir} {config['sac']['hidden']}; one policy file holds one architecture")
    # Every given step checked before the (slow) measurements: bad input costs nothing.
    for step, records, directory in ((medium_step, progress, training_dir), (expert_step, progress, training_dir), (replay_step, replay_progress, replay_dir)):
        if step is not None:
            _record_at(records, step, directory)
    measured: dict[int, dict[str, Any]] = {}

    def measure(step: int) -> dict[str, Any]:
        if step not in measured:
            measured[step] = evaluate_snapshot(training_dir, robot, step, shipping_episodes)
        return measured[step]

    if medium_step is None:
        medium_step = _medium_step(progress, robot, measure if shipping_episodes > 0 else None)
    if replay_step is None:
        replay_step = medium_step
    if expert_step is None:
        ranked = sorted(progress, key=lambda record: -record["stochastic_normalized"])[:max(expert_candidates, 1)]
        if shipping_episodes > 0:
            expert_step = max((record["step"] for record in ranked), key=lambda step: measure(step)["stochastic_normalized"])
        else:
            expert_step = ranked[0]["step"]
    obs_dim, act_dim = robot_dimensions(robot)

    def level(step: int) -> dict[str, Any]:
        entry = {"step": step, "state_dict": _snapshot(training_dir, step), "evaluation": _record_at(progress, step, training_dir)}
        if shipping_episodes > 0:
            entry["shipping_evaluation"] = measure(step)
        return entry

    payload = {
        "format": POLICY_FORMAT,
        "version": version,
        "robot": robot,
        "gym_env_id": GYM_ENV_IDS[robot],
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "hidden": list(config["sac"]["hidden"]),
        "training_config": config,
        "random_steps": int(config["random_steps"]),
        "levels": {"medium": level(medium_step), "expert": level(expert_step)},
        # Replay snapshots only collect medium-replay data: float16 halves the shipped file.
        "replay_schedule": [{"step": record["step"], "state_dict": {k: v.half() for k, v in _snapshot(replay_dir, record["step"]).items()}}
                            for record in replay_progress if record["step"] < replay_step],
        "replay": {"step": replay_step, "random_steps": int(replay_config["random_steps"]), "training_config": replay_config,
                   "evaluation": _record_at(replay_progress, replay_step, replay_dir), "progress": replay_progress},
        "progress": progress,
        "versions": package_versions(),
    }
    out = Path(out_file) if out_file else policy_path(robot, version)
    atomic_torch_save(payload, out)
    return out


def replay_source(payload: dict[str, Any]) -> dict[str, Any]:
    """Where a policy file's medium-replay data ends (``step``) and how many uniform-random
    warm-up steps it starts with; files from before separate replay trainings (v0) replay
    their main training up to the medium policy."""
    return payload.get("replay") or {"step": payload["levels"]["medium"]["step"], "random_steps": payload["random_steps"]}


def evaluate_snapshot(training_dir: str | Path, robot: str, step: int, episodes: int) -> dict[str, Any]:
    """Stochastic-policy returns of a training's snapshot over ``episodes`` episodes: reset
    seeds 30000 + step + i (apart from the training's own evaluations), action noise from
    torch seeded with the same number, so a measurement can be repeated exactly."""
    obs_dim, act_dim = robot_dimensions(robot)
    config = json.loads((Path(training_dir) / "config.json").read_text())
    actor = build_actor({"obs_dim": obs_dim, "act_dim": act_dim, "hidden": config["sac"]["hidden"]}, _snapshot(Path(training_dir), step))
    with torch.random.fork_rng():
        torch.manual_seed(30_000 + step)
        returns = evaluate_actor(actor, robot, episodes, seed=30_000 + step, deterministic=False)
    mean = float(np.mean(returns))
    return {"episodes": episodes, "stochastic_return": mean, "stochastic_return_std": float(np.std(returns)),
            "stochastic_normalized": normalized_score(robot, mean), "stochastic_returns": returns}


def _training_progress(training_dir: Path) -> list[dict[str, Any]]:
    if not (training_dir / "progress.jsonl").exists():
        raise GeneratedDatasetError(f"{training_dir} is not a behaviour training directory (no progress.jsonl); train it with `hybrid-rl dataset train-policy`")
    progress = read_progress(training_dir)
    if not progress:
        raise GeneratedDatasetError(f"{training_dir} has no evaluations yet (progress.jsonl); train longer")
    return progress


def _medium_step(progress: list[dict[str, Any]], robot: str, measure: Callable[[int], dict[str, Any]] | None = None) -> int:
    """D4RL's early stopping: the earliest snapshot inside the middle 70% of the robot's
    medium window.

    Without ``measure``, by the training's own evaluations, else the one closest to the
    window's centre. With ``measure`` (a re-measurement over more episodes), every
    evaluation within two standard errors of the window is a candidate, and the earliest
    candidate whose re-measured score lies inside is chosen (else the candidate closest to
    the centre): a 5-episode walker2d evaluation has a standard error of ~9 points, enough
    to miss the window (54.5 over 5 episodes, 67.2 over 30) or to jump over it."""
    low, high = MEDIUM_TARGET_RANGE[robot]
    margin = 0.15 * (high - low)
    centre = (low + high) / 2

    def inside(score: float) -> bool:
        return low + margin <= score <= high - margin

    if measure is not None:
        near = [(r, 2 * _standard_error(r, robot)) for r in progress]
        candidates = [r["step"] for r, reach in near if low - reach <= r["stochastic_normalized"] <= high + reach]
        for step in candidates:
            if inside(measure(step)["stochastic_normalized"]):
                return step
        if candidates:
            return min(candidates, key=lambda step: abs(measure(step)["stochastic_normalized"] - centre))
    chosen = [r["step"] for r in progress if inside(r["stochastic_normalized"])]
    return chosen[0] if chosen else min(progress, key=lambda r: abs(r["stochastic_normalized"] - centre))["step"]


def _standard_error(record: dict[str, Any], robot: str) -> float:
    """The standard error of an evaluation's mean normalized score (0 without its episodes)."""
    returns = record.get("stochastic_returns") or []
    if len(returns) < 2:
        return 0.0
    return float(np.std(returns, ddof=1) / np.sqrt(len(returns))) * (normalized_score(robot, 1.0) - normalized_score(robot, 0.0))


def replay_end_step(progress: list[dict[str, Any]], robot: str, training_dir: str | Path = "the training") -> int:
    """Where a replay training's policy first reached the medium level: its earliest
    evaluation at or above the low end of the middle 70% of the robot's window (D4RL's
    medium-replay ends "when the policy reached the medium level"). A learner can jump
    over the window between two evaluations (hopper went from 28 to 73 in 10k steps), so
    reaching it counts, not landing inside it."""
    low, high = MEDIUM_TARGET_RANGE[robot]
    threshold = low + 0.15 * (high - low)
    for record in progress:
        if record["stochastic_normalized"] >= threshold:
            return record["step"]
    raise GeneratedDatasetError(f"{training_dir} never reached the medium level ({threshold:.1f}); train it longer or pass --replay_step")


def _record_at(progress: list[dict[str, Any]], step: int, training_dir: Path) -> dict[str, Any]:
    for record in progress:
        if record["step"] == step:
            return record
    raise GeneratedDatasetError(f"{training_dir} has no evaluation at step {step}; choose one of {[r['step'] for r in progress]}")


def _snapshot(training_dir: Path, step: int) -> dict[str, torch.Tensor]:
    path = training_dir / "snapshots" / f"actor_{step:07d}.pt"
    if not path.exists():
        raise GeneratedDatasetError(f"{path} is missing; that training kept no snapshot at step {step}")
    return torch.load(path, map_location="cpu")


# ---------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------
PolicyFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (obs (N,d), global step) -> (actions, log-probs)


def uniform_policy(act_dim: int, seed: int) -> PolicyFn:
    rng = np.random.default_rng(seed)
    log_density = act_dim * np.log(0.5)  # uniform on [-1, 1]^act_dim

    def act(obs: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        actions = rng.uniform(-1.0, 1.0, size=(len(obs), act_dim)).astype(np.float32)
        return actions, np.full(len(obs), log_density, dtype=np.float32)

    return act


def stochastic_actor_policy(actor: TanhGaussianPolicy, seed: int) -> PolicyFn:
    """Sample a = tanh(mu + sigma * eps) with an explicit generator (deterministic per seed)."""
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        mean, log_std = actor.mean_and_log_std(torch.as_tensor(obs, dtype=torch.float32))
        noise = torch.randn(mean.shape, generator=generator)
        pre_tanh = mean + log_std.exp() * noise
        log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(pre_tanh).sum(-1)
        from ..core.networks import tanh_log_det_jacobian

        log_prob = log_prob - tanh_log_det_jacobian(pre_tanh).sum(-1)
        return torch.tanh(pre_tanh).numpy(), log_prob.numpy()

    return act


def scheduled_policy(schedule: list[tuple[int, PolicyFn]]) -> PolicyFn:
    """The policy whose start step is the largest one <= the global step."""
    starts = [start for start, _ in schedule]

    def act(obs: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(np.searchsorted(starts, step, side="right")) - 1
        return schedule[max(index, 0)][1](obs, step)

    return act


def rollout(robot: str, policy: PolicyFn, num_transitions: int, *, num_envs: int, seed: int, progress: bool = True, desc: str = "") -> dict[str, np.ndarray]:
    """Collect `num_transitions` transitions in D4RL's layout by stepping `num_envs` envs together.

    Complete episodes are appended in the order they finish (so each episode's transitions
    are contiguous); collection stops once enough transitions are complete and the last
    episode is cut at `num_transitions` (a trailing partial trajectory, as in D4RL files).
    Deterministic for a given seed: envs are seeded once and stepped in a fixed order.
    """
    from ..core.progress import progress_bar

    envs = [make_robot_env(robot) for _ in range(num_envs)]
    obs = np.stack([env.reset(seed=seed * 1000 + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    fields = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "qpos", "qvel", "action_log_probs")
    running: list[dict[str, list]] = [{key: [] for key in fields} for _ in envs]
    finished: list[dict[str, np.ndarray]] = []
    collected, global_step = 0, 0
    bar = progress_bar(total=num_transitions, desc=desc or f"rollout {robot}", disable=not progress, unit="tr", mininterval=2)
    while collected < num_transitions:
        actions, log_probs = policy(obs, global_step)
        for i, env in enumerate(envs):
            data = env.unwrapped.data
            qpos, qvel = data.qpos.copy(), data.qvel.copy()
            next_obs, reward, terminated, truncated, _ = env.step(actions[i])
            episode = running[i]
            for key, value in zip(fields, (obs[i].copy(), actions[i], reward, next_obs, terminated, truncated and not terminated, qpos, qvel, log_probs[i])):
                episode[key].append(value)
            if terminated or truncated:
                finished.append({key: np.asarray(values) for key, values in episode.items()})
                collected += len(episode["rewards"])
                bar.update(len(episode["rewards"]))
                running[i] = {key: [] for key in fields}
                next_obs, _ = env.reset()
            obs[i] = next_obs
        global_step += num_envs
    bar.close()
    for env in envs:
        env.close()
    arrays = {key: np.concatenate([episode[key] for episode in finished])[:num_transitions] for key in fields}
    return arrays


def rollout_sequential(robot: str, policy: PolicyFn, num_transitions: int, *, seed: int, progress: bool = True, desc: str = "") -> dict[str, np.ndarray]:
    """One env, one continuous stream of episodes: the layout of an online replay buffer.

    Unlike `rollout`, the last episode may be cut anywhere, and the global step passed to
    the policy is exactly the env step count (needed for the medium-replay schedule).
    """
    env = make_robot_env(robot)
    fields = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "qpos", "qvel", "action_log_probs")
    out = {key: [] for key in fields}
    obs, _ = env.reset(seed=seed * 1000)
    from ..core.progress import progress_bar

    for step in progress_bar(range(num_transitions), desc=desc or f"replay {robot}", disable=not progress, unit="tr", mininterval=2):
        action, log_prob = policy(obs[None].astype(np.float32), step)
        data = env.unwrapped.data
        qpos, qvel = data.qpos.copy(), data.qvel.copy()
        next_obs, reward, terminated, truncated, _ = env.step(action[0])
        for key, value in zip(fields, (obs.astype(np.float32), action[0], reward, next_obs, terminated, truncated and not terminated, qpos, qvel, log_prob[0])):
            out[key].append(value)
        obs = env.reset()[0] if (terminated or truncated) else next_obs
    env.close()
    return {key: np.asarray(values) for key, values in out.items()}


def _to_dataset(arrays: dict[str, np.ndarray], name: str, metadata: dict[str, Any]) -> OfflineDataset:
    return OfflineDataset(
        observations=arrays["observations"].astype(np.float32),
        actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"].astype(np.float32),
        next_observations=arrays["next_observations"].astype(np.float32),
        terminals=arrays["terminals"].astype(bool),
        timeouts=arrays["timeouts"].astype(bool),
        name=name,
        infos={key: arrays[key].astype(np.float32) for key in ("qpos", "qvel", "action_log_probs")},
        metadata=metadata,
    )


def generate_dataset(
    name: str,
    *,
    seed: int = 0,
    policy_file: str | Path | None = None,
    num_envs: int = 16,
    progress: bool = True,
) -> OfflineDataset:
    """Generate the dataset `name` (``gen-ROBOT-LEVEL-v0[@SIZE]``) in memory.

    Policy inference runs on batches of `num_envs` observations, where extra torch threads
    only add synchronisation (4x slower on a loaded 2-core machine): one thread is used.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate_dataset(name, seed=seed, policy_file=policy_file, num_envs=num_envs, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _generate_dataset(name: str, *, seed: int, policy_file: str | Path | None, num_envs: int, progress: bool) -> OfflineDataset:
    gid = parse_generated_id(name)
    robot, level = gid.robot, gid.level
    act_dim = robot_dimensions(robot)[1]
    if level == "random":
        payload = None
    else:
        payload = load_policy_file(policy_file) if policy_file else shipped_policy_file(robot, gid.version)
    metadata: dict[str, Any] = {
        "source": "generated",
        "not_d4rl": "generated by hybrid-rl's dataset factory following the D4RL recipe; this is not D4RL data",
        "generator": "hybrid_rl.data.factory",
        "env_name": f"{robot}-{level}",
        "robot": robot,
        "level": level,
        "gym_env_id": GYM_ENV_IDS[robot],
        "seed": seed,
        "episode_limit": EPISODE_LIMIT,
        "versions": package_versions(),
    }
    if payload is not None:
        metadata["policy_file_sha256"] = payload["sha256"]
        metadata["policy_version"] = payload["version"]

    def policy_of(level_name: str, policy_seed: int) -> PolicyFn:
        entry = payload["levels"][level_name]
        metadata[f"{level_name}_policy_step"] = entry["step"]
        return stochastic_actor_policy(build_actor(payload, entry["state_dict"]), policy_seed)

    if level == "medium-expert":
        size = gid.size or 2 * DEFAULT_SIZE
        half = size // 2
        parts = [
            _to_dataset(rollout(robot, policy_of("medium", seed), half, num_envs=num_envs, seed=seed, progress=progress, desc="medium"), name, {}),
            _to_dataset(rollout(robot, policy_of("expert", seed + 1), size - half, num_envs=num_envs, seed=seed + 1, progress=progress, desc="expert"), name, {}),
        ]
        metadata["recipe"] = "medium rollouts followed by expert rollouts (D4RL medium-expert)"
        dataset = concatenate_datasets(parts, name=name, metadata=metadata)
    else:
        if level == "random":
            size = gid.size or DEFAULT_SIZE
            arrays = rollout(robot, uniform_policy(act_dim, seed), size, num_envs=num_envs, seed=seed, progress=progress, desc=name)
            metadata["recipe"] = "uniform random actions in [-1, 1]"
        elif level in ("medium", "expert"):
            size = gid.size or DEFAULT_SIZE
            arrays = rollout(robot, policy_of(level, seed), size, num_envs=num_envs, seed=seed, progress=progress, desc=name)
            metadata["recipe"] = f"stochastic rollouts of the SAC {level} policy (step {payload['levels'][level]['step']})"
        else:  # medium-replay
            replay = replay_source(payload)
            replay_step = replay["step"]
            size = gid.size or replay_step
            schedule: list[tuple[int, PolicyFn]] = [(0, uniform_policy(act_dim, seed))]
            schedule += [
                (entry["step"], stochastic_actor_policy(build_actor(payload, entry["state_dict"]), seed + 1 + i))
                for i, entry in enumerate(payload["replay_schedule"])
            ]
            # Stretch the schedule when a different size is asked for, keeping its proportions.
            scale = size / replay_step
            schedule = [(int(start * scale), fn) for start, fn in schedule]
            arrays = rollout_sequential(robot, scheduled_policy(schedule), size, seed=seed, progress=progress, desc=name)
            metadata["recipe"] = (
                f"SAC replay buffer up to the medium point (step {replay_step}) re-created from actor snapshots: "
                f"uniform random actions for the first {replay['random_steps']} steps, then each of "
                f"{len(payload['replay_schedule'])} snapshots' stochastic policy for the steps it was in charge of"
            )
            metadata["medium_policy_step"] = replay_step
        dataset = _to_dataset(arrays, name, metadata)
    returns = dataset.trajectory_returns()
    metadata.update(
        size=len(dataset),
        episodes=dataset.num_trajectories,
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        normalized_score_mean=normalized_score(robot, float(returns.mean())),
    )
    return dataset.replace(metadata=metadata)


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------
def generated_data_dir() -> Path:
    """Where generated datasets are kept: ``$HYBRID_RL_DATA_DIR``, else ``~/.hybrid_rl/datasets``
    (D4RL's own files stay in d4rl's cache, ``loader.d4rl_cache_dir``)."""
    return Path(os.environ.get("HYBRID_RL_DATA_DIR", Path.home() / ".hybrid_rl" / "datasets"))


def generated_path(name: str, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    gid = parse_generated_id(name)
    suffix = "" if seed == 0 else f"-seed{seed}"
    return Path(cache_dir or generated_data_dir()) / f"{gid.name}{suffix}.hdf5"


def make_generated(name: str, *, cache_dir: str | Path | None = None, seed: int = 0, policy_file: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Generate `name` into the cache (atomic write) unless a valid, current copy exists."""
    path = generated_path(name, cache_dir, seed)
    if path.exists() and not force:
        reason = _stale_reason(path, name, policy_file)
        if reason is None:
            return path
        print(f"regenerating {path.name}: {reason}")
    dataset = generate_dataset(name, seed=seed, policy_file=policy_file, progress=progress)
    write_hdf5(dataset, path)
    # The file's SHA-256 as made, checked on every later use like a download's (_stale_reason).
    write_file_record(path, {**read_file_record(path), "made_sha256": file_sha256(path)})
    return path


def _stale_reason(path: Path, name: str, policy_file: str | Path | None) -> str | None:
    """Why a cached generated file can't be used (None if it can): damaged, bytes changed
    since it was made (its SHA-256 differs from the one recorded then; files made before the
    record existed are checked for structure only), or made from another behaviour policy."""
    try:
        validate_hdf5(path)
        import h5py

        with h5py.File(path, "r") as handle:
            cached_sha = handle["metadata/policy_file_sha256"][()].decode() if "metadata/policy_file_sha256" in handle else None
    except (DatasetFileError, OSError, KeyError) as exc:
        return f"cached file is damaged ({exc})"
    made = read_file_record(path).get("made_sha256")
    if made and file_sha256(path) != made:
        return "its bytes changed since it was generated (SHA-256 differs from the one recorded when it was made)"
    gid = parse_generated_id(name)
    if gid.level == "random":
        return None
    current = sha256_of_file(Path(policy_file or policy_path(gid.robot, gid.version)))
    if cached_sha != current:
        return "the behaviour policy file changed since it was generated"
    return None


def load_generated(name: str, *, cache_dir: str | Path | None = None, seed: int = 0, progress: bool = True) -> OfflineDataset:
    """The generated dataset `name`, generated on first use (progress bar) and cached."""
    path = make_generated(name, cache_dir=cache_dir, seed=seed, progress=progress)
    return read_hdf5(path, name=name)

