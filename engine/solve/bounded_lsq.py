"""Box-constrained convex quadratic programs: the per-frame expression solve (design §3.2).

    minimize  ½ wᵀ H w − bᵀ w     subject to  lo ≤ w ≤ hi

H (n, n) symmetric positive definite (the regularized normal equations AᵀA + Λ), n ≈ 53. `solve_box_qp` is a
warm-started primal active-set method: with last frame's active set it usually finishes in 1–3 subspace solves.
`solve_box_qp_reference` is the slow, obviously correct check (`scipy.optimize.lsq_linear`, BVLS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
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

    First a primal-dual active-set method (Hintermüller, Ito, Kunisch 2002: a semismooth Newton method): it
    re-guesses the whole active set from w − g/diag(H) each iteration, so many channels flickering at zero
    under landmark noise cost one subspace solve, not one each; from a warm start it typically needs 2–3. It
    can cycle on matrices far from diagonally dominant, so after 8 iterations without settling the primal
    active-set method (`_primal_active_set`, monotone, finite) finishes from its iterate. `w0` (n,) is the warm
    start; `iterations` in the result counts the subspace solves of both phases.
    """
    n = len(b)
    w = np.minimum(np.maximum(np.zeros(n) if w0 is None else np.asarray(w0, dtype=np.float64), lo), hi)
    pinned = lo >= hi
    inv_diag = 1.0 / H.diagonal()
    # Working sets as boolean masks: on the lower bound (pinned variables count as "lower": lo == hi), on the
    # upper bound. Kept as two masks rather than one state array: fewer numpy calls per iteration.
    at_lo = at_hi = np.zeros(n, dtype=bool)
    pdas_limit = min(8, max_iterations)
    for iteration in range(1, pdas_limit + 1):
        if iteration == 1 and w0 is not None:
            guess = w  # the warm start's own active set: last frame's bounds are the best first guess
        else:
            guess = w - (H @ w - b) * inv_diag
        new_lo = (guess <= lo) | pinned
        new_hi = (guess >= hi) & ~new_lo
        if iteration > 1 and not ((new_lo ^ at_lo).any() or (new_hi ^ at_hi).any()):
            # Unchanged sets mean KKT holds: free variables are stationary inside the box, and a bound variable
            # stays bound only while its gradient pushes it outwards.
            return BoxQPResult(w, iteration - 1, True)
        at_lo, at_hi = new_lo, new_hi
        w = _subspace_solve(H, b, np.where(at_hi, hi, lo), at_lo | at_hi)
    scale = max(1.0, float(np.abs(b).max()), float(np.abs(H).max()))
    result = _primal_active_set(H, b, lo, hi, np.clip(w, lo, hi), max_iterations - pdas_limit, tol * scale)
    return BoxQPResult(result.w, result.iterations + pdas_limit, result.converged)


def _subspace_solve(H: np.ndarray, b: np.ndarray, bound: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """(n,) with fixed variables at `bound` and the free ones minimizing the objective over their subspace.

    One full-size solve with the fixed rows and columns replaced by the identity: for n ≈ 53 that is cheaper in
    numpy than gathering the free block."""
    free = ~fixed
    w_fixed = np.where(fixed, bound, 0.0)
    rhs = np.where(fixed, bound, b - H @ w_fixed)
    K = np.where(np.multiply.outer(free, free), H, 0.0)  # H · free freeᵀ, as a selection
    K.ravel()[:: len(b) + 1] += fixed
    # K is symmetric positive definite (a principal block of H plus identity rows). LAPACK's Cholesky solve
    # directly: numpy.linalg.solve's per-call overhead is ~5× the 53 × 53 factorization itself.
    _, x, info = scipy.linalg.lapack.dposv(K, rhs)
    if info != 0:
        raise np.linalg.LinAlgError(f"subspace matrix not positive definite (LAPACK dposv info {info})")
    return x


def _primal_active_set(
    H: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray, max_iterations: int, tol: float
) -> BoxQPResult:
    """Primal active set from a feasible `w`: variables on a bound form the working set; each iteration solves
    the free subspace exactly and moves towards it inside the box (the better of: projecting it onto the box,
    or stepping to the first blocking bound); when the subspace optimum is feasible it releases every bound
    whose multiplier has the wrong sign. The objective falls monotonically, so it cannot cycle in exact
    arithmetic; `max_iterations` caps pathological cases."""
    n = len(b)
    pinned = lo >= hi
    at_lo = (w <= lo) & ~pinned
    at_hi = (w >= hi) & ~pinned & ~at_lo
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
        release_lo = at_lo & (grad < -tol)  # pushing the variable up, off its lower bound
        release_hi = at_hi & (grad > tol)
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
