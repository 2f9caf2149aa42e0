#!/usr/bin/env bash
# GPU checks in one go, for an NVIDIA machine (the CI machines have none, so these tests skip there):
#   - the GPU-only tests (TensorRT FP16 engine vs torch within 1e-2 mm, torch on CUDA), with skip reasons shown;
#   - bench_precompute at 512² and 1024² per backend (DESIGN §9: TensorRT 20 × 1024² ≤ 1 s);
#   - the engine's own `bench` command when it exists (render 1024² fps and the rest).
# Usage: tools/gpu_check.sh [OUT_DIR]    (results: OUT_DIR/gpu_check.json, default ./gpu_check_out)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi unavailable"
"$PY" - <<'PY'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
spec = importlib.util.find_spec("tensorrt")
if spec is None:
    print("tensorrt: not installed (pip install 'scapecast[gpu]'); TensorRT checks will skip")
else:
    import tensorrt
    print("tensorrt", tensorrt.__version__)
PY

echo "== GPU tests"
status=0
"$PY" -m pytest -q -rs tests/test_detail_backends.py tests/test_detail_precompute.py || status=$?

echo "== detail precompute benchmark"
"$PY" - "$OUT" <<'PY'
import json, sys
from engine.detail.bench import bench_precompute
results = {str(n): bench_precompute(n) for n in (512, 1024)}
for n, r in results.items():
    print(n, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})
with open(f"{sys.argv[1]}/gpu_check.json", "w") as fh:
    json.dump(results, fh, indent=1)
PY

if "$PY" run_engine.py bench --help >/dev/null 2>&1; then
  echo "== engine bench"
  "$PY" run_engine.py bench --json "$OUT/bench.json" || status=$?
fi
exit $status
