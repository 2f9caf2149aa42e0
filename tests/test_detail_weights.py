"""design §4.2 reference properties of the key-expression weights, on the real ICT activation masks."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detail.weights import (
    KEY_EXPRESSION_NAMES,
    activation_masks,
    blend_bases,
    key_expression_coefficients,
    key_expression_weights,
    normalize_key_weights,
    peak_normalizers,
    vertex_key_weights,
)


@pytest.fixture(scope="module")
def masks(face_model) -> tuple[np.ndarray, np.ndarray]:
    face = face_model.topology.region_vertices("face")
    return activation_masks(face_model.expression_basis, face), face


def _weights(alpha: np.ndarray, a: np.ndarray, normalizers: np.ndarray | None = None) -> np.ndarray:
    return normalize_key_weights(vertex_key_weights(key_expression_coefficients(alpha, normalizers=normalizers), a))


def test_table_matches_design() -> None:
    t = key_expression_weights()
    assert t.shape == (20, 53) and KEY_EXPRESSION_NAMES[0] == "neutral" and not t[0].any()
    assert np.all(t[1:].sum(axis=1) > 0) and t.min() >= 0
    assert KEY_EXPRESSION_NAMES[15] == "grin" and np.count_nonzero(t[15]) == 5


def test_masks_are_normalized(masks) -> None:
    a, face = masks
    assert a.shape[0] == 53 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_allclose(a[:, face].max(axis=1), 1.0, atol=1e-6)


def test_zero_expression_is_exactly_neutral(masks) -> None:
    a, _ = masks
    m = _weights(np.zeros(53), a)
    assert np.all(m[0] == 1.0) and np.all(m[1:] == 0.0)
    rng = np.random.default_rng(0)
    bases = rng.normal(size=(20, 8, 8, 3)).astype(np.float32)
    texel_weights = np.broadcast_to(m[:, :1, None], (20, 8, 8))  # any texel interpolating those vertices
    np.testing.assert_array_equal(blend_bases(np.ascontiguousarray(texel_weights), bases), bases[0])


@pytest.mark.parametrize("seed", range(5))
def test_weights_are_convex(masks, seed: int) -> None:
    a, _ = masks
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0, 1, 53) * (rng.uniform(size=53) < 0.5)
    for norm in (None, peak_normalizers(a)):
        m = _weights(alpha, a, norm)
        assert m.min() >= 0.0
        np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-5)


def _dominance(a: np.ndarray, face: np.ndarray, i: int, normalizers: np.ndarray | None) -> float:
    """Fraction of the vertices where key expression i's own mask is within 90 % of its peak on which
    M_i ≥ every other M_k at α = α̂_i."""
    t = key_expression_weights()
    m = _weights(t[i], a, normalizers)
    own = (t[i] ** 2) @ a
    sel = np.zeros(a.shape[1], bool)
    sel[face] = own[face] >= 0.9 * own[face].max()
    others = np.delete(m, i, axis=0)[:, sel].max(axis=0)
    return float(np.mean(m[i, sel] >= others - 1e-6))


def test_full_key_expression_dominates_where_it_moves_skin(masks) -> None:
    """With peak normalizers every key expression owns the skin it moves most at its own full expression."""
    a, face = masks
    norm = peak_normalizers(a, face)
    fractions = {KEY_EXPRESSION_NAMES[i]: _dominance(a, face, i, norm) for i in range(1, 20)}
    assert min(fractions.values()) >= 0.95, fractions


def test_design_normalization_limits(masks) -> None:
    """the design's Σ(α̂)² denominator: single-blendshape key expressions dominate, but bilateral ones peak at 0.5
    and anger/sadness/grin/brow_raiser lose to neutral or brow_lower (the reason `peak_normalizers` exists)."""
    a, face = masks
    for name in ("mouth_stretch", "jaw_left", "jaw_forward", "mouth_left", "lip_puckerer", "lip_funneler"):
        assert _dominance(a, face, KEY_EXPRESSION_NAMES.index(name), None) == 1.0, name
    t = key_expression_weights()
    smile = KEY_EXPRESSION_NAMES.index("smile")
    assert _weights(t[smile], a)[smile].max() <= 0.5 + 1e-3
    assert _dominance(a, face, KEY_EXPRESSION_NAMES.index("brow_raiser"), None) < 0.5
