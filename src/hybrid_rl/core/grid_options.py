"""Choices and defaults of the grid's options, importable without torch, so that building
the command line (and ``--help``) does not load the trainer."""
from __future__ import annotations

D4RL_DEFAULT_ENVS = ("halfcheetah-medium-v2", "hopper-medium-v2")
# The dataset of a single run and of the Phase II study when none is named: generated data
# (it works offline) of the default behaviour-policy version, data.factory.DEFAULT_POLICY_VERSION
# (a test keeps the two in step).
DEFAULT_DATASET = "gen-hopper-medium-v1"
DEFAULT_TOTAL_STEPS = 500_000  # gradient steps of a Phase I run (the budget run ids leave out)
DEFAULT_ONLINE_STEPS = 250_000  # online environment steps of a fine-tuning run
QUICK_STEPS = 20_000
QUICK_EVAL_EVERY = 2_000  # evaluations of a --quick grid's runs (and of the quick study's parents)
DEFAULT_SEEDS = (0, 1, 2)  # seeds of the grid and the study; --quick takes the first only
GRID_DEFAULT_ALGOS = ("cql", "iql")  # the Phase I grid's algorithms and trajectory-removal levels when none are named
GRID_DEFAULT_REMOVE_TOP_K = (0.0, 30.0, 60.0)
# A run's evaluation, log and checkpoint schedule when not given (train and the grid alike).
DEFAULT_EVAL_EVERY = 5_000
DEFAULT_LOG_EVERY = 1_000
DEFAULT_CHECKPOINT_EVERY = 10_000
POPULATION_MODES = ("auto", "on", "off")
COMPILE_MODES = ("auto", "on", "off")  # the update path (engine.population.compiled_step_wanted)
COMPILE_HELP = (
    "update path: auto (default) = the compiled step on a CPU for runs long enough to pay for compiling, else eager; "
    "on = compiled wherever the algorithm has a compiled step (every built-in one has); off = the eager reference of algos/ "
    "(reproduces results made before the compiled default); a bare --compile means on"
)
DEFAULT_MAX_POPULATION = 36

# Phase II (run_phase2.py): the quick study's budget on a CPU.
PHASE2_QUICK_PRETRAIN_STEPS = QUICK_STEPS  # the quick study's parents are the quick grid's runs (reused when present)
PHASE2_QUICK_ONLINE_STEPS = 5_000
PHASE2_QUICK_WARMUP_STEPS = 1_000  # random steps of the from-scratch methods (5,000 otherwise)
PHASE2_QUICK_EVAL_EVERY = 500  # online steps between a quick study's evaluations
PHASE2_QUICK_UTD = 1  # every method's gradient steps per environment step in a quick study
DEFAULT_SWITCH_EPISODES = 50  # episodes of a fine-tuning run's starting-policy evaluation at step 0
PHASE2_DEFAULT_METHODS = ("iql", "offline", "iql@utd0", "rlpd", "sac")  # IQL fine-tuning, its two controls, RLPD, SAC
PHASE2_DEFAULT_REMOVE_TOP_K = (0.0, 60.0)  # the study's trajectory-removal levels: clean and heavily damaged


def run_schedule(total_steps: int, eval_every: int | None = None, log_every: int | None = None,
                 checkpoint_every: int | None = None) -> dict[str, int]:
    """A run's evaluation, log and checkpoint steps: the given ones, else the defaults, each at
    most the run's length; without a log interval, 20 logs for runs shorter than 20,000 steps.
    ``hybrid-rl train``, the grid and the Phase II study all take their schedule from here,
    so the same flags give the same run (and each takes the other's results directory)."""
    return {
        "eval_every": min(eval_every or DEFAULT_EVAL_EVERY, total_steps),
        "log_every": min(log_every or min(DEFAULT_LOG_EVERY, max(1, total_steps // 20)), total_steps),
        "checkpoint_every": min(checkpoint_every or DEFAULT_CHECKPOINT_EVERY, total_steps),
    }
