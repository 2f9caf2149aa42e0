"""Box-constrained convex quadratic programs: the per-frame expression solve (DESIGN §3.2).

    minimize  ½ wᵀ H w − bᵀ w     subject to  lo ≤ w ≤ hi

H (n, n) symmetric positive definite (the regularized normal equations AᵀA + Λ), n ≈ 53. `solve_box_qp` is a
warm-started primal active-set method: with last frame's active set it usually finishes in 1–3 subspace solves.
`solve_box_qp_reference` is the slow, obviously correct check (`scipy.optimize.lsq_linear`, BVLS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize


@dataclass(frozen=True)
class BoxQPResult:
    """w: (n,) the minimizer; iterations: subspace solves used; converged: KKT met within tolerance."""

    w: np.ndarray
    iterations: int
    converged: bool


def solve_box_qp(
    H: np.ndarray,
    b: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    w0: np.ndarray | None = None,
    max_iterations: int = 30,
    tol: float = 1e-10,
) -> BoxQPResult:
    """Minimize ½wᵀHw − bᵀw on the box [lo, hi] (all (n,) float64; lo ≤ hi, lo == hi pins a variable).

    Primal active set: variables on a bound form the working set; each iteration solves the free subspace
    exactly and moves towards it inside the box (the better of: projecting it onto the box, or stepping to the
    first blocking bound); when the subspace optimum is feasible it releases every bound whose multiplier has
    the wrong sign. The objective falls
    monotonically, so it cannot cycle in exact arithmetic; `max_iterations` caps pathological cases.
    `w0` (n,) warm start (clipped into the box); its bound variables are the initial working set.
    """
    n = len(b)
    w = np.clip(np.zeros(n) if w0 is None else np.asarray(w0, dtype=np.float64), lo, hi)
    pinned = lo >= hi
    at_lo = (w <= lo) & ~pinned
    at_hi = (w >= hi) & ~pinned & ~at_lo
    scale = max(1.0, float(np.abs(b).max()), float(np.abs(H).max()))
    for iteration in range(1, max_iterations + 1):
        free = ~(at_lo | at_hi | pinned)
        w_target = w.copy()
        idx = np.flatnonzero(free)
        if idx.size:
            fixed = np.flatnonzero(~free)
            rhs = b[idx] - H[idx[:, None], fixed] @ w[fixed]
            w_target[idx] = np.linalg.solve(H[idx[:, None], idx], rhs)
        step = w_target - w
        # Largest α ∈ [0, 1] keeping every free variable inside the box.
        ratio_lo = np.full(n, np.inf)
        ratio_hi = np.full(n, np.inf)
        below = free & (w_target < lo)
        above = free & (w_target > hi)
        ratio_lo[below] = (lo[below] - w[below]) / step[below]
        ratio_hi[above] = (hi[above] - w[above]) / step[above]
        alpha = min(1.0, float(ratio_lo.min()), float(ratio_hi.min()))
        if alpha < 1.0:
            # Two candidates, both feasible: the projection of the subspace optimum (fixes many bounds at once,
            # fast when the warm start is off) and the classic step to the first blocking bound (guarantees
            # progress). Take the lower objective; either way the objective falls.
            w_step = w + alpha * step
            hit_lo = free & (ratio_lo <= alpha)
            hit_hi = free & (ratio_hi <= alpha)
            w_step[hit_lo] = lo[hit_lo]
            w_step[hit_hi] = hi[hit_hi]
            w_proj = np.clip(w_target, lo, hi)
            if _objective(H, b, w_proj) < _objective(H, b, w_step):
                w = w_proj
                at_lo = (w <= lo) & ~pinned
                at_hi = (w >= hi) & ~pinned & ~at_lo
            else:
                w = w_step
                at_lo |= hit_lo
                at_hi |= hit_hi
            continue
        w = w_target
        grad = H @ w - b
        release_lo = at_lo & (grad < -tol * scale)  # pushing the variable up, off its lower bound
        release_hi = at_hi & (grad > tol * scale)
        if not (release_lo.any() or release_hi.any()):
            return BoxQPResult(w, iteration, True)
        at_lo &= ~release_lo
        at_hi &= ~release_hi
    return BoxQPResult(w, max_iterations, False)


def _objective(H: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    return float(0.5 * w @ (H @ w) - b @ w)


def solve_box_qp_reference(H: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The same problem through `scipy.optimize.lsq_linear` (BVLS): H = LLᵀ gives ‖Lᵀw − L⁻¹b‖², up to a
    constant equal to the QP objective. Pinned variables (lo == hi) are substituted out first. (n,) result."""
    pinned = lo >= hi
    w = np.where(pinned, lo, 0.0)
    free = np.flatnonzero(~pinned)
    if free.size == 0:
        return w
    b_free = b[free] - H[np.ix_(free, np.flatnonzero(pinned))] @ w[pinned]
    chol = np.linalg.cholesky(H[np.ix_(free, free)])
    target = scipy.linalg.solve_triangular(chol, b_free, lower=True)
    result = scipy.optimize.lsq_linear(chol.T, target, bounds=(lo[free], hi[free]), method="bvls", tol=1e-14)
    w[free] = result.x
    return w
