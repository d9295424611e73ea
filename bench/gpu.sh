#!/usr/bin/env bash
# GPU benchmark of the paper's AV-MNIST ResNet-18 model: a thin wrapper around bench/gpu.py.
#
#   bench/gpu.sh [--allow-cpu] [--budget SECONDS] [-- ARGS FOR bench/gpu.py]
#
# Checks for a CUDA device (nvidia-smi, then torch.cuda.is_available()), prints the GPU's name,
# and runs `python bench/gpu.py` under a total time budget (default 420 s; gpu.py gets a soft
# budget 60 s shorter, so it skips later sections rather than being killed). Results: a table on
# stdout, gpu.json / gpu.md (and gpu.log) under $OUT if set, else bench/out/.
# Without CUDA it exits 2 with a one-line message, unless --allow-cpu (then gpu.py runs with
# --device cpu; add `-- --quick` for the tiny smoke-test sizes).
#
# Python: $BENCH_PYTHON if set; else the first of .venv/bin/python and python3 that imports torch,
# numpy, pandas, yaml and tqdm (msam_lab is imported from this checkout, no install needed); else
# `make install` (needs the network or a pip cache) and .venv/bin/python.
set -u
cd "$(dirname "$0")/.." || exit 1

allow_cpu=0
budget=${GPU_BENCH_BUDGET:-420}
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --allow-cpu) allow_cpu=1 ;;
        --budget) budget=${2:?--budget needs seconds}; shift ;;
        --budget=*) budget=${1#--budget=} ;;
        --) shift; args+=("$@"); break ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done

has_deps() { "$1" -c 'import torch, numpy, pandas, yaml, tqdm' >/dev/null 2>&1; }

py=${BENCH_PYTHON:-}
if [ -z "$py" ]; then
    for candidate in .venv/bin/python python3; do
        if command -v "$candidate" >/dev/null 2>&1 && has_deps "$candidate"; then py=$candidate; break; fi
    done
fi
if [ -z "$py" ]; then
    echo "bench/gpu.sh: no python with torch found; trying make install" >&2
    timeout 300 make install >&2 && py=.venv/bin/python
    if [ -z "$py" ] || ! has_deps "$py"; then
        echo "bench/gpu.sh: no python with torch, numpy, pandas, yaml and tqdm (make install failed); set BENCH_PYTHON" >&2
        exit 3
    fi
fi

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/# nvidia-smi: /'
fi
if cuda=$("$py" -c 'import sys, torch
ok = torch.cuda.is_available()
print(torch.cuda.get_device_name(0) if ok else "")
sys.exit(0 if ok else 1)' 2>/dev/null); then
    echo "# GPU: $cuda (python: $py)"
    device=()
elif [ "$allow_cpu" = 1 ]; then
    echo "# no CUDA device: running on the CPU (--allow-cpu; python: $py)"
    device=(--device cpu)
else
    echo "bench/gpu.sh: no CUDA device (torch.cuda.is_available() is False for $py); pass --allow-cpu to run on the CPU" >&2
    exit 2
fi

out=${OUT:-bench/out}
mkdir -p "$out"
soft=$(( budget > 120 ? budget - 60 : budget * 3 / 4 ))
set -o pipefail
PYTHONUNBUFFERED=1 timeout -k 10 "$budget" "$py" bench/gpu.py ${device[@]+"${device[@]}"} --budget "$soft" --out "$out" \
    ${args[@]+"${args[@]}"} 2>&1 | tee "$out/gpu.log"
rc=$?
[ "$rc" = 124 ] && echo "bench/gpu.sh: bench/gpu.py ran past the ${budget} s budget; partial results in $out" >&2

# Every ratio target of docs/benchmarks.md on this device (bench/suite.py): its GPU rows are read from the
# gpu.json just written, and it adds the sync counts under torch.cuda.set_sync_debug_mode.
suite=(--device "${device[1]:-cuda}" --gpu-json "$out/gpu.json" --json "$out/suite.json")
case " ${args[*]-} " in *" --quick "*) suite+=(--quick) ;; esac
echo "# the benchmark suite (bench/suite.py ${suite[*]})"
PYTHONUNBUFFERED=1 timeout -k 10 "${SUITE_BENCH_BUDGET:-600}" "$py" bench/suite.py "${suite[@]}" 2>&1 \
    | tee "$out/suite.md" || rc=1

# Several GPUs: data-parallel scaling (issue 12), one rank per GPU over NCCL, 64 samples per GPU,
# with per-rank BatchNorm and with sync_bn; target: efficiency >= 0.9 per added GPU.
gpus=$("$py" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
if [ "${gpus:-0}" -ge 2 ]; then
    counts=$(seq -s, 1 "$gpus")
    echo "# data-parallel scaling over $gpus GPUs (bench/ddp_scaling.py)"
    for bn in "" "--sync-bn"; do
        OUT="$out" timeout -k 10 "${DDP_BENCH_BUDGET:-300}" "$py" bench/ddp_scaling.py --device cuda \
            --nproc "$counts" --per-device-batch 64 --steps 20 --repeats 3 --methods joint,msam $bn \
            2>&1 | tee -a "$out/gpu.log" || rc=1
    done
else
    echo "# one GPU: no data-parallel scaling section (bench/ddp_scaling.py needs 2 or more)"
fi
exit "$rc"
