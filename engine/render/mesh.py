"""The avatar mesh in render order (seam-split vertices) and its upload to OpenGL.

`AvatarMesh` is plain numpy: the identity's rest shape, per-blendshape position and normal deltas gathered
into render-vertex order (so a frame is one weighted sum, no gather), UVs, shading classes, the procedural
albedo and the activation masks A_j (design §4.2) of the blendshapes the key expressions use.
`MeshBuffers` owns the GL objects and updates vertices per frame, either on the CPU (numpy, the default on
llvmpipe, where vertex shading is single-threaded) or on the GPU (deltas in float textures, summed in the
vertex shader).

Normals are blended linearly like positions (a per-blendshape normal delta, renormalized in the shader):
exact at the rest shape and at each single full blendshape, and it costs no per-frame normal pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import moderngl
import numpy as np

from engine.detail.weights import activation_masks, key_expression_weights
from engine.face_model import FaceModel, LandmarkEmbedding, vertex_normals
from engine.names import ICT_EXPRESSIONS
from engine.render.materials import (
    DrawGroup,
    ShadeClass,
    draw_groups,
    procedural_albedo,
    render_vertex_classes,
    split_tongue,
)
from engine.solve.eyes import GAZE_CHANNELS, eye_rotations, eyeball_centers

# Float textures are laid out row-major in this width (below every GL 3.3 implementation's max texture size).
TEXTURE_WIDTH = 4096
# ICT's upper incisors end at or above the upper lip's inner rim even with the jaw wide open (the lip comes down
# with the jaw), so the upper teeth never show; on some faces they sit 3 mm above it. The skull-fixed teeth (those
# no blendshape moves) are drawn lower, per identity, so that their front edge is UPPER_TEETH_SHOW_CM (cm) below
# that rim (MediaPipe landmark 13 on the jawOpen shape): about the incisor a relaxed open mouth shows. Never by
# more than UPPER_TEETH_MAX_DROP_CM; the closed lips still cover them.
UPPER_TEETH_SHOW_CM = 0.35
UPPER_TEETH_MAX_DROP_CM = 0.8
UPPER_LIP_INNER_LANDMARK = 13


def upper_teeth_drop(model: FaceModel, neutral: np.ndarray, basis: np.ndarray, upper_teeth: np.ndarray) -> float:
    """How far (cm) to lower the skull-fixed upper teeth of this identity (see UPPER_TEETH_SHOW_CM).

    neutral: (V, 3) the identity's rest shape; basis: (E, V, 3) its expression deltas; upper_teeth: (n, 3) rest
    positions of the upper teeth (cm). The front edge is the lowest tooth point within 6 mm of the midline."""
    if not len(upper_teeth):
        return 0.0
    embedding = LandmarkEmbedding.load()
    opened = neutral + basis[ICT_EXPRESSIONS.index("jawOpen")]
    lip = float(embedding.apply(opened)[UPPER_LIP_INNER_LANDMARK, 1])
    front = upper_teeth[np.abs(upper_teeth[:, 0]) < 0.6]
    edge = float((front if len(front) else upper_teeth)[:, 1].min())
    return float(np.clip(edge - lip + UPPER_TEETH_SHOW_CM, 0.0, UPPER_TEETH_MAX_DROP_CM))


def mask_channels() -> np.ndarray:
    """(J,) int ICT blendshape indices that some key expression uses: the only A_j the shaders need."""
    return np.flatnonzero(np.abs(key_expression_weights()[1:]).sum(axis=0) > 0)


@dataclass(frozen=True)
class AvatarMesh:
    """Render-order arrays for one identity (R seam-split render vertices, E blendshapes).

    rest: (R, 6) float32 rest position (cm) and unit normal. basis: (E, R, 6) float32 per-unit-weight
    position and normal deltas. uv: (R, 2) float32 (face tile in [0, 1]²). classes: (R,) uint8 ShadeClass.
    albedo: (R, 3) float32 sRGB. masks: (R, J) float32 A_j for `channels` (0 off the face tile).
    channels: (J,) ICT indices. triangles: (T', 3) uint32 visible triangles sorted by DrawGroup;
    group_counts: (5,) triangles per DrawGroup. eye_poles: (2, 3) float32 rest front pole of the left and
    right eyeball (cm).
    """

    rest: np.ndarray
    basis: np.ndarray
    uv: np.ndarray
    classes: np.ndarray
    albedo: np.ndarray
    masks: np.ndarray
    channels: np.ndarray
    triangles: np.ndarray
    group_counts: np.ndarray
    eye_poles: np.ndarray
    eye_ranges: np.ndarray
    eye_centers: np.ndarray

    @property
    def n_vertices(self) -> int:
        return len(self.rest)

    @staticmethod
    def build(model: FaceModel, identity_weights: np.ndarray | None = None) -> AvatarMesh:
        """Personalize `model` with `identity_weights` (None: the mean face) and lay it out for rendering."""
        topo = model.topology
        face = model.personalize(identity_weights)
        neutral_normals = vertex_normals(face.neutral, topo.triangles)
        basis_normals = np.empty_like(face.expression_basis)
        for start in range(0, len(face.expression_basis), 8):  # bounded memory: 8 shapes at a time
            shapes = face.neutral[None] + face.expression_basis[start : start + 8]
            basis_normals[start : start + 8] = vertex_normals(shapes, topo.triangles) - neutral_normals
        r2m = topo.render_to_model
        rest = np.concatenate([face.neutral[r2m], neutral_normals[r2m]], axis=1).astype(np.float32)
        basis = np.concatenate([face.expression_basis[:, r2m], basis_normals[:, r2m]], axis=2).astype(np.float32)
        classes = split_tongue(render_vertex_classes(topo), rest[:, :3], basis[ICT_EXPRESSIONS.index("jawOpen"), :, :3])
        upper_teeth = (classes == ShadeClass.TEETH) & ~np.abs(basis[:, :, :3]).any(axis=(0, 2))
        rest[upper_teeth, 1] -= upper_teeth_drop(model, face.neutral, face.expression_basis, rest[upper_teeth, :3])
        channels = mask_channels()
        masks = activation_masks(model.expression_basis[channels], topo.region_vertices("face"))[:, r2m].T
        masks = np.where((classes == ShadeClass.FACE)[:, None], masks, 0.0).astype(np.float32)
        triangles, group_counts = draw_groups(topo, classes)
        poles = np.zeros((2, 3), np.float32)
        for k, side in enumerate((1.0, -1.0)):  # subject's left (+x) first
            cap = np.flatnonzero((classes == ShadeClass.SCLERA) & (rest[:, 0] * side > 0))
            if len(cap):
                poles[k] = rest[cap[np.argmax(rest[cap, 2])], :3]
        reg = topo.vertex_region[r2m]
        # Render vertices of each eyeball are one contiguous run (seam splitting keeps model-vertex order).
        eye_ranges = np.array(
            [[ids.min(), ids.max() + 1] for ids in (np.flatnonzero(reg == topo.region_names.index(r))
                                                     for r in ("eyeball_left", "eyeball_right"))]
        )  # fmt: skip
        return AvatarMesh(
            rest=rest,
            basis=np.ascontiguousarray(basis),
            uv=np.ascontiguousarray(topo.render_uv, dtype=np.float32),
            classes=classes,
            albedo=procedural_albedo(topo, rest[:, :3], classes),
            masks=masks,
            channels=channels,
            triangles=triangles,
            group_counts=group_counts,
            eye_poles=poles,
            eye_ranges=eye_ranges,
            eye_centers=eyeball_centers(model, identity_weights).astype(np.float32),
        )

    def evaluate(self, weights: np.ndarray) -> np.ndarray:
        """(E,) expression weights → (R, 6) float32 positions (cm) and unnormalized normals.

        A scripted frame drives a handful of the 53 channels: only those rows are summed. A tracked face
        gives every channel a little weight; selecting rows would then copy most of the basis, and one
        whole (53 × 6R) product is ~4× faster.
        """
        w = np.asarray(weights, dtype=np.float32)
        active = np.flatnonzero(w)
        flat = self.basis.reshape(len(self.basis), -1)
        if len(active) > len(w) // 4:
            out = self.rest.reshape(-1) + w @ flat
        elif len(active):
            out = self.rest.reshape(-1) + w[active] @ flat[active]
        else:
            out = self.rest.reshape(-1).copy()
        out = out.reshape(-1, 6)
        first, last = self.eye_ranges[0, 0], self.eye_ranges[1, 1]
        out[first:last] = self.eyes(weights)
        return out

    def eyes(self, weights: np.ndarray) -> np.ndarray:
        """(E,) weights → (n, 6) positions and normals of both eyeballs, turned by the gaze channels.

        ICT's eyeLook blendshapes move only the lids; the eyeballs themselves rotate about their centres by the
        gaze angles the solver reads from the irises (`engine.solve.eyes`), so gaze round-trips.
        """
        first, last = self.eye_ranges[0, 0], self.eye_ranges[1, 1]
        rows = self.rest[first:last].copy()
        if not np.any(np.asarray(weights)[GAZE_CHANNELS]):
            return rows
        for eye, rotation in enumerate(eye_rotations(np.asarray(weights, dtype=np.float64)).astype(np.float32)):
            lo, hi = self.eye_ranges[eye] - first
            centre = self.eye_centers[eye]
            rows[lo:hi, :3] = (rows[lo:hi, :3] - centre) @ rotation.T + centre
            rows[lo:hi, 3:] = rows[lo:hi, 3:] @ rotation.T
        return rows

    def group_range(self, group: DrawGroup) -> tuple[int, int]:
        """(first index, index count) of a draw group in the index buffer."""
        first = int(self.group_counts[:group].sum())
        return 3 * first, 3 * int(self.group_counts[group])

    @property
    def mask_texels(self) -> int:
        """vec4 texels per vertex that hold the J masks."""
        return -(-self.masks.shape[1] // 4)


def _float_texture(ctx: moderngl.Context, values: np.ndarray, components: int) -> moderngl.Texture:
    """(n, components) float32 → a TEXTURE_WIDTH-wide float texture, element k at (k % W, k // W)."""
    n = len(values)
    rows = -(-n // TEXTURE_WIDTH)
    padded = np.zeros((rows * TEXTURE_WIDTH, components), np.float32)
    padded[:n] = values
    tex = ctx.texture((TEXTURE_WIDTH, rows), components, padded.tobytes(), dtype="f4")
    tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
    return tex


class MeshBuffers:
    """The GL side of an AvatarMesh: vertex buffers, index buffer, mask texture, optional GPU deltas.

    Dynamic buffer `deformed`: (R, 6) position + normal, rewritten per frame on the CPU path, written once
    (the rest shape) on the GPU path. Static buffer: uv (2), class (1), albedo (3), rest position (3).
    """

    def __init__(self, ctx: moderngl.Context, mesh: AvatarMesh, gpu_blendshapes: bool) -> None:
        self.mesh = mesh
        self.gpu_blendshapes = gpu_blendshapes
        self.deformed = ctx.buffer(mesh.rest.tobytes(), dynamic=True)
        static = np.concatenate(
            [mesh.uv, mesh.classes[:, None].astype(np.float32), mesh.albedo, mesh.rest[:, :3]], axis=1
        )
        self.static = ctx.buffer(np.ascontiguousarray(static, dtype=np.float32).tobytes())
        self.index = ctx.buffer(mesh.triangles.tobytes())
        j4 = mesh.mask_texels
        masks = np.zeros((mesh.n_vertices, 4 * j4), np.float32)
        masks[:, : mesh.masks.shape[1]] = mesh.masks
        self.mask_texture = _float_texture(ctx, masks.reshape(-1, 4), 4)
        self.basis_texture: moderngl.Texture | None = None
        if gpu_blendshapes:
            # Positions and normals of delta j, vertex r at texel j·R + r (RGB), two consecutive rows blocks.
            self.basis_texture = _float_texture(ctx, mesh.basis.reshape(-1, 6)[:, :3], 3)
            self.normal_basis_texture = _float_texture(ctx, mesh.basis.reshape(-1, 6)[:, 3:], 3)

    def vertex_array(self, program: moderngl.Program) -> moderngl.VertexArray:
        """A VAO binding this mesh's buffers to the attributes `program` uses (unused ones are skipped)."""
        names = set(program)
        deformed = [n for n in ("in_position", "in_normal") if n in names]
        static = [n for n in ("in_uv", "in_class", "in_albedo", "in_rest") if n in names]
        fmt_d = " ".join("3f" if n in deformed else "12x" for n in ("in_position", "in_normal"))
        sizes = {"in_uv": "2f", "in_class": "1f", "in_albedo": "3f", "in_rest": "3f"}
        skips = {"in_uv": "8x", "in_class": "4x", "in_albedo": "12x", "in_rest": "12x"}
        fmt_s = " ".join(sizes[n] if n in static else skips[n] for n in sizes)
        content = []
        if deformed:
            content.append((self.deformed, fmt_d, *deformed))
        if static:
            content.append((self.static, fmt_s, *static))
        return program.ctx.vertex_array(program, content, self.index, index_element_size=4)

    def update(self, weights: np.ndarray) -> None:
        """CPU path: write this frame's deformed positions and normals. GPU path: only the eyeballs, which
        rotate rather than blend (no expression moves them, so the shader's deltas there are zero)."""
        if not self.gpu_blendshapes:
            self.deformed.write(self.mesh.evaluate(weights).tobytes())
        else:
            offset = int(self.mesh.eye_ranges[0, 0]) * self.mesh.rest.shape[1] * 4
            self.deformed.write(self.mesh.eyes(weights).tobytes(), offset=offset)

    def release(self) -> None:
        for obj in (self.deformed, self.static, self.index, self.mask_texture, self.basis_texture):
            if obj is not None:
                obj.release()
        if self.basis_texture is not None:
            self.normal_basis_texture.release()
