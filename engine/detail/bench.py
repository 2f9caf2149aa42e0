"""Benchmark of the once-per-identity basis run (design §9: 20 × 512² on the CPU ≤ 30 s), for `bench`."""

from __future__ import annotations

import time

import numpy as np

from engine.config import DetailConfig
from engine.detail.backends import Availability, select_backend
from engine.detail.precompute import detail_inputs, make_backend, precompute_bases
from engine.face_model import FaceModel


def bench_precompute(resolution: int = 512, model: FaceModel | None = None) -> dict[str, float | int | str]:
    """Seconds for the 20 bases of the mean identity at `resolution`², per available backend.

    `<backend>_s` is the whole `precompute_bases` call (inputs + network + gradients) with a warm backend;
    `<backend>_load_s` the backend's construction (for TensorRT: engine build or cache load); `inputs_s`
    the rasterization of the 20 deforming maps alone (cold). `seconds` / `backend`: the run `auto` would pick.
    GPU backends are timed only where they exist.
    """
    model = model or FaceModel.load()
    w_id = model.default_identity_weights()
    t0 = time.perf_counter()
    detail_inputs(model, w_id, None, resolution)
    result: dict[str, float | int | str] = {"resolution": resolution, "inputs_s": time.perf_counter() - t0}
    available = Availability.probe()
    chosen = select_backend("auto", available)[0]
    backends = ["onnxruntime", "torch"]
    if available.tensorrt is None:
        backends.insert(0, "tensorrt")
    for name in backends:
        config = DetailConfig(backend=name, resolution=resolution)
        t0 = time.perf_counter()
        backend = make_backend(config, resolution, available)
        result[f"{name}_load_s"] = time.perf_counter() - t0
        device = getattr(backend, "device", "cuda" if name == "tensorrt" else "cpu")
        t0 = time.perf_counter()
        bases = precompute_bases(model, w_id, None, config, progress=False, backend=backend)
        result[f"{name}_s"] = time.perf_counter() - t0
        result[f"{name}_device"] = device
        result[f"{name}_mean_abs_mm"] = float(np.abs(bases.maps[..., 0]).mean())
    result["backend"] = chosen
    result["seconds"] = result[f"{chosen}_s"]
    return result
