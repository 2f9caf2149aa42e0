"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorized over channels, and its quaternion form.

The cutoff adapts to speed: f_c = min_cutoff + beta·|ẋ|, so slow motion is smoothed hard (no jitter at rest)
and fast motion passes with little lag. Parameters may differ per channel (eyes faster than the mouth).
Time stamps are monotonic nanoseconds; a non-increasing time stamp returns the previous output unchanged.
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff_hz: np.ndarray, dt_s: float) -> np.ndarray:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class OneEuroFilter:
    """Filters (n,) vectors. min_cutoff_hz, beta, d_cutoff_hz: scalars or (n,) arrays (per channel)."""

    def __init__(
        self, min_cutoff_hz: np.ndarray | float, beta: np.ndarray | float, d_cutoff_hz: np.ndarray | float
    ) -> None:
        self.min_cutoff = np.asarray(min_cutoff_hz, dtype=np.float64)
        self.beta = np.asarray(beta, dtype=np.float64)
        self.d_cutoff = np.asarray(d_cutoff_hz, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next sample passes through unchanged."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t_ns: int | None = None

    def __call__(self, x: np.ndarray, t_ns: int) -> np.ndarray:
        """(n,) sample at monotonic time `t_ns` → (n,) filtered sample."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t_ns is None or self._dx is None:
            self._x, self._dx, self._t_ns = x.copy(), np.zeros_like(x), t_ns
            return x.copy()
        if t_ns <= self._t_ns:
            return self._x.copy()
        dt = (t_ns - self._t_ns) * 1e-9
        dx = (x - self._x) / dt
        self._dx = self._dx + _alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._t_ns = t_ns
        return self._x.copy()


class QuaternionOneEuro:
    """One Euro on a unit quaternion (w, x, y, z): flip into the previous output's hemisphere, filter the four
    components, renormalize. Adequate for the small per-frame rotations of a head."""

    def __init__(self, min_cutoff_hz: float, beta: float, d_cutoff_hz: float) -> None:
        self._filter = OneEuroFilter(min_cutoff_hz, beta, d_cutoff_hz)
        self._last: np.ndarray | None = None

    def reset(self) -> None:
        self._filter.reset()
        self._last = None

    def __call__(self, quat: np.ndarray, t_ns: int) -> np.ndarray:
        """(4,) quaternion at `t_ns` → (4,) filtered unit quaternion."""
        q = np.asarray(quat, dtype=np.float64)
        if self._last is not None and float(q @ self._last) < 0.0:
            q = -q
        out = self._filter(q, t_ns)
        out /= np.linalg.norm(out)
        self._last = out
        return out
