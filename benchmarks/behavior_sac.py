"""Cost of the behaviour-policy trainer's SAC step at the v0 and v1 network sizes.

The dataset factory's behaviour policies (``hybrid-rl dataset train-policy``) are trained
with ``algos/sac.py``: one ``SAC.update`` (batch 256) and one environment step per
environment step. v0 used 2x128 networks, v1 SAC's published 2x256 (docs/datasets.md).
This times, in one process and one thread (as the trainer runs), ``SAC.update`` on
random robot-sized batches for each size, the trainer's compiled step (``--compile``
auto/on: a ``SACPopulation`` of one under torch.compile, compilation left out of the
timing) on the same batches, and one robot environment step with a sampled action; it
reports updates/s and the ratios to the first size's eager update.

    python benchmarks/behavior_sac.py                      # hopper sizes, 128,128 vs 256,256
    python benchmarks/behavior_sac.py --robot walker2d --updates 300

Meaningful only on an otherwise idle machine: it warns when other tasks are running.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import other_running_tasks  # noqa: E402

from hybrid_rl.algos.sac import SAC, SACConfig  # noqa: E402
from hybrid_rl.data.robots import make_robot_env  # noqa: E402
from hybrid_rl.engine.population import SACPopulation, cpp_compiler  # noqa: E402


def random_batch(obs_dim: int, act_dim: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(size, obs_dim, generator=generator),
        "actions": torch.rand(size, act_dim, generator=generator) * 2 - 1,
        "rewards": torch.randn(size, generator=generator),
        "next_observations": torch.randn(size, obs_dim, generator=generator),
        "dones": torch.zeros(size),
    }


def updates_per_second(update, batch: dict[str, torch.Tensor], updates: int, repeats: int) -> float:
    for _ in range(20):  # warm-up: compilation, allocator, first-call dispatch
        update(batch)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(updates):
            update(batch)
        rates.append(updates / (time.perf_counter() - started))
    return statistics.median(rates)


def env_steps_per_second(agent: SAC, robot: str, steps: int) -> float:
    env = make_robot_env(robot)
    obs, _ = env.reset(seed=0)
    started = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(agent.act(obs.astype(np.float32), deterministic=False))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robot", default="hopper")
    parser.add_argument("--sizes", default="128,128;256,256", help="network sizes to compare, ';'-separated")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    others = other_running_tasks()
    if others:
        print(f"warning: {others} other tasks are running; these timings are not meaningful", file=sys.stderr)
    env = make_robot_env(args.robot)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    batch = random_batch(obs_dim, act_dim, 256, seed=0)
    print(f"{args.robot} (obs {obs_dim}, act {act_dim}), batch 256, 1 thread, median of {args.repeats} x {args.updates} updates")
    print("| networks | update | updates/s | x first eager | env steps/s (act + step) | trainer steps/s (estimate) |")
    print("|---|---|---|---|---|---|")
    first = None
    stacked = {key: value[None] for key, value in batch.items()}
    for text in args.sizes.split(";"):
        hidden = tuple(int(width) for width in text.split(","))
        torch.manual_seed(0)
        agent = SAC(obs_dim, act_dim, SACConfig(hidden=hidden))
        env_rate = env_steps_per_second(agent, args.robot, 1000)
        paths = [("eager (SAC.update)", agent.update, batch)]
        if cpp_compiler() is not None:
            population = SACPopulation([SAC(obs_dim, act_dim, SACConfig(hidden=hidden))], compile=True)
            paths.append(("compiled (population of one)", population.update, stacked))
        for name, update, data in paths:
            rate = updates_per_second(update, data, args.updates, args.repeats)
            first = first or rate
            trainer = 1.0 / (1.0 / rate + 1.0 / env_rate)
            print(f"| {'x'.join(map(str, hidden))} | {name} | {rate:.1f} | {rate / first:.2f} | {env_rate:.0f} | {trainer:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
