"""Choices and defaults of the grid's options, importable without torch, so that building
the command line (and ``--help``) does not load the trainer."""
from __future__ import annotations

D4RL_DEFAULT_ENVS = ("halfcheetah-medium-v2", "hopper-medium-v2")
QUICK_STEPS = 20_000
POPULATION_MODES = ("auto", "on", "off")
DEFAULT_MAX_POPULATION = 36
