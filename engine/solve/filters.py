"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorized over channels, and quaternion continuity.

The cutoff adapts to speed: f_c = min_cutoff + beta·|ẋ|, so slow motion is smoothed hard (no jitter at rest)
and fast motion passes with little lag. Parameters may differ per channel (eyes faster than the mouth).
Time stamps are monotonic nanoseconds; a non-increasing time stamp returns the previous output unchanged.
A unit quaternion is filtered as four channels after `continuous_quaternion` and renormalized afterwards:
adequate for the small per-frame rotations of a head.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# (x, previous x, previous ẋ, dt s, min cutoff, beta, d cutoff), each (n,) but dt → (filtered x, filtered ẋ)
Step = Callable[..., tuple[np.ndarray, np.ndarray]]


def _alpha(cutoff_hz: np.ndarray, dt_s: float) -> np.ndarray:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class OneEuroFilter:
    """Filters (n,) vectors. min_cutoff_hz, beta, d_cutoff_hz: scalars or (n,) arrays (per channel)."""

    def __init__(
        self,
        min_cutoff_hz: np.ndarray | float,
        beta: np.ndarray | float,
        d_cutoff_hz: np.ndarray | float,
        step: Step | None = None,
    ) -> None:
        """`step`: run each step of a (n,) vector through it (`Kernels.one_euro_update`, the same arithmetic in
        one compiled call instead of ~12 numpy calls); None: this class's numpy step, its reference."""
        self.min_cutoff = np.asarray(min_cutoff_hz, dtype=np.float64)
        self.beta = np.asarray(beta, dtype=np.float64)
        self.d_cutoff = np.asarray(d_cutoff_hz, dtype=np.float64)
        self._update = step
        self._parameters: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
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
        if self._update is not None and x.ndim == 1:
            if self._parameters is None or self._parameters[0].shape != x.shape:
                shape = x.shape
                self._parameters = tuple(  # type: ignore[assignment]
                    np.ascontiguousarray(np.broadcast_to(p, shape)) for p in (self.min_cutoff, self.beta, self.d_cutoff)
                )
            assert self._parameters is not None
            self._x, self._dx = self._update(x, self._x, self._dx, dt, *self._parameters)
            self._t_ns = t_ns
            return self._x.copy()
        dx = (x - self._x) / dt
        self._dx = self._dx + _alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._t_ns = t_ns
        return self._x.copy()


def continuous_quaternion(quat: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """(4,) q or −q, whichever lies in `previous`'s hemisphere: q and −q are the same rotation, but filtering
    their components across a sign flip would pass through zero."""
    if previous is not None and float(quat @ previous) < 0.0:
        return -quat
    return quat
