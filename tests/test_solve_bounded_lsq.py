"""The per-frame box QP against scipy's BVLS on random bounded problems (design §3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.solve.bounded_lsq import solve_box_qp, solve_box_qp_reference
from engine.solve.synthetic import random_box_qp


def _problem(rng: np.random.Generator, n: int = 53, correlated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    return random_box_qp(rng, n, correlated)


@pytest.mark.parametrize("correlated", [False, True])
def test_fast_solver_matches_reference_on_random_problems(correlated: bool) -> None:
    rng = np.random.default_rng(7 + correlated)
    worst = 0.0
    hits_lo = hits_hi = 0
    for k in range(60):
        H, b = _problem(rng, correlated=correlated)
        lo, hi = np.zeros(53), np.ones(53)
        if k % 3 == 0:  # some channels pinned (the solver pins gaze channels like this)
            pin = rng.choice(53, size=8, replace=False)
            lo[pin] = hi[pin] = rng.uniform(0, 1, size=8)
        fast = solve_box_qp(H, b, lo, hi)
        ref = solve_box_qp_reference(H, b, lo, hi)
        assert fast.converged
        assert np.all(fast.w >= lo - 1e-12) and np.all(fast.w <= hi + 1e-12)
        worst = max(worst, float(np.abs(fast.w - ref).max()))
        free = lo < hi
        hits_lo += int(np.sum(free & (fast.w <= 0.0)))
        hits_hi += int(np.sum(free & (fast.w >= 1.0)))
    assert worst < 1e-3
    # Both bounds must be active in many solutions, or the test would not exercise the active set.
    assert hits_lo > 100 and hits_hi > 20


def test_warm_start_from_a_nearby_problem_agrees_and_is_cheaper() -> None:
    rng = np.random.default_rng(3)
    H, b = _problem(rng)
    lo, hi = np.zeros(53), np.ones(53)
    previous = solve_box_qp(H, b, lo, hi)
    b_next = b + rng.normal(scale=0.02 * np.abs(b).mean(), size=53)  # next frame: slightly different data
    cold = solve_box_qp(H, b_next, lo, hi)
    warm = solve_box_qp(H, b_next, lo, hi, w0=previous.w)
    np.testing.assert_allclose(warm.w, solve_box_qp_reference(H, b_next, lo, hi), atol=1e-6)
    assert warm.iterations <= cold.iterations


def test_primal_fallback_finishes_when_the_iteration_budget_is_tiny() -> None:
    rng = np.random.default_rng(11)
    H, b = _problem(rng, correlated=True)
    lo, hi = np.zeros(53), np.ones(53)
    full = solve_box_qp(H, b, lo, hi)
    short = solve_box_qp(H, b, lo, hi, max_iterations=1)
    assert full.converged
    # One iteration cannot settle a correlated problem from zero; the result is still inside the box.
    assert not short.converged
    assert np.all(short.w >= lo) and np.all(short.w <= hi)


def test_unconstrained_interior_solution_is_the_linear_solve() -> None:
    rng = np.random.default_rng(5)
    H, b = _problem(rng, n=10)
    exact = np.linalg.solve(H, b)
    lo, hi = exact - 1.0, exact + 1.0
    np.testing.assert_allclose(solve_box_qp(H, b, lo, hi).w, exact, atol=1e-10)
