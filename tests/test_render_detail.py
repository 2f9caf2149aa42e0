"""The GLSL dynamic-detail blend against the numpy reference (design §4.2), rendered headless in UV space."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import RenderConfig
from engine.detail.uv_raster import face_rasterizer
from engine.detail.weights import (
    activation_masks,
    blend_bases,
    key_expression_coefficients,
    key_expression_weights,
    normalize_key_weights,
    vertex_key_weights,
)
from engine.identity import DetailBases, Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.bench import synthetic_ridge_bases
from engine.render.renderer import AvatarRenderer

N = 128  # bases resolution for the test: small enough for a fast numpy reference


def ridge_bases(n: int, seed: int = 0) -> np.ndarray:
    """(20, n, n, 3) synthetic ridge bases with exact UV gradients, rounded to float16 like a stored bundle."""
    return synthetic_ridge_bases(n, seed).maps.astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def maps() -> np.ndarray:
    return ridge_bases(N)


@pytest.fixture(scope="module")
def renderer(face_model, maps):
    identity = Identity(
        "ridges", face_model.model_id, face_model.default_identity_weights(), np.zeros(53, np.float32),
        bases=DetailBases(maps, "synthetic"),
    )  # fmt: skip
    exact = RenderConfig(width=64, height=64, samples=0, detail_key_threshold=0.0)  # every key with any weight
    with AvatarRenderer(face_model, identity, exact) as r:
        yield r


def reference_blend(face_model, maps: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference: per-vertex M_i, interpolated per texel by the UV rasterizer, normalized, blended.
    Returns (N, N, 3) F and the (N, N) covered mask."""
    masks = activation_masks(face_model.expression_basis, face_model.topology.region_vertices("face"))
    per_vertex = vertex_key_weights(key_expression_coefficients(weights), masks)  # (19, V)
    raster = face_rasterizer(face_model, N)
    per_texel = np.moveaxis(raster.rasterize(per_vertex.T, fill=False), -1, 0)  # (19, N, N)
    return blend_bases(normalize_key_weights(per_texel), maps), raster.covered


def _cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    sparse = np.zeros(53)
    sparse[rng.choice(53, 5, replace=False)] = rng.uniform(0.2, 1.0, 5)
    return [
        ("dense_random", rng.uniform(0, 1, 53)),
        ("dense_random_2", rng.uniform(0, 1, 53) ** 3),
        ("sparse_random", sparse),
        ("smile_key", key_expression_weights()[1]),
        ("grin_key_saturating", np.clip(2.0 * key_expression_weights()[15], 0, 1)),
    ]


@pytest.mark.parametrize(("name", "weights"), _cases(), ids=[c[0] for c in _cases()])
def test_glsl_blend_matches_numpy_reference(face_model, renderer, maps, name, weights):
    gl = renderer.render_uv(weights)
    ref, covered = reference_blend(face_model, maps, weights)
    both = covered & (gl[..., 3] == 1.0)
    assert both.sum() >= 0.99 * covered.sum(), "the UV pass must cover the texels the rasterizer covers"
    assert not (gl[..., 3] == 1.0)[~covered].sum() > 0.02 * covered.sum()
    err = np.abs(gl[both, :3] - ref[both])
    assert err[:, 0].max() <= 1e-3, f"{name}: F differs by {err[:, 0].max():.2e} mm"
    # Gradients are ~100× larger numbers (mm per unit UV): same relative precision.
    assert err[:, 1:].max() <= 1e-3 * max(1.0, np.abs(ref[both, 1:]).max() / np.abs(ref[both, 0]).max())
    # The blend moved away from the neutral basis wherever a key expression is active.
    assert np.abs(ref[both, 0] - maps[0][both, 0]).max() > 0.05


def test_zero_weights_give_the_neutral_basis_exactly(renderer, maps):
    gl = renderer.render_uv(np.zeros(53))
    covered = gl[..., 3] == 1.0
    assert covered.mean() > 0.3
    np.testing.assert_array_equal(gl[covered, :3], maps[0][covered])


def test_key_expression_reaches_its_basis_where_the_skin_moves_most(face_model, renderer, maps):
    """α = α̂_i gives F ≈ F̂_i where every blendshape of key i is at full activation (A ≈ 1)."""
    i = 4  # jaw_left: jawLeft 1, a blendshape no other key expression uses
    gl = renderer.render_uv(key_expression_weights()[i])
    masks = activation_masks(face_model.expression_basis, face_model.topology.region_vertices("face"))
    jaw = face_model.expression_names.index("jawLeft")
    a_tex = face_rasterizer(face_model, N).rasterize(masks[jaw], fill=False)
    strong = (a_tex > 0.97) & (gl[..., 3] == 1.0)
    assert strong.sum() > 10
    # c = α·α̂/‖α̂‖² = 1 → M_i = A ≥ 0.97 there, M_0 ≤ 0.03.
    assert np.abs(gl[strong, 0] - maps[i][strong, 0]).max() < 0.03 * 2 * np.abs(maps[..., 0]).max()
    weak = (a_tex < 0.01) & (gl[..., 3] == 1.0)
    assert np.abs(gl[weak, 0] - maps[0][weak, 0]).max() < 0.01 * 2 * np.abs(maps[..., 0]).max()


def test_skipping_faint_key_expressions_is_bounded_by_the_threshold(face_model, maps):
    """Tracked faces give every channel a little weight. With `detail_key_threshold` t, keys whose M_i ≤ t
    everywhere are skipped: fewer layers per pixel, and F moves by at most Σ_skipped t · max|F̂_i − F̂_0|."""
    rng = np.random.default_rng(11)
    weights = rng.uniform(0.0, 0.03, 53)  # a tracked near-neutral face: all channels faintly on
    weights[ICT_EXPRESSIONS.index("mouthSmile_L")] = weights[ICT_EXPRESSIONS.index("mouthSmile_R")] = 0.7
    identity = Identity(
        "ridges", face_model.model_id, face_model.default_identity_weights(), np.zeros(53, np.float32),
        bases=DetailBases(maps, "synthetic"),
    )  # fmt: skip
    threshold = 0.02
    with AvatarRenderer(face_model, identity, RenderConfig(width=64, height=64, samples=0,
                                                           detail_key_threshold=threshold)) as r:  # fmt: skip
        gl = r.render_uv(weights)
        n_active = r._key_weight_uniforms(weights)["u_n_active"]
    ref, covered = reference_blend(face_model, maps, weights)
    c = key_expression_coefficients(weights)
    skipped = np.abs(c).sum(axis=1) <= threshold
    assert n_active == (~skipped).sum() and 1 <= n_active <= 8 and skipped.sum() >= 8
    both = covered & (gl[..., 3] == 1.0)
    bound = threshold * np.abs(maps[1:, ..., 0] - maps[0, ..., 0]).max(axis=(1, 2))[skipped].sum()
    err = np.abs(gl[both, 0] - ref[both, 0]).max()
    assert 0 < err <= bound + 1e-3, f"F off by {err:.4f} mm, bound {bound:.4f}"
