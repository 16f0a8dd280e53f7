#!/usr/bin/env python
"""End-to-end smoke test, offline, a few minutes at most on 2 CPU cores.

Through the same command line as ``run_phase1.py``: a small generated hopper-medium
dataset, IQL and CQL, two corruption levels (k = 0 and 30%), a few hundred steps each, on
the default local workers; then the report. Every run must complete with train and eval
records, summary.md and summary.csv must hold a finite score for every (algorithm,
corruption level), and every figure kind must exist as a readable, non-blank PNG and a
PDF. Exits non-zero on any failure.

    python smoke_test.py [--results DIR] [--plots DIR] [--steps N]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ALGOS = ("iql", "cql")
LEVELS = {"0": "clean", "30": "k=30%"}
FIGURE_KINDS = ("learning_curves", "q_values", "critic_loss_variance", "corruption")


def main() -> int:
    from hybrid_rl.core.grid_options import DEFAULT_DATASET

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=None, help="results directory (default: a fresh temporary one)")
    parser.add_argument("--plots", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dataset", default=f"{DEFAULT_DATASET}@20000")
    args = parser.parse_args()

    from hybrid_rl.cli import phase1_main
    from hybrid_rl.studies.grid import GridSpec

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="hybrid_rl_smoke_"))
    results = Path(args.results or workdir / "results")
    plots = Path(args.plots or workdir / "plots")
    code = phase1_main([
        "--algo", ",".join(ALGOS), "--env", args.dataset, "--remove_top_k", ",".join(LEVELS), "--seed", "0",
        "--total_steps", str(args.steps), "--eval_every", str(max(1, args.steps // 2)), "--eval_episodes", "2",
        "--results", str(results), "--plots", str(plots),
    ])
    problems = [f"run_phase1 exited with {code}"] if code != 0 else []
    spec = GridSpec(algos=ALGOS, datasets=(args.dataset,), remove_top_k=tuple(float(k) for k in LEVELS), seeds=(0,), total_steps=args.steps)
    problems += check_runs(results, [config.run_id for config in spec.expand()])
    problems += check_tables(results, args.dataset)
    problems += check_figures(plots)
    elapsed = time.time() - started
    if problems:
        print("SMOKE TEST FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"smoke test passed in {elapsed:.0f} s: {len(spec.expand())} runs, tables in {results}, figures in {plots}")
    return 0


def check_runs(results: Path, run_ids: list[str]) -> list[str]:
    problems = []
    for run_id in run_ids:
        summary_path = results / run_id / "summary.json"
        if not summary_path.exists():
            problems.append(f"{summary_path} missing")
            continue
        summary = json.loads(summary_path.read_text())
        if summary["status"] != "completed":
            problems.append(f"{run_id}: status {summary['status']}")
        metrics = [json.loads(line) for line in (results / run_id / "metrics.jsonl").read_text().splitlines()]
        if not any(m["kind"] == "eval" for m in metrics) or not any(m["kind"] == "train" for m in metrics):
            problems.append(f"{run_id}: metrics.jsonl lacks eval or train records")
    return problems


def check_tables(results: Path, dataset: str) -> list[str]:
    problems = []
    markdown = results / "summary.md"
    text = markdown.read_text() if markdown.exists() else ""
    if dataset not in text or not all(algo in text.lower() for algo in ALGOS):
        problems.append(f"{markdown} is missing or does not mention {dataset} and {', '.join(ALGOS)}")
    table = results / "summary.csv"
    rows = list(csv.DictReader(table.open())) if table.exists() else []
    for algo in ALGOS:
        for level in LEVELS.values():
            row = [r for r in rows if r["dataset"] == dataset and r["algo"] == algo and r["corruption"] == level]
            score = float(row[0]["final_mean"]) if row and row[0]["final_mean"] else math.nan
            if len(row) != 1 or not math.isfinite(score) or row[0]["n_seeds"] != "1":
                problems.append(f"{table}: no single row with a finite final_mean and n_seeds 1 for {algo} {level}")
    return problems


def check_figures(plots: Path) -> list[str]:
    from matplotlib import image

    problems = []
    for kind in FIGURE_KINDS:
        pngs = sorted(plots.glob(f"{kind}__*.png"))
        if not pngs:
            problems.append(f"no {kind} figure in {plots}")
        for png in pngs:
            pixels = image.imread(png)
            if pixels.ndim != 3 or min(pixels.shape[:2]) < 200 or float(pixels.std()) < 0.01:
                problems.append(f"{png} is not a readable, non-blank image")
            if not png.with_suffix(".pdf").exists() or png.with_suffix(".pdf").stat().st_size < 2_000:
                problems.append(f"{png.with_suffix('.pdf')} missing or empty")
    return problems


if __name__ == "__main__":
    sys.exit(main())
