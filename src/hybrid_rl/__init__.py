"""hybrid-rl: offline RL (CQL, IQL) under damaged D4RL-style datasets."""
import importlib.metadata
import warnings

import gymnasium  # noqa: F401  (imported first: it installs its own warning filters on import)
import mujoco

__version__ = importlib.metadata.version("hybrid-rl")  # pyproject.toml's, the one place a release changes it

# D4RL v2 data is evaluated in the Gymnasium v4 MuJoCo envs on purpose (same observation
# layout as the gym v3 envs it was collected in); Gymnasium's "v4 is out of date" notice
# would otherwise print for every process that creates an environment.
warnings.filterwarnings("ignore", message=r".*The environment \w+-v4 is out of date.*")


def _mujoco_warning(message: str) -> None:
    """MuJoCo's warning hook: by default it prints to stderr and appends to MUJOCO_LOG.TXT in
    the working directory. HalfCheetah's model uses the deprecated 'settotalmass' compiler
    attribute, which is harmless and would be reported for every env created; anything
    else is passed on as a Python warning."""
    if "settotalmass" in message:
        return
    warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


mujoco.set_mju_user_warning(_mujoco_warning)


def __getattr__(name: str):
    """``hybrid_rl.load_policy`` / ``hybrid_rl.Policy`` (imported on first use: they need torch)."""
    if name in ("load_policy", "Policy"):
        from .runs import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'hybrid_rl' has no attribute {name!r}")
