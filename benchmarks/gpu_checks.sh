#!/usr/bin/env bash
# Checks that only a CUDA machine can run, in one short script (about 6 minutes on an H200,
# plus the reduced grid): the tests that skip without a GPU, the update throughput of single
# runs and populations (eager, vmapped, compiled with CUDA graphs), small Phase II studies on
# the GPU (CQL parents and fine-tuning as populations of 8; Cal-QL and RLPD populations), and
# a reduced Phase I grid end to end (its grid_status.json holds the wall time). Run it from
# anywhere on a GPU machine:
#
#     bash benchmarks/gpu_checks.sh
#
# Each stage has its own time limit, so one slow stage cannot starve the rest; the script
# exits non-zero if no CUDA device is visible, if any stage failed or ran out of time, or if
# a CUDA test was skipped anyway. Python: $PYTHON, else .venv/ when the checkout has one,
# else `python` or `python3` on PATH (hybrid-rl and its test extras must import; a checkout
# without an install works with PYTHONPATH=src). With $OUT set, the log, the throughput
# rows and the recovery tables are also written there.
#
# CUDA-only tests (grep -n cuda tests/*.py):
#   tests/test_population.py::test_train_step_makes_no_cuda_sync  (skipif no CUDA)
#   tests/test_population.py::test_train_step_makes_no_host_sync  (its CPU counterpart, run alongside)
#   tests/test_train.py::test_device_resolution                    (cuda / cuda:0 resolve only on a GPU)
#   tests/test_finetune_population.py::test_a_fine_tuning_population_equals_its_single_runs[cuda]
#       (Phase II: a fine-tuning population on the GPU equals its single GPU runs)
#   tests/test_population.py::test_compiled_iql_population_equals_eager[cuda]
#       (the compiled step with CUDA graphs equals the eager vmapped step)
set -uo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
PY="${PYTHON:-$(command -v python || command -v python3)}"
out="${OUT:-$(mktemp -d)}"
log="$out/gpu_checks.log"
work="$(mktemp -d)"
failed=()

say() { printf '\n=== %s\n' "$*" | tee -a "$log"; }

# stage SECONDS NAME COMMAND...: run COMMAND with a time limit, log it, note a failure.
stage() {
    local limit="$1" name="$2"
    shift 2
    say "$name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "--- $name: exit $rc after $((SECONDS - start))s" | tee -a "$log"
    [[ $rc -eq 0 ]] || failed+=("$name (exit $rc)")
}

say "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
"$PY" -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)' 2>&1 | tee -a "$log"
if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
    echo "error: torch sees no CUDA device; these checks need one" >&2
    exit 1
fi

stage 120 "CUDA-only tests" "$PY" -m pytest -q -rs -p no:cacheprovider \
    "tests/test_population.py::test_train_step_makes_no_cuda_sync" "tests/test_population.py::test_train_step_makes_no_host_sync" \
    "tests/test_train.py::test_device_resolution" "tests/test_finetune_population.py::test_a_fine_tuning_population_equals_its_single_runs" \
    "tests/test_population.py::test_compiled_iql_population_equals_eager"
if grep -q "SKIPPED.*CUDA" "$log"; then
    failed+=("a CUDA test was skipped on a machine that has a GPU (see the SKIPPED lines)")
fi

# Eager and vmapped first (no compilation, seconds each), then IQL's compiled step at the two
# sizes that decide `--compile auto` on a GPU: a single run and a population of 8 (CQL's
# compilation takes minutes; it is left to a longer lease).
stage 60 "throughput, eager and vmapped" "$PY" benchmarks/throughput.py --algo iql,cql --device cuda --population 1,8,32 \
    --modes eager,vmap --steps 100 --warmup 10 --repeats 2 --json "$out/throughput.json"
stage 150 "throughput, compiled (CUDA graphs)" "$PY" benchmarks/throughput.py --algo iql --device cuda --population 1,8 \
    --modes eager,compiled --steps 100 --warmup 10 --repeats 2 --json "$out/throughput_compiled.json"
# Inductor without CUDA graphs: if the CUDA-graph step fails to compile (torch 2.11 on an
# H200 did), this says whether the failure is in the graph capture or in inductor itself.
stage 90 "throughput, compiled without CUDA graphs" "$PY" benchmarks/throughput.py --algo iql --device cuda --population 8 \
    --modes eager,compiled --compile-mode default --steps 100 --warmup 10 --repeats 2 \
    --json "$out/throughput_compiled_nocg.json"

# Phase II on the GPU: 4 seeds x 2 corruption levels of CQL parents, then their cql
# fine-tuning, each as one population of 8 (a budget to see it work and time it, not scores).
study="$work/cql"
stage 140 "Phase II CQL study as populations of 8" "$PY" run_phase2.py --method cql --env gen-hopper-medium-v0@100000 --seed 0,1,2,3 \
    --total_steps 3000 --online_steps 1500 --eval_every 750 --eval_episodes 5 --utd 1 --device cuda --population on \
    --results "$study/results" --results_phase2 "$study/results_phase2" --plots "$study/plots" --cache_dir "$work/datasets"
if ! grep -qs '"size": 8' "$study"/results_phase2/*/config.json; then
    failed+=("the CQL fine-tuning runs did not train as one population of 8")
fi
cp "$study/results_phase2/recovery.md" "$out/phase2_cql_recovery.md" 2>/dev/null

# Cal-QL as a population of 4 (2 seeds x 2 levels); RLPD from scratch as a population of 4
# at its own UTD of 20 (the setting a GPU is for).
study="$work/calql"
stage 60 "Phase II Cal-QL study as populations of 4" "$PY" run_phase2.py --method calql --env gen-hopper-medium-v0@100000 --seed 0,1 \
    --total_steps 1000 --online_steps 1000 --eval_every 500 --eval_episodes 3 --device cuda --population on \
    --results "$study/results" --results_phase2 "$study/results_phase2" --plots "$study/plots" --cache_dir "$work/datasets"
cp "$study/results_phase2/recovery.md" "$out/phase2_calql_recovery.md" 2>/dev/null
study="$work/rlpd"
stage 60 "Phase II RLPD study as a population of 4" "$PY" run_phase2.py --method rlpd --env gen-hopper-medium-v0@100000 --seed 0,1 \
    --online_steps 500 --warmup_steps 100 --eval_every 500 --eval_episodes 3 --device cuda --population on \
    --results "$study/results" --results_phase2 "$study/results_phase2" --plots "$study/plots" --cache_dir "$work/datasets"

# A reduced Phase I grid end to end (IQL and CQL x 3 levels x 3 seeds = 18 runs as two
# populations of 9, 1,000 steps, evaluations included): the wall time a grid gets on this GPU,
# beside the throughput table's update-only "grid (h)" estimate of the full 500k-step grid.
grid="$work/grid"
stage 120 "reduced Phase I grid end to end (populations of 9)" "$PY" run_phase1.py --algo iql,cql --env gen-hopper-medium-v0@100000 \
    --seed 0,1,2 --remove_top_k 0,30,60 --total_steps 1000 --eval_every 500 --eval_episodes 5 --device cuda --population on \
    --results "$grid/results" --plots "$grid/plots" --cache_dir "$work/datasets"
cp "$grid/results/grid_status.json" "$out/reduced_grid_status.json" 2>/dev/null

# Every run's config, metrics and summary (wall time, scores), without checkpoints and data.
tar czf "$out/runs.tgz" -C "$work" --exclude=checkpoint.pt --exclude='*.pt' --exclude=datasets . 2>/dev/null
rm -rf "$work"
if [[ ${#failed[@]} -gt 0 ]]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "all GPU checks passed"
