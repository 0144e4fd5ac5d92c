#!/usr/bin/env bash
# The GPU check, prepared to run in one go on a CUDA machine: the device, a short `fedprofile train` (plain and DP),
# a 2-merchant federation (the real ServerApp and ClientApp; Flower's simulation engine when Ray is there, else
# in process) and the serving benchmark, each printing its figures. Elsewhere it runs the same steps on the CPU.
#
#   bench/gpu_check.sh                      # on the machine with the GPU, from the repository root
#   PYTHON=.venv/bin/python bench/gpu_check.sh --fetch-wheels
#                                           # here, first: the project's Python packages the GPU image lacks, at
#                                           # this .venv's versions, as Python 3.12 wheels in .whl/ (about 40 MB;
#                                           # the device tool carries .whl, the check installs it to /tmp/site)
# OUT (default runs/gpu-check) receives every run folder and gpu-check.log; PYTHON (default python3) runs it all;
# IN_PROCESS=1 runs the federation in process even where Ray is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-check}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    # torch, numpy, pandas, scipy, grpcio, protobuf and typer are in the GPU image; these are not (docs/benchmarks.md 7b)
    # the versions this checkout's environment runs (PYTHON: the project's .venv here), so pins hold there too
    names=(flwr opacus cryptography pycryptodome iterators tomli tomli-w pathspec prompt-toolkit wcwidth sqlalchemy
           alembic mako greenlet grpcio-health-checking grpcio-reflection grpcio-tools uv)
    wheels=()
    for name in "${names[@]}"; do
        version=$($PY -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
        [[ -n "$version" ]] || { echo "$name is not installed in $PY's environment: give PYTHON=.venv/bin/python"; exit 1; }
        wheels+=("$name==$version")
    done
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for w in "${wheels[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$w"
    done
    du -sh .whl
    exit 0
fi

mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1

echo "== device"
$PY - <<'EOF'
import platform, torch
from shared_model.device import pick_device
device = pick_device()
name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine()
print(f"device {device} ({name}), torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.get_num_threads()} threads")
EOF

echo "== fedprofile train, built-in shops, 3 epochs: plain, then DP-SGD at epsilon 8"
for mode in --no-dp --dp; do
    $PY -m fedprofile train --out "$OUT/train$mode" --epochs 3 $mode
    $PY - "$OUT/train$mode/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: device {m['device']}, {m['examples_per_second']:.0f} users/s, test NDCG@10 "
      f"{m['ndcg@10']:.4f}, epsilon {m['epsilon']:.3f}")
EOF
done

echo "== 2 merchants, 3 rounds, distributed DP"
if [[ -z "${IN_PROCESS:-}" ]] && $PY -c "import ray" 2>/dev/null; then
    $PY -m fedprofile simulate --merchants 2 --rounds 3 --no-served --out "$OUT/simulate"
else
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
fi

echo "== serving benchmark (12,000 items, 1,000 requests per measurement)"
$PY bench/serving_load.py --items 12000 --requests 1000

echo "== done: $OUT/gpu-check.log"
