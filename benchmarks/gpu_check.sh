#!/usr/bin/env bash
# One device run: the CUDA tests and the training-loop benchmark on real CUDA streams
# (issue 13's GPU item), prepared on the CPU machine and run once on a GPU machine.
#
# Here (the CPU machine, which has Rust):
#     make build && .venv/bin/maturin build --release -q -o target/wheels
# There (the device tool's `run`, carry ["target/wheels"], timeout_s 590; the machine has
# Python 3.12 with torch, pytest and numpy, no Rust, no network):
#     bash benchmarks/gpu_check.sh
# A dry run here (virtual streams, emulated CUDA; checks the script, not the GPU):
#     PY=.venv/bin/python OUT=/tmp/gpu-out bash benchmarks/gpu_check.sh
#
# Each step is time-boxed so that the whole fits one call of under 10 minutes; every log
# goes to $OUT, so what ran comes back even if a step is cut off.
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-check}
SITE=${SITE:-/tmp/esper-site}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# 1. The carried abi3 wheel, installed beside the machine's packages (no index).
wheel=$(ls target/wheels/esper_lifetimes-*-abi3-*.whl 2>/dev/null | tail -n 1)
if [ -z "$wheel" ]; then
    echo "no wheel in target/wheels: build it here first (see the top of this script)"
    exit 2
fi
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$wheel" || exit 2
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# 2. The machine.
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    "$PY" -c "import sys, torch, esper_lifetimes as el; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('esper_lifetimes', el.__file__)"
} 2>&1 | tee "$OUT/machine.txt"

# 3. The CUDA tests on the device (`-m cuda`; test_reports needs jsonschema, which the
#    device machine lacks, and has no CUDA test).
timeout 220 "$PY" -m pytest -q -m cuda -p no:cacheprovider --ignore=tests/test_reports.py \
    tests 2>&1 | tee "$OUT/pytest-cuda.log"
echo "pytest -m cuda: exit ${PIPESTATUS[0]}" | tee -a "$OUT/machine.txt"

# 4. The training loop on CUDA streams: untracked, always-on (default sample), full
#    tracking; step times are wall time on CUDA (the benchmark's own choice).
timeout 160 "$PY" benchmarks/bench_training_loop.py --no-ablation --rounds 31 --block 25 \
    --skip detect,false,memory 2>&1 | tee "$OUT/training-loop.log"
echo "bench_training_loop: exit ${PIPESTATUS[0]}" | tee -a "$OUT/machine.txt"

# 5. Last, so that a short budget cuts these first: the CPU-time figures that the shared
#    2-core VM cannot settle (its runs spread by more than the 2% and 1.25x targets), on
#    this machine's quieter cores: the same loop on virtual streams (always-on's step
#    overhead) and full tracking's overhead per op against a stock no-op mode.
timeout 75 "$PY" benchmarks/bench_training_loop.py --cpu --no-ablation --rounds 41 \
    --skip detect,false,memory 2>&1 | tee "$OUT/training-loop-cpu.log"
echo "bench_training_loop --cpu: exit ${PIPESTATUS[0]}" | tee -a "$OUT/machine.txt"
timeout 90 "$PY" benchmarks/bench_tracking.py --repeats 15 2>&1 | tee "$OUT/tracking-cpu.log"
echo "bench_tracking: exit ${PIPESTATUS[0]}" | tee -a "$OUT/machine.txt"
