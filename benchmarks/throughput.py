"""Update throughput: the eager reference loop against vmapped (and compiled) populations.

What is compared, in one process, on the same synthetic MuJoCo-sized data:

``eager``     the straightforward PyTorch implementation: ``TransitionSampler.sample`` +
              ``IQL.update`` / ``CQL.update`` (``algos/``), exactly the trainer's hot loop.
``vmap``      ``hybrid_rl.engine.population`` without compilation: P agents per update through
              ``torch.func.vmap`` over stacked parameters, batches gathered from one base
              dataset.
``compiled``  the same step wrapped in ``torch.compile`` (CUDA graphs on a GPU).

For each, warm-up steps run first (they include compilation, reported as ``first step``),
then ``--repeats`` timed blocks of ``--steps`` updates; the table gives the median.
``updates/s`` counts population steps (each updates P agents), ``agent-updates/s`` is
P x updates/s, and ``x eager`` divides agent-updates/s by the eager loop's updates/s (a
run-for-run comparison: the eager loop trains one agent per update). ``one run`` is the
time of ``--run-steps`` updates at that rate (one run, or one population of P runs), and
``grid`` the Phase I grid's runs of this algorithm (``grid.GridSpec`` defaults) at that
agent-update rate, assuming full populations. Both leave out evaluation and logging.

Examples::

    python benchmarks/throughput.py --algo iql --device cpu --population 1,8 --steps 200
    python benchmarks/throughput.py --algo cql --device cuda --population 1,8,18,36 --steps 500
    python benchmarks/throughput.py --algo iql --reduced          # CI smoke check, < 60 s

Timings are only meaningful on an otherwise idle machine: the script samples the run
queue before it starts and warns when other tasks are running.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hybrid_rl.algos.cql import CQL, CQLConfig
from hybrid_rl.algos.iql import IQL, IQLConfig
from hybrid_rl.data.dataset import OfflineDataset, TransitionSampler
from hybrid_rl.studies.grid import GridSpec
from hybrid_rl.data.views import DatasetView, PopulationSampler
from hybrid_rl.engine.population import CQLPopulation, IQLPopulation

# observation / action sizes of the D4RL locomotion robots
MUJOCO_SIZES = {"halfcheetah": (17, 6), "hopper": (11, 3), "walker2d": (17, 6), "ant": (27, 8)}
MODES = ("eager", "vmap", "compiled")


@dataclass(frozen=True)
class Row:
    algo: str
    device: str
    mode: str
    population: int
    updates_per_s: float  # median over repeats
    repeats: list[float]  # every repeat's updates/s
    first_step_s: float  # the first warm-up step (compilation for "compiled")
    compiled: bool | None  # for "compiled": whether torch.compile succeeded
    aten_ops_per_update: float | None = None  # with --count-ops: host-side operator dispatches
    flops_per_update: float = 0.0  # matrix-product FLOPs of one agent's update (matmul_flops_per_update)

    @property
    def agent_updates_per_s(self) -> float:
        return self.updates_per_s * self.population


def synthetic_dataset(num_transitions: int, obs_dim: int, act_dim: int, seed: int = 0) -> OfflineDataset:
    """Random transitions in D4RL layout, 1000-step episodes (speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(num_transitions, bool)
    timeouts[999::1000] = True
    return OfflineDataset(
        observations=rng.normal(size=(num_transitions, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (num_transitions, act_dim)).astype(np.float32),
        rewards=rng.normal(size=num_transitions).astype(np.float32),
        next_observations=rng.normal(size=(num_transitions, obs_dim)).astype(np.float32),
        terminals=np.zeros(num_transitions, bool),
        timeouts=timeouts,
        name="synthetic",
    )


def algo_config(algo: str, reduced: bool) -> IQLConfig | CQLConfig:
    """The paper/CORL defaults (2x256 IQL, 3x256 CQL with 10 actions per source, batch 256);
    ``reduced`` shrinks networks and batch for the smoke check."""
    if algo == "iql":
        config = IQLConfig(max_steps=1_000_000)
        return replace(config, hidden=(64, 64), batch_size=64) if reduced else config
    config = CQLConfig()
    return replace(config, critic_hidden=(64, 64), actor_hidden=(64, 64), num_sampled_actions=3, batch_size=64) if reduced else config


def matmul_flops_per_update(algo: str, config: IQLConfig | CQLConfig, obs_dim: int, act_dim: int) -> float:
    """Matrix-product FLOPs of one agent's eager update, counted by torch's FlopCounterMode
    on a random batch (forward and backward; elementwise work is not counted). The floor a
    machine's GEMM rate puts under the update time: CQL's ~15 GFLOP, IQL's ~0.65 at MuJoCo sizes."""
    from torch.utils.flop_counter import FlopCounterMode

    batch_size = config.batch_size
    batch = {
        "observations": torch.randn(batch_size, obs_dim), "actions": torch.rand(batch_size, act_dim) * 2 - 1,
        "rewards": torch.randn(batch_size), "next_observations": torch.randn(batch_size, obs_dim), "dones": torch.zeros(batch_size),
    }
    with torch.random.fork_rng():
        agent = (IQL if algo == "iql" else CQL)(obs_dim, act_dim, config)
        with FlopCounterMode(display=False) as counter:
            agent.update(batch)
    return float(counter.get_total_flops())


def gemm_gflops(device: torch.device, rows: int = 8192, width: int = 256, repeats: int = 20) -> float:
    """fp32 GEMM rate of this device at the networks' shapes ((rows x width) @ (width x width))."""
    a = torch.randn(rows, width, device=device)
    w = torch.randn(width, width, device=device)
    for _ in range(3):
        a @ w
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ w
    synchronize(device)
    return 2.0 * rows * width * width * repeats / (time.perf_counter() - started) / 1e9


def other_running_tasks(samples: int = 5, interval_s: float = 0.1) -> int | None:
    """Runnable tasks besides this process right now (median of a few samples of the
    instantaneous count in /proc/loadavg), or None where that file does not exist.

    Unlike the 1-minute load average, this does not count work that has just finished
    (such as the previous benchmark invocation).
    """
    counts = []
    for _ in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        counts.append(running - 1)  # the reading process itself is running
        time.sleep(interval_s)
    return int(statistics.median(counts))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[], Any], device: torch.device, warmup: int, steps: int, repeats: int) -> tuple[float, list[float]]:
    """(first step seconds, updates/s of every repeat). Warm-up steps are not timed."""
    synchronize(device)
    started = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - started
    for _ in range(max(warmup - 1, 0)):
        step()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        rates.append(steps / (time.perf_counter() - started))
    return first, rates


def count_aten_ops(step: Callable[[], Any], updates: int = 5) -> float:
    """``aten::`` operator calls per update recorded by torch.profiler (nested calls included).

    A load-independent measure of host-side dispatch work: it does not change with what
    else the machine runs, unlike the timings.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(updates):
            step()
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::")) / updates


def eager_step(algo: str, config, dataset: OfflineDataset, device: torch.device) -> Callable[[], Any]:
    """The trainer's loop body: sample on the device, one update (its metrics stay on the device)."""
    obs_mean, obs_std = dataset.observation_stats()
    sampler = TransitionSampler(dataset, device, obs_mean=obs_mean, obs_std=obs_std, seed=0)
    torch.manual_seed(0)
    agent = (IQL if algo == "iql" else CQL)(dataset.obs_dim, dataset.act_dim, config, device)
    return lambda: agent.update(sampler.sample(config.batch_size))


def population_step(algo: str, config, dataset: OfflineDataset, device: torch.device, size: int, compile: bool | str) -> tuple[Callable[[], Any], Any]:
    seeds = list(range(size))
    view = DatasetView.full(dataset, normalize_observations=True)
    sampler = PopulationSampler(dataset, [view] * size, seeds, device)
    cls = IQLPopulation if algo == "iql" else CQLPopulation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # CQL's randomness="same" notice; compile fallback is reported
        population = cls.create(dataset.obs_dim, dataset.act_dim, config, seeds, device, compile=compile)
    return (lambda: population.train_step(sampler)), population


def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this PyTorch build sees no CUDA GPU")
    obs_dim, act_dim = MUJOCO_SIZES[args.env]
    dataset = synthetic_dataset(args.transitions, obs_dim, act_dim)
    rows: list[Row] = []
    for algo in args.algo:
        config = algo_config(algo, args.reduced)
        flops = matmul_flops_per_update(algo, config, obs_dim, act_dim)
        for mode in args.modes:
            sizes = [1] if mode == "eager" else args.population
            for size in sizes:
                compiled: bool | None = None
                if mode == "eager":
                    step = eager_step(algo, config, dataset, device)
                else:
                    compile_as: bool | str = (args.compile_mode if args.compile_mode != "auto" else True) if mode == "compiled" else False
                    step, population = population_step(algo, config, dataset, device, size, compile=compile_as)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", RuntimeWarning)
                    first, rates = measure(step, device, args.warmup, args.steps, args.repeats)
                if mode == "compiled":
                    compiled = population.compiled
                    if not compiled:
                        print(f"note: {algo} P={size}: torch.compile failed ({population.compile_error}); the row shows the eager fallback", file=sys.stderr)
                        # Where it failed, for the bug report: the traceback's last frames.
                        print("".join((population.compile_traceback or "").splitlines(keepends=True)[-30:]), file=sys.stderr)
                for warning in caught:
                    if "torch.compile failed" not in str(warning.message):
                        print(f"warning: {warning.message}", file=sys.stderr)
                ops = count_aten_ops(step) if args.count_ops else None
                label = f"compiled[{args.compile_mode}]" if mode == "compiled" and args.compile_mode != "auto" else mode
                rows.append(Row(algo, str(device), label, size, statistics.median(rates), rates, first, compiled, ops, flops))
                print(f"  {algo:4s} {mode:9s} P={size:<3d} {statistics.median(rates):9.1f} updates/s (first step {first:.2f} s)", file=sys.stderr, flush=True)
    return rows


def grid_runs(algo: str) -> int:
    """Runs of ``algo`` in the Phase I grid with GridSpec's defaults."""
    return sum(1 for config in GridSpec().expand() if config.algo == algo)


def markdown(rows: list[Row], run_steps: int, peak_gflops: float) -> str:
    """The table; "% of GEMM" is the matrix-product FLOP rate achieved against ``peak_gflops``."""
    count_ops = any(row.aten_ops_per_update is not None for row in rows)
    lines = [
        "| algo | device | implementation | P | updates/s | agent-updates/s | x eager | % of GEMM | first step (s) | one run (h) | grid (h) |"
        + (" aten ops/update |" if count_ops else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if count_ops else ""),
    ]
    eager = {row.algo: row.updates_per_s for row in rows if row.mode == "eager"}
    for row in rows:
        ratio = f"{row.agent_updates_per_s / eager[row.algo]:.2f}" if row.algo in eager else "n/a"
        name = row.mode + (" (compile failed: eager fallback)" if row.compiled is False else "")
        one_run_h = run_steps / row.updates_per_s / 3600
        grid_h = grid_runs(row.algo) * run_steps / row.agent_updates_per_s / 3600
        lines.append(
            f"| {row.algo} | {row.device} | {name} | {row.population} | {row.updates_per_s:.1f} | {row.agent_updates_per_s:.1f} | {ratio} | "
            f"{100 * row.flops_per_update * row.agent_updates_per_s / 1e9 / peak_gflops:.0f} | "
            f"{row.first_step_s:.2f} | {one_run_h:.2f} | {grid_h:.1f} |"
            + (f" {row.aten_ops_per_update:.0f} |" if count_ops else "")
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "other_running_tasks": other_running_tasks(),
        "reduced": args.reduced,
        "env_sizes": {"env": args.env, "obs_dim": MUJOCO_SIZES[args.env][0], "act_dim": MUJOCO_SIZES[args.env][1]},
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="iql", help="iql, cql or both: iql,cql")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--population", default=None, help="population sizes, comma-separated (default 1,8; reduced 1,2)")
    parser.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(MODES)} (default all; reduced: eager,vmap)")
    parser.add_argument("--steps", type=int, default=None, help="timed updates per repeat (default 100; reduced 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed updates first, compilation included (default 10; reduced 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, the median is reported (default 3; reduced 2)")
    parser.add_argument("--compile-mode", default="auto", choices=["auto", "default", "reduce-overhead"],
                        help="torch.compile mode of the compiled rows; auto: the library's (CUDA graphs on a GPU, default on a CPU)")
    parser.add_argument("--env", default="halfcheetah", choices=sorted(MUJOCO_SIZES), help="observation/action sizes")
    parser.add_argument("--transitions", type=int, default=None, help="dataset size (default 1,000,000 as D4RL; reduced 10,000)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--run-steps", type=int, default=GridSpec().total_steps, help="updates per run, for the run and grid projections")
    parser.add_argument("--reduced", action="store_true", help="smoke check: small networks, few steps, no compilation (< 60 s on 2 cores)")
    parser.add_argument("--count-ops", action="store_true", help="also count aten operator calls per update (torch.profiler; load-independent)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and environment here")
    args = parser.parse_args(argv)
    args.algo = [a.strip().lower() for a in args.algo.split(",") if a.strip()]
    for algo in args.algo:
        if algo not in ("iql", "cql"):
            parser.error(f"--algo: unknown algorithm {algo!r}; choose iql, cql or iql,cql")
    defaults = {"population": "1,2", "modes": "eager,vmap", "steps": 5, "warmup": 2, "repeats": 2, "transitions": 10_000} if args.reduced else {
        "population": "1,8", "modes": ",".join(MODES), "steps": 100, "warmup": 10, "repeats": 3, "transitions": 1_000_000}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.population = [int(p) for p in str(args.population).split(",") if p.strip()]
    args.modes = [m.strip() for m in str(args.modes).split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    if min(args.population) < 1 or args.steps < 1 or args.repeats < 1 or args.warmup < 1:
        parser.error("--population, --steps, --repeats and --warmup must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args)
    others = env["other_running_tasks"]
    if others:
        print(f"warning: {others} other task(s) running on {env['cpu_count']} cores: these timings are not results", file=sys.stderr)
    started = time.perf_counter()
    peak = gemm_gflops(torch.device(args.device))
    env["gemm_gflops"] = peak
    rows = run(args)
    header = f"torch {env['torch']}, {env['threads']} threads, device {args.device}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, " \
             f"{args.env} sizes, median of {args.repeats} x {args.steps} updates after {args.warmup} warm-up; " \
             f"fp32 GEMM {peak:.0f} GFLOP/s"
    for algo in args.algo:
        flops = matmul_flops_per_update(algo, algo_config(algo, args.reduced), *MUJOCO_SIZES[args.env])
        header += f"; {algo}: {flops / 1e9:.2f} GFLOP/update, ceiling {peak * 1e9 / flops:.0f} agent-updates/s"
    if args.reduced:
        header += "; REDUCED smoke run (small networks): not a result"
    print(f"\n{header}\n")
    print(markdown(rows, args.run_steps, peak))
    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    if args.json:
        payload = {"environment": env, "run_steps": args.run_steps, "rows": [{**row.__dict__, "agent_updates_per_s": row.agent_updates_per_s} for row in rows]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
