#!/usr/bin/env bash
# GPU checks in one go, for an NVIDIA machine (the CI machines have none, so these tests skip there):
#   - the OpenGL renderer EGL gives (NVIDIA, not llvmpipe);
#   - the GPU-only tests (TensorRT FP16 engine vs torch within 1e-2 mm, torch on CUDA) and the render tests
#     (GLSL blend vs the numpy reference; on a GPU the vertex-shader blendshape path and MSAA 4× are the defaults);
#   - bench_precompute at 512² and 1024² per backend (docs/design.md §9: TensorRT 20 × 1024² ≤ 1 s);
#   - bench_render at 512² and 1024² with the shipped identity (docs/design.md §9: 1024² ≥ 240 fps on a GPU);
#   - the engine's own `bench` command where MediaPipe is installed.
# Usage: tools/gpu_check.sh [OUT_DIR]    (results: OUT_DIR/gpu_check.json, OUT_DIR/pytest.log; default ./gpu_check_out)
# PY picks the interpreter (default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi unavailable"
"$PY" - <<'PY'
import importlib.util, numpy, torch
print("numpy", numpy.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("tensorrt", "onnxruntime", "mediapipe", "moderngl"):
    spec = importlib.util.find_spec(name)
    print(name, "not installed" if spec is None else __import__(name).__version__)
from engine.render.context import create_context
ctx = create_context()
print("OpenGL", ctx.info["GL_VERSION"], "on", ctx.info["GL_RENDERER"])
PY

echo "== GPU and render tests"
timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_detail_backends.py tests/test_detail_precompute.py \
  tests/test_render.py tests/test_render_detail.py tests/test_render_gaze.py tests/test_render_process.py 2>&1 | tee "$OUT/pytest.log" || status=1

echo "== detail precompute and render benchmarks"
timeout 300 "$PY" - "$OUT" <<'PY' || status=1
import json, sys
import os
from engine.detail.bench import bench_precompute
from engine.face_model import FaceModel
from engine.identity import DEFAULT_IDENTITY_DIR, load_bundle
from engine.render.bench import bench_render

def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value

results = {"precompute": {}, "render": {}}
with open(f"{sys.argv[1]}/gpu_check.json", "w") as fh:
    for n in [int(v) for v in os.environ.get("PRECOMPUTE_SIZES", "512 1024").split()]:
        results["precompute"][str(n)] = rounded(bench_precompute(n))
        print("precompute", n, results["precompute"][str(n)], flush=True)
    model = FaceModel.load()
    identity = load_bundle(DEFAULT_IDENTITY_DIR, model)  # the shipped default identity
    for n in (512, 1024):
        results["render"][str(n)] = rounded(bench_render(n, frames=int(os.environ.get("FRAMES", "120")), model=model, identity=identity))
        print("render", n, json.dumps(results["render"][str(n)]), flush=True)
    # Readback: the present pass (GPU flip + un-premultiply) against the numpy path, same frames.
    import time
    import numpy as np
    from engine.config import RenderConfig
    from engine.render.bench import performance_states
    from engine.render.renderer import AvatarRenderer
    states = performance_states(60)
    for n in (512, 1024):
        for present in (False, True):
            with AvatarRenderer(model, identity, RenderConfig(width=n, height=n), gpu_present=present) as r:
                ms = []
                with r.context:
                    for state in states:
                        r.upload(state)
                        r.draw()
                        r.context.finish()
                        t0 = time.perf_counter()
                        r.read()
                        ms.append((time.perf_counter() - t0) * 1e3)
            results["render"][f"read_{n}_{'present' if present else 'numpy'}_ms_p50"] = round(float(np.median(ms)), 3)
    print("readback", {k: v for k, v in results["render"].items() if k.startswith("read_")}, flush=True)
    json.dump(results, fh, indent=1)
PY

if "$PY" -c "import mediapipe" 2>/dev/null; then
  echo "== engine bench"
  "$PY" run_engine.py bench --json "$OUT/bench.json" || status=$?
fi
exit $status
