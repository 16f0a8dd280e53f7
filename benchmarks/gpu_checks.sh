#!/usr/bin/env bash
# Checks that only a CUDA machine can run: the tests that skip without a GPU, then the
# population throughput benchmark on the GPU. Run it from anywhere on a lent GPU machine:
#
#     bash benchmarks/gpu_checks.sh
#
# It fails (non-zero exit) if no CUDA device is visible, if a test fails, or if a CUDA test
# was skipped anyway. Uses .venv/ when the checkout has one, else the `python` on PATH
# (which needs hybrid-rl installed with its test extras). With $OUT set, the benchmark's
# rows are also written to $OUT/throughput.json.
#
# CUDA-only tests (grep -n cuda tests/*.py):
#   tests/test_population.py::test_train_step_makes_no_cuda_sync  (skipif no CUDA)
#   tests/test_population.py::test_train_step_makes_no_host_sync  (its CPU counterpart, run alongside)
#   tests/test_train.py::test_device_resolution                    (cuda / cuda:0 resolve only on a GPU)
#   tests/test_finetune_population.py::test_a_fine_tuning_population_equals_its_single_runs[cuda]
#       (Phase II: a fine-tuning population on the GPU equals its single GPU runs)
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi

say() { printf '\n=== %s\n' "$*"; }

say "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(nvidia-smi not available)"
python -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "error: torch sees no CUDA device; these checks need one" >&2; exit 1; }

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

say "CUDA-only tests: python -m pytest -q -rs tests/test_population.py -k \"cuda or sync\""
python -m pytest -q -rs tests/test_population.py -k "cuda or sync" 2>&1 | tee "$log"

say "CUDA branch of the device resolution: python -m pytest -q -rs tests/test_train.py -k device_resolution"
python -m pytest -q -rs tests/test_train.py -k device_resolution 2>&1 | tee -a "$log"

say "Phase II on the GPU: python -m pytest -q -rs tests/test_finetune_population.py -k equals_its_single_runs"
python -m pytest -q -rs tests/test_finetune_population.py -k equals_its_single_runs 2>&1 | tee -a "$log"

if grep -q "SKIPPED.*CUDA" "$log"; then
    echo "error: a CUDA test was skipped on a machine that has a GPU (see the SKIPPED lines above)" >&2
    exit 1
fi

say "throughput: python benchmarks/throughput.py --algo iql,cql --device cuda --population 1,8,18 --steps 200 --warmup 20"
json_args=()
if [[ -n "${OUT:-}" ]]; then
    json_args=(--json "$OUT/throughput.json")
fi
python benchmarks/throughput.py --algo iql,cql --device cuda --population 1,8,18 --steps 200 --warmup 20 "${json_args[@]}"

say "Phase II study on the GPU: 4 seeds x 2 levels, IQL parents (10k steps) and fine-tuning (5k online steps) as populations of 8"
study="$(mktemp -d)"
time python run_phase2.py --quick --method iql --env gen-hopper-medium-v0@100000 --seed 0,1,2,3 --device cuda --population on \
    --results "$study/results" --results_phase2 "$study/results_phase2" --plots "$study/plots" --cache_dir "$study/datasets"
grep -q '"size": 8' "$study"/results_phase2/*/config.json || { echo "error: the fine-tuning runs did not train as one population" >&2; exit 1; }
if [[ -n "${OUT:-}" ]]; then
    cp "$study/results_phase2/recovery.md" "$OUT/phase2_recovery.md"
fi

say "all GPU checks passed"
