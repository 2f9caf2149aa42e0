"""Fit MediaPipe's 478 face landmarks onto the ICT-FaceKit surface: models/landmark_embedding.npz.

Each landmark becomes (triangle of ICT model vertices, barycentric weights), so landmark positions are a
sparse linear map of the mesh (`engine.face_model.LandmarkEmbedding`). Method (docs/landmark_embedding.md):

  (a) similarity: MediaPipe's canonical face mesh (cm) → ICT neutral, from unambiguous correspondences
      (eye corners, nose tip, mouth corners, chin: MediaPipe ids ↔ ICT's iBUG-68 landmark vertices);
  (b) non-rigid: a regularized thin-plate warp through 28 MediaPipe ↔ iBUG-68 correspondences, then each
      landmark projected onto the closest ICT face-surface point. Inner-lip landmarks may only land on
      their own lip (upper / lower, told apart by the jawOpen displacement) so that a closed neutral mouth
      cannot swap them. Iris centres/contours bind analytically to the ICT eyeballs (iris 6 mm radius);
  (c) empirical: render ICT headless with moderngl (Lambert shading, the engine's procedural skin albedo,
      512², 25° vertical FOV, camera 60 cm; varied identities, head rotations and expressions), run
      MediaPipe FaceMesh, read the model-space position under each tracked landmark from a position
      buffer, snap it to the allowed ICT triangles, take the per-landmark median over renders, then move
      each landmark to the nearby surface point whose projections best match MediaPipe on all renders.
      Face-oval (silhouette) landmarks that miss the mesh take the nearest covered pixel.

Then it evaluates on held-out renders: the 2-D pixel error between MediaPipe and the embedding applied to
the posed mesh per region, agreement with MediaPipe's z, each channel's motion response, and the weights a
simple bounded least-squares solve recovers.

Usage: python tools/fit_landmark_embedding.py [--shared ../shared] [--out models/landmark_embedding.npz]
       [--stage b|c] [--renders N] [--eval N] [--seed S] [--lam PX2] [--plain] [--compare NPZ]
       [--report REPORT.json] [--overlay docs/landmark_embedding.png]
Takes about two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
from engine.face_model import DEFAULT_EMBEDDING_PATH, FaceModel, LandmarkEmbedding, vertex_normals  # noqa: E402
from engine.tracking import LANDMARK_REGION_NAMES as REGIONS  # noqa: E402
from engine.tracking import landmark_regions  # noqa: E402

# (a) unambiguous correspondences, MediaPipe landmark id → index into ICT's iBUG-68 landmark vertices.
ANCHORS = {33: 36, 133: 39, 362: 42, 263: 45, 4: 30, 61: 48, 291: 54, 152: 8}
# (b) further well-defined MediaPipe ↔ iBUG-68 pairs (nose bridge, nose base, lip midlines, inner mouth
# corners, brow ends and middles); the iBUG jaw line is a silhouette too and is left out.
WARP_PAIRS = {
    **ANCHORS,
    168: 27, 6: 28, 197: 29, 2: 33,
    0: 51, 17: 57, 13: 62, 14: 66, 78: 60, 308: 64,
    70: 17, 105: 19, 107: 21, 336: 22, 334: 24, 300: 26,
    159: (37, 38), 145: (40, 41), 386: (43, 44), 374: (46, 47),
}  # fmt: skip
# The face oval's lower part, tragus to tragus through the chin (canonical y ≤ 0.7 cm): the jaw contour.
JAW_CONTOUR = (454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234)
IRIS_RADIUS_CM = 0.6  # a human iris is ~11.7 mm across; MediaPipe's own iris model uses 6 mm
RENDER_SIZE = 512
SUPERSAMPLE = 2  # the position buffer and shading are rendered at 2× and the image box-filtered down
FOV_Y_DEG = 25.0
CAMERA_CM = 60.0


# ----------------------------------------------------------------------------------------------- geometry


def read_obj_vertices(path: Path) -> np.ndarray:
    """(V, 3) float64 `v` positions of an OBJ."""
    return np.array([[float(x) for x in ln.split()[1:4]] for ln in path.read_text().splitlines() if ln[:2] == "v "])


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ≈ s·R·src + t for (N, 3) point sets → (s, R (3, 3), t (3,))."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s


def thin_plate_warp(src: np.ndarray, dst: np.ndarray, smoothing: float) -> Callable[[np.ndarray], np.ndarray]:
    """Regularized 3-D thin-plate spline (kernel r) mapping src (K, 3) towards dst (K, 3); returns f(points)."""
    k = len(src)
    kernel = np.linalg.norm(src[:, None] - src[None], axis=2) + smoothing * np.eye(k)
    poly = np.hstack([np.ones((k, 1)), src])
    system = np.block([[kernel, poly], [poly.T, np.zeros((4, 4))]])
    coef = np.linalg.solve(system, np.vstack([dst, np.zeros((4, 3))]))

    def warp(points: np.ndarray) -> np.ndarray:
        r = np.linalg.norm(points[:, None] - src[None], axis=2)
        return r @ coef[:k] + np.hstack([np.ones((len(points), 1)), points]) @ coef[k:]

    return warp


def closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on triangles (a, b, c) to p, all (N, 3) → (points (N, 3), barycentric (N, 3)).

    Ericson, Real-Time Collision Detection §5.1.5, vectorized over the Voronoi regions.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    eps = 1e-18
    denom = va + vb + vc
    v = vb / np.where(np.abs(denom) > eps, denom, eps)
    w = vc / np.where(np.abs(denom) > eps, denom, eps)
    bary = np.stack([1 - v - w, v, w], axis=1)  # interior
    # Regions checked from the least to the most specific so later assignments win.
    t_bc = (d4 - d3) / np.maximum((d4 - d3) + (d5 - d6), eps)
    on_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    bary[on_bc] = np.stack([np.zeros_like(t_bc), 1 - t_bc, t_bc], axis=1)[on_bc]
    t_ac = d2 / np.maximum(d2 - d6, eps)
    on_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    bary[on_ac] = np.stack([1 - t_ac, np.zeros_like(t_ac), t_ac], axis=1)[on_ac]
    t_ab = d1 / np.maximum(d1 - d3, eps)
    on_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    bary[on_ab] = np.stack([1 - t_ab, t_ab, np.zeros_like(t_ab)], axis=1)[on_ab]
    for mask, corner in (((d6 >= 0) & (d5 <= d6), 2), ((d3 >= 0) & (d4 <= d3), 1), ((d1 <= 0) & (d2 <= 0), 0)):
        bary[mask] = np.eye(3)[corner]
    bary = np.clip(bary, 0.0, 1.0)
    bary /= bary.sum(1, keepdims=True)
    return bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c, bary


@dataclass
class SurfaceSet:
    """A subset of model triangles with a centroid KD-tree for closest-point queries."""

    triangles: np.ndarray  # (T, 3) model-vertex ids

    def closest(self, vertices: np.ndarray, points: np.ndarray, k: int = 24) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) points → (tri ids (N, 3) model vertices, barycentric (N, 3)) of the closest surface point."""
        tri = vertices[self.triangles]
        _, cand = cKDTree(tri.mean(1)).query(points, k=min(k, len(tri)))
        cand = cand.reshape(len(points), -1)
        flat = cand.ravel()
        rep = np.repeat(points, cand.shape[1], axis=0)
        q, bary = closest_on_triangles(rep, tri[flat, 0], tri[flat, 1], tri[flat, 2])
        dist = np.linalg.norm(q - rep, axis=1).reshape(cand.shape)
        best = dist.argmin(1)
        pick = np.arange(len(points)) * cand.shape[1] + best
        return self.triangles[flat[pick]], bary[pick]


def on_mesh(vertices: np.ndarray, tri_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(V, 3), (N, 3) ids, (N, 3) barycentric → (N, 3) surface points."""
    return np.einsum("nkc,nk->nc", vertices[tri_ids], bary)


# --------------------------------------------------------------------------------------- landmark groups


@dataclass
class Surfaces:
    """Which ICT triangles each landmark may bind to."""

    face: SurfaceSet
    upper_lip: SurfaceSet
    lower_lip: SurfaceSet
    iris_right: SurfaceSet  # the subject's right eye (ICT x < 0): MediaPipe 468–472
    iris_left: SurfaceSet  # the subject's left eye (ICT x > 0): MediaPipe 473–477
    group: np.ndarray  # (478,) index into `sets`

    @property
    def sets(self) -> tuple[SurfaceSet, ...]:
        return (self.face, self.upper_lip, self.lower_lip, self.iris_right, self.iris_left)

    def bind(self, vertices: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, 3) mesh, (478, 3) target points → (478, 3) model-vertex ids, (478, 3) barycentric."""
        ids = np.zeros((len(points), 3), np.int64)
        bary = np.zeros((len(points), 3))
        for g, surface in enumerate(self.sets):
            sel = self.group == g
            if sel.any():
                ids[sel], bary[sel] = surface.closest(vertices, points[sel])
        return ids, bary


def build_surfaces(model: FaceModel, canonical: np.ndarray) -> Surfaces:
    """Triangle sets per landmark group. `canonical`: (478, 3) MediaPipe landmarks in ICT space (cm)."""
    topo = model.topology
    face_tris = topo.triangles[topo.triangle_material == topo.material_names.index("M_Face")]
    jaw = np.linalg.norm(model.expression_basis[model.expression_names.index("jawOpen")], axis=1)
    # The lower lip and chin follow the jaw (≥ 1 cm at jawOpen = 1); the upper lip barely moves.
    tri_jaw = jaw[face_tris].mean(1)
    upper, lower = face_tris[tri_jaw < 0.6], face_tris[tri_jaw > 1.0]
    iris = {}
    for side, (lo, hi) in zip(("left", "right"), model.iris_ranges, strict=True):
        tris = topo.triangles[np.isin(topo.triangles, np.arange(lo, hi + 1)).all(1)]
        iris[side] = SurfaceSet(tris)
    # Inner-lip landmarks: those of the lip set between the mouth corners' x, split by the corner line.
    region = landmark_regions()
    corners = canonical[[78, 308]]
    mid_y = np.interp(canonical[:, 0], corners[:, 0], corners[:, 1])
    is_lip = (region == "lips") & (np.abs(canonical[:, 0]) < np.abs(corners[:, 0]).max() - 0.25)
    group = np.zeros(478, np.int64)
    group[is_lip & (canonical[:, 1] > mid_y)] = 1
    group[is_lip & (canonical[:, 1] < mid_y)] = 2
    group[468:473], group[473:] = 3, 4
    return Surfaces(SurfaceSet(face_tris), SurfaceSet(upper), SurfaceSet(lower), iris["right"], iris["left"], group)


def eye_frames(model: FaceModel, vertices: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """[(centre (3,), radius cm)] of the iris-layer sphere of the left then right ICT eye (least squares)."""
    frames = []
    for lo, hi in model.iris_ranges:
        pts = vertices[lo : hi + 1]
        # Sphere fit: |p|² = 2 p·c + (r² − |c|²) is linear in (c, r² − |c|²).
        a = np.hstack([2 * pts, np.ones((len(pts), 1))])
        sol = np.linalg.lstsq(a, (pts**2).sum(1), rcond=None)[0]
        centre = sol[:3]
        frames.append((centre, float(np.sqrt(sol[3] + centre @ centre))))
    return frames


def iris_targets(model: FaceModel, vertices: np.ndarray) -> np.ndarray:
    """(10, 3) MediaPipe iris points 468..477 on the ICT eyeballs (looking along +z): centre, then the
    limbus at +x, +y, −x, −y (MediaPipe's order for both eyes, from face_model_with_iris.obj)."""
    (c_left, r_left), (c_right, r_right) = eye_frames(model, vertices)
    out = []
    for centre, radius in ((c_right, r_right), (c_left, r_left)):
        angle = np.arcsin(IRIS_RADIUS_CM / radius)
        out.append(centre + radius * np.array([0.0, 0.0, 1.0]))
        for dx, dy in ((1, 0), (0, 1), (-1, 0), (0, -1)):
            out.append(centre + radius * np.array([dx * np.sin(angle), dy * np.sin(angle), np.cos(angle)]))
    return np.array(out)


def fit_geometric(model: FaceModel, shared: Path) -> tuple[np.ndarray, np.ndarray, Surfaces]:
    """Stages (a) + (b) → (vertex ids (478, 3), barycentric (478, 3), the per-landmark triangle sets)."""
    canonical = read_obj_vertices(shared / "mediapipe-face-geometry/canonical_face_model.obj")
    with_iris = read_obj_vertices(shared / "mediapipe-face-geometry/face_model_with_iris.obj")
    if canonical.shape != (468, 3) or with_iris.shape != (478, 3) or not np.allclose(with_iris[:468], canonical):
        raise SystemExit("unexpected MediaPipe geometry: the iris model must be the canonical mesh + 10 points")
    ict68 = model.neutral[np.load(REPO / "models/ict_face_model.npz")["landmark_vertices_68"]].astype(np.float64)

    def ict_point(spec: int | tuple[int, ...]) -> np.ndarray:
        return ict68[list(spec)].mean(0) if isinstance(spec, tuple) else ict68[spec]

    mp_ids = list(ANCHORS)
    s, rot, t = umeyama(with_iris[mp_ids], np.array([ict_point(ANCHORS[i]) for i in mp_ids]))
    aligned = with_iris @ (s * rot).T + t
    warp_ids = list(WARP_PAIRS)
    warp = thin_plate_warp(aligned[warp_ids], np.array([ict_point(WARP_PAIRS[i]) for i in warp_ids]), 0.1)
    warped = warp(aligned)
    surfaces = build_surfaces(model, warped)
    neutral = model.neutral.astype(np.float64)
    targets = warped.copy()
    targets[468:] = iris_targets(model, neutral)
    ids, bary = surfaces.bind(neutral, targets)
    return ids, bary, surfaces


# ----------------------------------------------------------------------------------------------- rendering

_VERT = """
#version 330
uniform mat4 mvp;
uniform mat3 rot;
in vec3 pos;
in vec3 nrm;
in vec3 col;
in vec4 eye;
out vec3 v_pos;
out vec3 v_nrm;
out vec3 v_col;
out vec4 v_eye;
void main() {
    gl_Position = mvp * vec4(pos, 1.0);
    v_pos = pos;
    v_nrm = rot * nrm;
    v_col = col;
    v_eye = eye;
}
"""
# Lambert from a light near the camera; eyeballs are painted procedurally (no textures): `eye` holds the
# rest-pose direction from the eyeball centre (xyz) and a flag (w) so the iris follows the eyeball.
_FRAG = """
#version 330
uniform float iris_cos;
uniform float pupil_cos;
in vec3 v_pos;
in vec3 v_nrm;
in vec3 v_col;
in vec4 v_eye;
layout(location = 0) out vec4 color;
layout(location = 1) out vec4 position;
void main() {
    vec3 albedo = v_col;
    if (v_eye.w > 0.5) {
        float c = normalize(v_eye.xyz).z;
        albedo = c > pupil_cos ? vec3(0.02) : (c > iris_cos ? vec3(0.25, 0.16, 0.08) : vec3(0.92, 0.9, 0.88));
    }
    vec3 n = normalize(v_nrm);
    float diffuse = max(dot(n, normalize(vec3(0.2, 0.35, 1.0))), 0.0);
    color = vec4(albedo * (0.25 + 0.8 * diffuse), 1.0);
    position = vec4(v_pos, 1.0);
}
"""
# Not drawn: eyelash cards, occlusion and tear films (alpha-textured in ICT; opaque, they would hide the eyes).
_DRAWN_MATERIALS = (
    "M_Face", "M_BackHead", "M_GumsTongue", "M_Teeth", "M_IrisLeft", "M_IrisRight", "M_ScleraLeft", "M_ScleraRight",
)  # fmt: skip


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """(3, 3) rotation: yaw about +y, then pitch about +x, then roll about +z (degrees)."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


class Renderer:
    """Headless moderngl renderer of one ICT mesh pose: RGB image + model-space position buffer.

    Colours come from the engine's procedural albedo (`engine.render.materials`: what the demo performer
    shows MediaPipe when an identity has no texture): painted lips, brows and cheeks, a dark mouth interior,
    teeth, gums. `painted=False` keeps all skin one plain colour. Irises are drawn in the shader.
    """

    def __init__(self, model: FaceModel, painted: bool = True) -> None:
        import moderngl

        from engine.render.materials import ShadeClass, render_vertex_classes

        self.model = model
        topo = model.topology
        self.painted = painted
        keep = np.isin(topo.triangle_material, [topo.material_names.index(m) for m in _DRAWN_MATERIALS])
        self.triangles = topo.triangles[keep].astype(np.int32)
        self.classes = render_vertex_classes(topo)
        self.skin = np.isin(self.classes, [ShadeClass.FACE, ShadeClass.HEAD])
        # Both eyeball shells (sclera/cornea outside, iris layer inside) get the procedural iris, so
        # whichever is in front shows it.
        self.eyeballs = [topo.region_vertices("eyeball_left"), topo.region_vertices("eyeball_right")]
        face = model.neutral[model.topology.region_vertices("face")]
        self.centre = np.array([0.0, (face[:, 1].min() + face[:, 1].max()) / 2 + 1.0, face[:, 2].max() - 4.0])
        self.size = RENDER_SIZE * SUPERSAMPLE
        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.prog = self.ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG)
        self.fbo = self.ctx.framebuffer(
            color_attachments=[
                self.ctx.texture((self.size, self.size), 4, dtype="f1"),
                self.ctx.texture((self.size, self.size), 4, dtype="f4"),
            ],
            depth_attachment=self.ctx.depth_renderbuffer((self.size, self.size)),
        )
        self.ibo = self.ctx.buffer(self.triangles.tobytes())
        self.vbo = self.ctx.buffer(reserve=model.n_vertices * 16 * 4)
        self.vao = self.ctx.vertex_array(
            self.prog, [(self.vbo, "3f 3f 3f 4f", "pos", "nrm", "col", "eye")], index_buffer=self.ibo
        )
        aspect = 1.0
        f = 1.0 / np.tan(np.radians(FOV_Y_DEG) / 2)
        near, far = 10.0, 200.0
        self.proj = np.array(
            [
                [f / aspect, 0, 0, 0],
                [0, f, 0, 0],
                [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
                [0, 0, -1, 0],
            ]
        )

    def world(self, rot: np.ndarray) -> np.ndarray:
        """(4, 4) model → camera: rotate about the face centre, put the face centre 60 cm in front."""
        m = np.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = -rot @ self.centre + np.array([0.0, 0.0, -CAMERA_CM])
        return m

    def project(self, points: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """(N, 3) model-space cm → (N, 2) pixel x, y of the RENDER_SIZE² image (y down)."""
        h = np.hstack([points, np.ones((len(points), 1))]) @ (self.proj @ self.world(rot)).T
        ndc = h[:, :2] / h[:, 3:]
        return np.stack([(ndc[:, 0] + 1) / 2 * RENDER_SIZE, (1 - ndc[:, 1]) / 2 * RENDER_SIZE], axis=1)

    def colours(self, rest: np.ndarray) -> np.ndarray:
        """(V, 3) per-model-vertex albedo for this rest shape (V, 3) cm (seam copies share a colour)."""
        from engine.render.materials import SKIN, procedural_albedo

        topo = self.model.topology
        albedo = procedural_albedo(topo, rest[topo.render_to_model], self.classes)
        if not self.painted:
            albedo[self.skin] = SKIN
        colour = np.zeros((len(rest), 3), np.float32)
        colour[topo.render_to_model] = albedo
        return colour

    def render(self, vertices: np.ndarray, rest: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posed (V, 3) and rest (V, 3) vertices → (RGB uint8 RENDER_SIZE², position float32 (S, S, 4))."""
        normals = vertex_normals(vertices, self.triangles)
        eye_dir = np.zeros((len(vertices), 4), np.float32)
        for (centre, _), ids in zip(eye_frames(self.model, rest), self.eyeballs, strict=True):
            eye_dir[ids, :3] = rest[ids] - centre
            eye_dir[ids, 3] = 1.0
        data = np.hstack([vertices, normals, self.colours(rest), eye_dir]).astype(np.float32)
        self.vbo.write(data.tobytes())
        self.prog["mvp"].write((self.proj @ self.world(rot)).T.astype("f4").tobytes())
        self.prog["rot"].write(rot.T.astype("f4").tobytes())
        radius = float(np.mean([r for _, r in eye_frames(self.model, rest)]))
        self.prog["iris_cos"].value = float(np.cos(np.arcsin(IRIS_RADIUS_CM / radius)))
        self.prog["pupil_cos"].value = float(np.cos(np.arcsin(0.45 * IRIS_RADIUS_CM / radius)))
        self.fbo.use()
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.vao.render()
        s = self.size
        rgb = np.frombuffer(self.fbo.color_attachments[0].read(), np.uint8).reshape(s, s, 4)[::-1, :, :3]
        pos = np.frombuffer(self.fbo.color_attachments[1].read(), np.float32).reshape(s, s, 4)[::-1]
        small = rgb.reshape(RENDER_SIZE, SUPERSAMPLE, RENDER_SIZE, SUPERSAMPLE, 3).mean((1, 3))
        return np.ascontiguousarray(small.round().astype(np.uint8)), pos

    def release(self) -> None:
        self.ctx.release()


def sample_positions(pos: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Position buffer (S, S, 4) at (N, 2) RENDER_SIZE pixel coords → (N, 3) model-space points.

    A landmark off the mesh (silhouette points) takes the nearest covered pixel.
    """
    s = pos.shape[0]
    covered = pos[:, :, 3] > 0.5
    _, (iy, ix) = distance_transform_edt(~covered, return_indices=True)
    px = np.clip((pixels * SUPERSAMPLE).astype(int), 0, s - 1)
    ny, nx = iy[px[:, 1], px[:, 0]], ix[px[:, 1], px[:, 0]]
    return pos[ny, nx, :3].astype(np.float64)


# ----------------------------------------------------------------------------------------- the procedure

DRIVEN = (
    "jawOpen", "mouthSmile_L", "mouthSmile_R", "browDown_L", "browDown_R", "eyeBlink_L", "eyeBlink_R",
    "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "mouthPucker", "mouthFunnel",
    "eyeWide_L", "eyeWide_R", "mouthFrown_L", "mouthFrown_R", "cheekPuff_L", "cheekPuff_R", "noseSneer_L",
    "noseSneer_R", "eyeSquint_L", "eyeSquint_R", "mouthStretch_L", "mouthStretch_R", "jawLeft", "jawRight",
    "mouthLeft", "mouthRight", "mouthRollLower", "mouthShrugUpper", "mouthPress_L", "mouthPress_R",
)  # fmt: skip
MM_PER_PX = 10 * 2 * CAMERA_CM * np.tan(np.radians(FOV_Y_DEG) / 2) / RENDER_SIZE  # on the face plane


@dataclass
class Scene:
    """What one render shows: identity (n_id,), expression (53,) weights, head yaw/pitch in degrees."""

    w_id: np.ndarray
    w_exp: np.ndarray
    yaw: float
    pitch: float


@dataclass
class Observation:
    """One tracked render of `scene`: posed (V, 3) cm, head rotation (3, 3), MediaPipe (478, 2) px and its
    relative depth z (478,) px, and the (478, 3) model-space points under those pixels (position buffer)."""

    scene: Scene
    posed: np.ndarray
    rot: np.ndarray
    pixels: np.ndarray
    depth: np.ndarray
    under: np.ndarray


def make_scenes(rng: np.random.Generator, n: int, model: FaceModel, expressive_fraction: float) -> list[Scene]:
    """n scenes; the first is the frontal mean neutral, the rest vary identity (20 leading modes, σ 0.7) and
    head pose (yaw ±15°, pitch ±8°); `expressive_fraction` of them get 1–3 random driven channels."""
    names = list(model.expression_names)
    scenes = [Scene(np.zeros(model.n_identity), np.zeros(len(names)), 0.0, 0.0)]
    for k in range(1, n):
        w_id = np.zeros(model.n_identity)
        w_id[:20] = rng.normal(0.0, 0.7, 20)
        w_exp = np.zeros(len(names))
        if rng.uniform() < expressive_fraction:
            for name in rng.choice(DRIVEN, size=rng.integers(1, 4), replace=False):
                w_exp[names.index(name)] = rng.uniform(0.3, 1.0)
        elif k % 2 == 1:
            w_exp[names.index("jawOpen")] = 0.15  # parts the lips so inner-lip landmarks see their own lip
        scenes.append(Scene(w_id, w_exp, rng.uniform(-15, 15), rng.uniform(-8, 8)))
    return scenes


def observe(model: FaceModel, renderer: Renderer, tracker, scenes: list[Scene], desc: str) -> list[Observation | None]:
    """Render each scene and track it with MediaPipe: one Observation per scene, None where no face was found."""
    out: list[Observation | None] = []
    for scene in tqdm(scenes, desc=desc, unit="render"):
        w_id = scene.w_id.astype(np.float32)
        rest = model.identity_neutral(w_id).astype(np.float64)
        posed = model.personalize(w_id).evaluate(scene.w_exp).astype(np.float64)
        rot = rotation(scene.yaw, scene.pitch)
        image, pos = renderer.render(posed, rest, rot)
        faces = tracker.process_image(image)
        if faces:
            pixels = faces[0].pixels[:, :2].astype(np.float64)
            depth = faces[0].pixels[:, 2].astype(np.float64)
            out.append(Observation(scene, posed, rot, pixels, depth, sample_positions(pos, pixels)))
        else:
            out.append(None)
    found = sum(o is not None for o in out)
    print(f"{desc}: MediaPipe found the face on {found}/{len(scenes)} renders")
    if not found:
        raise SystemExit("MediaPipe found no face on any render: check the EGL context and the camera setup")
    return out


def barycentric_grid(n: int) -> np.ndarray:
    """(G, 3) barycentric points (i, j, k)/n with i + j + k = n: G = (n + 1)(n + 2)/2 samples per triangle."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    i, j = i[keep], j[keep]
    return np.stack([i, j, n - i - j], axis=1) / n


def frame_offsets(renderer: Renderer, obs: list[Observation], ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(R, 2) mean 2-D offset (embedding − MediaPipe, px) per observation over the non-silhouette landmarks.

    A per-frame shift is what a pose solver absorbs in its translation; MediaPipe's point cloud rotates
    about a slightly different centre than the mesh does (≈ 1 px per 10° of yaw here).
    """
    inner = landmark_regions()[: len(ids)] != "face_oval"
    return np.stack(
        [(renderer.project(on_mesh(o.posed, ids, bary), o.rot) - o.pixels[: len(ids)])[inner].mean(0) for o in obs]
    )


def reprojection_errors(
    renderer: Renderer, obs: list[Observation], ids: np.ndarray, bary: np.ndarray, aligned: bool = False
) -> np.ndarray:
    """(R, L) pixel distance between MediaPipe and the embedding (ids, bary (L, 3)) on each observation;
    `aligned` first removes each frame's mean offset (`frame_offsets`)."""
    shift = frame_offsets(renderer, obs, ids, bary) if aligned else np.zeros((len(obs), 2))
    return np.stack(
        [
            np.linalg.norm(renderer.project(on_mesh(o.posed, ids, bary), o.rot) - o.pixels[: len(ids)] - d, axis=1)
            for o, d in zip(obs, shift, strict=True)
        ]
    )


def refine_by_reprojection(
    model: FaceModel,
    renderer: Renderer,
    surfaces: Surfaces,
    obs: list[Observation],
    ids: np.ndarray,
    bary: np.ndarray,
    radius_cm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Move each landmark, within `radius_cm` on its allowed triangles (28 barycentric samples each), to the
    surface point whose projections best match MediaPipe's over all observations (mean px distance), with
    each frame's mean offset under the current embedding removed first."""
    neutral = model.neutral.astype(np.float64)
    start = on_mesh(neutral, ids, bary)
    posed = np.stack([o.posed for o in obs])  # (R, V, 3)
    mvp = np.stack([renderer.proj @ renderer.world(o.rot) for o in obs])  # (R, 4, 4)
    target = np.stack([o.pixels for o in obs]) + frame_offsets(renderer, obs, ids, bary)[:, None]  # (R, 478, 2)
    grid = barycentric_grid(6)
    ids, bary = ids.copy(), bary.copy()
    with tqdm(total=len(ids), desc="(c) reprojection refinement", unit="landmark") as bar:
        for g, surface in enumerate(surfaces.sets):
            tris = surface.triangles
            tree = cKDTree(neutral[tris].mean(1))
            for lm in np.flatnonzero(surfaces.group == g):
                near = tree.query_ball_point(start[lm], radius_cm) or [int(tree.query(start[lm])[1])]
                cand_ids = np.repeat(tris[near], len(grid), axis=0)  # (C, 3)
                cand_bary = np.tile(grid, (len(near), 1))  # (C, 3)
                pts = np.einsum("rckx,ck->rcx", posed[:, cand_ids], cand_bary)  # (R, C, 3)
                h = np.einsum("rij,rcj->rci", mvp, np.concatenate([pts, np.ones(pts.shape[:2] + (1,))], axis=2))
                ndc = h[..., :2] / h[..., 3:]
                px = np.stack([(ndc[..., 0] + 1) / 2 * RENDER_SIZE, (1 - ndc[..., 1]) / 2 * RENDER_SIZE], axis=2)
                best = int(np.linalg.norm(px - target[:, None, lm], axis=2).mean(0).argmin())
                ids[lm], bary[lm] = cand_ids[best], cand_bary[best]
                bar.update()
    return ids, bary


def fit_empirical(
    model: FaceModel, renderer: Renderer, surfaces: Surfaces, obs: list[Observation]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Stage (c) → ((ids, bary) after the median binding, (ids, bary) after reprojection refinement).

    1. Each tracked landmark's unprojected point is snapped to its allowed triangles on that render's posed
       mesh; the same (triangle, barycentric) is mapped onto the mean neutral and the per-landmark median is
       snapped back to the surface.
    2. Two rounds of `refine_by_reprojection` (8 mm, then 3 mm): the quantity the solver depends on is the
       projection of the embedded point on posed meshes, and silhouette (face-oval) points settle where they
       are least wrong over the head rotations seen.
    """
    neutral = model.neutral.astype(np.float64)
    bound = np.stack([on_mesh(neutral, *surfaces.bind(o.posed, o.under)) for o in obs])
    median = surfaces.bind(neutral, np.median(bound, axis=0))
    refined = median
    for radius_cm in (0.8, 0.3):
        refined = refine_by_reprojection(model, renderer, surfaces, obs, *refined, radius_cm)
    return median, refined


def weight_recovery(
    model: FaceModel,
    renderer: Renderer,
    pairs: list[tuple[Observation, Observation]],
    ids: np.ndarray,
    bary: np.ndarray,
    lam: float,
    calibrated: bool,
) -> dict[str, float]:
    """Recover the 53 expression weights of each (expressive, neutral twin) pair from MediaPipe's 2-D
    landmarks through the embedding, as a simple solver would: identity and head rotation known (an oracle
    pose), the projection linearized at the neutral, a free 2-D shift, bounded least squares 0 ≤ w ≤ 1 with
    ridge `lam` (px²). The rest reference is MediaPipe's landmarks on the neutral twin when `calibrated`
    (the engine's neutral calibration: static embedding error cancels), else the embedded neutral projected.

    Returns mean |w − w_true| on the driven channels, on the undriven ones and over all, and the motion
    gain: MediaPipe's landmark motion projected on the embedding's predicted motion (1 = same amplitude).
    """
    from scipy.optimize import lsq_linear

    n_exp = len(model.expression_names)
    basis = model.expression_basis[:, ids].astype(np.float64)  # (E, 478, 3, 3)
    delta = np.einsum("elkc,lk->elc", basis, bary)  # (E, 478, 3) landmark motion per unit weight
    driven_err, idle_err, gain_num, gain_den = [], [], 0.0, 0.0
    for o, twin in pairs:
        rest = on_mesh(model.identity_neutral(o.scene.w_id.astype(np.float32)).astype(np.float64), ids, bary)
        eps = 1e-3  # cm: central differences of the projection
        jac = np.stack(
            [
                (renderer.project(rest + eps * e, o.rot) - renderer.project(rest - eps * e, o.rot)) / (2 * eps)
                for e in np.eye(3)
            ],
            axis=2,
        )  # (478, 2, 3)
        motion = np.einsum("lij,elj->lie", jac, delta).reshape(-1, n_exp)  # (478·2, E) px per unit weight
        rest_px = twin.pixels if calibrated else renderer.project(rest, o.rot)
        observed = (o.pixels - rest_px).ravel()
        predicted = motion @ o.scene.w_exp
        gain_num, gain_den = gain_num + predicted @ observed, gain_den + predicted @ predicted
        shift = np.tile(np.eye(2), (len(ids), 1))
        a = np.vstack([np.hstack([motion, shift]), np.hstack([np.sqrt(lam) * np.eye(n_exp), np.zeros((n_exp, 2))])])
        b = np.concatenate([observed, np.zeros(n_exp)])
        lower = np.concatenate([np.zeros(n_exp), [-np.inf, -np.inf]])
        upper = np.concatenate([np.ones(n_exp), [np.inf, np.inf]])
        w = lsq_linear(a, b, bounds=(lower, upper)).x[:n_exp]
        err = np.abs(w - o.scene.w_exp)
        driven = o.scene.w_exp > 0
        driven_err.append(err[driven])
        idle_err.append(err[~driven])
    driven_all, idle_all = np.concatenate(driven_err), np.concatenate(idle_err)
    return {
        "driven_mae": float(driven_all.mean()),
        "undriven_mae": float(idle_all.mean()),
        "all_mae": float(np.concatenate([driven_all, idle_all]).mean()),
        "motion_gain": float(gain_num / gain_den),
    }


def depth_agreement(renderer: Renderer, obs: list[Observation], ids: np.ndarray, bary: np.ndarray) -> dict:
    """How MediaPipe's z relates to the embedded points' camera depth: per frame z_mp ≈ a·d + b by least
    squares (d = distance from the camera, cm; MediaPipe's z also grows away from the camera). Returns the
    median gain a relative to the image scale (px per cm at the face; 1 = MediaPipe's z is metric like its
    x) and the mean residual (px) per region."""
    px_per_cm = 10.0 / MM_PER_PX
    gains, residuals = [], []
    for o in obs:
        pts = on_mesh(o.posed, ids, bary)
        distance = -(np.hstack([pts, np.ones((len(pts), 1))]) @ renderer.world(o.rot).T)[:, 2]
        design = np.stack([distance, np.ones_like(distance)], axis=1)
        (gain, offset), *_ = np.linalg.lstsq(design, o.depth[: len(ids)], rcond=None)
        gains.append(gain / px_per_cm)
        residuals.append(np.abs(design @ (gain, offset) - o.depth[: len(ids)]))
    return {"gain": float(np.median(gains)), **region_means(np.stack(residuals))}


def channel_response(
    model: FaceModel, renderer: Renderer, tracker, embeddings: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per driven channel at weight 0.8 (mean identity, frontal) against the neutral render: how MediaPipe's
    landmark motion compares with the motion each embedding predicts. `gain`: observed motion projected on
    the predicted one (1 = same amplitude); `cosine`: agreement of direction over all landmarks; `motion_px`:
    the largest predicted landmark motion (small = a channel 2-D landmarks barely see)."""
    names = list(model.expression_names)
    neutral_scene = Scene(np.zeros(model.n_identity), np.zeros(len(names)), 0.0, 0.0)
    scenes = [neutral_scene]
    for name in DRIVEN:
        w = np.zeros(len(names))
        w[names.index(name)] = 0.8
        scenes.append(Scene(neutral_scene.w_id, w, 0.0, 0.0))
    rest, *posed = observe(model, renderer, tracker, scenes, "per-channel response")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for emb_name, (ids, bary) in embeddings.items():
        base = renderer.project(on_mesh(rest.posed, ids, bary), rest.rot)
        table = {}
        for name, o in zip(DRIVEN, posed, strict=True):
            if o is None or rest is None:
                continue
            predicted = (renderer.project(on_mesh(o.posed, ids, bary), o.rot) - base).ravel()
            observed = (o.pixels - rest.pixels).ravel()
            table[name] = {
                "gain": float(predicted @ observed / max(predicted @ predicted, 1e-9)),
                "cosine": float(predicted @ observed / max(np.linalg.norm(predicted) * np.linalg.norm(observed), 1e-9)),
                "motion_px": float(np.abs(predicted.reshape(-1, 2)).max()),
            }
        out[emb_name] = table
    return out


def canonical_residual(model: FaceModel, shared: Path, ids: np.ndarray, bary: np.ndarray) -> dict[str, float]:
    """Mean distance (mm) per region between the embedded ICT neutral landmarks and MediaPipe's canonical
    model (with iris) similarity-aligned to them over the 468 mesh landmarks (the test recomputes this)."""
    with_iris = read_obj_vertices(shared / "mediapipe-face-geometry/face_model_with_iris.obj")
    embedded = on_mesh(model.neutral.astype(np.float64), ids, bary)
    s, rot, t = umeyama(with_iris[:468], embedded[:468])
    dist = np.linalg.norm(with_iris @ (s * rot).T + t - embedded, axis=1) * 10.0
    return region_means(dist[None])


def region_means(errors: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """(R, 478) errors → mean per region, over the jaw part of the face oval, and over all; times `scale`."""
    region = landmark_regions()
    out = {r: float(errors[:, region == r].mean() * scale) for r in REGIONS}
    out["jaw_contour"] = float(errors[:, list(JAW_CONTOUR)].mean() * scale)
    out["all"] = float(errors.mean() * scale)
    return out


def save(path: Path, ids: np.ndarray, bary: np.ndarray, residual: dict[str, float]) -> None:
    """Write the format `engine.face_model.LandmarkEmbedding.load` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        vertex_ids=ids.astype(np.int32),
        barycentric=bary.astype(np.float32),
        residual_regions=np.array(list(residual), dtype=str),
        residual_mm=np.array(list(residual.values()), dtype=np.float64),
    )


def save_overlay(path: Path, model: FaceModel, renderer: Renderer, scene: Scene, ids, bary, tracker) -> None:
    """PNG: a posed render with MediaPipe's landmarks (green) and the embedding's (red), 2× enlarged crop."""
    from PIL import Image

    w_id = scene.w_id.astype(np.float32)
    posed = model.personalize(w_id).evaluate(scene.w_exp).astype(np.float64)
    rot = rotation(scene.yaw, scene.pitch)
    image, _ = renderer.render(posed, model.identity_neutral(w_id).astype(np.float64), rot)
    faces = tracker.process_image(image)
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    points = [(renderer.project(on_mesh(posed, ids, bary), rot), (255, 40, 40))]
    if faces:
        points.insert(0, (faces[0].pixels[:, :2], (40, 255, 40)))
    for pts, colour in points:
        xy = np.clip((pts * 2).round().astype(int), 1, 2 * RENDER_SIZE - 2)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                big[xy[:, 1] + dy, xy[:, 0] + dx] = colour
    Image.fromarray(big[150:850, 160:860]).save(path)


def evaluate(
    model: FaceModel,
    renderer: Renderer,
    tracker,
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    n: int,
    seed: int,
    lam: float,
) -> dict[str, object]:
    """Held-out expressive renders (each with its neutral twin) → per embedding: 2-D px error (raw and with
    each frame's mean offset removed), depth agreement and weight recovery (uncalibrated and calibrated)."""
    scenes = make_scenes(np.random.default_rng(seed), n, model, 1.0)
    expressive = observe(model, renderer, tracker, scenes, "evaluate: held-out expressive renders")
    twins = [Scene(sc.w_id, np.zeros_like(sc.w_exp), sc.yaw, sc.pitch) for sc in scenes]
    neutral = observe(model, renderer, tracker, twins, "evaluate: their neutral twins")
    pairs = [(e, t) for e, t in zip(expressive, neutral, strict=True) if e is not None and t is not None]
    obs = [e for e, _ in pairs]
    report: dict[str, object] = {"eval_frames": len(obs)}
    for name, emb in embeddings.items():
        report.setdefault("eval_px", {})[name] = region_means(reprojection_errors(renderer, obs, *emb))
        report.setdefault("eval_aligned_px", {})[name] = region_means(
            reprojection_errors(renderer, obs, *emb, aligned=True)
        )
        report.setdefault("eval_depth", {})[name] = depth_agreement(renderer, obs, *emb)
        report.setdefault("eval_weights", {})[name] = weight_recovery(model, renderer, pairs, *emb, lam, False)
        report.setdefault("eval_weights_calibrated", {})[name] = weight_recovery(
            model, renderer, pairs, *emb, lam, True
        )
    report["channel_response"] = channel_response(model, renderer, tracker, embeddings)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=DEFAULT_EMBEDDING_PATH)
    parser.add_argument("--stage", choices=("b", "c"), default="c", help="stop after (b) or run (c) too")
    parser.add_argument("--renders", type=int, default=60, help="renders for the empirical stage")
    parser.add_argument("--eval", type=int, default=40, help="expressive renders for the evaluation (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lam", type=float, default=10.0, help="ridge (px²) of the weight-recovery check")
    parser.add_argument("--report", type=Path, default=None, help="write all numbers as JSON here")
    parser.add_argument("--overlay", type=Path, default=None, help="write an overlay PNG of one held-out render")
    parser.add_argument("--plain", action="store_true", help="render plain skin (no painted lips and brows)")
    parser.add_argument("--compare", type=Path, default=None, help="also evaluate this embedding file (`compare`)")
    args = parser.parse_args()
    start = time.perf_counter()
    model = FaceModel.load()
    print("(a)+(b) similarity, thin-plate warp, closest-point projection …")
    ids_b, bary_b, surfaces = fit_geometric(model, args.shared)
    report: dict[str, object] = {"canonical_mm": {"b": canonical_residual(model, args.shared, ids_b, bary_b)}}
    embeddings = {"b": (ids_b, bary_b)}
    residual = dict(report["canonical_mm"]["b"])
    if args.stage == "c" or args.eval > 0 or args.overlay is not None:
        from engine.config import TrackingConfig
        from engine.tracking import FaceTracker

        renderer = Renderer(model, painted=not args.plain)
        # Static mode: every render is an unrelated still. A low detection threshold keeps extreme poses.
        with FaceTracker(TrackingConfig(min_detection_confidence=0.3), static=True) as tracker:
            if args.stage == "c":
                scenes = make_scenes(np.random.default_rng(args.seed), args.renders, model, expressive_fraction=0.6)
                obs = [o for o in observe(model, renderer, tracker, scenes, "(c) render + track") if o is not None]
                median, refined = fit_empirical(model, renderer, surfaces, obs)
                embeddings.update(c_median=median, c=refined)
                report["canonical_mm"].update(
                    {name: canonical_residual(model, args.shared, *emb) for name, emb in embeddings.items()}
                )
                fit_err = reprojection_errors(renderer, obs, *refined, aligned=True)
                report["fit_renders_aligned_px"] = region_means(fit_err)
                residual = dict(report["canonical_mm"]["c"])
                residual.update({f"render_{k}": v for k, v in region_means(fit_err, MM_PER_PX).items()})
            if args.eval > 0:
                evaluated = dict(embeddings)
                if args.compare is not None:
                    other = LandmarkEmbedding.load(args.compare)
                    evaluated["compare"] = (other.vertex_ids.astype(np.int64), other.barycentric.astype(np.float64))
                report.update(evaluate(model, renderer, tracker, evaluated, args.eval, args.seed + 1, args.lam))
            if args.overlay is not None:
                overlay_scene = make_scenes(np.random.default_rng(args.seed + 2), 2, model, 1.0)[1]
                save_overlay(args.overlay, model, renderer, overlay_scene, *embeddings[args.stage], tracker)
        renderer.release()
    ids, bary = embeddings[args.stage]
    save(args.out, ids, bary, residual)
    report["mm_per_px"] = MM_PER_PX
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
