"""Backend selection and the TensorRT engine cache (the parts that need no GPU), plus GPU-only checks that
skip with their reason on machines without one (run them with tools/gpu_check.sh)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest

from engine.detail.backends import (
    Availability,
    EngineKey,
    load_cached_engine,
    select_backend,
    store_engine,
)
from engine.errors import UserError

ALL = Availability(tensorrt=None, cuda=None, torch=None, onnxruntime=None)
KEY = EngineKey("ab" * 32, "10.3.0", "NVIDIA H200", "fp16", 512, 20)


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert select_backend("auto", ALL)[:2] == ("tensorrt", "cuda")
    no_trt = replace(ALL, tensorrt="python package 'tensorrt' not installed")
    name, device, reason = select_backend("auto", no_trt)
    assert (name, device) == ("torch", "cuda") and "tensorrt" in reason
    cpu = replace(no_trt, cuda="no CUDA device visible to torch")
    name, device, reason = select_backend("auto", cpu)
    assert device == "cpu" and name in ("onnxruntime", "torch") and "not installed" in reason
    assert select_backend("auto", replace(cpu, onnxruntime="missing"))[0] == "torch"
    with pytest.raises(UserError, match="no detail backend"):
        select_backend("auto", replace(cpu, onnxruntime="missing", torch="missing"))


def test_explicit_requests() -> None:
    cpu = Availability("python package 'tensorrt' not installed", "no CUDA", None, None)
    with pytest.raises(UserError, match="tensorrt is unavailable: python package 'tensorrt' not installed"):
        select_backend("tensorrt", cpu)
    assert select_backend("torch", cpu)[:2] == ("torch", "cpu")
    assert select_backend("torch", ALL)[:2] == ("torch", "cuda")
    assert select_backend("onnxruntime", cpu)[0] == "onnxruntime"
    with pytest.raises(UserError, match="detail.backend must be"):
        select_backend("tpu", cpu)


def test_probe_on_this_machine() -> None:
    avail = Availability.probe()
    assert avail.torch is None and avail.onnxruntime is None
    if importlib.util.find_spec("tensorrt") is None:
        assert "not installed" in avail.tensorrt and "scapecast[gpu]" in avail.tensorrt
    name, _, reason = select_backend("auto", avail)
    assert name in ("tensorrt", "torch", "onnxruntime") and reason.startswith("auto")


def test_engine_key_covers_every_field(tmp_path) -> None:
    variants = [
        replace(KEY, onnx_sha256="cd" * 32),
        replace(KEY, tensorrt_version="10.4.0"),
        replace(KEY, gpu_name="NVIDIA L4"),
        replace(KEY, precision="fp32"),
        replace(KEY, resolution=1024),
        replace(KEY, batch=1),
    ]
    paths = {v.path(tmp_path) for v in variants} | {KEY.path(tmp_path)}
    assert len(paths) == len(variants) + 1
    assert KEY.path(tmp_path).name.startswith("detail_512_fp16_")


def test_engine_cache_round_trip_and_invalidation(tmp_path) -> None:
    assert load_cached_engine(KEY, tmp_path) is None
    blob = np.random.default_rng(0).bytes(4096)
    path = store_engine(KEY, tmp_path, blob)
    assert load_cached_engine(KEY, tmp_path) == blob
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".json").name])
    # another GPU or TensorRT version is another key: not served from this file
    assert load_cached_engine(replace(KEY, gpu_name="NVIDIA L4"), tmp_path) is None
    # a sidecar that disagrees with the key (edited, or a hash-prefix collision) is refused
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "tensorrt_version": "9.0"}))
    assert load_cached_engine(KEY, tmp_path) is None
    store_engine(KEY, tmp_path, blob)
    # a damaged engine fails its checksum
    path.write_bytes(blob[:100])
    assert load_cached_engine(KEY, tmp_path) is None
    path.with_suffix(".json").write_text("{broken")
    assert load_cached_engine(KEY, tmp_path) is None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT not installed (GPU-only path)")
@pytest.mark.skipif(not _has_cuda(), reason="no CUDA device (GPU-only path)")
def test_tensorrt_matches_torch(tmp_path, face_model) -> None:
    """FP16 TensorRT engine vs the torch reference on the shipped network: within 1e-2 mm (design §9)."""
    from engine.config import DetailConfig
    from engine.detail.precompute import precompute_bases

    cfg = dict(resolution=256, engine_cache_dir=tmp_path)
    ref = precompute_bases(face_model, face_model.default_identity_weights(), None,
                           DetailConfig(backend="torch", **cfg), progress=False)  # fmt: skip
    trt = precompute_bases(face_model, face_model.default_identity_weights(), None,
                           DetailConfig(backend="tensorrt", **cfg), progress=False)  # fmt: skip
    assert trt.backend == "tensorrt" and len(list(tmp_path.glob("*.engine"))) == 1
    assert np.abs(trt.maps[..., 0] - ref.maps[..., 0]).max() <= 1e-2
