"""Renderer benchmark: ms per frame and where it goes (vertex update, draw, readback), CPU vs GPU
blendshapes, detail on vs off. Numbers, not assertions: `bench_render()` returns them as a dict.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from engine.config import RenderConfig
from engine.detail.weights import key_expression_weights
from engine.face_model import FaceModel
from engine.identity import DetailBases, Identity
from engine.render.camera import euler_to_quaternion
from engine.render.renderer import AvatarRenderer
from engine.types import FaceState, HeadPose


def synthetic_ridge_bases(resolution: int, seed: int = 0) -> DetailBases:
    """(20, N, N, 3) stand-in bases: two sinusoidal ridge fields per key expression (≤ 0.6 mm each), with
    their exact UV gradients — for benchmarks and tests when no identity bundle is at hand."""
    rng = np.random.default_rng(seed)
    v, u = (np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5) / resolution
    maps = np.zeros((20, resolution, resolution, 3), np.float32)
    for i in range(20):
        for _ in range(2):
            ku, kv = rng.uniform(-40, 40, 2)
            amp, phase = rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
            arg = 2 * np.pi * (ku * u + kv * v) + phase
            maps[i, ..., 0] += amp * np.sin(arg)
            maps[i, ..., 1] += amp * np.cos(arg) * 2 * np.pi * ku
            maps[i, ..., 2] += amp * np.cos(arg) * 2 * np.pi * kv
    return DetailBases(maps, "synthetic")


def performance_states(frames: int, seed: int = 0) -> list[FaceState]:
    """A varied sequence: a random key expression (scaled) plus a few random channels, and a head pose
    within ±20°, per frame — the load a live session puts on the renderer."""
    rng = np.random.default_rng(seed)
    table = key_expression_weights()
    states = []
    for k in range(frames):
        w = table[rng.integers(1, 20)] * rng.uniform(0.5, 1.0)
        extra = rng.choice(53, 4, replace=False)
        w[extra] = np.maximum(w[extra], rng.uniform(0, 0.6, 4))
        q = euler_to_quaternion(*rng.uniform(-20, 20, 3))
        pose = HeadPose(q, np.zeros(3))
        states.append(replace(FaceState.neutral(), weights=np.clip(w, 0, 1), frame_index=k, pose=pose))
    return states


def _time_renderer(renderer: AvatarRenderer, states: list[FaceState]) -> dict[str, float]:
    """Mean and p50 ms per stage; glFinish after each stage so GL time is charged to the stage that queued it."""
    ctx = renderer.context
    stages: dict[str, list[float]] = {"upload": [], "draw": [], "readback": [], "total": []}
    with ctx:
        for state in states:  # warm-up: every shader variant the sequence needs is compiled (JIT) once
            renderer.upload(state)
            renderer.draw()
        renderer.read()
        for state in states:
            t0 = time.perf_counter()
            renderer.upload(state)
            ctx.finish()
            t1 = time.perf_counter()
            renderer.draw()
            ctx.finish()
            t2 = time.perf_counter()
            renderer.read()
            t3 = time.perf_counter()
            for name, dt in (("upload", t1 - t0), ("draw", t2 - t1), ("readback", t3 - t2), ("total", t3 - t0)):
                stages[name].append(dt * 1e3)
    out = {f"{k}_ms": float(np.mean(v)) for k, v in stages.items()}
    out["total_p50_ms"] = float(np.median(stages["total"]))
    out["total_min_ms"] = float(np.min(stages["total"]))  # closest to an idle machine on a shared one
    out["fps"] = 1e3 / out["total_ms"]
    return out


def bench_render(
    size: int = 512,
    frames: int = 100,
    model: FaceModel | None = None,
    identity: Identity | None = None,
    samples: int | None = None,
) -> dict:
    """Render `frames` varied states at size² under four setups and report ms per stage.

    `samples`: MSAA samples (None: the renderer's automatic choice). Returns {"size", "frames", "samples",
    "renderer" (GL_RENDERER), "setups": {name: {upload_ms, draw_ms, readback_ms (means),
    total_ms, total_p50_ms, total_min_ms, fps}}, "default": the setup AvatarRenderer picks on this machine}. Without an
    identity the mean face with synthetic 512² ridge bases is used.
    """
    model = FaceModel.load() if model is None else model
    if identity is None or identity.bases is None:
        base = identity or Identity("bench", model.model_id, model.default_identity_weights(), np.zeros(53, np.float32))
        identity = replace(base, bases=synthetic_ridge_bases(512))
    states = performance_states(frames)
    config = RenderConfig(width=size, height=size, samples=samples)
    result: dict = {"size": size, "frames": frames, "setups": {}}
    for gpu in (False, True):
        with AvatarRenderer(model, identity, config, gpu_blendshapes=gpu) as renderer:
            result["renderer"] = renderer.context.info["GL_RENDERER"]
            result["samples"] = renderer.samples
            for detail in (True, False):
                renderer.detail = detail
                name = f"{'gpu' if gpu else 'cpu'}_blendshapes_detail_{'on' if detail else 'off'}"
                result["setups"][name] = _time_renderer(renderer, states)
    with AvatarRenderer(model, identity, config) as renderer:
        result["default"] = f"{'gpu' if renderer.gpu_blendshapes else 'cpu'}_blendshapes_detail_on"
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(bench_render(), indent=2))
