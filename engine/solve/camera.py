"""The camera's field of view read from the face (`performer.camera: learned`, the default for `auto`).

Fitting the camera geometrically fails on MediaPipe's landmarks: its mesh regresses towards its canonical face
and under-represents perspective, so a shape-and-camera fit explains its habits, not the lens
(docs/performer.md). How a lens distorts the mesh it does give is still systematic, and renders with known
cameras teach it: a ridge regression from the mean, over seconds of tracking, of the landmarks posed on the
model's mean face through one assumed lens (the people prior's own features) to the true field of view.
`tools/fit_camera_fov.py` fits it on the clips of `tools/make_face_clips.py` → `models/camera_fov.npz`.

    tracked frame (sampled at `SAMPLE_HZ`) ─▶ LensFeatures: posed on the mean face's rigid landmarks,
        corrected for the lens camera, minus the mean face (1404,) ─▶ running mean (`FovReading`)
        ─▶ FovRegressor: ridge ─▶ field of view (°), clipped to the configured bounds

The per-frame cost is one feature vector per sample (two Umeyama poses and a perspective correction); the
regression runs when the performer estimate asks (`engine/solve/performer.py`).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import PerformerConfig
from engine.face_model import MODELS_DIR, FaceModel, LandmarkEmbedding, ModelFileError, read_npz
from engine.solve.expression import EmbeddedFace
from engine.solve.landmark_sets import N_MESH_LANDMARKS
from engine.solve.pose import focal_length_px, umeyama_source
from engine.solve.solver import posed_features, rigid_weights

log = logging.getLogger(__name__)

CAMERA_FOV_PATH = MODELS_DIR / "camera_fov.npz"
N_INPUTS = 3 * N_MESH_LANDMARKS  # the mesh part of the prior's features (not the rotation)
# Samples a second, at most (every third frame at 30 fps, every fourth at 25): the mean settles in seconds, and
# sampling keeps the per-frame cost small.
SAMPLE_HZ = 10.0
# Samples before the reading is used (0.7 s at 30 fps): fewer read one expression, not the face.
MIN_SAMPLES = 8


class LensFeatures:
    """One frame's regressor input: observed (478, 3) y-up landmarks of an image `(width, height)` posed on the
    model's mean face through a camera of `lens_fov_y_deg` → (1404,) cm. The same as the people prior's
    features when that prior was trained at this lens (`tools/train_solve_prior.py`)."""

    def __init__(self, model: FaceModel, embedding: LandmarkEmbedding, lens_fov_y_deg: float) -> None:
        face = EmbeddedFace.build(model, embedding, None)
        self.lens_fov_y_deg = float(lens_fov_y_deg)
        self.neutral = face.neutral
        self.rigid_ids = np.flatnonzero(rigid_weights(face))
        self._source = umeyama_source(self.neutral[self.rigid_ids])

    def __call__(self, observed: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        width, height = image_size
        camera = (np.array([0.5 * width, 0.5 * height]), focal_length_px(height, self.lens_fov_y_deg))
        return posed_features(observed, self.neutral, self.rigid_ids, self._source, camera)[:N_INPUTS]


@dataclass(frozen=True)
class FovRegressor:
    """fov = intercept + (mean features − mean) · weights, in degrees (standardization folded into the weights).
    lens_fov_y_deg: the camera the features are read through; held-out: the fitting tool's check, recorded."""

    mean: np.ndarray  # (1404,)
    weights: np.ndarray  # (1404,) ° per cm
    intercept: float  # °
    lens_fov_y_deg: float
    heldout_std_deg: float = float("nan")

    def predict(self, mean_features: np.ndarray) -> float:
        """(1404,) or (n, 1404) mean `LensFeatures` → field of view (°), unclipped."""
        return self.intercept + (np.asarray(mean_features) - self.mean) @ self.weights

    @staticmethod
    def fit(per_clip_features: np.ndarray, fov_y_deg: np.ndarray, ridge: float, lens_fov_y_deg: float) -> FovRegressor:
        """Ridge regression on standardized (clips, 1404) mean features → (clips,) true FOV; `ridge` the penalty
        on the standardized weights (the tool picks it on held-out clips)."""
        x = np.asarray(per_clip_features, np.float64)
        y = np.asarray(fov_y_deg, np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = (x - mean) / scale
        gram = z.T @ z + ridge * np.eye(z.shape[1])
        w = np.linalg.solve(gram, z.T @ (y - y.mean()))
        return FovRegressor(mean, w / scale, float(y.mean()), float(lens_fov_y_deg))

    def save(self, path: Path | str, **metadata: object) -> None:
        """Write the regressor (float64: 22 KiB) and metadata arrays for the record."""
        extras = {key: np.asarray(value) for key, value in metadata.items()}
        np.savez_compressed(
            path,
            mean=self.mean,
            weights=self.weights,
            intercept=np.float64(self.intercept),
            lens_fov_y_deg=np.float64(self.lens_fov_y_deg),
            heldout_std_deg=np.float64(self.heldout_std_deg),
            **extras,
        )

    @staticmethod
    def load(path: Path | str = CAMERA_FOV_PATH) -> FovRegressor:
        """Read `models/camera_fov.npz`; a missing or malformed file is a clear ModelFileError."""
        arrays = read_npz(path, "camera field-of-view regressor", "tools/fit_camera_fov.py")
        try:
            regressor = FovRegressor(
                arrays["mean"].astype(np.float64),
                arrays["weights"].astype(np.float64),
                float(arrays["intercept"]),
                float(arrays["lens_fov_y_deg"]),
                float(arrays.get("heldout_std_deg", np.nan)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"camera field-of-view regressor {path} is unreadable: {exc}") from exc
        shapes_ok = regressor.mean.shape == regressor.weights.shape == (N_INPUTS,)
        finite = np.isfinite(regressor.mean).all() and np.isfinite(regressor.weights).all()
        if not shapes_ok or not finite or not math.isfinite(regressor.intercept):
            raise ModelFileError(
                f"camera field-of-view regressor {path} holds {regressor.mean.shape} / {regressor.weights.shape}"
                f" inputs (want ({N_INPUTS},)) or non-finite values"
            )
        if not 1.0 < regressor.lens_fov_y_deg < 120.0:
            raise ModelFileError(f"camera field-of-view regressor {path} names a lens of {regressor.lens_fov_y_deg}°")
        return regressor


class FovReading:
    """The running mean of one face track's `LensFeatures`, sampled at `SAMPLE_HZ` on the frames' clock, and the
    field of view it reads. Not thread-safe: `observe` on the solve thread, `estimate` copies what it needs."""

    def __init__(self, regressor: FovRegressor, features: LensFeatures, bounds_deg: tuple[float, float]) -> None:
        self.regressor, self.features = regressor, features
        self.bounds_deg = bounds_deg
        self._sum = np.zeros(N_INPUTS)
        self.samples = 0
        self._last_sample_ns: int | None = None

    def reset(self) -> None:
        """A new person: their face shape is half of what the mean holds."""
        self._sum[:] = 0.0
        self.samples = 0
        self._last_sample_ns = None

    def observe(self, observed: np.ndarray, image_size: tuple[int, int], t_ns: int) -> None:
        """One tracked frame; it counts when a sample is due (a degenerate pose is left out, not averaged)."""
        # A tenth of a period's slack: at 30 fps every third frame is due, not every fourth.
        if self._last_sample_ns is not None and t_ns - self._last_sample_ns < 0.9e9 / SAMPLE_HZ:
            return
        try:
            features = self.features(observed, image_size)
        except np.linalg.LinAlgError:
            return
        if not np.isfinite(features).all():
            return
        self._last_sample_ns = t_ns
        self._sum += features
        self.samples += 1

    def estimate(self) -> float | None:
        """The field of view (°) the mean reads, within the bounds; None before `MIN_SAMPLES` samples."""
        if self.samples < MIN_SAMPLES:
            return None
        fov = float(self.regressor.predict(self._sum / self.samples))
        return min(max(fov, self.bounds_deg[0]), self.bounds_deg[1])


def shipped_fov_reading(model: FaceModel, embedding: LandmarkEmbedding, config: PerformerConfig) -> FovReading | None:
    """A reading with the shipped regressor, bounded by `fov_min_deg`–`fov_max_deg`; None when
    `models/camera_fov.npz` is absent (warned once): the camera is then assumed (`fov_prior_deg`)."""
    regressor = _shipped_regressor(CAMERA_FOV_PATH)
    if regressor is None:
        return None
    features = LensFeatures(model, embedding, regressor.lens_fov_y_deg)
    return FovReading(regressor, features, (config.fov_min_deg, config.fov_max_deg))


@functools.cache
def _shipped_regressor(path: Path) -> FovRegressor | None:
    """Read once per process (every face track and every evaluated clip asks)."""
    if not path.is_file():
        log.warning("solver: %s is missing: the camera's field of view is assumed (performer.fov_prior_deg)", path)
        return None
    return FovRegressor.load(path)
