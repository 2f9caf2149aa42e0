"""Expression weights from posed landmarks: the regularized bounded least squares of design §3.2.

With the pose (R, s, t) known, observed landmarks y (camera frame, pixels) are brought into the model frame,
y' = Rᵀ(y − t)/s (cm), and

    min_w  Σ_l ω_l (y'_l − L_l − E_l w)ᵀ M (y'_l − L_l − E_l w) + Σ_k λ_k w_k² + μ Σ_pairs (w_L − w_R)²,
    lo ≤ w ≤ hi,

L (478, 3) the identity's neutral landmarks, E (478, 3, 53) the embedded expression basis, ω per-landmark
weights, and M = I − (1 − ζ) n nᵀ down-weights the camera's depth axis n = Rᵀ e_z by ζ (MediaPipe's z is
the noisiest coordinate). Because M is a 3 × 3 matrix shared by all landmarks, the 53 × 53 normal matrix is a
9-term combination of Gram blocks precomputed per identity: EᵀME = Σ_ab M_ab G_ab. Per frame that is a
(9 × 2809) product plus one (53 × 1434) product for the right-hand side, then the warm-started box QP.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from engine.face_model import FaceModel, LandmarkEmbedding
from engine.names import ICT_EXPRESSIONS, ict_partner
from engine.solve.bounded_lsq import BoxQPResult, solve_box_qp
from engine.solve.landmark_sets import MIRROR
from engine.solve.response import LandmarkResponse
from engine.solve.tables import ExpressionTables, contiguous

N_EXPRESSIONS = len(ICT_EXPRESSIONS)


@dataclass(frozen=True)
class EmbeddedFace:
    """One identity's landmarks as an affine function of the expression weights.

    neutral: (478, 3) float64 cm; basis: (478, 3, 53) float64 cm per unit weight.
    """

    neutral: np.ndarray
    basis: np.ndarray

    @staticmethod
    def build(
        model: FaceModel,
        embedding: LandmarkEmbedding,
        identity_weights: np.ndarray | None = None,
        symmetric: bool = True,
        response: LandmarkResponse | None = None,
    ) -> EmbeddedFace:
        """Embed `model.personalize(identity_weights)` through `embedding` (vectorized gathers, a few ms).

        `symmetric`: average each landmark with its mirror partner's mirror image (channels `_L` ↔ `_R`
        swapped). ICT and MediaPipe's topology are both symmetric, so an embedding's asymmetry is fitting noise;
        averaging it out makes the solver mirror-equivariant: a mirrored face reads with its sides swapped.
        `response`: MediaPipe's measured correction (`engine/solve/response.py`), added to the embedded map.
        """
        face = model.personalize(identity_weights)
        neutral = embedding.apply(face.neutral.astype(np.float64))
        basis = np.moveaxis(embedding.apply(face.expression_basis), 0, -1).astype(np.float64)  # (478, 3, 53)
        if response is not None:
            neutral = neutral + response.neutral_delta
            basis = basis + response.basis_delta
        if symmetric:
            neutral = symmetrize_landmarks(neutral)
            basis = symmetrize_landmarks(basis, side_swap())
        return EmbeddedFace(neutral, np.ascontiguousarray(basis))

    @cached_property
    def _flat(self) -> tuple[np.ndarray, np.ndarray]:
        return self.neutral.reshape(-1).copy(), np.ascontiguousarray(self.basis.reshape(-1, self.basis.shape[-1]))

    def landmarks(self, weights: np.ndarray) -> np.ndarray:
        """(53,) → (478, 3) cm in the model frame."""
        neutral, basis = self._flat  # one BLAS matrix-vector product instead of a batched 3-D matmul
        return (neutral + basis @ weights).reshape(-1, 3)

    def motion(self) -> np.ndarray:
        """(478,) cm: the largest displacement any single expression at weight 1 gives each landmark."""
        return np.linalg.norm(self.basis, axis=1).max(axis=1)


def coordinate_gram(basis: np.ndarray) -> np.ndarray:
    """(L, 3, K) → (9, K²): G[a, b] = Σ_l B_l[a]ᵀ B_l[b] for the coordinate pairs (a, b), flattened so that
    Σ_ab M_ab G_ab is one (9,) @ (9, K²) product. One BLAS product (3K × 3K) instead of an einsum."""
    n, _, k = basis.shape
    flat = basis.reshape(n, 3 * k)
    return (flat.T @ flat).reshape(3, k, 3, k).transpose(0, 2, 1, 3).reshape(9, k * k)


def symmetrize_landmarks(points: np.ndarray, channel_map: np.ndarray | None = None) -> np.ndarray:
    """(478, 3) or (478, 3, K) landmark positions / bases → the average with their mirror image: landmark i
    becomes ½(p_i + flip(p_MIRROR[i])), x negated; `channel_map` (K,) pairs each basis column with its mirror
    column (`side_swap()` for expressions; None for unsided ones such as identity modes)."""
    mirror = np.array(MIRROR)
    flip = np.array([-1.0, 1.0, 1.0])
    mirrored = points[mirror]
    if points.ndim == 3:
        if channel_map is not None:
            mirrored = mirrored[..., channel_map]
        flip = flip[:, None]
    return 0.5 * (points + mirrored * flip)


def mirror_image_landmarks(points: np.ndarray, width: float) -> np.ndarray:
    """(478, 3) landmarks in pixels (y up or down) → those of the horizontally flipped image: x → width − x, each
    landmark taking its mirror partner's place (`MIRROR`), as MediaPipe finds them on the flipped frame up to its
    own asymmetry. A face read from them reads its sides swapped (`side_swap`)."""
    mirrored = points[np.array(MIRROR)].copy()
    mirrored[:, 0] = width - mirrored[:, 0]
    return mirrored


def side_swap(names: tuple[str, ...] = ICT_EXPRESSIONS) -> np.ndarray:
    """(53,) index map from each ICT channel to its mirror image (`names.ict_partner`): `X_L` ↔ `X_R`, and the
    sideways motions `jawLeft` ↔ `jawRight`, `mouthLeft` ↔ `mouthRight` (+x is the subject's left)."""
    partners = [ict_partner(name) for name in names]
    return np.array([names.index(p) if p in names else i for i, p in enumerate(partners)], dtype=np.int64)


def symmetric_pairs(names: tuple[str, ...] = ICT_EXPRESSIONS) -> np.ndarray:
    """(P, 2) indices of `X_L` / `X_R` channel pairs."""
    pairs = [(i, names.index(n[:-2] + "_R")) for i, n in enumerate(names) if n.endswith("_L")]
    return np.array(pairs, dtype=np.int64)


class ExpressionSolver:
    """The per-identity precomputation and the per-frame solve for the 53 weights.

    landmark_weights: (478,) ω_l ≥ 0; regularization: (53,) λ_k in cm² (the data term sums squared cm over
    landmarks); symmetry: μ in cm² for the left/right pair prior.
    """

    def __init__(
        self,
        face: EmbeddedFace,
        landmark_weights: np.ndarray,
        regularization: np.ndarray,
        symmetry: float = 0.0,
    ) -> None:
        self.face = face
        self.landmark_weights = np.asarray(landmark_weights, dtype=np.float64)
        basis = face.basis * np.sqrt(self.landmark_weights)[:, None, None]  # (478, 3, 53)
        self.gram = coordinate_gram(basis)
        self.basis_flat_t = np.ascontiguousarray(face.basis.reshape(-1, N_EXPRESSIONS).T)  # (53, 1434)
        self.regularization = np.asarray(regularization, dtype=np.float64)
        prior = np.diag(self.regularization)
        for i, j in symmetric_pairs():
            prior[i, i] += symmetry
            prior[j, j] += symmetry
            prior[i, j] -= symmetry
            prior[j, i] -= symmetry
        self.quadratic_prior = prior
        # The same arrays as the compiled fit reads them (`engine/solve/tables.py`).
        self.tables = ExpressionTables(
            neutral=contiguous(face.neutral),
            basis_flat_t=contiguous(self.basis_flat_t),
            gram=contiguous(self.gram),
            quadratic_prior=contiguous(self.quadratic_prior),
            regularization=contiguous(self.regularization),
            landmark_weights=contiguous(self.landmark_weights),
        )

    def normal_equations(self, observed_model: np.ndarray, metric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """observed_model: (478, 3) cm in the model frame; metric: (3, 3) M. Returns H (53, 53), b (53,)."""
        H = (metric.reshape(-1) @ self.gram).reshape(N_EXPRESSIONS, N_EXPRESSIONS) + self.quadratic_prior
        residual = (observed_model - self.face.neutral) * self.landmark_weights[:, None]
        b = self.basis_flat_t @ (residual @ metric).reshape(-1)
        return H, b

    def solve(
        self,
        observed_model: np.ndarray,
        metric: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        warm_start: np.ndarray | None = None,
        max_iterations: int = 30,
        anchor: tuple[np.ndarray, np.ndarray, float] | None = None,
        target: tuple[np.ndarray, float | np.ndarray] | None = None,
    ) -> BoxQPResult:
        """Bounded weights (53,) for landmarks already in the model frame; lo == hi pins a channel.

        `anchor` (channels (k,), values (k,), strength α cm²) replaces those channels' λ w² by α (w − value)²:
        a pull towards an estimate from elsewhere (the irises, for gaze) rather than towards zero, which the
        landmarks may still move. `target` (values (53,), strength μ cm², one or per channel) adds
        Σ_k μ_k (w_k − value_k)²: the learned prior (`engine/solve/prior.py`).
        """
        H, b = self.normal_equations(observed_model, metric)
        if anchor is not None:
            channels, values, strength = anchor
            H[channels, channels] += strength - self.regularization[channels]
            b = b + np.bincount(channels, values * strength, minlength=len(b))
        if target is not None:
            values, strength = target
            H.ravel()[:: len(b) + 1] += strength  # H is contiguous: ravel() is a view
            b = b + strength * values
        return solve_box_qp(H, b, lo, hi, warm_start, max_iterations)


def depth_metric(rotation: np.ndarray, depth_weight: float) -> np.ndarray:
    """(3, 3) M = I − (1 − ζ) n nᵀ with n = Rᵀ e_z, the camera's depth axis in the model frame."""
    n = rotation[2]
    metric = np.multiply.outer(n, n)
    metric *= depth_weight - 1.0  # −(1 − ζ) n nᵀ, then + I: bit-identical to I − (1 − ζ) n nᵀ
    metric.flat[::4] += 1.0
    return metric
