"""Dynamic-displacement weights (FaceScape §4.2, design §4.2 normalized form): the numpy reference.

The GLSL vertex/fragment shaders (`shaders/avatar.*.glsl`) implement exactly these formulas; the tests
compare them. Notation: j indexes the 53 blendshapes (ICT order), i the 20 key expressions (0 = neutral).

    A_j(v) = ||Δ_j(v)|| / max_v ||Δ_j(v)||                activation masks, per vertex, in [0, 1]
    c_ij   = α^j · α̂_i^j / Σ_k (α̂_i^k)²                  per frame, (19, 53)
    M_i(v) = clamp(Σ_j c_ij · A_j(v), 0, 1)               per vertex, then interpolated
    s = Σ_{i≥1} M_i ; if s > 1: M_i ← M_i / s ;  M_0 = 1 − Σ_{i≥1} M_i
    F(p)   = Σ_i M_i(p) · F̂_i(p)
"""

from __future__ import annotations

import numpy as np

from engine.names import ICT_EXPRESSIONS

# design §4.1: the 20 key expressions as weights over our 53 blendshapes (unlisted weights are 0).
KEY_EXPRESSIONS: tuple[tuple[str, dict[str, float]], ...] = (
    ("neutral", {}),
    ("smile", {"mouthSmile_L": 0.6, "mouthSmile_R": 0.6}),
    ("mouth_stretch", {"jawOpen": 0.7}),
    ("anger", {"browDown_L": 1.0, "browDown_R": 1.0, "mouthFrown_L": 0.3, "mouthFrown_R": 0.3}),
    ("jaw_left", {"jawLeft": 1.0}),
    ("jaw_right", {"jawRight": 1.0}),
    ("jaw_forward", {"jawForward": 1.0}),
    ("mouth_left", {"mouthLeft": 1.0}),
    ("mouth_right", {"mouthRight": 1.0}),
    ("dimpler", {"mouthDimple_L": 1.0, "mouthDimple_R": 1.0}),
    ("chin_raiser", {"mouthRollLower": 0.6, "mouthShrugUpper": 1.0}),
    ("lip_puckerer", {"mouthPucker": 1.0}),
    ("lip_funneler", {"mouthFunnel": 1.0}),
    ("sadness", {"browDown_L": 0.5, "browDown_R": 0.5, "mouthFrown_L": 0.8, "mouthFrown_R": 0.8}),
    ("lip_roll", {"jawOpen": 0.23, "mouthRollUpper": 0.8, "mouthRollLower": 0.6}),
    ("grin", {"mouthSmile_L": 0.5, "mouthSmile_R": 0.5, "mouthShrugUpper": 1.0,
              "cheekSquint_L": 1.0, "cheekSquint_R": 1.0}),
    ("cheek_blowing", {"cheekPuff_L": 1.0, "cheekPuff_R": 1.0}),
    ("eye_closed", {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}),
    ("brow_raiser", {"browInnerUp_L": 0.4, "browInnerUp_R": 0.4, "browOuterUp_L": 0.4, "browOuterUp_R": 0.4,
                     "eyeLookUp_L": 0.8, "eyeLookUp_R": 0.8}),
    ("brow_lower", {"browDown_L": 1.0, "browDown_R": 1.0}),
)  # fmt: skip
KEY_EXPRESSION_NAMES: tuple[str, ...] = tuple(name for name, _ in KEY_EXPRESSIONS)
N_KEY_EXPRESSIONS = len(KEY_EXPRESSIONS)


def key_expression_weights() -> np.ndarray:
    """α̂: (20, 53) float64, row i = key expression i over the ICT blendshapes (row 0 all zero)."""
    table = np.zeros((N_KEY_EXPRESSIONS, len(ICT_EXPRESSIONS)))
    for i, (_, weights) in enumerate(KEY_EXPRESSIONS):
        for name, value in weights.items():
            table[i, ICT_EXPRESSIONS.index(name)] = value
    return table


def activation_masks(expression_basis: np.ndarray, vertex_ids: np.ndarray | None = None) -> np.ndarray:
    """A: (E, V, 3) expression deltas (cm) → (E, V) float32 masks in [0, 1].

    Each blendshape is normalized by its largest displacement over `vertex_ids` (default: all vertices),
    so the skin a blendshape moves most reads 1. Pass the face vertices to keep teeth and eyeballs from
    setting the scale.
    """
    norms = np.linalg.norm(expression_basis, axis=-1)
    region = norms if vertex_ids is None else norms[:, vertex_ids]
    peak = region.max(axis=1, keepdims=True)
    return np.clip(norms / np.where(peak > 0, peak, 1.0), 0.0, 1.0).astype(np.float32)


def key_expression_coefficients(
    expression_weights: np.ndarray, table: np.ndarray | None = None, normalizers: np.ndarray | None = None
) -> np.ndarray:
    """c: (53,) current weights α → (19, 53) float32, c_ij = α^j α̂_i^j / D_i for i = 1..19.

    D_i = Σ_k (α̂_i^k)² (design §4.2) unless `normalizers` (19,) are given — see `peak_normalizers`.
    """
    alpha_hat = key_expression_weights() if table is None else table
    alpha_hat = alpha_hat[1:]
    norm = (alpha_hat**2).sum(axis=1, keepdims=True) if normalizers is None else np.asarray(normalizers)[:, None]
    return (np.asarray(expression_weights, dtype=np.float64)[None, :] * alpha_hat / norm).astype(np.float32)


def peak_normalizers(
    masks: np.ndarray, vertex_ids: np.ndarray | None = None, table: np.ndarray | None = None
) -> np.ndarray:
    """(53, V) A → (19,) D_i = max_v Σ_k (α̂_i^k)² A_k(v): the denominator that makes M_i reach 1 at α = α̂_i.

    With the design's D_i = Σ_k (α̂_i^k)², a key expression made of a left/right pair (smile, dimpler, eye_closed,
    cheek_blowing …) peaks at M_i = 0.5 — one side's mask is ≈ 0 where the other's is 1 — and several (anger,
    sadness, grin, brow_raiser) never outweigh the neutral basis at their own full expression. Only the
    CPU-side c_ij change; the shaders are the same.
    """
    alpha_hat = (key_expression_weights() if table is None else table)[1:]
    region = masks if vertex_ids is None else masks[:, vertex_ids]
    peak = ((alpha_hat**2) @ region).max(axis=1)
    return np.where(peak > 0, peak, 1.0)


def vertex_key_weights(coefficients: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(19, 53) c, (53, V) A → (19, V) float32 clamp(c · A, 0, 1): what the vertex shader computes."""
    return np.clip(coefficients @ masks, 0.0, 1.0).astype(np.float32)


def normalize_key_weights(raw: np.ndarray) -> np.ndarray:
    """(19, ...) interpolated M_1..19 → (20, ...) convex weights with M_0 first: the fragment shader's step."""
    total = raw.sum(axis=0, keepdims=True)
    scaled = raw / np.maximum(total, 1.0)
    return np.concatenate([np.maximum(1.0 - scaled.sum(axis=0, keepdims=True), 0.0), scaled], axis=0)


def blend_bases(weights: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """(20, H, W) M, (20, H, W, C) [F̂, ∂F̂/∂u, ∂F̂/∂v] → (H, W, C) per-texel blend F = Σ_i M_i F̂_i."""
    return np.einsum("ihw,ihwc->hwc", weights, bases)
