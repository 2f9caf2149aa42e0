"""Per-channel response curves: the last, user-tunable stage of the solve (what VTuber apps expose).

Each channel's weight passes through

    out = clip((w − lo) / (hi − lo), 0, 1)

`lo` is the level below which a reading counts as noise (the solver's false readings on a face that does not
make that expression), `hi` the reading that stands for a full expression (channels MediaPipe follows only
partly read short of 1). The shipped curves (`models/solve_curves.npz`) are dead zones only (hi 1), picked per
channel by `tools/fit_response_curves.py` on synthetic performers the shipped prior never trained on
(`pick_dead_zones`); `solve.channel_curves` overrides any channel by ICT name (`{jawOpen: [0.05, 0.8]}`), and
`solve.response_curves: false` turns the shipped ones off (overrides still apply). Without the file every curve
is the identity (lo 0, hi 1). The solver applies them last, to the filtered weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.face_model import MODELS_DIR, ModelFileError, read_npz
from engine.names import ICT_EXPRESSIONS
from engine.solve.expression import side_swap

DEFAULT_CURVES_PATH = MODELS_DIR / "solve_curves.npz"
N = len(ICT_EXPRESSIONS)
# A fitted dead zone never silences more of a channel than this.
MAX_LO = 0.3
# The dead zones `pick_dead_zones` chooses among: these percentiles of a channel's readings where it is truly at
# rest (0: none).
DEAD_ZONE_QUANTILES = (0.0, 25.0, 50.0, 75.0, 90.0)
# Truth at or below this is a channel at rest; above DRIVEN it is driven (as the eval counts).
AT_REST, DRIVEN = 0.01, 0.1
# Fewer frames than this of a channel at rest (or driven) leave its level (or its driven error) unmeasured.
MIN_FRAMES = 20


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

    def save(self, path: Path | str, **metadata: object) -> None:
        """Write lo and hi (float32) and any metadata arrays to an npz at `path`."""
        extras = {key: np.asarray(value) for key, value in metadata.items()}
        np.savez(path, lo=self.lo.astype(np.float32), hi=self.hi.astype(np.float32), **extras)

    @staticmethod
    def load(path: Path | str = DEFAULT_CURVES_PATH) -> ResponseCurves:
        """The shipped curves; a missing or malformed file is a clear ModelFileError."""
        z = read_npz(path, "response curves", "tools/fit_response_curves.py")
        try:
            lo, hi = z["lo"].astype(np.float64), z["hi"].astype(np.float64)
        except Exception as exc:  # a missing array, one that is not numeric
            raise ModelFileError(f"response curves {path} are unreadable: {exc}") from exc
        if lo.shape != (N,) or hi.shape != (N,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ModelFileError(f"response curves {path} hold shapes {lo.shape}, {hi.shape}; expected ({N},)")
        if not ((lo >= 0).all() and (hi <= 1).all() and (hi - lo > 0.05).all()):
            raise ModelFileError(f"response curves {path} hold a curve outside 0 ≤ lo < hi ≤ 1")
        return ResponseCurves(lo, hi)


def channel_scores(read: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(53,) per channel: the mean error on the frames that drive it (truth > DRIVEN; 0 with fewer than
    MIN_FRAMES) plus the mean error on all frames — the score the training tool picks its prior's strength by,
    per channel. read, truth: (n, 53)."""
    error = np.abs(read - truth)
    driven = truth > DRIVEN
    on_driven = np.array([error[driven[:, k], k].mean() if driven[:, k].sum() >= MIN_FRAMES else 0.0 for k in range(N)])
    return on_driven + error.mean(axis=0)


def pick_dead_zones(
    solved: np.ndarray, truth: np.ndarray, untouched: np.ndarray, quantiles: tuple[float, ...] = DEAD_ZONE_QUANTILES
) -> tuple[ResponseCurves, np.ndarray]:
    """Dead-zone curves (hi 1) from (n, 53) solved weights (curves off) against the (n, 53) truth.

    Per channel, lo is the percentile of its readings where it is truly at rest (truth ≤ AT_REST) among
    `quantiles` (the first 0: none) whose curve gives the lowest `channel_scores` on these frames: a dead zone
    silences the false readings and costs small true expressions, and the score weighs the two. A left/right pair
    (`side_swap`) shares one level, the mean of its two sides' percentiles, picked by their summed scores.
    Channels in the (53,) bool mask `untouched`, or with fewer than MIN_FRAMES at rest, keep lo 0, and so does
    their mirror partner. Returns the curves and (53,) the picked percentile per channel."""
    if len(solved) == 0 or solved.shape != truth.shape:
        raise ValueError(f"need matching (n, {N}) readings and truth, got {solved.shape} and {truth.shape}")
    if quantiles[0] != 0:
        raise ValueError(f"the first dead zone must be none (percentile 0), got {quantiles[0]}")
    mirror = side_swap()
    at_rest = truth <= AT_REST
    left_alone = untouched | (at_rest.sum(axis=0) < MIN_FRAMES)
    left_alone = left_alone | left_alone[mirror]
    candidates = np.zeros((len(quantiles), N))
    for k in np.flatnonzero(~left_alone):
        candidates[1:, k] = np.minimum(np.percentile(solved[at_rest[:, k], k], quantiles[1:]), MAX_LO)
    # A channel and its mirror image share one level and pick it together: a symmetric face reads symmetric.
    candidates = (candidates + candidates[:, mirror]) / 2
    scores = np.array([channel_scores(ResponseCurves(lo, np.ones(N)).apply(solved), truth) for lo in candidates])
    best = np.argmin(scores + scores[:, mirror], axis=0)  # ties (a channel left alone) take the first: none
    return ResponseCurves(candidates[best, np.arange(N)], np.ones(N)), np.asarray(quantiles)[best]
