"""UV rasterization: exact on linear attributes, right orientation, gutter fill, agrees with a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detail.uv_raster import FACE_MATERIAL, UVRasterizer, face_rasterizer
from engine.face_model import FaceTopology


def _toy_topology(uv: np.ndarray, triangles: np.ndarray) -> FaceTopology:
    n = len(uv)
    return FaceTopology(
        triangles=triangles.astype(np.int32),
        render_to_model=np.arange(n, dtype=np.int32),
        render_uv=uv.astype(np.float32),
        render_triangles=triangles.astype(np.int32),
        triangle_material=np.zeros(len(triangles), np.uint8),
        material_names=(FACE_MATERIAL,),
        vertex_region=np.zeros(n, np.uint8),
        region_names=("face",),
    )


def test_linear_attribute_is_reproduced_exactly(face_model) -> None:
    """Interpolating the UVs themselves must give each covered texel its own centre (u, v), row y ↔ v."""
    r = face_rasterizer(face_model, 128)
    uv = face_model.topology.render_uv.copy()
    uv[:, 0] -= np.floor(uv[:, 0])  # the face tile is u ∈ [0, 1]; others are ignored anyway
    got = r.rasterize_render(uv, fill=False)
    ys, xs = np.mgrid[0:128, 0:128]
    want = np.stack([(xs + 0.5) / 128, (ys + 0.5) / 128], axis=-1)
    assert r.covered.mean() > 0.8
    np.testing.assert_allclose(got[r.covered], want[r.covered], atol=2e-5)
    assert np.all(got[~r.covered] == 0)


def test_model_and_batch_attributes(face_model) -> None:
    r = face_rasterizer(face_model, 64)
    pos = face_model.neutral
    single = r.rasterize(pos)
    batch = r.rasterize(np.stack([pos, 2 * pos]))
    assert single.shape == (64, 64, 3) and batch.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(batch[1], 2 * single, rtol=1e-5, atol=1e-5)
    scalar = r.rasterize(pos[:, 1])
    np.testing.assert_allclose(scalar, single[..., 1], atol=1e-5)
    # barycentric weights are a partition of unity over covered texels
    np.testing.assert_allclose(r.barycentric[r.covered].sum(axis=1), 1.0, atol=1e-5)
    # corners sit on face-tile triangles only
    mat = face_model.topology.triangle_material[r.triangle[r.covered]]
    assert np.all(mat == face_model.topology.material_names.index(FACE_MATERIAL))


def test_matches_brute_force_reference() -> None:
    """A small mesh with a hole, against a per-texel point-in-triangle loop (test-only reference)."""
    rng = np.random.default_rng(3)
    uv = np.array([[0.1, 0.1], [0.9, 0.15], [0.5, 0.8], [0.95, 0.9], [0.05, 0.95]])
    tris = np.array([[0, 1, 2], [1, 3, 2], [2, 4, 0]])
    topo = _toy_topology(uv, tris)
    n = 24
    r = UVRasterizer.build(topo, n, gutter=2)
    values = rng.normal(size=(len(uv), 2)).astype(np.float32)
    got = r.rasterize(values, fill=False)
    for y in range(n):
        for x in range(n):
            p = np.array([(x + 0.5) / n, (y + 0.5) / n])
            hit = None
            for t in tris:
                a, b, c = uv[t]
                m = np.array([b - a, c - a]).T
                l1, l2 = np.linalg.solve(m, p - a)
                w = np.array([1 - l1 - l2, l1, l2])
                if (w >= -1e-9).all():
                    hit = w @ values[t]
            if hit is None:
                assert not r.covered[y, x], (y, x)
            else:
                assert r.covered[y, x], (y, x)
                np.testing.assert_allclose(got[y, x], hit, atol=1e-5)


def test_gutter_fill_copies_nearest_covered_texel() -> None:
    uv = np.array([[0.3, 0.3], [0.7, 0.3], [0.5, 0.7]])
    topo = _toy_topology(uv, np.array([[0, 1, 2]]))
    r = UVRasterizer.build(topo, 32, gutter=3)
    vals = np.array([1.0, 2.0, 3.0], np.float32)
    filled = r.rasterize(vals)
    raw = r.rasterize(vals, fill=False)
    gutter = r.filled & ~r.covered
    assert gutter.sum() > 0
    assert np.all(filled[r.covered] == raw[r.covered])
    assert np.all(filled[gutter] >= 1.0)  # took a covered texel's value, not 0
    assert np.all(filled[~r.filled] == 0)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~r.covered)
    assert dist[gutter].max() <= 3 and np.all(gutter == ((dist > 0) & (dist <= 3)))
    np.testing.assert_array_equal(r.fill_gutter(raw), filled)


def test_bad_input_is_named(face_model) -> None:
    r = face_rasterizer(face_model, 32)
    with pytest.raises(ValueError, match="vertices"):
        r.rasterize(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="unknown material"):
        UVRasterizer.build(face_model.topology, 32, materials=("M_Nope",))
