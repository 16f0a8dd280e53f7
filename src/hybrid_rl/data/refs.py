"""Reference scores and the D4RL normalized score: the one home of these facts.

D4RL normalized score = 100 * (return - random) / (expert - random), where `random` and
`expert` are the per-robot reference returns published with D4RL (Fu et al. 2020,
``d4rl/infos.py``). 0 is a uniform-random policy, 100 an expert SAC policy.
"""
from __future__ import annotations

import math
import re

# Per robot: (random return, expert return) as published by D4RL for the v2 locomotion data.
REF_RETURNS: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

# Gymnasium environment evaluating each robot's D4RL data (D4RL v2 was collected in the
# gym v3 envs; v4 is their Gymnasium port with the same observation layout). Ant: Ant-v4
# with D4RL's all-zero contact forces (111-dim observations, no contact cost; envs.py).
GYM_ENV_IDS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v4",
    "hopper": "Hopper-v4",
    "walker2d": "Walker2d-v4",
    "ant": "hybrid_rl/D4RLAnt-v4",
}

# Published final normalized scores (CORL, mean over seeds), for comparison tables.
PUBLISHED_SCORES: dict[str, dict[str, float]] = {
    "halfcheetah-medium-v2": {"bc": 42.4, "td3bc": 48.1, "cql": 47.0, "iql": 48.3},
    "hopper-medium-v2": {"bc": 53.5, "td3bc": 60.4, "cql": 59.1, "iql": 67.5},
    "walker2d-medium-v2": {"bc": 63.2, "td3bc": 82.7, "cql": 80.8, "iql": 80.9},
    "halfcheetah-medium-replay-v2": {"bc": 35.7, "td3bc": 44.8, "cql": 45.0, "iql": 44.5},
    "hopper-medium-replay-v2": {"bc": 29.8, "td3bc": 64.4, "cql": 95.1, "iql": 97.4},
    "walker2d-medium-replay-v2": {"bc": 21.8, "td3bc": 85.6, "cql": 73.1, "iql": 82.2},
}


def robot_of(env_name: str) -> str:
    """The robot a dataset or env name refers to: 'hopper-medium-v2' -> 'hopper'.

    Accepts D4RL ids, generated ids ('gen-hopper-medium-v0'), Gymnasium ids
    ('Hopper-v4') and Minari ids ('mujoco/hopper/medium-v0').
    """
    # Whole words only: 'antmaze-umaze-v2' is not the ant locomotion task.
    words = re.split(r"[^a-z0-9]+", env_name.lower())
    for robot in REF_RETURNS:
        if robot in words or f"d4rl{robot}" in words:  # 'hybrid_rl/D4RLAnt-v4'
            return robot
    raise ValueError(
        f"no reference scores for {env_name!r}: known robots are {sorted(REF_RETURNS)}; "
        "normalized scores exist only for D4RL locomotion robots"
    )


def normalized_score(env_name: str, raw_return: float) -> float:
    """D4RL normalized score (0 = random, 100 = expert) of an undiscounted episode return."""
    random_return, expert_return = REF_RETURNS[robot_of(env_name)]
    if not math.isfinite(raw_return):
        return float("nan")
    return 100.0 * (float(raw_return) - random_return) / (expert_return - random_return)


def raw_return(env_name: str, normalized: float) -> float:
    """Inverse of `normalized_score`: the episode return that has this normalized score."""
    random_return, expert_return = REF_RETURNS[robot_of(env_name)]
    return random_return + normalized / 100.0 * (expert_return - random_return)
