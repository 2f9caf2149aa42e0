"""The one switch between the per-frame solve's numpy reference and its compiled kernels (docs/solve.md).

The numpy code is the reference: `FrameFitter.fit_numpy`, `valid_observation`'s conversion and checks,
`OneEuroFilter`'s step. `engine/solve/compiled.py` repeats those three pieces as numba kernels, because in numpy
a frame is hundreds of calls on tiny arrays. `select_kernels` decides, once for each `FrameFitter`, from
`solve.compiled` and whether numba is installed, which of the two runs, and logs the choice; everything
downstream takes its answer (`FrameFitter.kernels`, which `FaceSolver` hands to its filter and checks) and decides
nothing itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from engine.config import SolveConfig
from engine.solve import compiled

log = logging.getLogger(__name__)

_announced: set[str] = set()


class Kernels(NamedTuple):
    """The compiled kernels, each a drop-in for a piece of the numpy reference (the same arithmetic)."""

    fit_frame: Callable[..., tuple[Any, ...]]  # `FrameFitter.fit_numpy`, given `FrameFitter.fit_tables()`
    observed_from_pixels: Callable[[np.ndarray, float], tuple[np.ndarray, bool]]  # `valid_observation`'s checks
    one_euro_update: Callable[..., tuple[np.ndarray, np.ndarray]]  # one `OneEuroFilter` step

    def fit_loaded(self) -> bool:
        """Whether `fit_frame` has machine code in this process yet (compiled, or loaded from numba's cache)."""
        return bool(self.fit_frame.signatures)  # type: ignore[attr-defined]

    def load_helpers(self) -> None:
        """Compile (or load from the cache) the two small kernels now, not on the first frame."""
        if not self.one_euro_update.signatures:  # type: ignore[attr-defined]
            self.observed_from_pixels(np.ones((478, 3)), 480.0)
            self.one_euro_update(*(np.zeros(1),) * 3, 0.033, *(np.ones(1),) * 3)


COMPILED = Kernels(compiled.fit_frame, compiled.observed_from_pixels, compiled.one_euro_update)


def select_kernels(config: SolveConfig) -> Kernels | None:
    """The compiled kernels when `solve.compiled` asks for them and numba is installed; None: the numpy reference.

    Logged once per process and outcome (a solver builds a fitter per performer estimate)."""
    if not config.compiled:
        _announce("solver: per-frame path: the numpy reference (solve.compiled is false)")
        return None
    if not compiled.AVAILABLE:
        _announce("solver: per-frame path: the numpy reference (numba is not installed)")
        return None
    _announce("solver: per-frame path: the compiled kernels (numba; solve.compiled: false selects numpy)")
    return COMPILED


def _announce(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        log.info(message)
