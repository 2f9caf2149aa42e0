"""Compile (or load from numba's cache) the solver's kernels ahead of the first run: `make setup` runs this.

`python -m engine.solve.warm_up` (or, as `make setup` calls it, `python -m engine.solve.compiled`) builds one
`FaceSolver` with the shipped model, as `run` does on its first face, so the first `make run` starts at once.
Nothing imports this module: it sits above the solver, which keeps the kernels (`compiled.py`) free of it.
"""

from __future__ import annotations

import time

import numpy as np

from engine.config import SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.solve import compiled
from engine.solve.face_solver import FaceSolver


def warm_up() -> float:
    """Build a solver with the shipped model (which compiles or loads every kernel); the seconds it took."""
    start = time.perf_counter()
    model = FaceModel.load()
    identity = Identity("warm-up", model.model_id, model.default_identity_weights(), np.zeros(len(ICT_EXPRESSIONS)))
    FaceSolver(model, LandmarkEmbedding.load(), identity, SolveConfig())
    return time.perf_counter() - start


def main() -> None:
    if compiled.AVAILABLE:
        print(f"scapecast: compiled the per-frame solve (numba) in {warm_up():.1f} s")
    else:
        print("scapecast: numba is not installed; the solver runs its numpy path")


if __name__ == "__main__":
    main()
