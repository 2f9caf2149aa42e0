"""Per-channel response curves: the last, user-tunable stage of the solve (what VTuber apps expose).

Each channel's weight passes through

    out = clip((w − lo) / (hi − lo), 0, 1)

`lo` is the level below which a reading counts as noise (the solver's false readings on a face that does not
make that expression), `hi` the reading that stands for a full expression (channels MediaPipe follows only
partly read short of 1). Defaults are fitted on held-out synthetic performers by `tools/train_solve_prior.py`
and shipped in `models/solve_curves.npz` beside the prior they were measured with; `solve.channel_curves`
overrides any channel by ICT name (`{jawOpen: [0.05, 0.8]}`), and `solve.response_curves: false` turns the
stage off. Without the file every curve is the identity (lo 0, hi 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.face_model import MODELS_DIR, ModelFileError, read_npz
from engine.names import ICT_EXPRESSIONS

DEFAULT_CURVES_PATH = MODELS_DIR / "solve_curves.npz"
N = len(ICT_EXPRESSIONS)
# Bounds on fitted curves: a channel is never silenced or amplified without limit by a fit.
MAX_LO, MIN_HI = 0.3, 0.5


@dataclass(frozen=True)
class ResponseCurves:
    """lo, hi: (53,) with 0 ≤ lo < hi ≤ 1 per channel."""

    lo: np.ndarray
    hi: np.ndarray

    @staticmethod
    def identity() -> ResponseCurves:
        return ResponseCurves(np.zeros(N), np.ones(N))

    def apply(self, weights: np.ndarray) -> np.ndarray:
        """(53,) or (n, 53) weights → the same shape, each channel mapped through its curve."""
        return np.minimum(np.maximum((weights - self.lo) / (self.hi - self.lo), 0.0), 1.0)

    def with_overrides(self, overrides: dict[str, tuple[float, float]]) -> ResponseCurves:
        """These curves with some channels (ICT names) replaced by (lo, hi)."""
        lo, hi = self.lo.copy(), self.hi.copy()
        for name, (low, high) in overrides.items():
            k = ICT_EXPRESSIONS.index(name)
            lo[k], hi[k] = low, high
        return ResponseCurves(lo, hi)

    @staticmethod
    def fit(solved: np.ndarray, truth: np.ndarray, quantile: float = 90.0) -> ResponseCurves:
        """Curves from (n, 53) solved weights (curves off) against the (n, 53) truth.

        lo: the `quantile` of a channel's readings on frames where it is truly 0 (its false-reading floor);
        hi: the reading a true 1 gets, from a least-squares line through the driven frames (truth > 0.1),
        bounded to [MIN_HI, 1] and kept above lo."""
        lo, hi = np.zeros(N), np.ones(N)
        for k in range(N):
            rest = truth[:, k] <= 0.01
            if rest.sum() >= 20:
                lo[k] = min(float(np.percentile(solved[rest, k], quantile)), MAX_LO)
            driven = truth[:, k] > 0.1
            if driven.sum() >= 20:
                slope, intercept = np.polyfit(truth[driven, k], solved[driven, k], 1)
                hi[k] = float(np.clip(slope + intercept, MIN_HI, 1.0))
            hi[k] = max(hi[k], lo[k] + 0.2)
        return ResponseCurves(lo, np.minimum(hi, 1.0))

    def save(self, path: Path | str, **metadata: object) -> None:
        extras = {key: np.asarray(value) for key, value in metadata.items()}
        np.savez(path, lo=self.lo.astype(np.float32), hi=self.hi.astype(np.float32), **extras)

    @staticmethod
    def load(path: Path | str = DEFAULT_CURVES_PATH) -> ResponseCurves:
        """The shipped curves; a missing or malformed file is a clear ModelFileError."""
        z = read_npz(path, "response curves", "tools/train_solve_prior.py")
        try:
            lo, hi = z["lo"].astype(np.float64), z["hi"].astype(np.float64)
        except Exception as exc:  # a missing array, one that is not numeric
            raise ModelFileError(f"response curves {path} are unreadable: {exc}") from exc
        if lo.shape != (N,) or hi.shape != (N,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ModelFileError(f"response curves {path} hold shapes {lo.shape}, {hi.shape}; expected ({N},)")
        if not ((lo >= 0).all() and (hi <= 1).all() and (hi - lo > 0.05).all()):
            raise ModelFileError(f"response curves {path} hold a curve outside 0 ≤ lo < hi ≤ 1")
        return ResponseCurves(lo, hi)
