#!/usr/bin/env bash
# The GPU check, prepared to run in one go on a CUDA machine: the device, a short `fedprofile train` (plain and DP),
# a 2-merchant federation (the real ServerApp and ClientApp; Flower's simulation engine when Ray is there, else
# in process), the serving benchmark, DP / plain users per second on full windows and on Amazon Beauty (when its
# folder is there), each printing its figures. Elsewhere it runs the same steps on the CPU. A step that fails is
# reported and the others still run; the script exits non-zero if any failed.
#
#   bench/gpu_check.sh                      # on the machine with the GPU, from the repository root
#   PYTHON=.venv/bin/python bench/gpu_check.sh --prepare
#                                           # here, first: the project's Python packages the GPU image lacks, at
#                                           # this .venv's versions, as Python 3.12 wheels in .whl/ (about 35 MB),
#                                           # and ../shared/data/amazon-beauty copied to .gpudata/ (13 MB); the
#                                           # device tool carries .whl and .gpudata, the check installs the wheels
#                                           # to /tmp/site
# OUT (default runs/gpu-check) receives every run folder and gpu-check.log; PYTHON (default python3) runs it all;
# IN_PROCESS=1 runs the federation in process even where Ray is installed; BEAUTY names the Beauty folder (default
# .gpudata/amazon-beauty, else ../shared/data/amazon-beauty; the step is skipped, saying so, where neither is).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-check}

if [[ "${1:-}" == "--prepare" ]]; then
    # torch, numpy, pandas, scipy, scikit-learn, pyarrow, jinja2, typer and anyio are in the GPU image; these are
    # not, or not at versions that fit (grpcio and protobuf: flwr 1.42 and the generated stubs) (docs/benchmarks.md
    # 7b). uv, which flwr installs apps with, is left out: the check runs no SuperLink (17 MB of the 64 carried).
    names=(flwr opacus cryptography cffi pycparser pycryptodome iterators tomli tomli-w pathspec prompt-toolkit wcwidth
           sqlalchemy alembic mako greenlet grpcio protobuf grpcio-health-checking grpcio-reflection grpcio-tools
           fastapi starlette pydantic pydantic-core annotated-types typing-inspection uvicorn python-multipart)
    wheels=()
    for name in "${names[@]}"; do
        version=$($PY -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
        [[ -n "$version" ]] || { echo "$name is not installed in $PY's environment: give PYTHON=.venv/bin/python"; exit 1; }
        wheels+=("$name==$version")
    done
    rm -rf .whl && mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for w in "${wheels[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$w"
    done
    if [[ -d ../shared/data/amazon-beauty ]]; then
        grep -qx '/.gpudata/' .git/info/exclude || echo '/.gpudata/' >> .git/info/exclude
        mkdir -p .gpudata && rm -rf .gpudata/amazon-beauty && cp -r ../shared/data/amazon-beauty .gpudata/
        chmod -R u+w .gpudata
    fi
    du -sh .whl .gpudata 2>/dev/null
    exit 0
fi

mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
if ! $PY -c "import flwr, opacus" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then  # the GPU image lacks them
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1

failed=()
step() {  # step TITLE FUNCTION: run one part, report its failure and go on
    echo "== $1"
    local began=$SECONDS
    if "$2"; then echo "   ($(( SECONDS - began )) s)"; else echo "FAILED: $1"; failed+=("$1"); fi
}

device() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
    $PY - <<'EOF'
import platform, torch
from shared_model.device import pick_device
device = pick_device()
name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine()
print(f"device {device} ({name}), torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.get_num_threads()} threads")
EOF
}

train() {
    local mode
    for mode in --no-dp --dp; do
        $PY -m fedprofile train --out "$OUT/train$mode" --epochs 3 $mode || return 1
        $PY - "$OUT/train$mode/metrics.json" <<'EOF' || return 1
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: device {m['device']}, {m['examples_per_second']:.0f} users/s, test NDCG@10 "
      f"{m['ndcg@10']:.4f}, epsilon {m['epsilon']:.3f}")
EOF
    done
}

federation() {
    if [[ -z "${IN_PROCESS:-}" ]] && $PY -c "import ray" 2>/dev/null; then
        $PY -m fedprofile simulate --merchants 2 --rounds 3 --no-served --out "$OUT/simulate"
        return
    fi
    $PY - "$OUT/federation" <<'EOF'
import sys, time
from client.client_app import app as client_app
from server.coordinator import run_federation
from shared_model.device import pick_device
from shared_model.run_config import RunConfig
from simulations.inprocess import InProcessGrid
run = RunConfig().replace(num_rounds=3, run_dir=sys.argv[1])
started = time.perf_counter()
result = run_federation(InProcessGrid(client_app, 2), run)
print(f"in process (no Ray here), device {pick_device()}: {len(result.history)} rounds in "
      f"{time.perf_counter() - started:.1f} s, NDCG@10 {result.final.get('ndcg@10', float('nan')):.4f}, "
      f"epsilon {max(result.epsilon.values()):.3f}, last round {result.history[-1]['seconds']:.1f} s")
EOF
}

serving() {
    $PY bench/serving_load.py --items 12000 --requests 1000
}

beauty() {
    local folder=${BEAUTY:-}
    if [[ -z "$folder" ]]; then
        for candidate in .gpudata/amazon-beauty ../shared/data/amazon-beauty; do
            if [[ -d "$candidate" ]]; then folder=$candidate; break; fi
        done
    fi
    if [[ -z "$folder" ]]; then
        echo "skipped: no Amazon Beauty folder (set BEAUTY, or run --prepare where ../shared/data is)"
        return 0
    fi
    $PY bench/dp_cost.py --data "$folder" --format amazon --device auto --rounds 1
}

full_windows() {
    $PY bench/dp_cost.py --items 12000 --batch-size 256 --steps 4 --rounds 2 --clipping one-pass two-pass --device auto
}

step "device" device
step "fedprofile train, built-in shops, 3 epochs: plain, then DP-SGD at epsilon 8" train
step "2 merchants, 3 rounds, distributed DP" federation
step "serving benchmark (12,000 items, 1,000 requests per measurement)" serving
step "DP / plain on full windows, one-pass and two-pass clipping side by side (bench/dp_cost.py)" full_windows
step "fedprofile train --epochs 1 on Amazon Beauty with its defaults: plain, then --dp (bench/dp_cost.py)" beauty

echo "== done: $OUT/gpu-check.log${failed[*]:+; failed: ${failed[*]}}"
[[ ${#failed[@]} -eq 0 ]]
