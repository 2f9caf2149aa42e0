"""AvatarRenderer: wires the context, the mesh, the camera and the avatar shaders into `FaceState → RGBA`.

Per frame (`render`): the CPU computes the 19 × 53 key-expression coefficients c_ij
(`engine.detail.weights.key_expression_coefficients`), keeps only the key expressions whose weight can
exceed ~0 (DESIGN §11: every fetched basis layer costs on llvmpipe), deforms the mesh (numpy or GPU), draws
into a multisampled framebuffer, resolves and reads back. Output: (H, W, 4) uint8 RGBA, top row first,
straight (non-premultiplied) alpha, alpha 0 outside the head when the background is transparent.

`render_uv` is the same key-weight and blend math rendered in the face UV tile into a float target: the
GLSL result that tests compare with the numpy reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import moderngl
import numpy as np

from engine.config import RenderConfig
from engine.detail.weights import N_KEY_EXPRESSIONS, key_expression_coefficients
from engine.face_model import FaceModel
from engine.identity import Identity
from engine.render.camera import Camera
from engine.render.context import create_context, is_software, load_program
from engine.render.materials import ShadeClass
from engine.render.mesh import TEXTURE_WIDTH, AvatarMesh, MeshBuffers
from engine.types import FaceState, RenderedFrame

# A key expression is skipped when its M_i cannot exceed this anywhere (M_i ≤ Σ_j c_ij since A_j ≤ 1).
ACTIVE_KEY_EPSILON = 1e-3
_DEBUG_VIEWS = {"none": 0, "displacement": 1, "weights": 2, "normals": 3}


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


@dataclass
class Lighting:
    """Lights in the camera frame (directions point towards the light); colors are linear RGB."""

    key_direction: np.ndarray = field(default_factory=lambda: _unit((-0.45, 0.5, 0.75)))
    key_color: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.96, 0.9], np.float32))
    fill_direction: np.ndarray = field(default_factory=lambda: _unit((0.7, -0.05, 0.7)))
    fill_color: np.ndarray = field(default_factory=lambda: np.array([0.22, 0.24, 0.28], np.float32))
    sky: np.ndarray = field(default_factory=lambda: np.array([0.30, 0.31, 0.34], np.float32))
    ground: np.ndarray = field(default_factory=lambda: np.array([0.12, 0.10, 0.09], np.float32))


@dataclass(frozen=True)
class KeyWeightUniforms:
    """This frame's active key expressions: indices (n,) in 1..19 and packed coefficients (19·texels·4,)."""

    active: np.ndarray
    coefficients: np.ndarray


def key_weight_uniforms(weights: np.ndarray, channels: np.ndarray, mask_texels: int) -> KeyWeightUniforms:
    """(53,) expression weights → the active key expressions and their c_ij over the masked `channels`.

    c is (19, 53) with zeros outside `channels` by construction (α̂_i^j = 0 there), so packing only those
    columns changes nothing. Rows of inactive keys are dropped; the rest are packed in order.
    """
    c = key_expression_coefficients(weights)[:, channels]  # (19, J)
    bound = np.abs(c).sum(axis=1)
    active = np.flatnonzero(bound > ACTIVE_KEY_EPSILON)
    packed = np.zeros((N_KEY_EXPRESSIONS - 1, 4 * mask_texels), np.float32)
    packed[: len(active), : c.shape[1]] = c[active]
    return KeyWeightUniforms(active=(active + 1).astype(np.int32), coefficients=packed.reshape(-1))


class AvatarRenderer:
    """Renders an identity's avatar for a FaceState. Not thread-safe; usable from any one thread at a time.

    `gpu_blendshapes`: sum blendshapes in the vertex shader instead of numpy (None: numpy on software
    rasterizers, where vertex shading is single-threaded; GPU otherwise). `detail_gain` scales the blended
    displacement (DetailConfig.scale_mm).
    """

    def __init__(
        self,
        model: FaceModel,
        identity: Identity,
        config: RenderConfig,
        gpu_blendshapes: bool | None = None,
        detail_gain: float = 1.0,
    ) -> None:
        self.config = config
        self.identity = identity
        self.camera = Camera(config.width, config.height, config.fov_y_deg, config.camera_distance_cm)
        self.lighting = Lighting()
        self.detail_gain = detail_gain
        self._ctx = create_context()
        with self._ctx:
            self.gpu_blendshapes = not is_software(self._ctx) if gpu_blendshapes is None else gpu_blendshapes
            self.mesh = AvatarMesh.build(model, identity.identity_weights)
            self._buffers = MeshBuffers(self._ctx, self.mesh, self.gpu_blendshapes)
            defines: dict[str, object] = {
                "MASK_TEXELS": self.mesh.mask_texels,
                "TEXTURE_WIDTH": TEXTURE_WIDTH,
                **{f"CLASS_{c.name}": int(c) for c in ShadeClass},
            }
            if self.gpu_blendshapes:
                defines.update(GPU_BLENDSHAPES=1, N_RENDER=self.mesh.n_vertices)
            self._program = load_program(self._ctx, "avatar.vert.glsl", "avatar.frag.glsl", defines)
            self._vao = self._buffers.vertex_array(self._program)
            self._bases = self._upload_bases()
            self._albedo = self._upload_albedo()
            self._bind_static_uniforms()
            self._fbo, self._resolved = self._framebuffers(config.width, config.height, config.samples)
            self._uv_program: moderngl.Program | None = None
        self.detail = self._bases is not None

    # -- public API ------------------------------------------------------------------------------------

    @property
    def detail(self) -> bool:
        """Whether the dynamic-detail blend is applied (needs the identity's bases)."""
        return self._detail

    @detail.setter
    def detail(self, on: bool) -> None:
        self._detail = bool(on) and self._bases is not None

    def render(self, state: FaceState) -> RenderedFrame:
        """Draw `state` and read it back: RenderedFrame with (H, W, 4) uint8 RGBA, top row first."""
        with self._ctx:
            self.upload(state)
            self.draw()
            image = self.read()
        return RenderedFrame(image, state, time.monotonic_ns())

    def upload(self, state: FaceState) -> None:
        """Per-frame inputs: deformed vertices (CPU path) or weights (GPU path), pose and key weights."""
        weights = np.asarray(state.weights, dtype=np.float32)
        if weights.shape != (self.mesh.basis.shape[0],):
            raise ValueError(f"FaceState.weights must have shape ({self.mesh.basis.shape[0]},), got {weights.shape}")
        if not np.isfinite(weights).all():
            raise ValueError("FaceState.weights contains NaN or infinity")
        prog = self._program
        if self.gpu_blendshapes:
            nonzero = np.flatnonzero(weights).astype(np.int32)
            index = np.zeros(53, np.int32)
            value = np.zeros(53, np.float32)
            index[: len(nonzero)] = nonzero
            value[: len(nonzero)] = weights[nonzero]
            prog["u_n_weights"].value = len(nonzero)
            prog["u_weight_index"].write(index.tobytes())
            prog["u_weight_value"].write(value.tobytes())
        else:
            self._buffers.update(weights)
        prog["u_model_view"].write(self.camera.model_view(state.pose, self.config.follow_pose_translation).T.tobytes())
        self._set_key_weights(prog, weights if self.detail else None)
        light = self.lighting
        prog["u_light_dir"].write(np.stack([light.key_direction, light.fill_direction]).astype(np.float32).tobytes())
        prog["u_light_color"].write(np.stack([light.key_color, light.fill_color]).astype(np.float32).tobytes())
        prog["u_sky"].value = tuple(light.sky)
        prog["u_ground"].value = tuple(light.ground)

    def draw(self) -> None:
        """Rasterize into the multisampled framebuffer and resolve it."""
        self._fbo.use()
        background = self.config.background
        # A transparent background is cleared to 0 so that resolved edges are premultiplied (see read()).
        self._fbo.clear(*(background if background[3] > 0 else (0.0, 0.0, 0.0, 0.0)), depth=1.0)
        self._ctx.enable(moderngl.DEPTH_TEST)
        self._vao.render(moderngl.TRIANGLES)
        if self._resolved is not self._fbo:
            self._ctx.copy_framebuffer(self._resolved, self._fbo)

    def read(self) -> np.ndarray:
        """The resolved image: (H, W, 4) uint8 RGBA, top row first, straight alpha."""
        w, h = self.config.width, self.config.height
        data = np.frombuffer(self._resolved.read(components=4, alignment=1), np.uint8).reshape(h, w, 4)
        image = data[::-1].copy()
        if self.config.background[3] == 0:
            # Antialiased edges resolved against a zero background are premultiplied: divide them out.
            alpha = image[..., 3]
            edge = (alpha > 0) & (alpha < 255)
            if edge.any():
                px = image[edge].astype(np.float32)
                px[:, :3] = np.clip(px[:, :3] * 255.0 / px[:, 3:4], 0, 255)
                image[edge] = px.astype(np.uint8)
        return image

    def render_uv(self, weights: np.ndarray, resolution: int | None = None) -> np.ndarray:
        """The blended detail in the face UV tile, computed by the shaders' own math.

        weights: (53,) expression weights. Returns (N, N, 4) float32: F (mm), ∂F/∂u, ∂F/∂v (mm per unit
        UV), coverage (1 inside a face triangle, else 0); row 0 is v = 0, texel centres at (i + 0.5) / N.
        N defaults to the bases' resolution. Needs the identity's bases.
        """
        if self._bases is None:
            raise ValueError(f"identity {self.identity.name!r} has no detail bases to blend")
        n = self.identity.bases.resolution if resolution is None else resolution
        with self._ctx:
            if self._uv_program is None:
                defines = {"MASK_TEXELS": self.mesh.mask_texels, "TEXTURE_WIDTH": TEXTURE_WIDTH}
                self._uv_program = load_program(self._ctx, "uv_detail.vert.glsl", "uv_detail.frag.glsl", defines)
                self._uv_program["u_masks"].value = 1
                self._uv_program["u_bases"].value = 2
                self._uv_vao = self._buffers.vertex_array(self._uv_program)
            target = self._ctx.texture((n, n), 4, dtype="f4")
            fbo = self._ctx.framebuffer(color_attachments=[target])
            try:
                fbo.use()
                fbo.clear(0.0, 0.0, 0.0, 0.0)
                self._ctx.disable(moderngl.DEPTH_TEST)
                self._buffers.mask_texture.use(1)
                self._bases.use(2)
                self._set_key_weights(self._uv_program, np.asarray(weights, dtype=np.float32))
                self._uv_vao.render(moderngl.TRIANGLES, vertices=3 * self.mesh.n_face_triangles)
                out = np.frombuffer(fbo.read(components=4, dtype="f4", alignment=1), np.float32)
            finally:
                fbo.release()
                target.release()
        return out.reshape(n, n, 4).copy()

    def close(self) -> None:
        """Release every GL object and the context."""
        if self._ctx is None:
            return
        with self._ctx:
            self._buffers.release()
            for obj in (self._bases, self._albedo, self._fbo, self._resolved, self._program, self._uv_program):
                if obj is not None:
                    obj.release()
        self._ctx.release()
        self._ctx = None

    def __enter__(self) -> AvatarRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup -----------------------------------------------------------------------------------------

    def _set_key_weights(self, prog: moderngl.Program, weights: np.ndarray | None) -> None:
        """Key-weight uniforms for `weights` (None: detail off, no active keys)."""
        if weights is None:
            prog["u_n_active"].value = 0
            if "u_detail" in prog:
                prog["u_detail"].value = False
            return
        uniforms = key_weight_uniforms(weights, self.mesh.channels, self.mesh.mask_texels)
        active = np.zeros(N_KEY_EXPRESSIONS - 1, np.int32)
        active[: len(uniforms.active)] = uniforms.active
        prog["u_n_active"].value = len(uniforms.active)
        prog["u_coef"].write(uniforms.coefficients.tobytes())
        prog["u_active"].write(active.tobytes())
        if "u_detail" in prog:
            prog["u_detail"].value = True

    def _upload_bases(self) -> moderngl.TextureArray | None:
        """The 20 bases as an RGB16F array texture, mipmapped (bundles store float16, so nothing is lost)."""
        bases = self.identity.bases
        if bases is None:
            return None
        maps = np.asarray(bases.maps)
        if maps.ndim != 4 or maps.shape[0] != N_KEY_EXPRESSIONS or maps.shape[3] != 3 or maps.shape[1] != maps.shape[2]:
            raise ValueError(f"detail bases must be ({N_KEY_EXPRESSIONS}, N, N, 3), got {maps.shape}")
        n = maps.shape[1]
        tex = self._ctx.texture_array((n, n, N_KEY_EXPRESSIONS), 3, maps.astype(np.float16).tobytes(), dtype="f2")
        tex.build_mipmaps()
        tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        tex.repeat_x = tex.repeat_y = False
        return tex

    def _upload_albedo(self) -> moderngl.Texture | None:
        """The identity's face-tile albedo (row 0 = v = 0), mipmapped; None: procedural skin."""
        texture = self.identity.texture
        if texture is None:
            return None
        tex_np = np.ascontiguousarray(texture, dtype=np.uint8)
        if tex_np.ndim != 3 or tex_np.shape[2] != 3:
            raise ValueError(f"identity texture must be (H, W, 3) uint8, got {tex_np.shape}")
        tex = self._ctx.texture((tex_np.shape[1], tex_np.shape[0]), 3, tex_np.tobytes(), alignment=1)
        tex.build_mipmaps()
        tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        tex.repeat_x = tex.repeat_y = False
        return tex

    def _bind_static_uniforms(self) -> None:
        prog = self._program
        units = {"u_masks": (1, self._buffers.mask_texture), "u_bases": (2, self._bases)}
        units["u_albedo_map"] = (3, self._albedo)
        if self.gpu_blendshapes:
            units["u_position_basis"] = (4, self._buffers.basis_texture)
            units["u_normal_basis"] = (5, self._buffers.normal_basis_texture)
        for name, (unit, tex) in units.items():
            if name in prog:
                prog[name].value = unit  # distinct units even when unused: mixed sampler types may not share one
            if tex is not None:
                tex.use(unit)
        projection = self.camera.projection()
        prog["u_projection"].write(projection.T.tobytes())
        prog["u_has_albedo_map"].value = self._albedo is not None
        prog["u_detail_gain"].value = self.detail_gain
        prog["u_debug_view"].value = _DEBUG_VIEWS[self.config.debug_view]
        prog["u_debug_range_mm"].value = 0.5
        prog["u_eye_pole"].write(self.mesh.eye_poles.astype(np.float32).tobytes())
        prog["u_iris_color"].value = (0.16, 0.09, 0.045)
        mouth = self.mesh.rest[self.mesh.classes == ShadeClass.TEETH, 2]
        front = float(mouth.max()) if len(mouth) else 10.0
        prog["u_mouth_depth"].value = (front, front - 5.0)

    def _framebuffers(self, width: int, height: int, samples: int) -> tuple[moderngl.Framebuffer, moderngl.Framebuffer]:
        """(draw target, resolve target): one single-sample framebuffer when `samples` ≤ 1."""
        samples = min(samples, self._ctx.max_samples)
        resolved = self._ctx.framebuffer(
            color_attachments=[self._ctx.renderbuffer((width, height), 4)],
            depth_attachment=self._ctx.depth_renderbuffer((width, height)),
        )
        if samples <= 1:
            return resolved, resolved
        msaa = self._ctx.framebuffer(
            color_attachments=[self._ctx.renderbuffer((width, height), 4, samples=samples)],
            depth_attachment=self._ctx.depth_renderbuffer((width, height), samples=samples),
        )
        return msaa, resolved
