"""Choices and defaults of the grid's options, importable without torch, so that building
the command line (and ``--help``) does not load the trainer."""
from __future__ import annotations

D4RL_DEFAULT_ENVS = ("halfcheetah-medium-v2", "hopper-medium-v2")
# The dataset of a single run and of the Phase II study when none is named: generated data
# (it works offline) of the default behaviour-policy version, data.factory.DEFAULT_POLICY_VERSION
# (a test keeps the two in step).
DEFAULT_DATASET = "gen-hopper-medium-v1"
QUICK_STEPS = 20_000
POPULATION_MODES = ("auto", "on", "off")
COMPILE_MODES = ("auto", "on", "off")  # the update path (engine.population.compiled_step_wanted)
COMPILE_HELP = (
    "update path: auto (default) = the compiled step on a CPU for runs long enough to pay for compiling, else eager; "
    "on = compiled wherever the algorithm has a compiled step (iql, cql, calql, sac, rlpd); off = the eager reference of algos/ "
    "(reproduces results made before the compiled default); a bare --compile means on"
)
DEFAULT_MAX_POPULATION = 36

# Phase II (run_phase2.py): the quick study's budget on a CPU.
PHASE2_QUICK_PRETRAIN_STEPS = 10_000  # Phase I steps of the quick study's parents
PHASE2_QUICK_ONLINE_STEPS = 5_000
PHASE2_QUICK_WARMUP_STEPS = 1_000  # random steps of the from-scratch methods (5,000 otherwise)
DEFAULT_SWITCH_EPISODES = 50  # episodes of a fine-tuning run's starting-policy evaluation at step 0
PHASE2_DEFAULT_METHODS = ("iql", "offline", "iql@utd0", "rlpd", "sac")  # IQL fine-tuning, its two controls, RLPD, SAC
