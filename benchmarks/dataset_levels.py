"""The table of generated levels in docs/datasets.md ("Generated data measured").

Generates each requested ``gen-ROBOT-LEVEL-VERSION`` level from scratch into a temporary
directory (what ``hybrid-rl dataset make NAME --force`` does), timing each, and prints one
markdown row per level as it finishes: transitions, episodes, trajectory return mean and
std, D4RL-normalized score of the mean, generation time and transitions per second.
Nothing is kept: the files are deleted with the temporary directory.

    python benchmarks/dataset_levels.py --version v0                  # 15 levels, about 80 min on the 2-core machine
    python benchmarks/dataset_levels.py --version v1 --robots hopper  # 5 levels
    python benchmarks/dataset_levels.py --version v0 --size 20k       # a quick look, not the table

Generation runs in one process and one thread; the times are meaningful only on an
otherwise idle machine, and the script says so in its output when other tasks are running.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import other_running_tasks  # noqa: E402

from hybrid_rl.data import factory  # noqa: E402
from hybrid_rl.data.hdf5io import read_hdf5  # noqa: E402

HEADER = "| dataset | transitions | episodes | return (mean +- std) | normalized | generation time | transitions/s |\n|---|---|---|---|---|---|---|"


def level_row(name: str, out_dir: Path) -> str:
    """Generate `name` into out_dir and describe it as one markdown table row."""
    started = time.perf_counter()
    path = factory.make_generated(name, cache_dir=out_dir, force=True, progress=False)
    elapsed = time.perf_counter() - started
    meta = read_hdf5(path).metadata
    path.unlink()
    return (f"| {name} | {meta['size']:,} | {meta['episodes']:,} | {meta['return_mean']:.0f} +- {meta['return_std']:.0f} "
            f"| {meta['normalized_score_mean']:.1f} | {elapsed:.0f} s | {meta['size'] / elapsed:,.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=factory.POLICY_VERSIONS, default=factory.DEFAULT_POLICY_VERSION)
    parser.add_argument("--robots", default=",".join(factory.FACTORY_ROBOTS), help="comma-separated (default: all)")
    parser.add_argument("--levels", default=",".join(factory.LEVELS), help="comma-separated (default: all five)")
    parser.add_argument("--size", default=None, help="transitions per level instead of the recipe's (e.g. 20k): a quick look")
    args = parser.parse_args(argv)
    names = [f"gen-{robot}-{level}-{args.version}" + ("" if args.size is None else f"@{args.size}")
             for robot in args.robots.split(",") for level in args.levels.split(",")]
    try:  # a bad robot, level or size, or a version not shipped, fails here before any work
        for name in names:
            gid = factory.parse_generated_id(name)
            if gid.level != "random" and not factory.policy_path(gid.robot, gid.version).exists():
                raise factory.GeneratedDatasetError(f"{gid.robot}'s {gid.version} behaviour policies are not shipped: see `hybrid-rl dataset list`")
    except factory.GeneratedDatasetError as exc:
        parser.error(str(exc))
    others = other_running_tasks()
    if others:
        print(f"warning: {others} other task(s) running: the generation times below are upper bounds")
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="dataset_levels_") as tmp:
        for name in names:
            print(level_row(name, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
