#!/usr/bin/env bash
# The GPU checks of paramshape, in one script for a machine with a CUDA device (about 8 minutes).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh      # from the repository root
#
# Steps, each bounded by `timeout` and none fatal to the others (the summary says which failed):
#   0. the machine: nvidia-smi, torch and CUDA versions, the CPU model;
#   1. set-up: installs the test extra's tools (-c constraints.txt) only when pytest or hypothesis
#      is missing, leaving the machine's torch alone;
#   2. the CUDA-parametrized tests, fast ones (`-m "not slow" -k cuda`): fusion dispatch, the
#      hand-fused Box, no host sync in a constrained step, and every test another branch
#      parametrizes over the `device` fixture of conftest.py;
#   3. the slow CUDA tests (the fused kernels through inductor, i.e. Triton, against eager);
#   4. benchmarks/run.py --device cuda --quick: the small model, the 3 x Linear(512) step, the size
#      sweep, Orthogonal on a 30000 x 50 weight (time and peak memory), registration and the fused
#      Box over 1M values, with the GPU's name in the results;
#   5. the same on the CPU of that machine (--quick), for the CPU figures of a second machine.
# Everything goes to $OUT (default: ./gpu_check_out): one log per step, the JSON of each benchmark,
# and summary.txt.
set -u
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record the exit status
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/$name.log"
    timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    local status=$?
    local verdict="ok"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then verdict="TIMED OUT"; elif [ "$status" -ne 0 ]; then verdict="FAILED ($status)"; fi
    echo "$name: $verdict in $((SECONDS - start)) s" | tee -a "$SUMMARY"
    tail -n 3 "$OUT/$name.log" | sed 's/^/    /' >>"$SUMMARY"
}

step 0-machine 60 bash -c "nvidia-smi; grep -m1 'model name' /proc/cpuinfo; nproc; $PYTHON -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'"

if ! $PYTHON -c "import pytest, hypothesis" >/dev/null 2>&1; then
    # The test extra's tools only: `-e ".[test]"` would also resolve torch against the CPU pin of
    # constraints.txt and replace the machine's CUDA build. paramshape itself comes from PYTHONPATH.
    step 1-setup 240 $PYTHON -m pip install -q -c constraints.txt "pytest>=8" "hypothesis>=6.100"
else
    echo "1-setup: skipped (pytest and hypothesis present)" | tee -a "$SUMMARY"
fi

step 2-cuda-tests 150 $PYTHON -m pytest tests -m "not slow" -k cuda -q -p no:cacheprovider -rs -x --maxfail=10
step 3-cuda-slow-tests 120 $PYTHON -m pytest tests/test_fusion.py -m slow -k cuda -q -p no:cacheprovider -rs
step 4-bench-cuda 150 $PYTHON benchmarks/run.py --device cuda --quick --no-plot \
    --sections transform small mlp sweep orthogonal registration --json "$OUT/run_cuda.json"
step 5-bench-cpu 90 $PYTHON benchmarks/run.py --quick --no-plot --threads 1 \
    --sections small registration --json "$OUT/run_cpu.json"

echo "--- summary" && cat "$SUMMARY"
exit 0
