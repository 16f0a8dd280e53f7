"""End-to-end wall time of ``hybrid-rl train`` or ``hybrid-rl finetune``: what a user's command
gets, not an update rate.

Each variant is one whole ``python -m hybrid_rl.cli train ...`` (or ``finetune --from
PARENT ...``) process (imports, dataset from the cache, training, the default evaluations
and checkpoints, summary) in a fresh results directory. Variants run in turn, round after round (A B C A B C ...), so a drift of
the machine's speed hits them alike; the table gives each variant's median wall time and
its speed relative to the first variant (median of the per-round ratios).

A variant is ``LABEL=SRC:FLAGS``: ``SRC`` the ``src`` directory of the code to time (``.``
for this checkout's; a ``git worktree`` of an older commit for a before/after comparison)
and ``FLAGS`` extra ``hybrid-rl train`` flags (``--compile off``, ...). Every variant gets
its own inductor cache directory, empty at the start: round 1 is what a first run on a new
machine gets (torch.compile generates and builds its C++ code), later rounds what every
further run gets (the compiled code comes from the on-disk cache).

Example (the before/after table of docs/performance.md; the dataset must be in the cache):

    git worktree add /tmp/before cb423da
    python benchmarks/end_to_end.py --algo iql --total_steps 20000 \\
        --variant before=/tmp/before/src: --variant default=.: --rounds 2

Phase II fine-tuning from a finished Phase I run (docs/performance.md, "Phase II"):

    python benchmarks/end_to_end.py --command finetune --from results/iql__gen-hopper-medium-v0__k0__noise0__s0 \
        --online_steps 10000 --variant eager=.:'--compile off' --variant compiled=.:'--compile on' --rounds 2

A from-scratch method (SAC, RLPD) on a dataset's environment:

    python benchmarks/end_to_end.py --command finetune --from scratch --env gen-hopper-medium-v0 --method sac \
        --online_steps 6000 --variant eager=.:'--compile off --warmup_steps 1000 --eval_every 3000 --eval_episodes 5' \
        --variant compiled=.:'--compile on --warmup_steps 1000 --eval_every 3000 --eval_episodes 5' --rounds 2

Measure on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_SRC = Path(__file__).resolve().parents[1] / "src"


def parse_variant(text: str) -> tuple[str, Path, list[str]]:
    label, _, rest = text.partition("=")
    src, _, flags = rest.partition(":")
    if not label or not src:
        raise SystemExit(f"--variant wants LABEL=SRC:FLAGS, got {text!r}")
    return label, (REPO_SRC if src == "." else Path(src).resolve()), shlex.split(flags)


def run_once(src: Path, flags: list[str], args: argparse.Namespace, inductor_cache: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="e2e_") as scratch:
        env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg", "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}
        if args.command == "train":
            what = ["train", "--algo", args.algo, "--env", args.env, "--total_steps", str(args.total_steps)]
        else:
            parent = ["scratch", "--env", args.env] if args.parent == "scratch" else [str(Path(args.parent).resolve())]
            what = ["finetune", "--from", *parent, "--method", args.method, "--online_steps", str(args.online_steps)]
        command = [sys.executable, "-m", "hybrid_rl.cli", *what, "--seed", "0", "--results", str(Path(scratch) / "results"), *flags]
        if args.threads:
            command += ["--threads", str(args.threads)]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", choices=("train", "finetune"), default="train")
    parser.add_argument("--from", dest="parent", default=None, help="with --command finetune: the finished Phase I run to fine-tune, or scratch (with --env)")
    parser.add_argument("--method", default="iql", help="with --command finetune")
    parser.add_argument("--online_steps", type=int, default=10_000, help="with --command finetune")
    parser.add_argument("--algo", default="iql")
    parser.add_argument("--env", default="gen-hopper-medium-v0")
    parser.add_argument("--total_steps", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=None, help="--threads of hybrid-rl train (default: its own default)")
    parser.add_argument("--variant", action="append", required=True, help="LABEL=SRC:FLAGS (repeatable; the first is the baseline)")
    parser.add_argument("--rounds", type=int, default=2, help="round 1 with empty inductor caches, the rest warm (default 2)")
    args = parser.parse_args()
    if args.command == "finetune" and not args.parent:
        parser.error("--command finetune needs --from RESULTS/RUN_ID")
    variants = [parse_variant(text) for text in args.variant]
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="e2e_inductor_") as caches:
        for round_index in range(args.rounds):
            for label, src, flags in variants:
                times[label].append(run_once(src, flags, args, Path(caches) / label))
                print(f"round {round_index + 1} {label}: {times[label][-1]:.1f} s", flush=True)
    baseline = variants[0][0]
    what = (f"train --algo {args.algo} --env {args.env} --total_steps {args.total_steps}" if args.command == "train"
            else f"finetune --from {Path(args.parent).name} --method {args.method} --online_steps {args.online_steps}")
    print(f"\nhybrid-rl {what}" + (f" --threads {args.threads}" if args.threads else "") + f", {args.rounds} round(s)")
    print(f"| variant | flags | round 1, cold cache (s) | x {baseline} | later rounds, warm cache (s) | x {baseline} |")
    print("|---|---|---|---|---|---|")
    for label, src, flags in variants:
        cold, warm = times[label][0], times[label][1:]
        warm_cells = "n/a | n/a"
        if warm:
            ratios = [b / t for b, t in zip(times[baseline][1:], warm)]
            warm_cells = f"{', '.join(f'{t:.1f}' for t in warm)} | {statistics.median(ratios):.2f}"
        print(f"| {label} | {shlex.join(flags) or '(defaults)'} | {cold:.1f} | {times[baseline][0] / cold:.2f} | {warm_cells} |")


if __name__ == "__main__":
    main()
