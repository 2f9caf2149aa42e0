"""AvatarRenderer: wires the context, the mesh, the camera and the avatar shaders into `FaceState → RGBA`.

Per frame (`render`): the CPU computes the 19 × 53 key-expression coefficients c_ij
(`engine.detail.weights.key_expression_coefficients`), keeps only the key expressions whose weight can
exceed ~0 (design §11: every fetched basis layer costs on llvmpipe), deforms the mesh (numpy or GPU), draws
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
from engine.render.context import create_context, is_software, load_program, wants_window
from engine.render.materials import DrawGroup, ShadeClass
from engine.render.mesh import TEXTURE_WIDTH, AvatarMesh, MeshBuffers
from engine.render.outputs import PreviewWindow
from engine.types import FaceState, RenderedFrame

# A key expression is skipped when its M_i cannot exceed this anywhere (M_i ≤ Σ_j c_ij since A_j ≤ 1).
_DEBUG_VIEWS = {"none": 0, "displacement": 1, "weights": 2, "normals": 3, "classes": 4}


# ICT's closed surfaces wind counter-clockwise seen from outside (the mouth socket from inside, where it is seen):
# culling their back faces changes ≤ 2 edge pixels of a 512² frame and saves ~20 % of the draw on llvmpipe.
# Lash cards are seen from both sides and stay unculled.
_BACKFACE_CULLED = frozenset({DrawGroup.FACE, DrawGroup.EYES, DrawGroup.HEAD, DrawGroup.INTERIOR})
# Lash strands are coverage (alpha) blended over what is drawn before them, without writing depth: overlapping
# cards all blend, in any order (one colour, so the result does not depend on it).
_BLENDED = frozenset({DrawGroup.LASHES})
# Colour: over; alpha: accumulated coverage, so strands over a transparent background stay premultiplied like
# resolved MSAA edges (read() divides them out).
_BLEND_FUNC = (moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA, moderngl.ONE, moderngl.ONE_MINUS_SRC_ALPHA)


def _m_slots(n_active: int) -> int:
    """vec4 varyings that carry the active key weights M_k: only as many as the active count needs, since a
    software rasterizer sets up and interpolates every varying component of every triangle (1 for 0 keys)."""
    return max(1, -(-n_active // 4))


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


def key_weight_uniforms(
    weights: np.ndarray, channels: np.ndarray, mask_texels: int, threshold: float = 0.0
) -> KeyWeightUniforms:
    """(53,) expression weights → the active key expressions and their c_ij over the masked `channels`.

    c is (19, 53) with zeros outside `channels` by construction (α̂_i^j = 0 there), so packing only those
    columns changes nothing. A key expression is active when M_i can exceed `threshold` somewhere: M_i ≤
    Σ_j |c_ij| since A_j ≤ 1 (0: every key with any weight — the exact blend). Rows of inactive keys are
    dropped; the rest are packed in order.
    """
    c = key_expression_coefficients(weights)[:, channels]  # (19, J)
    bound = np.abs(c).sum(axis=1)
    active = np.flatnonzero(bound > threshold)
    packed = np.zeros((N_KEY_EXPRESSIONS - 1, 4 * mask_texels), np.float32)
    packed[: len(active), : c.shape[1]] = c[active]
    return KeyWeightUniforms(active=(active + 1).astype(np.int32), coefficients=packed.reshape(-1))


def _write_uniforms(program: moderngl.Program, values: dict[str, object]) -> None:
    """Set the uniforms `program` uses (variants compile unused ones away); arrays are written as float32
    or int32 bytes, scalars assigned."""
    for name, value in values.items():
        if name not in program:
            continue
        if isinstance(value, np.ndarray):
            dtype = np.int32 if value.dtype.kind in "iu" else np.float32
            uniform = program[name]
            # Compilers shrink arrays to the elements used (constant N_ACTIVE): write only those.
            size = uniform.array_length * uniform.dimension * 4
            uniform.write(np.ascontiguousarray(value, dtype=dtype).tobytes()[:size])
        else:
            program[name].value = value


def _gpu_weight_uniforms(weights: np.ndarray) -> dict[str, object]:
    """GPU blendshapes: the non-zero weights as (index, value) lists."""
    nonzero = np.flatnonzero(weights)
    index = np.zeros(len(weights), np.int32)
    value = np.zeros(len(weights), np.float32)
    index[: len(nonzero)] = nonzero
    value[: len(nonzero)] = weights[nonzero]
    return {"u_n_weights": len(nonzero), "u_weight_index": index, "u_weight_value": value}


class AvatarRenderer:
    """Renders an identity's avatar for a FaceState. Not thread-safe; usable from any one thread at a time.

    With `config.backend` `window` (or `auto` and a display) each frame is also shown in a preview window;
    `preview_open` turns False when the user closes it.

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
        gpu_present: bool | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.camera = Camera(config.width, config.height, config.fov_y_deg, config.camera_distance_cm)
        self.lighting = Lighting()
        self.detail_gain = detail_gain
        # The displacement view spans ± the largest |F̂| of the bases (networks differ in scale).
        maps = identity.bases.maps if identity.bases is not None else None
        self._debug_range_mm = max(float(np.abs(maps[..., 0]).max()), 1e-3) if maps is not None else 0.5
        self._ctx = create_context()
        with self._ctx:
            self.gpu_blendshapes = not is_software(self._ctx) if gpu_blendshapes is None else gpu_blendshapes
            self.mesh = AvatarMesh.build(model, identity.identity_weights)
            self._buffers = MeshBuffers(self._ctx, self.mesh, self.gpu_blendshapes)
            self._defines: dict[str, object] = {
                "MASK_TEXELS": self.mesh.mask_texels,
                "TEXTURE_WIDTH": TEXTURE_WIDTH,
                "DEBUG_VIEW": _DEBUG_VIEWS[config.debug_view],
                **{f"CLASS_{c.name}": int(c) for c in ShadeClass},
                **{f"GROUP_{g.name}": int(g) for g in DrawGroup},
            }
            if self.gpu_blendshapes:
                self._defines.update(GPU_BLENDSHAPES=1, N_RENDER=self.mesh.n_vertices)
            self._bases = self._upload_bases()
            self._head_albedo = self.mesh.albedo[self.mesh.classes == ShadeClass.HEAD].mean(axis=0)
            self._albedo = self._upload_albedo()
            self._defines["ALBEDO_MAP"] = int(self._albedo is not None)
            # One program per (draw group, detail, active key count), compiled on first use: the count is a
            # compile-time constant so the key loops unroll (see shaders/key_weights.glsl).
            self._variants: dict[tuple[DrawGroup, bool, int], tuple[moderngl.Program, moderngl.VertexArray]] = {}
            self._uv_variants: dict[int, tuple[moderngl.Program, moderngl.VertexArray]] = {}
            auto_samples = 0 if is_software(self._ctx) else 4
            self.samples = min(auto_samples if config.samples is None else config.samples, self._ctx.max_samples)
            self._fbo, self._resolved = self._framebuffers(config.width, config.height, self.samples)
            # Flip (and un-premultiply) on the GPU where shading is cheap; numpy on software rasterizers.
            self.gpu_present = not is_software(self._ctx) if gpu_present is None else gpu_present
            self._present = self._present_pass(config.width, config.height) if self.gpu_present else None
            self._n_active = 0
        self.detail = self._bases is not None
        # render.backend window/auto: every rendered frame is also shown (rendering itself stays off-screen).
        self.preview: PreviewWindow | None = None
        if wants_window(config.backend):
            self.preview = PreviewWindow("scapecast avatar", mirror=config.mirror_preview)
        self.preview_open = self.preview is not None
        # The user's requests from the preview window, read by the pipeline after each frame.
        self.preview_closed = False
        self.calibration_requested = False

    # -- public API ------------------------------------------------------------------------------------

    @property
    def context(self) -> moderngl.Context:
        """The GL context; `upload`, `draw` and `read` (the stages `render` runs) need it current:
        `with renderer.context: ...`."""
        return self._ctx

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
        done = time.monotonic_ns()
        if self.preview is not None and self.preview_open:
            self.preview_open = self.preview.show(image)
            self.preview_closed = not self.preview_open
            self.calibration_requested = self.preview.take_calibration_request()
        return RenderedFrame(image, state, done)

    def upload(self, state: FaceState) -> None:
        """Per-frame inputs: deformed vertices (CPU path) or weights (GPU path), pose and key weights."""
        weights = np.asarray(state.weights, dtype=np.float32)
        if weights.shape != (self.mesh.basis.shape[0],):
            raise ValueError(f"FaceState.weights must have shape ({self.mesh.basis.shape[0]},), got {weights.shape}")
        if not np.isfinite(weights).all():
            raise ValueError("FaceState.weights contains NaN or infinity")
        self._buffers.update(weights)  # all vertices on the CPU path, the turning eyeballs on the GPU path
        self._frame = {
            "u_model_view": self.camera.model_view(state.pose, self.config.follow_pose_translation).T,
            "u_light_dir": np.stack([self.lighting.key_direction, self.lighting.fill_direction]),
            "u_light_color": np.stack([self.lighting.key_color, self.lighting.fill_color]),
            "u_sky": self.lighting.sky,
            "u_ground": self.lighting.ground,
            "u_detail_gain": self.detail_gain,
        }
        if self.gpu_blendshapes:
            self._frame.update(_gpu_weight_uniforms(weights))
        self._n_active = 0
        if self.detail:
            self._frame.update(self._key_weight_uniforms(weights))
            self._n_active = int(self._frame["u_n_active"])

    def draw(self) -> None:
        """Rasterize into the multisampled framebuffer and resolve it."""
        self._fbo.use()
        background = self.config.background
        # A transparent background is cleared to 0 so that resolved edges are premultiplied (see read()).
        self._fbo.clear(*(background if background[3] > 0 else (0.0, 0.0, 0.0, 0.0)), depth=1.0)
        self._ctx.enable(moderngl.DEPTH_TEST)
        for group in DrawGroup:
            first, count = self.mesh.group_range(group)
            if count:
                if group in _BACKFACE_CULLED:
                    self._ctx.enable(moderngl.CULL_FACE)
                else:
                    self._ctx.disable(moderngl.CULL_FACE)
                blended = group in _BLENDED
                if blended:
                    self._ctx.enable(moderngl.BLEND)
                    self._ctx.blend_func = _BLEND_FUNC
                    self._fbo.depth_mask = False
                detail = self.detail and group == DrawGroup.FACE
                program, vao = self._variant(group, detail, self._n_active if detail else 0)
                _write_uniforms(program, self._frame)
                vao.render(moderngl.TRIANGLES, vertices=count, first=first)
                if blended:
                    self._ctx.disable(moderngl.BLEND)
                    self._fbo.depth_mask = True
        self._ctx.disable(moderngl.CULL_FACE)
        if self._resolved is not self._fbo:
            self._ctx.copy_framebuffer(self._resolved, self._fbo)

    def read(self) -> np.ndarray:
        """The resolved image: (H, W, 4) uint8 RGBA, top row first, straight alpha."""
        w, h = self.config.width, self.config.height
        if self._present is not None:
            program, vao, target = self._present
            target.use()
            self._ctx.disable(moderngl.DEPTH_TEST)
            self._resolved.color_attachments[0].use(location=0)
            vao.render(moderngl.TRIANGLES, vertices=3)
            image = np.empty((h, w, 4), np.uint8)
            target.read_into(image, components=4, alignment=1)
            return image
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
        uniforms = self._key_weight_uniforms(np.asarray(weights, dtype=np.float32))
        with self._ctx:
            n_active = int(uniforms["u_n_active"])
            if n_active not in self._uv_variants:
                defines = {"MASK_TEXELS": self.mesh.mask_texels, "TEXTURE_WIDTH": TEXTURE_WIDTH, "N_ACTIVE": n_active,
                           "M_SLOTS": _m_slots(n_active)}  # fmt: skip
                program = load_program(self._ctx, "uv_detail.vert.glsl", "uv_detail.frag.glsl", defines)
                _write_uniforms(program, {"u_masks": 1, "u_bases": 2})
                self._uv_variants[n_active] = (program, self._buffers.vertex_array(program))
            program, vao = self._uv_variants[n_active]
            target = self._ctx.texture((n, n), 4, dtype="f4")
            fbo = self._ctx.framebuffer(color_attachments=[target])
            try:
                fbo.use()
                fbo.clear(0.0, 0.0, 0.0, 0.0)
                self._ctx.disable(moderngl.DEPTH_TEST)
                self._buffers.mask_texture.use(1)
                self._bases.use(2)
                _write_uniforms(program, uniforms)
                vao.render(moderngl.TRIANGLES, vertices=self.mesh.group_range(DrawGroup.FACE)[1])
                out = np.frombuffer(fbo.read(components=4, dtype="f4", alignment=1), np.float32)
            finally:
                fbo.release()
                target.release()
        return out.reshape(n, n, 4).copy()

    def close(self) -> None:
        """Release every GL object and the context."""
        if self._ctx is None:
            return
        if self.preview is not None:
            self.preview.close()
        with self._ctx:
            self._buffers.release()
            variants = [*self._variants.values(), *self._uv_variants.values()]
            programs = [obj for variant in variants for obj in variant]
            present = self._present or ()
            for obj in (self._bases, self._albedo, self._fbo, self._resolved, *programs, *present):
                if obj is not None:
                    obj.release()
        self._ctx.release()
        self._ctx = None

    def __enter__(self) -> AvatarRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup -----------------------------------------------------------------------------------------

    def _key_weight_uniforms(self, weights: np.ndarray) -> dict[str, object]:
        uniforms = key_weight_uniforms(
            weights, self.mesh.channels, self.mesh.mask_texels, self.config.detail_key_threshold
        )
        active = np.zeros(N_KEY_EXPRESSIONS - 1, np.int32)
        active[: len(uniforms.active)] = uniforms.active
        return {"u_n_active": len(uniforms.active), "u_coef": uniforms.coefficients, "u_active": active}

    def _variant(self, group: DrawGroup, detail: bool, n_active: int) -> tuple[moderngl.Program, moderngl.VertexArray]:
        """The program (and VAO) of one draw group, compiled and given its constant uniforms on first use."""
        key = (group, detail, n_active)
        if key not in self._variants:
            defines = {**self._defines, "GROUP": int(group), "DETAIL": int(detail), "N_ACTIVE": n_active,
                       "M_SLOTS": _m_slots(n_active)}  # fmt: skip
            program = load_program(self._ctx, "avatar.vert.glsl", "avatar.frag.glsl", defines)
            self._bind_program_uniforms(program)
            self._variants[key] = (program, self._buffers.vertex_array(program))
        return self._variants[key]

    def _upload_bases(self) -> moderngl.TextureArray | None:
        """The 20 bases as an RGBA16F array texture (bundles store float16, so nothing is lost; 8-byte texels
        fetch faster than 6-byte RGB on llvmpipe), mipmapped, sampled from the nearest level (one bilinear
        fetch per layer instead of two)."""
        bases = self.identity.bases
        if bases is None:
            return None
        maps = np.asarray(bases.maps)
        if maps.ndim != 4 or maps.shape[0] != N_KEY_EXPRESSIONS or maps.shape[3] != 3 or maps.shape[1] != maps.shape[2]:
            raise ValueError(f"detail bases must be ({N_KEY_EXPRESSIONS}, N, N, 3), got {maps.shape}")
        n = maps.shape[1]
        padded = np.zeros((*maps.shape[:3], 4), np.float16)
        padded[..., :3] = maps
        tex = self._ctx.texture_array((n, n, N_KEY_EXPRESSIONS), 4, padded.tobytes(), dtype="f2")
        tex.build_mipmaps()
        tex.filter = (moderngl.LINEAR_MIPMAP_NEAREST, moderngl.LINEAR)
        tex.repeat_x = tex.repeat_y = False
        return tex

    def _upload_albedo(self) -> moderngl.Texture | None:
        """The identity's face-tile albedo (row 0 = v = 0) as RGBA8 (4-byte texels sample faster than RGB on
        llvmpipe), mipmapped, nearest level; None: procedural skin."""
        texture = self.identity.texture
        if texture is None:
            return None
        tex_np = np.asarray(texture)
        if tex_np.dtype != np.uint8 or tex_np.ndim != 3 or tex_np.shape[2] != 3:
            raise ValueError(f"identity texture must be (H, W, 3) uint8, got {tex_np.shape} {tex_np.dtype}")
        # The median texel is skin (the face tile is mostly skin, and enrollment fills its gaps with skin).
        self._head_albedo = np.median(tex_np.reshape(-1, 3), axis=0).astype(np.float32) / 255.0
        rgba = np.concatenate([tex_np, np.full((*tex_np.shape[:2], 1), 255, np.uint8)], axis=2)
        tex = self._ctx.texture((tex_np.shape[1], tex_np.shape[0]), 4, rgba.tobytes())
        tex.build_mipmaps()
        tex.filter = (moderngl.LINEAR_MIPMAP_NEAREST, moderngl.LINEAR)
        tex.repeat_x = tex.repeat_y = False
        return tex

    def _bind_program_uniforms(self, prog: moderngl.Program) -> None:
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
        teeth = self.mesh.rest[self.mesh.classes == ShadeClass.TEETH, 2]
        front = float(teeth.max()) if len(teeth) else 10.0
        _write_uniforms(
            prog,
            {
                "u_projection": self.camera.projection().T,
                "u_debug_range_mm": self._debug_range_mm,
                "u_eye_pole": self.mesh.eye_poles,
                "u_head_albedo": self._head_albedo,
                "u_iris_color": np.array([0.16, 0.09, 0.045]),
                "u_mouth_depth": np.array([front, front - 5.0]),
            },
        )

    def _present_pass(
        self, width: int, height: int
    ) -> tuple[moderngl.Program, moderngl.VertexArray, moderngl.Framebuffer]:
        """The GPU flip + un-premultiply pass (shaders/present.*.glsl) and the framebuffer it writes."""
        program = load_program(self._ctx, "present.vert.glsl", "present.frag.glsl", {})
        _write_uniforms(program, {"u_image": 0, "u_height": height,
                                  "u_unpremultiply": self.config.background[3] == 0})  # fmt: skip
        target = self._ctx.framebuffer(color_attachments=[self._ctx.renderbuffer((width, height), 4)])
        return program, self._ctx.vertex_array(program, []), target

    def _framebuffers(self, width: int, height: int, samples: int) -> tuple[moderngl.Framebuffer, moderngl.Framebuffer]:
        """(draw target, resolve target): one single-sample framebuffer when `samples` ≤ 1. The resolve target's
        colour is a texture, which the present pass samples."""
        resolved = self._ctx.framebuffer(
            color_attachments=[self._ctx.texture((width, height), 4)],
            depth_attachment=self._ctx.depth_renderbuffer((width, height)),
        )
        if samples <= 1:
            return resolved, resolved
        msaa = self._ctx.framebuffer(
            color_attachments=[self._ctx.renderbuffer((width, height), 4, samples=samples)],
            depth_attachment=self._ctx.depth_renderbuffer((width, height), samples=samples),
        )
        return msaa, resolved
