"""How run ids and tables spell budgets and algorithm settings.

One home for the spelling, below every layer: the trainers name runs with it and the
analysis names groups of runs the same way, without importing each other.
"""
from __future__ import annotations


def format_setting(value: object) -> str:
    """A setting's value as run ids and tables write it: 5.0 -> '5', (256, 256) -> '256x256'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "x".join(format_setting(v) for v in value)
    return str(value)


def settings_parts(settings: dict) -> list[str]:
    """Non-default settings as run-id parts and labels: ``["cql_alpha=5", "hidden=64x64"]``."""
    return [f"{key}={format_setting(value)}" for key, value in sorted(settings.items())]


def format_steps(steps: int) -> str:
    """A budget as run ids spell it: 20000 -> '20k', 1500000 -> '1.5M', 120 -> '120'."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if steps >= size and steps % (size // 10 if size > 1_000 else 100) == 0:
            return f"{steps / size:g}{unit}"
    return str(steps)
