"""Synthetic training pairs for the detail network (design §4.3): a physically motivated wrinkle generator.

FaceScape's scans cannot ship, so the default network learns from pairs made here. Per random identity
(ICT w_id, a random skin texture, random skin parameters) and per key expression i:

1. Surface strain of the key-expression mesh against neutral, per triangle in UV space: the principal
   stretches of the metric change J₁ᵀJ₁ relative to J₀ᵀJ₀ (J = ∂x/∂(u, v)). Compression c = 1 − √λ_min, along
   the matching principal direction; both averaged to vertices (the direction as a tensor c·d dᵀ, so its sign
   does not matter) and interpolated per texel.
2. Where skin compresses it buckles: grooves perpendicular to the compression direction, with the phase
   (x · d) / λ measured in millimetres on the rest surface, so ridges keep their physical wavelength λ at any
   resolution. Depth grows with compression, saturating at `depth_mm`; sharpness sets the groove profile.
   Compressed skin also bunches outwards (a broad, low bulge).
3. Static detail from the texture's high frequencies (pores, moles, and the permanent creases that aged skin
   shows where it folds), the same in every basis including the neutral one.

The texture carries the identity's skin parameters the way a photo does (older skin: deeper, wider wrinkles
and visible crease lines), so the network can infer them from its inputs. Units: cm geometry, mm detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from engine.detail.uv_raster import FACE_MATERIAL, UVRasterizer
from engine.detail.weights import key_expression_weights
from engine.face_model import FaceModel

# Skin tones (linear-ish RGB in [0, 1]) from light to dark; identities draw a point between neighbours.
_SKIN_TONES = np.array(
    [[0.96, 0.80, 0.69], [0.90, 0.70, 0.56], [0.78, 0.57, 0.42], [0.62, 0.42, 0.29], [0.42, 0.27, 0.18]]
)
# Compression (1 − stretch) where skin starts to buckle and where the groove depth saturates (ICT key
# expressions reach 0.1–0.35 at their 99th percentile).
_ONSET, _FULL_COMPRESSION = 0.04, 0.25
# Orientations the ridge field is blended from (a steerable basis over [0, π)).
_N_ORIENTATIONS = 8


@dataclass(frozen=True)
class SkinParams:
    """One synthetic identity's skin. age ∈ [0, 1] drives the others (with noise); lengths in mm."""

    age: float
    wavelength_mm: float
    depth_mm: float
    sharpness: float
    bulge_mm: float
    static_mm: float
    tone: float
    pore_density: float
    n_moles: int

    @staticmethod
    def sample(rng: np.random.Generator) -> SkinParams:
        age = float(rng.uniform(0.0, 1.0))
        return SkinParams(
            age=age,
            wavelength_mm=float(np.clip(2.5 + 3.0 * age + rng.normal(0, 0.4), 2.0, 7.0)),
            depth_mm=float(np.clip(0.08 + 0.42 * age + rng.normal(0, 0.04), 0.05, 0.6)),
            sharpness=float(1.0 + 2.0 * age + rng.uniform(0, 0.5)),
            bulge_mm=float(rng.uniform(0.1, 0.5)),
            static_mm=float(rng.uniform(0.03, 0.08)),
            tone=float(rng.uniform(0.0, 1.0)),
            pore_density=float(rng.uniform(0.02, 0.08)),
            n_moles=int(rng.integers(0, 7)),
        )


@dataclass(frozen=True)
class SynthSample:
    """One identity's training pair for all 20 key expressions, at N×N in the face UV tile (row 0: v = 0).

    texture: (N, N, 3) uint8. position: (N, N, 3) float32 neutral surface in cm. deform: (20, N, N, 3) float32
    key-expression offset from neutral in cm. bases: (20, N, N) float32 F̂_i in mm. mask: (N, N) bool texels
    on the face (covered or gutter-filled).
    """

    identity_weights: np.ndarray
    params: SkinParams
    texture: np.ndarray
    position: np.ndarray
    deform: np.ndarray
    bases: np.ndarray
    mask: np.ndarray


class DetailSynth:
    """Generates `SynthSample`s for one face model at one resolution (the rasterization is built once)."""

    def __init__(self, model: FaceModel, resolution: int) -> None:
        self.model = model
        self.resolution = resolution
        self.raster = UVRasterizer.build(model.topology, resolution, (FACE_MATERIAL,))
        topo = model.topology
        face = topo.material_names.index(FACE_MATERIAL)
        self.face_triangles = np.flatnonzero(topo.triangle_material == face)
        uv = topo.render_uv[topo.render_triangles[self.face_triangles]].astype(np.float64)
        uv -= np.floor(uv.mean(axis=1, keepdims=True))
        # (T, 2, 2) inverse of the UV edge matrix: J = [x1 − x0, x2 − x0] @ inv([uv1 − uv0, uv2 − uv0]).
        edges = np.stack([uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]], axis=2)
        det = np.linalg.det(edges)
        edges[np.abs(det) < 1e-12] = np.eye(2)  # degenerate UV triangles: any J, their area weight is ~0
        self._uv_inverse = np.linalg.inv(edges)
        self._uv_area = 0.5 * np.abs(det)
        self._alpha_hat = key_expression_weights().astype(np.float32)

    @cached_property
    def _triangle_to_vertex(self) -> sp.csr_matrix:
        """(V, T_face) UV-area-weighted averaging from face triangles to their vertices (rows sum to 1)."""
        tris = self.model.topology.triangles[self.face_triangles]
        rows = tris.ravel()
        cols = np.repeat(np.arange(len(tris)), 3)
        m = sp.csr_matrix((np.repeat(self._uv_area, 3), (rows, cols)), shape=(self.model.n_vertices, len(tris)))
        total = np.asarray(m.sum(axis=1)).ravel()
        return sp.diags(1.0 / np.where(total > 0, total, 1.0)) @ m

    def key_meshes(self, identity_weights: np.ndarray) -> np.ndarray:
        """(n_id,) → (20, V, 3) float32 meshes of the 20 key expressions (row 0 neutral), cm."""
        face = self.model.personalize(identity_weights)
        offsets = np.einsum("ij,jvc->ivc", self._alpha_hat, face.expression_basis)
        return face.neutral[None] + offsets

    def uv_jacobians(self, vertices: np.ndarray) -> np.ndarray:
        """(..., V, 3) vertices → (..., T_face, 3, 2) ∂x/∂(u, v) per face triangle, cm per unit UV."""
        tris = self.model.topology.triangles[self.face_triangles]
        x = vertices[..., tris, :].astype(np.float64)  # (..., T, 3, 3)
        dx = np.stack([x[..., 1, :] - x[..., 0, :], x[..., 2, :] - x[..., 0, :]], axis=-1)  # (..., T, 3, 2)
        return dx @ self._uv_inverse

    def compression(self, rest: np.ndarray, deformed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, 3) rest, (..., V, 3) deformed → per vertex compression (..., V) ∈ [0, 1) and the compression
        tensor (..., V, 3) = c·[dx², dx·dy, dy²] of the unit UV direction d along which the skin shortens most
        (a tensor, so opposite signs of d average instead of cancelling)."""
        j0 = self.uv_jacobians(rest)  # (T, 3, 2)
        j1 = self.uv_jacobians(deformed)
        g0 = np.swapaxes(j0, -1, -2) @ j0 + 1e-12 * np.eye(2)
        g1 = np.swapaxes(j1, -1, -2) @ j1
        chol_inv = np.linalg.inv(np.linalg.cholesky(g0))
        lam, vec = np.linalg.eigh(chol_inv @ g1 @ np.swapaxes(chol_inv, -1, -2))  # ascending: column 0 shortens most
        comp = np.clip(1.0 - np.sqrt(np.maximum(lam[..., 0], 0.0)), 0.0, 0.95)
        d_uv = (np.swapaxes(chol_inv, -1, -2) @ vec[..., :, :1])[..., 0]  # (..., T, 2) back to UV
        d_uv /= np.maximum(np.linalg.norm(d_uv, axis=-1, keepdims=True), 1e-12)
        tensor = comp[..., None] * np.stack([d_uv[..., 0] ** 2, d_uv[..., 0] * d_uv[..., 1], d_uv[..., 1] ** 2], -1)
        avg = self._triangle_to_vertex
        lead, n_tri = comp.shape[:-1], comp.shape[-1]
        comp_v = (avg @ comp.reshape(-1, n_tri).T).T.reshape(*lead, -1)
        tens_v = np.stack([avg @ t for t in tensor.reshape(-1, n_tri, 3)]).reshape(*lead, -1, 3)
        return comp_v.astype(np.float32), tens_v.astype(np.float32)

    @cached_property
    def mm_per_texel(self) -> float:
        """Median physical size of one texel on the mean neutral face, mm."""
        j0 = self.uv_jacobians(self.model.neutral)
        area = np.abs(np.linalg.det(np.swapaxes(j0, -1, -2) @ j0)) ** 0.25  # √(cm² per UV²) → cm per UV
        return float(np.median(area)) * 10.0 / self.resolution

    def texture(self, params: SkinParams, rng: np.random.Generator) -> np.ndarray:
        """(N, N, 3) uint8 albedo of an identity with no crease lines and faint blotches, gutter-filled, and the
        mean skin colour beyond the gutter (so bilinear and mip sampling never pull in black)."""
        mask = self.raster.covered
        plain = _skin_texture(rng, params, np.zeros(mask.shape), mask, self.mm_per_texel, blotch=0.35)
        tex = self.raster.fill_gutter(plain)
        tex[~self.raster.filled] = tex[mask].mean(axis=0).astype(np.uint8)
        return tex

    def sample(self, rng: np.random.Generator, identity_scale: float = 1.0) -> SynthSample:
        """A random identity: w_id ~ N(0, identity_scale²) per mode, random skin and texture."""
        w_id = (rng.normal(size=self.model.n_identity) * identity_scale).astype(np.float32)
        return self.generate(w_id, SkinParams.sample(rng), rng)

    def generate(self, identity_weights: np.ndarray, params: SkinParams, rng: np.random.Generator) -> SynthSample:
        """Build the texture, inputs and 20 target bases of one identity (see the module docstring)."""
        meshes = self.key_meshes(identity_weights)
        rest = meshes[0]
        comp_v, tens_v = self.compression(rest, meshes[1:])  # (19, V), (19, V, 3)
        r = self.raster
        position = r.rasterize(rest)
        deform = r.rasterize(meshes - rest[None])
        comp = r.rasterize(comp_v[..., None])[..., 0]  # (19, N, N)
        tens = r.rasterize(tens_v)  # (19, N, N, 3)
        theta = 0.5 * np.arctan2(2 * tens[..., 1], tens[..., 0] - tens[..., 2])  # compression angle in UV
        mask = r.filled
        px = self.mm_per_texel
        waves = _oriented_waves(rng, theta, px / params.wavelength_mm, _smooth_noise(rng, self.resolution, 12.0 / px))
        profile = (0.5 + 0.5 * waves) ** params.sharpness
        strength = np.clip((comp - _ONSET) / (_FULL_COMPRESSION - _ONSET), 0.0, 1.0) ** 0.8
        grooves = -params.depth_mm * strength * profile
        bulge = params.bulge_mm * ndimage.gaussian_filter(strength, sigma=(0, 4.0 / px, 4.0 / px))
        # Aged skin shows its deepest folds as faint lines in the albedo: the crease map the texture carries.
        crease = (-grooves).max(axis=0) / max(params.depth_mm, 1e-6)
        texture = _skin_texture(rng, params, crease * params.age, mask, px)
        static = params.static_mm * _high_pass(texture, mask, 1.5 / px)
        dynamic = (grooves + bulge) * mask
        bases = np.concatenate([static[None], static[None] + dynamic], axis=0).astype(np.float32)
        return SynthSample(
            identity_weights=np.asarray(identity_weights, np.float32),
            params=params,
            texture=texture,
            position=position.astype(np.float32),
            deform=deform.astype(np.float32),
            bases=bases,
            mask=mask,
        )


def _oriented_waves(
    rng: np.random.Generator, theta: np.ndarray, cycles_per_texel: float, warp: np.ndarray
) -> np.ndarray:
    """(..., N, N) compression angle in UV → (..., N, N) ridge signal in [−1, 1] varying along that angle.

    A blend of plane waves at fixed orientations with identity-random phases, weighted by how well each
    aligns with the local angle: ridges stay straight where the angle is constant and turn smoothly where it
    bends (a direction-dependent phase x·d(x) would chirp wherever d changes). `warp`: (N, N) slow phase noise.
    """
    n = theta.shape[-1]
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    total = np.zeros(theta.shape, np.float32)
    weight_sum = np.zeros(theta.shape, np.float32)
    for k in range(_N_ORIENTATIONS):
        angle = np.pi * k / _N_ORIENTATIONS
        weight = np.maximum(np.cos(2 * (theta - angle)), 0.0) ** 4
        phase = cycles_per_texel * (xs * np.cos(angle) + ys * np.sin(angle)) + rng.uniform() + 0.6 * warp
        total += weight * np.cos(2 * np.pi * phase)
        weight_sum += weight
    return total / np.maximum(weight_sum, 1e-6)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(N, N) float Gaussian-filtered white noise, rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.normal(size=(n, n)), sigma=max(sigma, 0.5), mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _skin_texture(
    rng: np.random.Generator, params: SkinParams, crease: np.ndarray, mask: np.ndarray, px: float, blotch: float = 1.0
) -> np.ndarray:
    """(N, N, 3) uint8 albedo: tone + blotches (× `blotch`) + redness + pores + moles + crease lines; 0 off
    the face."""
    n = mask.shape[0]
    t = params.tone * (len(_SKIN_TONES) - 1)
    k = min(int(t), len(_SKIN_TONES) - 2)
    base = _SKIN_TONES[k] * (1 - (t - k)) + _SKIN_TONES[k + 1] * (t - k)
    img = np.broadcast_to(base, (n, n, 3)).copy()
    img *= 1.0 + 0.05 * blotch * _smooth_noise(rng, n, 10.0 / px)[..., None]
    img[..., 0] *= 1.0 + 0.04 * blotch * _smooth_noise(rng, n, 6.0 / px)  # redness
    pores = ndimage.gaussian_filter(rng.normal(size=(n, n)), sigma=max(0.25 / px, 0.5))
    pores = pores > np.quantile(pores, 1.0 - params.pore_density)
    img *= 1.0 - 0.12 * ndimage.gaussian_filter(pores.astype(float), 0.5)[..., None]
    ys, xs = np.mgrid[0:n, 0:n]
    face = np.flatnonzero(mask)
    for centre in rng.choice(face, size=params.n_moles, replace=len(face) < params.n_moles):
        cy, cx = divmod(int(centre), n)
        radius = rng.uniform(0.6, 1.8) / px
        spot = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius**2))
        img *= 1.0 - 0.55 * spot[..., None] * np.array([0.8, 1.0, 1.0])
    img *= 1.0 - 0.25 * np.clip(crease, 0, 1)[..., None]
    img *= mask[..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _high_pass(texture: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """(N, N, 3) uint8 → (N, N) luminance minus its blur over the face only (so the tile's edge does not read
    as detail), in units of 10 % luminance: darker than the surroundings → negative; 0 off the face."""
    lum = texture.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32) / 255.0
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    blur = ndimage.gaussian_filter(lum * mask, sigma) / np.maximum(weight, 1e-3)
    return (lum - blur) / 0.1 * mask
