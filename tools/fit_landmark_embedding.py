"""Fit MediaPipe's 478 face landmarks onto the ICT-FaceKit surface: models/landmark_embedding.npz.

Each landmark becomes (triangle of ICT model vertices, barycentric weights), so landmark positions are a
sparse linear map of the mesh (`engine.face_model.LandmarkEmbedding`). Method (docs/landmark_embedding.md):

  (a) similarity: MediaPipe's canonical face mesh (cm) → ICT neutral, from unambiguous correspondences
      (eye corners, nose, mouth corners, chin: MediaPipe ids ↔ ICT's iBUG-68 landmark vertices);
  (b) non-rigid: a regularized thin-plate warp through ~30 known MediaPipe ↔ iBUG-68 correspondences, then
      each landmark projected onto the closest ICT face-surface point. Inner-lip landmarks may only land on
      their own lip (upper / lower, told apart by the jawOpen displacement) so that a closed neutral mouth
      cannot swap them. Iris centres/contours bind analytically to the ICT eyeballs (iris 6 mm radius);
  (c) empirical: render ICT headless with moderngl (Lambert shading, 512², 25° vertical FOV, camera 60 cm;
      several identities, small head rotations, slightly open mouth), run MediaPipe FaceMesh, read the
      model-space position under each tracked landmark from a position buffer, snap it to the allowed ICT
      triangles and take the per-landmark median over renders. Face-oval (silhouette) landmarks that miss
      the mesh take the nearest covered pixel.

Finally it evaluates: ICT posed with random expressions and head rotations, rendered and tracked; the 2-D
pixel error between MediaPipe and the embedding applied to the posed mesh, per region, for (b) and (c).

Usage: python tools/fit_landmark_embedding.py [--shared ../shared] [--out models/landmark_embedding.npz]
       [--stage b|c] [--renders N] [--eval N] [--seed S] [--report docs/landmark_embedding_eval.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
from engine.face_model import DEFAULT_EMBEDDING_PATH, FaceModel  # noqa: E402
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
IRIS_RADIUS_CM = 0.6  # a human iris is ~11.7 mm across; MediaPipe's own iris model uses 6 mm
RENDER_SIZE = 512
SUPERSAMPLE = 2  # the position buffer and shading are rendered at 2× and the image box-filtered down
FOV_Y_DEG = 25.0
CAMERA_CM = 60.0


# ----------------------------------------------------------------------------------------------- geometry


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices and (F, 3) int faces (0-based) of a triangle OBJ."""
    verts, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    return np.array(verts), np.array(faces, dtype=np.int64)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ≈ s·R·src + t for (N, 3) point sets → (s, R (3, 3), t (3,))."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s


def thin_plate_warp(src: np.ndarray, dst: np.ndarray, smoothing: float) -> callable:
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


def fit_geometric(model: FaceModel, shared: Path) -> tuple[np.ndarray, np.ndarray, Surfaces, np.ndarray]:
    """Stages (a) + (b) → (vertex ids (478, 3), barycentric (478, 3), surfaces, canonical in ICT space)."""
    canonical, _ = read_obj(shared / "mediapipe-face-geometry/canonical_face_model.obj")
    with_iris, _ = read_obj(shared / "mediapipe-face-geometry/face_model_with_iris.obj")
    if len(canonical) != 468 or len(with_iris) != 478:
        raise SystemExit(f"unexpected MediaPipe geometry: {len(canonical)} / {len(with_iris)} vertices")
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
    return ids, bary, surfaces, aligned


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
_MATERIAL_COLOR = {
    "M_Face": (0.80, 0.62, 0.52),
    "M_BackHead": (0.80, 0.62, 0.52),
    "M_GumsTongue": (0.65, 0.25, 0.25),
    "M_Teeth": (0.92, 0.90, 0.85),
    "M_EyeLashes": (0.08, 0.06, 0.05),
    "M_IrisLeft": (1.0, 1.0, 1.0),
    "M_IrisRight": (1.0, 1.0, 1.0),
}  # not drawn: the sclera/cornea shell, occlusion and tear films (ICT draws them translucent)


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """(3, 3) rotation: yaw about +y, then pitch about +x, then roll about +z (degrees)."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


class Renderer:
    """Headless moderngl renderer of one ICT mesh pose: RGB image + model-space position buffer."""

    def __init__(self, model: FaceModel) -> None:
        import moderngl

        self.model = model
        topo = model.topology
        keep = np.isin(topo.triangle_material, [topo.material_names.index(m) for m in _MATERIAL_COLOR])
        self.triangles = topo.triangles[keep].astype(np.int32)
        colors = np.array([_MATERIAL_COLOR.get(m, (0, 0, 0)) for m in topo.material_names], np.float32)
        # Per-vertex colour from the first triangle that uses it (materials do not share vertices here).
        self.vertex_color = np.zeros((model.n_vertices, 3), np.float32)
        self.vertex_color[self.triangles.ravel()] = np.repeat(colors[topo.triangle_material[keep]], 3, axis=0)
        self.is_eye = np.zeros(model.n_vertices, np.float32)
        for lo, hi in model.iris_ranges:
            self.is_eye[lo : hi + 1] = 1.0
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

    def render(self, vertices: np.ndarray, rest: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posed (V, 3) and rest (V, 3) vertices → (RGB uint8 RENDER_SIZE², position float32 (S, S, 4))."""
        normals = vertex_normals(vertices, self.triangles)
        eye_dir = np.zeros((len(vertices), 4), np.float32)
        for (centre, _), (lo, hi) in zip(eye_frames(self.model, rest), self.model.iris_ranges, strict=True):
            eye_dir[lo : hi + 1, :3] = rest[lo : hi + 1] - centre
        eye_dir[:, 3] = self.is_eye
        data = np.hstack([vertices, normals, self.vertex_color, eye_dir]).astype(np.float32)
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


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals of the drawn triangles."""
    tri = vertices[triangles]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


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


def render_scenes(rng: np.random.Generator, n: int, model: FaceModel, expressive: bool) -> list[dict]:
    """n scenes: identity weights, expression weights, head rotation. The first is the frontal mean neutral."""
    names = list(model.expression_names)
    driven = [
        "jawOpen", "mouthSmile_L", "mouthSmile_R", "browDown_L", "browDown_R", "eyeBlink_L", "eyeBlink_R",
        "browInnerUp_L", "browInnerUp_R", "mouthPucker", "mouthFunnel", "eyeWide_L", "eyeWide_R",
        "mouthFrown_L", "mouthFrown_R", "cheekPuff_L", "cheekPuff_R", "noseSneer_L", "noseSneer_R",
        "eyeSquint_L", "eyeSquint_R", "mouthStretch_L", "mouthStretch_R", "jawLeft", "mouthLeft",
    ]  # fmt: skip
    scenes = []
    for k in range(n):
        w_id = np.zeros(model.n_identity)
        w_exp = np.zeros(len(names))
        yaw = pitch = 0.0
        if k > 0:
            w_id[:20] = rng.normal(0.0, 0.7, 20)
            yaw, pitch = rng.uniform(-15, 15), rng.uniform(-8, 8)
        if expressive:
            for name in rng.choice(driven, size=rng.integers(1, 4), replace=False):
                w_exp[names.index(name)] = rng.uniform(0.3, 1.0)
        elif k % 2 == 1:
            w_exp[names.index("jawOpen")] = 0.15  # parts the lips so inner-lip landmarks see their own lip
        scenes.append({"w_id": w_id, "w_exp": w_exp, "yaw": yaw, "pitch": pitch})
    return scenes


def track(tracker, image: np.ndarray) -> np.ndarray | None:
    """(478, 2) MediaPipe pixel landmarks of a RENDER_SIZE² image, or None when no face is found."""
    faces = tracker.process_image(image)
    return faces[0].pixels[:, :2].astype(np.float64) if faces else None


def fit_empirical(
    model: FaceModel, renderer: Renderer, tracker, surfaces: Surfaces, scenes: list[dict]
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Stage (c): bind tracked landmarks on renders; median in mean-neutral space → (ids, bary, residual_mm)."""
    neutral = model.neutral.astype(np.float64)
    bound = []
    for scene in tqdm(scenes, desc="(c) render+track+bind", unit="render"):
        rest = model.identity_neutral(scene["w_id"].astype(np.float32)).astype(np.float64)
        posed = model.personalize(scene["w_id"].astype(np.float32)).evaluate(scene["w_exp"]).astype(np.float64)
        rot = rotation(scene["yaw"], scene["pitch"])
        image, pos = renderer.render(posed, rest, rot)
        pixels = track(tracker, image)
        if pixels is None:
            continue
        ids, bary = surfaces.bind(posed, sample_positions(pos, pixels))
        bound.append(on_mesh(neutral, ids, bary))  # the same surface point on the mean neutral
    if not bound:
        raise SystemExit("MediaPipe found no face on any render: check the EGL context and the camera setup")
    stack = np.stack(bound)
    target = np.median(stack, axis=0)
    ids, bary = surfaces.bind(neutral, target)
    spread = np.linalg.norm(stack - on_mesh(neutral, ids, bary), axis=2).mean(0) * 10.0
    region = landmark_regions()
    residual = {f"render_{r}": float(spread[region == r].mean()) for r in REGIONS}
    print(f"(c) bound {len(bound)}/{len(scenes)} renders")
    return ids, bary, residual


def canonical_residual(model: FaceModel, shared: Path, ids: np.ndarray, bary: np.ndarray) -> dict[str, float]:
    """Mean distance (mm) per region between the embedded ICT neutral landmarks and MediaPipe's canonical
    model (with iris) similarity-aligned to them over the 468 mesh landmarks (the test recomputes this)."""
    with_iris, _ = read_obj(shared / "mediapipe-face-geometry/face_model_with_iris.obj")
    embedded = on_mesh(model.neutral.astype(np.float64), ids, bary)
    s, rot, t = umeyama(with_iris[:468], embedded[:468])
    dist = np.linalg.norm(with_iris @ (s * rot).T + t - embedded, axis=1) * 10.0
    region = landmark_regions()
    out = {r: float(dist[region == r].mean()) for r in REGIONS}
    out["all"] = float(dist.mean())
    return out


def evaluate(
    model: FaceModel, renderer: Renderer, tracker, embeddings: dict[str, tuple[np.ndarray, np.ndarray]], scenes
) -> dict[str, dict[str, float]]:
    """2-D pixel error (mean per region, RENDER_SIZE² image) of MediaPipe vs each embedding on posed renders."""
    region = landmark_regions()
    errors: dict[str, list[np.ndarray]] = {name: [] for name in embeddings}
    for scene in tqdm(scenes, desc="evaluate on expressive renders", unit="render"):
        rest = model.identity_neutral(scene["w_id"].astype(np.float32)).astype(np.float64)
        posed = model.personalize(scene["w_id"].astype(np.float32)).evaluate(scene["w_exp"]).astype(np.float64)
        rot = rotation(scene["yaw"], scene["pitch"])
        image, _ = renderer.render(posed, rest, rot)
        pixels = track(tracker, image)
        if pixels is None:
            continue
        for name, (ids, bary) in embeddings.items():
            predicted = renderer.project(on_mesh(posed, ids, bary), rot)
            errors[name].append(np.linalg.norm(predicted - pixels, axis=1))
    out = {}
    for name, errs in errors.items():
        e = np.stack(errs)
        out[name] = {r: float(e[:, region == r].mean()) for r in REGIONS}
        out[name]["all"] = float(e.mean())
        out[name]["frames"] = len(errs)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=DEFAULT_EMBEDDING_PATH)
    parser.add_argument("--stage", choices=("b", "c"), default="c", help="stop after (b) or run (c) too")
    parser.add_argument("--renders", type=int, default=24, help="renders for the empirical stage")
    parser.add_argument("--eval", type=int, default=24, help="expressive renders for the evaluation (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=None, help="write all numbers as JSON here")
    args = parser.parse_args()
    start = time.perf_counter()
    model = FaceModel.load()
    print("(a)+(b) similarity, thin-plate warp, closest-point projection …")
    ids_b, bary_b, surfaces, _ = fit_geometric(model, args.shared)
    report: dict[str, object] = {"canonical_mm_b": canonical_residual(model, args.shared, ids_b, bary_b)}
    ids, bary, residual = ids_b, bary_b, dict(report["canonical_mm_b"])
    if args.stage == "c" or args.eval > 0:
        from engine.config import TrackingConfig
        from engine.tracking import FaceTracker

        rng = np.random.default_rng(args.seed)
        renderer = Renderer(model)
        with FaceTracker(TrackingConfig(min_detection_confidence=0.3), static=True) as tracker:
            embeddings = {"b": (ids_b, bary_b)}
            if args.stage == "c":
                scenes = render_scenes(rng, args.renders, model, expressive=False)
                ids_c, bary_c, render_residual = fit_empirical(model, renderer, tracker, surfaces, scenes)
                embeddings["c"] = (ids_c, bary_c)
                report["canonical_mm_c"] = canonical_residual(model, args.shared, ids_c, bary_c)
                report["render_spread_mm_c"] = render_residual
                ids, bary = ids_c, bary_c
                residual = {**report["canonical_mm_c"], **render_residual}
            if args.eval > 0:
                eval_scenes = render_scenes(np.random.default_rng(args.seed + 1), args.eval, model, expressive=True)
                report["eval_px"] = evaluate(model, renderer, tracker, embeddings, eval_scenes)
        renderer.release()
    save(args.out, ids, bary, residual)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
