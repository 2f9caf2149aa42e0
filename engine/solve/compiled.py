"""The per-frame fit compiled with numba: the fast path of `FrameFitter.fit` (design §9: solve ≤ 0.5 ms a frame).

The numpy code in `solver.py`, `expression.py`, `bounded_lsq.py`, `pose.py`, `eyes.py` and `prior.py` is the
reference: it reads like the maths and documents the method. This module repeats the same arithmetic as one
compiled function, because in numpy a frame is ~300 calls on arrays of 3 to 1434 numbers, and their per-call
cost (1.2 ms a frame on the 2-core host) dwarfs the arithmetic. Differences from the reference, all of them
rounding-level: the box QP's subspace solves factor only the free block (the reference factors a full-size
matrix with identity rows, cheaper in numpy); the 3 × 3 SVD comes from numba's LAPACK binding. The compiled
function releases the GIL, so the tracking thread's MediaPipe keeps running while a frame is solved.
tests/test_solve_compiled.py holds both paths to the same results.

The kernels read nothing of the numpy side but its public tables (`engine/solve/tables.py`: `FitTables`, built by
`FrameFitter.fit_tables`). Which path runs is decided in one place, `engine/solve/kernels.py`. numba compiles on
first use and caches the machine code beside this file (`__pycache__`); without numba (`AVAILABLE` False) the
solver runs the numpy reference.
"""

from __future__ import annotations

import math

import numpy as np

from engine.solve.landmark_sets import N_MESH_LANDMARKS
from engine.solve.tables import ExpressionTables, EyeTables, FitTables, PriorTables

# error_model "numpy": a division by zero gives inf/NaN as in the reference (which the solver's finiteness checks
# catch) instead of raising ZeroDivisionError from inside a frame.
# Reductions (dot products, the Cholesky factorization) may be reassociated so that they vectorize; NaN and
# inf keep their IEEE meaning (no 'nnan'/'ninf'), so the finiteness and positive-definiteness checks still hold.
REDUCTION_MATH = {"reassoc", "contract", "nsz"}

try:
    from numba import njit

    AVAILABLE = True
except ImportError:  # a platform without numba wheels: the numpy reference path serves
    AVAILABLE = False

    def njit(*_args, **_kwargs):  # type: ignore[no-redef]
        return lambda function: function


@njit(cache=True, error_model="numpy")
def _umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """`pose.umeyama` with normalized weights (n,) summing to 1: R (3, 3), t (3,), s."""
    n = source.shape[0]
    mu_s = np.zeros(3)
    mu_t = np.zeros(3)
    for i in range(n):
        for a in range(3):
            mu_s[a] += weights[i] * source[i, a]
            mu_t[a] += weights[i] * target[i, a]
    cov = np.zeros((3, 3))
    var_s = 0.0
    for i in range(n):
        wi = weights[i]
        for a in range(3):
            s_a = source[i, a] - mu_s[a]
            var_s += wi * s_a * s_a
            for c in range(3):
                cov[c, a] += wi * (target[i, c] - mu_t[c]) * s_a
    u, sig, vt = np.linalg.svd(cov)
    det = (
        cov[0, 0] * (cov[1, 1] * cov[2, 2] - cov[1, 2] * cov[2, 1])
        - cov[0, 1] * (cov[1, 0] * cov[2, 2] - cov[1, 2] * cov[2, 0])
        + cov[0, 2] * (cov[1, 0] * cov[2, 1] - cov[1, 1] * cov[2, 0])
    )
    if det < 0:  # det(U)·det(Vᵀ) has the sign of det(cov): avoid a reflection
        for r in range(3):
            u[r, 2] = -u[r, 2]
        scale = (sig[0] + sig[1] - sig[2]) / var_s
    else:
        scale = (sig[0] + sig[1] + sig[2]) / var_s
    rot = u @ vt
    trans = mu_t - scale * (rot @ mu_s)
    return rot, trans, scale


@njit(cache=True, error_model="numpy")
def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


@njit(cache=True, error_model="numpy")
def _perspective_corrected(
    observed: np.ndarray, points: np.ndarray, depth_axis: np.ndarray, scale: float, center: np.ndarray, focal: float
) -> np.ndarray:
    """`solver.perspective_corrected(observed, points @ depth_axis, scale, center, focal)`."""
    out = np.empty_like(observed)
    ratio = scale / focal
    for i in range(observed.shape[0]):
        depth = points[i, 0] * depth_axis[0] + points[i, 1] * depth_axis[1] + points[i, 2] * depth_axis[2]
        kappa = 1.0 - depth * ratio
        out[i, 0] = (observed[i, 0] - center[0]) * kappa + center[0]
        out[i, 1] = (observed[i, 1] - center[1]) * kappa + center[1]
        out[i, 2] = observed[i, 2] * kappa
    return out


@njit(cache=True, error_model="numpy")
def _to_model_frame(points: np.ndarray, rot: np.ndarray, trans: np.ndarray, scale: float) -> np.ndarray:
    """Rᵀ(y − t)/s row-wise."""
    out = np.empty_like(points)
    for i in range(points.shape[0]):
        d0, d1, d2 = points[i, 0] - trans[0], points[i, 1] - trans[1], points[i, 2] - trans[2]
        for a in range(3):
            out[i, a] = (d0 * rot[0, a] + d1 * rot[1, a] + d2 * rot[2, a]) / scale
    return out


@njit(cache=True, error_model="numpy")
def _vector_matrix(vector: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out += vector @ matrix for (n,) and (n, m), float64 or float32 matrix, accumulated in float64.

    Row by row (out += vᵢ·rowᵢ): the inner loop runs along contiguous memory and vectorizes without fast-math
    reassociation; zero entries skip their row (expression weights at their bound, landmarks of weight 0). As
    fast as numba's BLAS call for these shapes, and it reads the float32 prior without a float64 copy."""
    for i in range(matrix.shape[0]):
        value = vector[i]
        if value != 0.0:
            row = matrix[i]
            for j in range(matrix.shape[1]):
                out[j] += value * row[j]
    return out


@njit(cache=True, error_model="numpy")
def _vector_matrix_spans(vector: np.ndarray, matrix: np.ndarray, spans: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`_vector_matrix` over each row's nonzero span only (`PriorTables.layer_row_spans`): the same sum, the
    zeros outside it (a block-diagonal layer's) skipped. A partial row is sliced first, so that its loop, too,
    starts at 0: LLVM vectorizes that one, not a loop between two loaded bounds (3.5× slower)."""
    n = matrix.shape[1]
    for i in range(matrix.shape[0]):
        value = vector[i]
        if value != 0.0:
            start, stop = spans[i, 0], spans[i, 1]
            if start == 0 and stop == n:
                row = matrix[i]
                for j in range(n):
                    out[j] += value * row[j]
            else:
                part_row, part_out = matrix[i, start:stop], out[start:stop]
                for j in range(part_row.shape[0]):
                    part_out[j] += value * part_row[j]
    return out


@njit(cache=True, error_model="numpy", fastmath=REDUCTION_MATH)
def _matrix_vector(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector, row by row (contiguous dot products)."""
    out = np.empty(matrix.shape[0])
    for i in range(matrix.shape[0]):
        total = 0.0
        for j in range(matrix.shape[1]):
            total += matrix[i, j] * vector[j]
        out[i] = total
    return out


@njit(cache=True, error_model="numpy")
def _landmarks(expression: ExpressionTables, weights: np.ndarray) -> np.ndarray:
    """`EmbeddedFace.landmarks`: (K,) → (L, 3)."""
    flat = _vector_matrix(weights, expression.basis_flat_t, expression.neutral.reshape(-1).copy())
    return flat.reshape(expression.neutral.shape)


@njit(cache=True, error_model="numpy")
def _take_rows(points: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.empty((ids.shape[0], 3))
    for j in range(ids.shape[0]):
        out[j] = points[ids[j]]
    return out


@njit(cache=True, error_model="numpy", fastmath=REDUCTION_MATH)
def _cholesky_solve(matrix: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, bool]:
    """x with matrix x = rhs for a symmetric positive definite (m, m) matrix (overwritten); ok False if not PD."""
    m = rhs.shape[0]
    for j in range(m):
        diag = matrix[j, j]
        for k in range(j):
            diag -= matrix[j, k] * matrix[j, k]
        if not diag > 0.0:
            return rhs, False
        diag = math.sqrt(diag)
        matrix[j, j] = diag
        for i in range(j + 1, m):
            value = matrix[i, j]
            for k in range(j):
                value -= matrix[i, k] * matrix[j, k]
            matrix[i, j] = value / diag
    x = rhs.copy()
    for i in range(m):  # L y = rhs
        value = x[i]
        for k in range(i):
            value -= matrix[i, k] * x[k]
        x[i] = value / matrix[i, i]
    for i in range(m - 1, -1, -1):  # Lᵀ x = y
        value = x[i]
        for k in range(i + 1, m):
            value -= matrix[k, i] * x[k]
        x[i] = value / matrix[i, i]
    return x, True


@njit(cache=True, error_model="numpy")
def _subspace_solve(H: np.ndarray, b: np.ndarray, values: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, bool]:
    """`bounded_lsq._subspace_solve`: fixed variables at `values`, the free ones optimal over their subspace."""
    n = b.shape[0]
    free_ids = np.flatnonzero(~fixed)
    m = free_ids.shape[0]
    out = np.where(fixed, values, 0.0)
    if m == 0:
        return out, True
    block = np.empty((m, m))
    rhs = np.empty(m)
    for p in range(m):
        i = free_ids[p]
        value = b[i]
        for j in range(n):
            if fixed[j]:
                value -= H[i, j] * values[j]
        rhs[p] = value
        for q in range(m):
            block[p, q] = H[i, free_ids[q]]
    x, ok = _cholesky_solve(block, rhs)
    for p in range(m):
        out[free_ids[p]] = x[p]
    return out, ok


@njit(cache=True, error_model="numpy")
def _objective(H: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    return 0.5 * (w @ _matrix_vector(H, w)) - b @ w


@njit(cache=True, error_model="numpy")
def _primal_active_set(
    H: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray, max_iterations: int, tol: float
) -> tuple[np.ndarray, int, bool]:
    """`bounded_lsq._primal_active_set` (see there): (w, iterations, ok)."""
    n = b.shape[0]
    pinned = lo >= hi
    at_lo = (w <= lo) & ~pinned
    at_hi = (w >= hi) & ~pinned & ~at_lo
    for iteration in range(1, max_iterations + 1):
        free = ~(at_lo | at_hi | pinned)
        w_target, ok = _subspace_solve(H, b, w, ~free)
        if not ok:
            return w, iteration, False
        step = w_target - w
        ratio_lo = np.full(n, np.inf)
        ratio_hi = np.full(n, np.inf)
        alpha = 1.0
        for i in range(n):
            if free[i] and w_target[i] < lo[i]:
                ratio_lo[i] = (lo[i] - w[i]) / step[i]
                alpha = min(alpha, ratio_lo[i])
            if free[i] and w_target[i] > hi[i]:
                ratio_hi[i] = (hi[i] - w[i]) / step[i]
                alpha = min(alpha, ratio_hi[i])
        if alpha < 1.0:
            w_step = w + alpha * step
            hit_lo = free & (ratio_lo <= alpha)
            hit_hi = free & (ratio_hi <= alpha)
            for i in range(n):
                if hit_lo[i]:
                    w_step[i] = lo[i]
                if hit_hi[i]:
                    w_step[i] = hi[i]
            w_proj = np.minimum(np.maximum(w_target, lo), hi)
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
        grad = _matrix_vector(H, w) - b
        release_lo = at_lo & (grad < -tol)
        release_hi = at_hi & (grad > tol)
        if not (release_lo.any() or release_hi.any()):
            return w, iteration, True
        at_lo &= ~release_lo
        at_hi &= ~release_hi
    return w, max_iterations, True


@njit(cache=True, error_model="numpy")
def solve_box_qp(
    H: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, w0: np.ndarray, warm: bool, max_iterations: int
) -> tuple[np.ndarray, bool]:
    """`bounded_lsq.solve_box_qp` (primal-dual active set, then the primal active set): (w, ok); ok False when
    a subspace matrix was not positive definite."""
    n = b.shape[0]
    w = np.minimum(np.maximum(w0 if warm else np.zeros(n), lo), hi)
    pinned = lo >= hi
    inv_diag = 1.0 / np.diag(H)
    at_lo = np.zeros(n, dtype=np.bool_)
    at_hi = np.zeros(n, dtype=np.bool_)
    pdas_limit = min(8, max_iterations)
    for iteration in range(1, pdas_limit + 1):
        if iteration == 1 and warm:
            guess = w
        else:
            guess = w - (_matrix_vector(H, w) - b) * inv_diag
        new_lo = (guess <= lo) | pinned
        new_hi = (guess >= hi) & ~new_lo
        if iteration > 1 and not ((new_lo ^ at_lo).any() or (new_hi ^ at_hi).any()):
            return w, True
        at_lo, at_hi = new_lo, new_hi
        w, ok = _subspace_solve(H, b, np.where(at_hi, hi, lo), at_lo | at_hi)
        if not ok:
            return w, False
    scale = max(1.0, np.abs(b).max(), np.abs(H).max())
    w, _, ok = _primal_active_set(
        H, b, lo, hi, np.minimum(np.maximum(w, lo), hi), max_iterations - pdas_limit, 1e-10 * scale
    )
    return w, ok


@njit(cache=True, error_model="numpy")
def _solve_expression(
    tables: FitTables,
    observed_model: np.ndarray,
    rot: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    w0: np.ndarray,
    gaze: np.ndarray,
    use_anchor: bool,
    target: np.ndarray,
    target_strength: float,
) -> tuple[np.ndarray, bool]:
    """`ExpressionSolver.solve` with the depth metric of `rot`, the gaze anchor and the prior's target."""
    expression = tables.expression
    n_channels = w0.shape[0]
    depth_axis = rot[2]
    metric = np.empty(9)
    for a in range(3):
        for c in range(3):
            metric[3 * a + c] = (1.0 if a == c else 0.0) + (tables.depth_weight - 1.0) * depth_axis[a] * depth_axis[c]
    H = _vector_matrix(metric, expression.gram, expression.quadratic_prior.reshape(-1).copy())
    H = H.reshape((n_channels, n_channels))
    n_points = observed_model.shape[0]
    projected = np.empty(3 * n_points)
    for i in range(n_points):
        lw = expression.landmark_weights[i]
        r0 = (observed_model[i, 0] - expression.neutral[i, 0]) * lw
        r1 = (observed_model[i, 1] - expression.neutral[i, 1]) * lw
        r2 = (observed_model[i, 2] - expression.neutral[i, 2]) * lw
        for c in range(3):
            projected[3 * i + c] = r0 * metric[c] + r1 * metric[3 + c] + r2 * metric[6 + c]
    b = _matrix_vector(expression.basis_flat_t, projected)
    if use_anchor:
        gaze_channels = tables.eyes.gaze_channels
        for j in range(gaze_channels.shape[0]):
            k = gaze_channels[j]
            H[k, k] += tables.gaze_anchor - expression.regularization[k]
            b[k] += gaze[j] * tables.gaze_anchor
    if target_strength > 0.0:
        for k in range(n_channels):
            strength = target_strength * tables.prior.channel_mask[k]
            H[k, k] += strength
            b[k] += strength * target[k]
    return solve_box_qp(H, b, lo, hi, w0, True, tables.max_iterations)


@njit(cache=True, error_model="numpy")
def _gaze(eyes: EyeTables, observed_model: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`EyeModel.gaze`: (8,) `eyeLook*` weights in `GAZE_CHANNELS` order."""
    gaze = weights[eyes.gaze_channels]
    corners_static = eyes.corner0_flat + _matrix_vector(eyes.corner_basis_flat, weights)
    corners_static -= _matrix_vector(eyes.corner_gaze_flat, gaze)
    width = np.empty(2)
    raw = np.empty((2, 2))
    for eye in range(2):
        outer = observed_model[eyes.corner_ids[0, eye]]
        inner = observed_model[eyes.corner_ids[1, eye]]
        d = outer - inner
        width[eye] = math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        for a in range(2):
            iris_sum = 0.0
            for j in range(eyes.iris_ids.shape[1]):
                iris_sum += observed_model[eyes.iris_ids[eye, j], a]
            raw[eye, a] = iris_sum * 0.2 - (outer[a] + inner[a]) * 0.5
    offsets = np.empty(4)
    for _ in range(2):
        c = corners_static + _matrix_vector(eyes.corner_gaze_flat, gaze)
        for eye in range(2):
            o, i = 3 * eye, 6 + 3 * eye  # outer corner of this eye, inner corner
            dx, dy, dz = c[o] - c[i], c[o + 1] - c[i + 1], c[o + 2] - c[i + 2]
            ratio = math.sqrt(dx * dx + dy * dy + dz * dz) / width[eye]
            for a in range(2):
                offset = (raw[eye, a] + (c[o + a] + c[i + a]) * 0.5 - eyes.mid0[eye, a]) * ratio
                offsets[2 * eye + a] = offset - eyes.iris_rest[eye, a]
        sines = np.minimum(np.maximum(offsets / eyes.radius, -1.0), 1.0)
        angles = np.degrees(np.arcsin(sines))  # (yaw, pitch) of the left eye, then of the right
        for a in range(2):
            angles[a] -= eyes.straight_deg[a]
            angles[2 + a] -= eyes.straight_deg[a]
        # `eyes.yoked`: each eye moved `yoke` of the way to both eyes' mean, weighted by openness; convergence
        # beyond the dead zone given back.
        excess = 0.5 * (angles[2] - angles[0]) - eyes.vergence_deadzone
        open_left = min(max(1.0 - weights[eyes.blink_channels[0]], 0.05), 1.0)
        open_right = min(max(1.0 - weights[eyes.blink_channels[1]], 0.05), 1.0)
        for a in range(2):
            mean = (open_left * angles[a] + open_right * angles[2 + a]) / (open_left + open_right)
            angles[a] += eyes.yoke * (mean - angles[a])
            angles[2 + a] += eyes.yoke * (mean - angles[2 + a])
        if excess > 0.0:
            angles[0] -= eyes.yoke * excess
            angles[2] += eyes.yoke * excess
        gaze = np.minimum(np.maximum(_matrix_vector(eyes.angles_to_gaze, angles), 0.0), 1.0)
    return gaze


@njit(cache=True, error_model="numpy")
def _blink(eyes: EyeTables, observed_model: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`EyeModel.blink`: (2,) blink (left, right) in [0, 1]."""
    others = weights.copy()
    others[eyes.blink_channels] = 0.0
    ratio_open = (eyes.gap0 + _matrix_vector(eyes.gap_basis, others)) / eyes.width0
    out = np.empty(2)
    for eye in range(2):
        outer = observed_model[eyes.corner_ids[0, eye]]
        inner = observed_model[eyes.corner_ids[1, eye]]
        upper = 0.0
        count = eyes.upper_lid_ids.shape[1]
        for j in range(count):
            upper += observed_model[eyes.upper_lid_ids[eye, j], 1]
        gap = upper / count - (outer[1] + inner[1]) / 2
        d = outer - inner
        ratio_obs = gap / math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        out[eye] = min(max((ratio_obs - ratio_open[eye]) / eyes.blink_gain[eye], 0.0), 1.0)
    return out


@njit(cache=True, error_model="numpy")
def _prior(
    prior: PriorTables,
    rigid: np.ndarray,
    observed: np.ndarray,
    use_camera: bool,
    center: np.ndarray,
    focal: float,
    neutral_features: np.ndarray,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """`FrameFitter.prior_features` (posed on the `rigid` landmarks), made `displaced_features` with
    `neutral_features` (N_DISPLACED,) for a displaced prior or head (empty: no neutral yet, a zero
    displacement), then `LearnedPrior.predict_with_trust`: (53,) prediction and trust; and, for a prior with a
    head, on the way, the network's own reading before the head (53,) and the plain features' mesh part
    (N_DISPLACED,), which the head's neutral is scored with (`FrameFit.prior_reading`; empty without a head)."""
    neutral_rigid = _take_rows(prior.neutral, rigid)
    weights = _uniform(rigid.shape[0])
    rot, trans, scale = _umeyama(neutral_rigid, _take_rows(observed, rigid), weights)
    corrected = observed
    if use_camera:
        corrected = _perspective_corrected(observed, prior.neutral, rot[2], scale, center, focal * prior.focal_ratio)
        rot, trans, scale = _umeyama(neutral_rigid, _take_rows(corrected, rigid), weights)
    observed_model = _to_model_frame(corrected, rot, trans, scale)
    n_mesh_values = 3 * N_MESH_LANDMARKS
    centred = np.empty(prior.mean.shape[0])
    flat_model = observed_model.reshape(-1)
    flat_neutral = prior.neutral.reshape(-1)
    for j in range(n_mesh_values):
        centred[j] = flat_model[j] - flat_neutral[j] - prior.mean[j]
    flat_rot = rot.reshape(-1)
    for j in range(9):
        centred[n_mesh_values + j] = flat_rot[j] - prior.mean[n_mesh_values + j]
    has_neutral = neutral_features.shape[0] > 0
    if prior.displaced:
        start = n_mesh_values + 9
        for j in range(n_mesh_values):
            displacement = flat_model[j] - flat_neutral[j] - neutral_features[j] if has_neutral else 0.0
            centred[start + j] = displacement - prior.mean[start + j]
    z = _vector_matrix(centred, prior.basis, np.zeros(prior.basis.shape[1]))
    h = z * prior.scale
    weight_start = bias_start = row_start = 0
    for layer in range(prior.layer_shapes.shape[0]):
        n_in, n_out = prior.layer_shapes[layer, 0], prior.layer_shapes[layer, 1]
        if layer:
            h = np.maximum(h, 0.0)
        weight = prior.layer_weights[weight_start : weight_start + n_in * n_out].reshape((n_in, n_out))
        spans = prior.layer_row_spans[row_start : row_start + n_in]
        h = _vector_matrix_spans(h, weight, spans, prior.layer_biases[bias_start : bias_start + n_out].copy())
        weight_start += n_in * n_out
        bias_start += n_out
        row_start += n_in
    network = np.zeros(0)
    posed_mesh = np.zeros(0)
    if prior.head_channels.shape[0] > 0:
        # The reading before the head, and what it read: the head's neutral is scored with them.
        network = h.copy()
        posed_mesh = np.empty(n_mesh_values)
        # `DisplacedHead.predict` on the displaced features: the posed mesh and rotation, then the displacement.
        head = prior.head_bias.copy()
        n_head = head.shape[0]
        start = n_mesh_values + 9
        for j in range(n_mesh_values):
            posed = flat_model[j] - flat_neutral[j]
            posed_mesh[j] = posed
            displacement = posed - neutral_features[j] if has_neutral else 0.0
            for k in range(n_head):
                head[k] += posed * prior.head_weights[j, k] + displacement * prior.head_weights[start + j, k]
        for j in range(9):
            for k in range(n_head):
                head[k] += flat_rot[j] * prior.head_weights[n_mesh_values + j, k]
        for k in range(n_head):  # `DisplacedHead.blend`: mixed with the plain network's reading
            channel = prior.head_channels[k]
            h[channel] = prior.head_mix[k, 0] * head[k] + prior.head_mix[k, 1] * h[channel] + prior.head_mix[k, 2]
    if prior.residual_limit <= 0:
        return h, 1.0, network, posed_mesh
    outside = math.sqrt(max(centred @ centred - z @ z, 0.0))
    return h, min(max(2.0 - outside / prior.residual_limit, 0.0), 1.0), network, posed_mesh


@njit(cache=True, error_model="numpy", nogil=True)
def fit_frame(
    tables: FitTables,
    observed: np.ndarray,
    warm_start: np.ndarray,
    has_warm_start: bool,
    has_iris: bool,
    use_camera: bool,
    center: np.ndarray,
    focal: float,
    has_previous: bool,
    previous_rotation: np.ndarray,
    previous_scale: float,
    neutral_features: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, float, bool, np.ndarray, np.ndarray]:
    """`FrameFitter.fit` (see there): (weights, rotation, translation, scale, observed_model, residual, ok,
    network, posed_mesh); ok False where a subspace matrix was not positive definite (the reference raises
    LinAlgError); network and posed_mesh: a headed prior's network reading before the head and the plain features'
    mesh part (`_prior`), empty without a prior, at strength 0, or without a head.
    `neutral_features`: the performer's neutral for a displaced prior or head (empty: none yet; unread otherwise)."""
    n_channels = tables.expression.quadratic_prior.shape[0]
    w = warm_start.copy() if has_warm_start else np.zeros(n_channels)
    lo = np.zeros(n_channels)
    hi = np.ones(n_channels)
    target = np.zeros(n_channels)
    trust = 0.0
    target_strength = 0.0
    network = np.zeros(0)
    posed_mesh = np.zeros(0)
    if tables.prior.strength > 0:
        target, trust, network, posed_mesh = _prior(
            tables.prior, tables.rigid_ids, observed, use_camera, center, focal, neutral_features
        )
        target_strength = tables.prior.strength * trust
    rigid = tables.rigid_ids
    gaze_channels = tables.eyes.gaze_channels
    model = _landmarks(tables.expression, w)
    model_rigid = _take_rows(model, rigid)
    uniform = _uniform(rigid.shape[0])
    corrected = observed
    if use_camera:
        if has_previous:
            rot, scale = previous_rotation, previous_scale
        else:
            rot, _, scale = _umeyama(model_rigid, _take_rows(observed, rigid), uniform)
        corrected = _perspective_corrected(observed, model, rot[2], scale, center, focal)
    rot, trans, scale = _umeyama(model_rigid, _take_rows(corrected, rigid), uniform)
    refine_weights = tables.pose_weights_refine / tables.pose_weights_refine.sum()
    observed_model = corrected
    for iteration in range(tables.pose_iterations):
        observed_model = _to_model_frame(corrected, rot, trans, scale)
        lo[:] = 0.0
        hi[:] = 1.0
        gaze = np.zeros(gaze_channels.shape[0])
        use_anchor = False
        if tables.eyes_active and has_iris:
            last_pass = iteration + 1 == tables.pose_iterations
            if last_pass or not has_warm_start:
                gaze = _gaze(tables.eyes, observed_model, w)
            else:
                gaze = w[gaze_channels]
            if tables.gaze_anchor > 0:
                use_anchor = True
            else:
                for j in range(gaze.shape[0]):
                    lo[gaze_channels[j]] = gaze[j]
                    hi[gaze_channels[j]] = gaze[j]
        w, ok = _solve_expression(tables, observed_model, rot, lo, hi, w, gaze, use_anchor, target, target_strength)
        if not ok:
            return w, rot, trans, scale, observed_model, 0.0, False, network, posed_mesh
        if w[tables.mouth_close] > w[tables.jaw_open] + tables.mouth_close_slack:
            hi[tables.mouth_close] = w[tables.jaw_open]
            w, ok = _solve_expression(tables, observed_model, rot, lo, hi, w, gaze, use_anchor, target, target_strength)
            if not ok:
                return w, rot, trans, scale, observed_model, 0.0, False, network, posed_mesh
        w[tables.mouth_close] = min(w[tables.mouth_close], w[tables.jaw_open])
        if iteration + 1 == tables.pose_iterations:
            break
        model = _landmarks(tables.expression, w)
        if use_camera:
            corrected = _perspective_corrected(observed, model, rot[2], scale, center, focal)
        rot, trans, scale = _umeyama(model, corrected, refine_weights)
    if tables.eyes_active:
        blink = _blink(tables.eyes, observed_model, w)
        for eye in range(2):
            k = tables.eyes.blink_channels[eye]
            blink_trust = trust * tables.prior.channel_mask[k]
            w[k] = blink_trust * w[k] + (1.0 - blink_trust) * blink[eye]
        left, right = tables.eyes.blink_channels[0], tables.eyes.blink_channels[1]
        excess = (blink[0] - blink[1]) - (w[left] - w[right])
        excess = max(abs(excess) - tables.blink_lid_deadzone, 0.0) * (1.0 if excess > 0 else -1.0)
        shift = tables.blink_lid_asymmetry * excess / 2.0
        w[left] = min(max(w[left] + shift, 0.0), 1.0)
        w[right] = min(max(w[right] - shift, 0.0), 1.0)
    model = _landmarks(tables.expression, w)
    total = 0.0
    for i in range(N_MESH_LANDMARKS):
        for a in range(3):
            d = observed_model[i, a] - model[i, a]
            total += d * d
    residual = math.sqrt(total / N_MESH_LANDMARKS)
    return w, rot, trans, scale, observed_model, residual, True, network, posed_mesh


@njit(cache=True, error_model="numpy")
def observed_from_pixels(pixels: np.ndarray, image_height: float) -> tuple[np.ndarray, bool]:
    """`pose.pixels_to_observed` with `solver.valid_observation`'s numeric checks: (n, 3) y-up landmarks, and
    whether every value is finite and the landmarks span a non-zero width and height."""
    n = pixels.shape[0]
    out = np.empty((n, 3))
    x_min = y_min = np.inf
    x_max = y_max = -np.inf
    for i in range(n):
        x, y, z = pixels[i, 0], pixels[i, 1], pixels[i, 2]
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            return out, False
        y = image_height - y
        out[i, 0], out[i, 1], out[i, 2] = x, y, -z
        x_min, x_max = min(x_min, x), max(x_max, x)
        y_min, y_max = min(y_min, y), max(y_max, y)
    return out, n > 0 and min(x_max - x_min, y_max - y_min) > 0


@njit(cache=True, error_model="numpy")
def one_euro_update(
    x: np.ndarray,
    previous_x: np.ndarray,
    previous_dx: np.ndarray,
    dt_s: float,
    min_cutoff_hz: np.ndarray,
    beta: np.ndarray,
    d_cutoff_hz: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of `filters.OneEuroFilter` for (n,) channels with (n,) parameters: (filtered x, filtered ẋ)."""
    n = x.shape[0]
    new_x = np.empty(n)
    new_dx = np.empty(n)
    for i in range(n):
        speed = (x[i] - previous_x[i]) / dt_s
        alpha_d = 1.0 / (1.0 + (1.0 / (2.0 * math.pi * d_cutoff_hz[i])) / dt_s)
        dx = previous_dx[i] + alpha_d * (speed - previous_dx[i])
        cutoff = min_cutoff_hz[i] + beta[i] * abs(dx)
        alpha = 1.0 / (1.0 + (1.0 / (2.0 * math.pi * cutoff)) / dt_s)
        new_x[i] = previous_x[i] + alpha * (x[i] - previous_x[i])
        new_dx[i] = dx
    return new_x, new_dx
