"""Benchmark of the regression stage (design §9: pose + 53 weights ≤ 0.5 ms per frame), called by `bench`.

A smooth synthetic performance (random keyframed expressions and head motion up to ±25°, 0.5 mm landmark
noise, 30 fps time stamps) from the shipped embedding (a constructed one when it is absent) is fed through
`FaceSolver.solve`, the full per-frame path: validation, pose ↔ expression, eyes, calibration, filters.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.config import SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding, ModelFileError
from engine.names import ICT_EXPRESSIONS
from engine.solve.eyes import eyeball_centers
from engine.solve.face_solver import FaceSolver
from engine.solve.performer import Performer
from engine.solve.pose import euler_to_rotation, rotation_angle_deg
from engine.solve.solver import DEFAULT_FOV_Y_DEG
from engine.solve.synthetic import constructed_embedding, random_expression, synthetic_landmarks


def _smooth_track(frames: int, key_every: int, keys: np.ndarray) -> np.ndarray:
    """Keyframes `keys` (k, d) every `key_every` frames, smoothstep-interpolated → (frames, d)."""
    out = np.empty((frames, keys.shape[1]))
    for i in range(frames):
        k, r = divmod(i, key_every)
        t = r / key_every
        s = t * t * (3 - 2 * t)
        out[i] = keys[k] * (1 - s) + keys[k + 1] * s
    return out


def bench_solve(
    frames: int = 300,
    seed: int = 0,
    model: FaceModel | None = None,
    embedding: LandmarkEmbedding | None = None,
    config: SolveConfig | None = None,
) -> dict[str, Any]:
    """Time and accuracy of `FaceSolver.solve` on a synthetic performance (see module doc).

    Returns solve_ms {p50, p95, max, mean} wall time per frame (pose + 53 weights + filters; the mean carries the
    rest offset's, gaze centre's and neutral's 5 Hz samples, which the median skips), solve_cpu_ms_p50 (this
    thread's CPU time: what the solve costs when other processes compete for the cores), the unfiltered fit's mean
    absolute weight error overall and on driven channels (true weight > 0.05), and its head rotation error
    (degrees, p50/p95).
    """
    rng = np.random.default_rng(seed)
    model = model or FaceModel.load()
    embedding_name = "shipped"
    if embedding is None:
        try:
            embedding = LandmarkEmbedding.load()
        except ModelFileError:
            embedding, embedding_name = constructed_embedding(model, seed), "constructed"
    config = config or SolveConfig()
    # Solved as `run` solves a person (the auto performer: people prior, rest offset), with the camera the
    # landmarks are projected through.
    config = config.model_copy(update={"camera_fov_y_deg": config.camera_fov_y_deg or DEFAULT_FOV_Y_DEG})
    solver = FaceSolver(model, embedding, Performer.auto(), config)
    centers = eyeball_centers(model)
    key_every = 15
    n_keys = frames // key_every + 2
    weight_keys = np.stack([random_expression(rng) for _ in range(n_keys)])
    angle_keys = rng.uniform(-25, 25, size=(n_keys, 3))
    weights = _smooth_track(frames, key_every, weight_keys)
    angles = _smooth_track(frames, key_every, angle_keys)
    rotations = [euler_to_rotation(*a) for a in angles]
    inputs = [
        synthetic_landmarks(solver.fitter.face, centers, w, r, noise_cm=0.05, rng=rng)
        for w, r in zip(weights, rotations, strict=True)
    ]
    times_ns = np.empty(frames, dtype=np.int64)
    cpu_ns = np.empty(frames, dtype=np.int64)
    fitted = np.empty((frames, len(ICT_EXPRESSIONS)))
    rot_err = np.empty(frames)
    frame_ns = 33_333_333
    for i, landmarks in enumerate(inputs):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        solver.solve(landmarks, i * frame_ns, i)
        times_ns[i] = time.perf_counter_ns() - t0
        cpu_ns[i] = time.thread_time_ns() - c0
        assert solver.last_fit is not None
        fitted[i] = solver.last_fit.weights
        rot_err[i] = rotation_angle_deg(solver.last_fit.rotation, rotations[i])
    err = np.abs(fitted - weights)
    driven = weights > 0.05
    ms = times_ns[5:] / 1e6  # the first frames start cold (no warm start yet)
    cpu_ms = cpu_ns[5:] / 1e6
    return {
        "frames": frames,
        "embedding": embedding_name,
        "solve_ms": {
            "p50": round(float(np.median(ms)), 3),
            "p95": round(float(np.percentile(ms, 95)), 3),
            "max": round(float(ms.max()), 3),
            "mean": round(float(ms.mean()), 3),
        },
        "solve_cpu_ms_p50": round(float(np.median(cpu_ms)), 3),
        "mae": round(float(err.mean()), 4),
        "mae_driven": round(float(err[driven].mean()), 4),
        "rotation_error_deg": {
            "p50": round(float(np.median(rot_err)), 3),
            "p95": round(float(np.percentile(rot_err, 95)), 3),
        },
    }
