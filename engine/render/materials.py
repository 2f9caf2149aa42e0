"""What each part of the head is made of: shading classes per render vertex and a procedural base albedo.

ICT-FaceKit ships no textures. Skin without an identity texture gets a per-vertex albedo painted from the
geometry — darker lips around the mouth opening, brows above the eyes, warmer cheeks — so that a render
reads as a face to a landmark tracker. Irises are drawn per pixel in the shader from the rest position
(pupil and limbus stay sharp whatever the mesh density). Transparent overlay layers of ICT's eyes (eye
occlusion, eye blend, lacrimal fluid) are not drawn.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from scipy.spatial import cKDTree

from engine.detail.uv_raster import face_rasterizer
from engine.face_model import FaceModel, FaceTopology


class ShadeClass(IntEnum):
    """Per-vertex material class; the values are passed to the shaders as `#define CLASS_<NAME>`."""

    FACE = 0  # face skin: the UV tile the detail bases and the identity texture live in
    HEAD = 1  # back of the head and neck
    MOUTH = 2  # mouth socket (inside the cheeks)
    EYE_SOCKET = 3  # the pink flesh in the eye corners
    GUMS = 4  # gums and tongue
    TEETH = 5
    SCLERA = 6
    IRIS = 7  # ICT's iris sits under the sclera (corneal) surface; both get the drawn iris and pupil
    LASHES = 8
    TONGUE = 9  # the part of ICT's gums-and-tongue mesh that the jaw carries away from the teeth (split_tongue)


_MATERIAL_CLASS = {
    "M_Face": ShadeClass.FACE, "M_BackHead": ShadeClass.HEAD, "M_GumsTongue": ShadeClass.GUMS,
    "M_Teeth": ShadeClass.TEETH, "M_ScleraLeft": ShadeClass.SCLERA, "M_ScleraRight": ShadeClass.SCLERA,
    "M_IrisLeft": ShadeClass.IRIS, "M_IrisRight": ShadeClass.IRIS, "M_EyeLashes": ShadeClass.LASHES,
}  # fmt: skip
# Regions that share the back-head material but are not outer skin.
_REGION_CLASS = {"mouth_socket": ShadeClass.MOUTH, "eye_socket": ShadeClass.EYE_SOCKET}

# sRGB albedos.
SKIN = np.array([0.80, 0.60, 0.50])
LIPS = np.array([0.56, 0.24, 0.26])
BROWS = np.array([0.20, 0.14, 0.11])
_CLASS_ALBEDO = {
    ShadeClass.MOUTH: (0.35, 0.10, 0.10), ShadeClass.EYE_SOCKET: (0.75, 0.42, 0.40),
    ShadeClass.GUMS: (0.70, 0.30, 0.32), ShadeClass.TEETH: (0.86, 0.83, 0.74),
    ShadeClass.SCLERA: (0.90, 0.87, 0.84), ShadeClass.IRIS: (0.90, 0.87, 0.84), ShadeClass.LASHES: (0.06, 0.05, 0.05),
    ShadeClass.TONGUE: (0.80, 0.46, 0.46),
}  # fmt: skip
# Gum tissue lies within this distance (cm) of a tooth; the rest of the mesh the jaw moves is tongue.
_GUM_REACH_CM = 0.35


def render_vertex_classes(topology: FaceTopology) -> np.ndarray:
    """(R,) uint8 ShadeClass of each render vertex (every render vertex belongs to one material)."""
    classes = np.full(len(topology.render_to_model), ShadeClass.HEAD, dtype=np.uint8)
    for k, name in enumerate(topology.material_names):
        if name in _MATERIAL_CLASS:
            classes[topology.render_triangles[topology.triangle_material == k].ravel()] = _MATERIAL_CLASS[name]
    region = topology.vertex_region[topology.render_to_model]
    for name, cls in _REGION_CLASS.items():
        classes[(region == topology.region_names.index(name)) & (classes == ShadeClass.HEAD)] = cls
    return classes


class DrawGroup(IntEnum):
    """Triangles drawn by one shader variant (`#define GROUP`), in this order: near surfaces first, so that
    early depth testing skips shading what they hide; lashes last (blended over the rest)."""

    FACE = 0  # the face UV tile: identity texture and dynamic detail
    EYES = 1  # sclera (corneal surface) and iris
    HEAD = 2  # back of the head and neck
    INTERIOR = 3  # mouth socket, gums, tongue, teeth, eye-socket flesh: darkened with depth
    LASHES = 4


_CLASS_GROUP = np.array(
    [DrawGroup.FACE, DrawGroup.HEAD, DrawGroup.INTERIOR, DrawGroup.INTERIOR, DrawGroup.INTERIOR, DrawGroup.INTERIOR,
     DrawGroup.EYES, DrawGroup.EYES, DrawGroup.LASHES, DrawGroup.INTERIOR],
)  # fmt: skip  # indexed by ShadeClass


def split_tongue(classes: np.ndarray, rest: np.ndarray, jaw_open: np.ndarray) -> np.ndarray:
    """(R,) classes with the tongue told apart from the gums: ICT draws both as one mesh and one material.

    rest: (R, 3) cm. jaw_open: (R, 3) the jawOpen blendshape's position delta per unit weight (cm). Tongue: GUMS
    vertices the jaw moves (> 3 mm at full weight) farther than _GUM_REACH_CM from every tooth.
    """
    out = classes.copy()
    gums = np.flatnonzero(classes == ShadeClass.GUMS)
    teeth = classes == ShadeClass.TEETH
    if not len(gums) or not teeth.any():
        return out
    distance, _ = cKDTree(rest[teeth]).query(rest[gums])
    moved = np.linalg.norm(jaw_open[gums], axis=1) > 0.3
    out[gums[moved & (distance > _GUM_REACH_CM)]] = ShadeClass.TONGUE
    return out


def draw_groups(topology: FaceTopology, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Visible render triangles sorted by DrawGroup: ((T', 3) uint32, (5,) int counts per group).

    classes: (R,) ShadeClass per render vertex. A triangle's group is the highest of its corners' groups,
    so back-head triangles that touch the mouth or eye socket are drawn as interior. ICT's transparent eye
    layers (occlusion, blend, lacrimal fluid) have no class and are not drawn.
    """
    mat = topology.triangle_material
    drawn = np.isin(mat, [topology.material_names.index(n) for n in _MATERIAL_CLASS if n in topology.material_names])
    tris = topology.render_triangles[drawn]
    group = _CLASS_GROUP[classes[tris]].max(axis=1)
    order = np.argsort(group, kind="stable")
    return tris[order].astype(np.uint32), np.bincount(group, minlength=len(DrawGroup))


def procedural_albedo(topology: FaceTopology, rest: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-render-vertex sRGB albedo (R, 3) float32 in [0, 1], painted from the rest shape (R, 3) cm.

    Lips: lens shapes above and below the mouth opening (the face mesh's boundary loop around the mouth),
    thickest at the centre and vanishing at the corners. Brows: an arch ~2 cm above each eye opening's centre.
    """
    albedo = np.tile(SKIN, (len(rest), 1))
    face = classes == ShadeClass.FACE
    skin = face | (classes == ShadeClass.HEAD)
    x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
    # Warmer cheeks and nose, paler forehead: low-frequency variation a real face has.
    cheek = np.exp(-(((np.abs(x) - 4.2) / 2.2) ** 2 + ((y + 1.0) / 2.2) ** 2))
    nose = np.exp(-((x / 1.2) ** 2 + ((y - 0.5) / 2.0) ** 2))
    albedo += (cheek + 0.6 * nose)[:, None] * np.array([0.05, -0.03, -0.03])
    albedo[classes == ShadeClass.HEAD] *= 0.97

    rim = _mouth_rim(topology, rest, classes)
    if len(rim):
        # In the frontal (x, y) plane: the lips are lens shapes above and below the opening's mid-line,
        # as wide as the opening and thickest at the centre (the rim itself curls inside the mouth).
        corner = np.abs(rest[rim, 0]).max() + 0.15
        mid_y = rest[rim, 1].mean()
        taper = np.sqrt(np.clip(1.0 - (x / corner) ** 2, 0.0, 1.0))
        extent = np.where(y > mid_y, 0.85, 1.1) * taper
        lips = face & (z > rest[rim, 2].min() - 1.5)
        weight = np.clip((extent - np.abs(y - mid_y)) / 0.12, 0.0, 1.0) * lips
        albedo = albedo * (1 - weight[:, None]) + LIPS * weight[:, None]

    for side in (1.0, -1.0):
        eye_x, eye_y = 3.25 * side, _eye_centre_y(rest, classes, side)
        s = (x - eye_x) * side  # along the brow, towards the temple
        centre = eye_y + 2.0 + 0.35 * (1.0 - ((s - 0.3) / 2.4) ** 2)
        half = 0.38 - 0.12 * np.clip((s + 1.8) / 4.4, 0.0, 1.0)  # thicker at the inner end
        along = np.clip(1.0 - np.abs(s - 0.35) / 2.55, 0.0, 1.0)
        weight = np.clip((half - np.abs(y - centre)) / 0.1 + 0.5, 0.0, 1.0) * np.clip(along * 4.0, 0.0, 1.0)
        weight *= face & (x * side > 0)
        albedo = albedo * (1 - weight[:, None]) + BROWS * weight[:, None]

    for cls, color in _CLASS_ALBEDO.items():
        albedo[classes == cls] = color
    albedo[~skin & ~np.isin(classes, list(_CLASS_ALBEDO))] = SKIN
    return np.clip(albedo, 0.0, 1.0).astype(np.float32)


def _mouth_rim(topology: FaceTopology, rest: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Render-vertex ids on the face mesh's boundary loop around the mouth opening."""
    face = topology.material_names.index("M_Face")
    tris = topology.render_triangles[topology.triangle_material == face]
    model_tris = topology.render_to_model[tris]
    edges = np.sort(np.concatenate([model_tris[:, [0, 1]], model_tris[:, [1, 2]], model_tris[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary_model = np.unique(unique[counts == 1])
    boundary = np.flatnonzero(np.isin(topology.render_to_model, boundary_model) & (classes == ShadeClass.FACE))
    p = rest[boundary]
    # Below the nose, above the chin, within the mouth's width, on the front of the face.
    near_mouth = (np.abs(p[:, 0]) < 4.0) & (p[:, 1] < -1.0) & (p[:, 1] > -8.0) & (p[:, 2] > rest[:, 2].max() - 6.0)
    return boundary[near_mouth]


def _eye_centre_y(rest: np.ndarray, classes: np.ndarray, side: float) -> float:
    """Height (cm) of the centre of one eye's visible cap (the iris material)."""
    cap = (classes == ShadeClass.IRIS) & (rest[:, 0] * side > 0)
    return float(rest[cap, 1].mean()) if cap.any() else 3.6


def bake_face_albedo(model: FaceModel, resolution: int, identity_weights: np.ndarray | None = None) -> np.ndarray:
    """The procedural albedo of the face tile as a UV texture: (N, N, 3) uint8 sRGB, row 0 = v = 0.

    For identity builders that synthesize skin: multiplying a plain skin texture by this (÷ SKIN) adds the
    lips, brows and cheek colour the renderer paints when an identity has no texture.
    """

    topology = model.topology
    rest = model.identity_neutral(model.default_identity_weights() if identity_weights is None else identity_weights)
    classes = render_vertex_classes(topology)
    albedo = procedural_albedo(topology, rest[topology.render_to_model], classes)
    baked = face_rasterizer(model, resolution).rasterize_render(albedo)
    return np.clip(baked * 255.0 + 0.5, 0, 255).astype(np.uint8)
