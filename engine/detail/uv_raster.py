"""Per-vertex attributes → N×N maps over one UV tile, by barycentric interpolation (numpy reference).

Orientation: texel (row y, column x) has its centre at u = (x + 0.5) / N, v = (y + 0.5) / N, so row 0 is
v = 0 — the layout OpenGL expects when the array is uploaded as-is (row 0 of a texture is t = 0). Image
files conventionally put v = 1 on top: flip rows (`map[::-1]`) before saving a map as a picture to view.

Rasterizing once is the expensive part (a triangle id and a barycentric per texel); `UVRasterizer` keeps
that, so each attribute afterwards is one gather. Texels outside every triangle but within `gutter` texels
of one copy their nearest covered texel, so bilinear (and mip) sampling near seams reads valid values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from engine.face_model import FaceModel, FaceTopology

FACE_MATERIAL = "M_Face"
DEFAULT_GUTTER = 4
# Triangles per vectorized batch: bounds the candidate-texel arrays to a few MB at 1024².
_BATCH = 4096


@dataclass(frozen=True)
class UVRasterizer:
    """A precomputed rasterization of one UV tile at N×N.

    triangle: (N, N) int32 triangle index into the topology (−1 where no triangle covers the texel).
    corners_model: (N, N, 3) int32 model-vertex ids of the covering triangle's corners (0 where uncovered).
    corners_render: (N, N, 3) int32 render-vertex ids of the same corners.
    barycentric: (N, N, 3) float32 weights of those corners (0 where uncovered).
    covered: (N, N) bool texels whose centre lies in a triangle.
    fill_target, fill_source: (G,) int64 flat texel indices: gutter texel ← nearest covered texel.
    """

    resolution: int
    triangle: np.ndarray
    corners_model: np.ndarray
    corners_render: np.ndarray
    barycentric: np.ndarray
    covered: np.ndarray
    fill_target: np.ndarray
    fill_source: np.ndarray

    @staticmethod
    def build(
        topology: FaceTopology,
        resolution: int,
        materials: tuple[str, ...] = (FACE_MATERIAL,),
        gutter: int = DEFAULT_GUTTER,
    ) -> UVRasterizer:
        """Rasterize the triangles of `materials` into the UV tile they share at `resolution`².

        UVs are taken modulo 1 per triangle (ICT places each material in its own unit tile along u).
        """
        if resolution < 2:
            raise ValueError(f"resolution must be at least 2, got {resolution}")
        unknown = [m for m in materials if m not in topology.material_names]
        if unknown:
            raise ValueError(f"unknown material(s) {unknown}; known: {', '.join(topology.material_names)}")
        ids = [topology.material_names.index(m) for m in materials]
        tri_ids = np.flatnonzero(np.isin(topology.triangle_material, ids)).astype(np.int32)
        if len(tri_ids) == 0:
            raise ValueError(f"no triangles with material(s) {materials}")
        render_tris = topology.render_triangles[tri_ids]
        uv = topology.render_uv[render_tris].astype(np.float64)  # (T, 3, 2)
        uv -= np.floor(uv.mean(axis=1, keepdims=True))  # bring each triangle into the [0, 1) tile
        triangle = _rasterize_triangles(uv * resolution, resolution)
        covered = triangle >= 0
        local = np.where(covered, triangle, 0)
        barycentric = _barycentric_at_texels(uv[local] * resolution, resolution)
        barycentric[~covered] = 0.0
        corners_render = render_tris[local].astype(np.int32)
        corners_model = topology.render_to_model[corners_render].astype(np.int32)
        corners_render[~covered] = 0
        corners_model[~covered] = 0
        target, source = _gutter_fill_indices(covered, gutter)
        return UVRasterizer(
            resolution=resolution,
            triangle=np.where(covered, tri_ids[local], -1).astype(np.int32),
            corners_model=corners_model,
            corners_render=corners_render,
            barycentric=barycentric.astype(np.float32),
            covered=covered,
            fill_target=target,
            fill_source=source,
        )

    @property
    def filled(self) -> np.ndarray:
        """(N, N) bool: covered texels plus the gutter texels that `rasterize` fills."""
        mask = self.covered.copy().reshape(-1)
        mask[self.fill_target] = True
        return mask.reshape(self.covered.shape)

    def rasterize(self, values: np.ndarray, fill: bool = True) -> np.ndarray:
        """Model-vertex attributes (..., V, C) → (..., N, N, C) float32 map; a 1-D (V,) array → (N, N).

        Uncovered texels are 0, except gutter texels when `fill` is set.
        """
        return self._gather(values, self.corners_model, fill)

    def rasterize_render(self, values: np.ndarray, fill: bool = True) -> np.ndarray:
        """Render-vertex (seam-split) attributes (..., R, C) → (..., N, N, C); a 1-D (R,) array → (N, N)."""
        return self._gather(values, self.corners_render, fill)

    def fill_gutter(self, image: np.ndarray) -> np.ndarray:
        """(N, N) or (N, N, C) map → copy with each gutter texel set from its nearest covered texel."""
        n = self.resolution
        if image.shape[:2] != (n, n):
            raise ValueError(f"map must be ({n}, {n}[, C]), got {image.shape}")
        flat = image.reshape(n * n, -1).copy()
        flat[self.fill_target] = flat[self.fill_source]
        return flat.reshape(image.shape)

    def _gather(self, values: np.ndarray, corners: np.ndarray, fill: bool) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32)
        scalar = values.ndim == 1
        n = self.resolution
        cov = self.covered.reshape(-1)
        idx = corners.reshape(-1, 3)[cov]  # (K, 3)
        bary = self.barycentric.reshape(-1, 3)[cov]  # (K, 3)
        vals = values[..., None] if scalar else values
        if vals.shape[-2] <= int(idx.max(initial=0)):
            raise ValueError(f"attribute array has {vals.shape[-2]} vertices; the mesh needs {int(idx.max()) + 1}")
        gathered = np.einsum("...kjc,kj->...kc", vals[..., idx, :], bary)  # (..., K, C)
        out = np.zeros((*vals.shape[:-2], n * n, vals.shape[-1]), dtype=np.float32)
        out[..., cov, :] = gathered
        if fill:
            out[..., self.fill_target, :] = out[..., self.fill_source, :]
        out = out.reshape(*vals.shape[:-2], n, n, vals.shape[-1])
        return out[..., 0] if scalar else out


@lru_cache(maxsize=4)
def face_rasterizer(model: FaceModel, resolution: int, gutter: int = DEFAULT_GUTTER) -> UVRasterizer:
    """The face tile (`M_Face`) rasterizer of `model` at `resolution`², built once per process and size."""
    return UVRasterizer.build(model.topology, resolution, (FACE_MATERIAL,), gutter)


def _rasterize_triangles(pix: np.ndarray, n: int) -> np.ndarray:
    """(T, 3, 2) triangle corners in texel units → (N, N) int32 local triangle index per texel (−1: none).

    Each triangle's bounding box of texel centres is enumerated without padding (repeat + offsets), a
    batch of triangles at a time; a texel centre inside (with a tiny tolerance so shared edges leave no
    cracks) takes that triangle.
    """
    owner = np.full(n * n, -1, dtype=np.int32)
    lo = np.clip(np.ceil(pix.min(axis=1) - 0.5), 0, n - 1).astype(np.int64)  # first texel centre ≥ min
    hi = np.clip(np.floor(pix.max(axis=1) - 0.5), 0, n - 1).astype(np.int64)
    size = np.maximum(hi - lo + 1, 0)  # (T, 2) columns, rows
    for start in range(0, len(pix), _BATCH):
        sl = slice(start, start + _BATCH)
        w, h = size[sl, 0], size[sl, 1]
        count = w * h
        total = int(count.sum())
        if total == 0:
            continue
        tri = np.repeat(np.arange(start, start + len(count)), count)
        offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        wt = w[tri - start]
        x = lo[tri, 0] + offset % wt
        y = lo[tri, 1] + offset // wt
        centre = np.stack([x + 0.5, y + 0.5], axis=-1)
        bary = _barycentric(pix[tri], centre)
        inside = (bary >= -1e-6).all(axis=1)
        owner[y[inside] * n + x[inside]] = tri[inside]
    return owner.reshape(n, n)


def _barycentric(corners: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, 3, 2) triangles, (K, 2) points → (K, 3) barycentric coordinates (degenerate triangles: −1s)."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-12
    safe = np.where(ok, den, 1.0)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / safe
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / safe
    out = np.stack([1.0 - l1 - l2, l1, l2], axis=1)
    out[~ok] = -1.0
    return out


def _barycentric_at_texels(corners: np.ndarray, n: int) -> np.ndarray:
    """(N, N, 3, 2) per-texel triangle corners (texel units) → (N, N, 3) barycentrics of the texel centres."""
    ys, xs = np.mgrid[0:n, 0:n]
    centres = np.stack([xs + 0.5, ys + 0.5], axis=-1).reshape(-1, 2)
    bary = _barycentric(corners.reshape(-1, 3, 2), centres)
    return np.clip(bary, 0.0, 1.0).reshape(n, n, 3)


def _gutter_fill_indices(covered: np.ndarray, gutter: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, N) coverage → flat (target, source) indices: empty texels within `gutter` of a covered one."""
    if gutter <= 0 or covered.all() or not covered.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    dist, (iy, ix) = ndimage.distance_transform_edt(~covered, return_indices=True)
    target = (~covered) & (dist <= gutter)
    n = covered.shape[1]
    return np.flatnonzero(target), (iy * n + ix)[target].astype(np.int64)
