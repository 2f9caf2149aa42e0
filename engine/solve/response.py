"""MediaPipe's measured response to the face model: a correction to the embedded landmark map.

The landmark embedding ties each MediaPipe landmark to one surface point, which would be exact if MediaPipe's
landmarks slid with the skin. They do not quite: on a rendered blink MediaPipe's lids stop at a 4–6 px gap,
its landmarks move only ≈ 0.8× as far as the surface under them (far less for browDown, cheekPuff, eyeSquint,
mouthPress: `docs/landmark_embedding.md`), its outline slides with the silhouette. A solver that trusts the
embedding therefore under-reads driven channels and reads the difference as other channels.

`tools/fit_landmark_response.py` renders the face with known random weights and poses, tracks the renders,
brings the landmarks into the model frame with the true weights, and regresses per landmark coordinate the
affine map weights → landmarks that MediaPipe actually follows, ridge-regularized towards the embedded map.
What is stored is the difference to the embedded map, so it applies on top of any identity's embedding:

    L' = L_embedded(w_id) + ΔL,   E' = E_embedded(w_id) + ΔE

neutral_delta: (478, 3) cm; basis_delta: (478, 3, 53) cm per unit weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.face_model import MODELS_DIR, ModelFileError, read_npz

DEFAULT_RESPONSE_PATH = MODELS_DIR / "landmark_response.npz"
N_LANDMARKS, N_CHANNELS = 478, 53


@dataclass(frozen=True)
class LandmarkResponse:
    """Additive corrections to an embedded face (see module docstring)."""

    neutral_delta: np.ndarray
    basis_delta: np.ndarray

    @staticmethod
    def load(path: Path | str = DEFAULT_RESPONSE_PATH) -> LandmarkResponse:
        """Read `models/landmark_response.npz`; a missing or malformed file is a clear ModelFileError."""
        z = read_npz(path, "landmark response", "tools/fit_landmark_response.py")
        try:
            neutral, basis = z["neutral_delta"].astype(np.float64), z["basis_delta"].astype(np.float64)
        except Exception as exc:  # a missing array, one that is not numeric
            raise ModelFileError(f"landmark response {path} is unreadable: {exc}") from exc
        expected = ((N_LANDMARKS, 3), (N_LANDMARKS, 3, N_CHANNELS))
        if (neutral.shape, basis.shape) != expected or not (np.isfinite(neutral).all() and np.isfinite(basis).all()):
            raise ModelFileError(f"landmark response {path} holds shapes {neutral.shape}, {basis.shape}")
        return LandmarkResponse(neutral, basis)

    def save(self, path: Path | str, **metadata: object) -> None:
        """Write the corrections (float32) with metadata arrays for the record."""
        extras = {key: np.asarray(value) for key, value in metadata.items()}
        np.savez_compressed(
            path,
            neutral_delta=self.neutral_delta.astype(np.float32),
            basis_delta=self.basis_delta.astype(np.float32),
            **extras,
        )


def fit_affine_response(weights: np.ndarray, landmarks: np.ndarray, prior: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge regression of landmarks on weights, pulled towards `prior`.

    weights: (n, 53) true weights; landmarks: (n, 478, 3) observed landmarks in the model frame (cm);
    prior: (54, 1434) the embedded rows [neutral; basis]. Returns (54, 1434) = argmin ||X B − Y||² +
    ridge·||B − prior||² with X = [1 | weights] (closed form: one 54 × 54 solve).
    """
    design = np.hstack([np.ones((len(weights), 1)), weights])
    targets = landmarks.reshape(len(landmarks), -1)
    gram = design.T @ design + ridge * np.eye(design.shape[1])
    return np.linalg.solve(gram, design.T @ targets + ridge * prior)
