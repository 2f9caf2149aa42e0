"""A learned prior for the expression solve: weights regressed from the model-frame landmarks (DESIGN §3.2).

The bounded least squares explains the landmarks with the embedded (+ measured) blendshape map; where MediaPipe
follows a shape only partly (brow and lid details, cheekPuff, mouthPress) or mixes shapes up, it under-reads
or confuses channels. A ridge regression from the same model-frame landmarks to the weights, trained on
renders with known weights (`tools/fit_solve_prior.py`), knows those habits; the solver adds it as a prior

    μ Σ_k (w_k − w_reg,k)²

to the bounded least squares (H += μI, b += μ w_reg), which stays the core of the solve and keeps the box.

features: the 468 mesh landmarks in the model frame minus the identity's embedded neutral (cm, 1404 values)
and the head rotation (9 values: MediaPipe's errors depend on the view). coef: (1 + F, 53), intercept first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.face_model import MODELS_DIR, ModelFileError

DEFAULT_PRIOR_PATH = MODELS_DIR / "solve_prior.npz"
N_MESH, N_CHANNELS = 468, 53
N_FEATURES = N_MESH * 3 + 9


@dataclass(frozen=True)
class LearnedPrior:
    """w_reg = coef[0] + features @ coef[1:]; `strength` the μ (cm²) it was validated with; `with_response`:
    trained on landmarks posed with the landmark response (then only valid together with it)."""

    coef: np.ndarray
    strength: float
    with_response: bool = True

    @staticmethod
    def features(observed_model: np.ndarray, neutral: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(478, 3) model-frame landmarks (cm), (478, 3) embedded neutral, (3, 3) rotation → (F,)."""
        out = np.empty(N_FEATURES)
        out[: N_MESH * 3] = (observed_model[:N_MESH] - neutral[:N_MESH]).reshape(-1)
        out[N_MESH * 3 :] = rotation.reshape(-1)
        return out

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(F,) or (n, F) → (53,) or (n, 53) unclipped weights."""
        return features @ self.coef[1:] + self.coef[0]

    @staticmethod
    def load(path: Path | str = DEFAULT_PRIOR_PATH) -> LearnedPrior:
        """Read `models/solve_prior.npz`; a missing or malformed file is a clear ModelFileError."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"solve prior not found: {path} (make it with tools/fit_solve_prior.py)")
        try:
            with np.load(path, allow_pickle=False) as z:
                coef, strength = z["coef"].astype(np.float64), float(z["strength"])
                with_response = bool(z["with_response"])
        except Exception as exc:
            raise ModelFileError(f"solve prior {path} is unreadable: {exc}") from exc
        if coef.shape != (1 + N_FEATURES, N_CHANNELS) or not np.isfinite(coef).all() or not strength >= 0:
            raise ModelFileError(f"solve prior {path} holds coef {coef.shape}, strength {strength}")
        return LearnedPrior(np.ascontiguousarray(coef), strength, with_response)

    def save(self, path: Path | str, **metadata: object) -> None:
        """Write coef (float32), strength and metadata arrays for the record."""
        extras = {key: np.asarray(value) for key, value in metadata.items()}
        np.savez_compressed(
            path,
            coef=self.coef.astype(np.float32),
            strength=np.float32(self.strength),
            with_response=np.bool_(self.with_response),
            **extras,
        )


def fit_ridge_prior(
    features: np.ndarray,
    weights: np.ndarray,
    rng: np.random.Generator,
    alphas: tuple[float, ...] | None = None,
    with_response: bool = True,
) -> tuple[LearnedPrior, str]:
    """Ridge regression (n, F) → (n, 53), its strength α chosen on a random 20 % validation split (mean abs error
    of the clipped prediction), then refitted on everything. Returns the prior (strength 0: the caller sets μ)
    and a one-line report."""
    alphas = alphas or (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
    n = len(features)
    order = rng.permutation(n)
    val, fit = order[: n // 5], order[n // 5 :]

    def solve(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
        mx, my = x.mean(axis=0), y.mean(axis=0)
        xc = x - mx
        gram = xc.T @ xc
        gram.flat[:: gram.shape[0] + 1] += alpha * len(x)
        slope = np.linalg.solve(gram, xc.T @ (y - my))
        return np.vstack([my - mx @ slope, slope])

    scores = []
    for alpha in alphas:
        coef = solve(features[fit], weights[fit], alpha)
        pred = np.clip(features[val] @ coef[1:] + coef[0], 0.0, 1.0)
        scores.append(float(np.abs(pred - weights[val]).mean()))
    best = alphas[int(np.argmin(scores))]
    coef = solve(features, weights, best)
    text = "ridge α (validation MAE): " + ", ".join(f"{a:g} ({s:.4f})" for a, s in zip(alphas, scores, strict=True))
    return LearnedPrior(coef, 0.0, with_response), text + f" → α = {best:g}"
