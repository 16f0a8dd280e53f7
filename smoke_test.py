#!/usr/bin/env python
"""End-to-end smoke test, offline, a few minutes at most on 2 CPU cores.

A small generated hopper-medium dataset, IQL and CQL, two corruption levels (k = 0 and
30%), a few hundred steps each, then the report: every run must complete, the tables and
figures must exist. Exits non-zero on any failure.

    python smoke_test.py [--results DIR] [--plots DIR] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=None, help="results directory (default: a fresh temporary one)")
    parser.add_argument("--plots", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dataset", default="gen-hopper-medium-v0@20000")
    args = parser.parse_args()

    from hybrid_rl.eval.report import build_report
    from hybrid_rl.grid import GridSpec, run_grid

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="hybrid_rl_smoke_"))
    results = Path(args.results or workdir / "results")
    plots = Path(args.plots or workdir / "plots")
    spec = GridSpec(
        algos=("iql", "cql"), datasets=(args.dataset,), remove_top_k=(0.0, 30.0), seeds=(0,),
        total_steps=args.steps, eval_every=args.steps // 2, eval_episodes=2, log_every=max(1, args.steps // 10),
        device="cpu", results_dir=str(results),
    )
    status = run_grid(spec, workers=1, progress=False)
    problems = [f"run {run_id} failed: {error}" for run_id, error in status["failed"].items()]
    for config in spec.expand():
        summary_path = results / config.run_id / "summary.json"
        if not summary_path.exists():
            problems.append(f"{summary_path} missing")
            continue
        summary = json.loads(summary_path.read_text())
        if summary["status"] != "completed":
            problems.append(f"{config.run_id}: status {summary['status']}")
        metrics = [json.loads(line) for line in (results / config.run_id / "metrics.jsonl").read_text().splitlines()]
        if not any(m["kind"] == "eval" for m in metrics) or not any(m["kind"] == "train" for m in metrics):
            problems.append(f"{config.run_id}: metrics.jsonl lacks eval or train records")
    written = build_report(str(results), str(plots))
    for name in ("summary.md", "summary.csv"):
        if not (results / name).exists():
            problems.append(f"{results / name} missing")
    figures = [Path(p) for p in written.get("figures", [])]
    if len([p for p in figures if p.suffix == ".png"]) < 4:
        problems.append(f"expected at least 4 PNG figures, got {[p.name for p in figures]}")
    for figure in figures:
        if not figure.exists() or figure.stat().st_size < 2_000:
            problems.append(f"figure {figure} missing or empty")
    elapsed = time.time() - started
    if problems:
        print("SMOKE TEST FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"smoke test passed in {elapsed:.0f} s: {len(spec.expand())} runs, {len(figures)} figure files, tables in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
