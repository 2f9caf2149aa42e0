"""The once-per-identity basis run (design §4.3): identity + UV texture → `DetailBases` (20 × N² × 3).

Inputs per key expression i: the identity's UV texture, the deforming map (key-expression mesh minus neutral,
rasterized into the face tile), the neutral position map and the face mask (`net.network_inputs`). The
network's output F̂_i (mm) is faded to 0 at the face tile's border (`border_fade`); its UV gradient comes from
central differences (one-sided at the map's edge), in mm per unit UV, for the shader's normal perturbation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from engine.config import DetailConfig
from engine.detail.backends import (
    Availability,
    Backend,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TorchBackend,
    default_engine_cache_dir,
    select_backend,
)
from engine.detail.net import DEFAULT_WEIGHTS, SIZE_MULTIPLE, network_inputs
from engine.detail.uv_raster import face_rasterizer
from engine.detail.weights import N_KEY_EXPRESSIONS, key_expression_weights
from engine.errors import UserError
from engine.face_model import FaceModel, file_sha256
from engine.identity import DetailBases

log = logging.getLogger(__name__)

# Albedo used when an identity has no texture yet (mid skin tone, linear-ish RGB).
PLAIN_SKIN = np.array([198, 150, 122], np.uint8)


@dataclass(frozen=True)
class DetailParts:
    """The network inputs before assembly: `static` (10, N, N) float32 — the channels every key expression
    shares, with the deform channels 3:6 zero — and `offsets` (20, V, 3) float32, each key expression's
    per-vertex displacement (cm) from the identity's neutral, still to be rasterized into the deform channels.
    A GPU backend assembles the (20, 10, N, N) batch on the device from these (`TorchBackend.run_parts`); the
    host path is `assemble_inputs`."""

    static: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray


def detail_parts(
    model: FaceModel, identity_weights: np.ndarray, texture: np.ndarray | None, resolution: int
) -> DetailParts:
    """What `detail_inputs` assembles, unassembled (see DetailParts)."""
    raster = face_rasterizer(model, resolution)
    face = model.personalize(identity_weights)
    offsets = np.einsum("ij,jvc->ivc", key_expression_weights().astype(np.float32), face.expression_basis)
    mask = raster.filled
    if texture is None:
        tex = np.broadcast_to(PLAIN_SKIN, (resolution, resolution, 3))
    else:
        texture = np.asarray(texture)
        if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
            raise UserError(f"identity texture must be (H, W, 3) uint8, got {texture.shape} {texture.dtype}")
        tex = texture
        if texture.shape[:2] != (resolution, resolution):
            tex = np.asarray(Image.fromarray(texture).resize((resolution, resolution), Image.BILINEAR))
    tex = (tex * mask[..., None]).astype(np.uint8)
    no_deform = np.zeros((1, resolution, resolution, 3), np.float32)
    static = network_inputs(tex, no_deform, raster.rasterize(face.neutral), mask)[0]
    return DetailParts(static, offsets.astype(np.float32), mask)


def assemble_inputs(parts: DetailParts, model: FaceModel) -> np.ndarray:
    """(20, 10, N, N) float32 network inputs on the host: the deform maps rasterized in numpy, as
    `net.network_inputs` lays them out (deform × 2 in channels 3:6)."""
    n = parts.static.shape[-1]
    deform = face_rasterizer(model, n).rasterize(parts.offsets)  # (20, N, N, 3)
    inputs = np.repeat(parts.static[None], len(parts.offsets), axis=0)
    inputs[:, 3:6] = deform.transpose(0, 3, 1, 2) * 2.0
    return inputs


def detail_inputs(
    model: FaceModel, identity_weights: np.ndarray, texture: np.ndarray | None, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs for the 20 key expressions → ((20, 10, N, N) float32, (N, N) bool face mask).

    texture: (H, W, 3) uint8 UV albedo with row 0 at v = 0 (resampled to N×N), or None for plain skin.
    """
    parts = detail_parts(model, identity_weights, texture, resolution)
    return assemble_inputs(parts, model), parts.mask


def border_fade(covered: np.ndarray, width_mm: float = 3.5) -> np.ndarray:
    """(N, N) coverage → (N, N) float32 weight rising from 0 at the face tile's border to 1 `width_mm` inside.

    The face tile meets the head's tile (which has no detail) and the lips' inner edge: displacement must
    vanish there, or shading jumps across the seam; the network is also least reliable at the mask edge.
    Width assumes ≈ 0.58 mm per texel at 512² (the mean ICT face).
    """
    n = covered.shape[0]
    texels = width_mm / (0.58 * 512 / n)
    inside = ndimage.distance_transform_edt(covered)
    return np.clip((inside - 0.5) / texels, 0.0, 1.0).astype(np.float32)


def uv_gradients(maps: np.ndarray) -> np.ndarray:
    """(B, N, N) mm, row 0 at v = 0 → (B, N, N, 2) [∂/∂u, ∂/∂v] in mm per unit UV (central differences,
    one-sided at the border; texel spacing 1/N)."""
    n = maps.shape[-1]
    d_dv, d_du = np.gradient(maps, 1.0 / n, axis=(1, 2))
    return np.stack([d_du, d_dv], axis=-1).astype(np.float32)


def onnx_path_for(weights: Path, cache_dir: Path) -> Path:
    """The ONNX graph matching `weights`: its sibling `.onnx`, else one exported once into `cache_dir`."""
    sibling = weights.with_suffix(".onnx")
    if sibling.is_file():
        return sibling
    from engine.detail.net import export_onnx, load_network  # torch: only to export a missing ONNX file

    target = cache_dir / f"detail_net_{file_sha256(weights)[:16]}.onnx"
    if not target.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".onnx.tmp")
        export_onnx(load_network(weights), tmp)
        tmp.replace(target)
    return target


def make_backend(config: DetailConfig, resolution: int, available: Availability | None = None) -> Backend:
    """Instantiate the backend `config.backend` asks for (`auto`: the best available), logging the choice."""
    weights = Path(config.weights) if config.weights is not None else DEFAULT_WEIGHTS
    cache_dir = Path(config.engine_cache_dir) if config.engine_cache_dir is not None else default_engine_cache_dir()
    name, device, reason = select_backend(config.backend, available or Availability.probe())
    log.info("detail backend: %s on %s (%s)", name, device, reason)
    if name == "tensorrt":
        onnx = onnx_path_for(weights, cache_dir)
        return TensorRTBackend(onnx, resolution, N_KEY_EXPRESSIONS, cache_dir, config.precision)
    if name == "torch":
        return TorchBackend(weights, device)
    return OnnxRuntimeBackend(onnx_path_for(weights, cache_dir))


def precompute_bases(
    model: FaceModel,
    identity_weights: np.ndarray,
    texture: np.ndarray | None,
    config: DetailConfig,
    progress: bool = True,
    backend: Backend | None = None,
    assemble_on_device: bool | None = None,
) -> DetailBases:
    """The 20 displacement bases of one identity at `config.resolution`² → DetailBases (20, N, N, 3) with
    channels [F̂_i mm, ∂F̂_i/∂u, ∂F̂_i/∂v mm per unit UV]. Pass `backend` to reuse one across identities.
    `assemble_on_device`: build the inputs where the network runs (default: torch on CUDA does) — the
    numpy path is the reference it is tested against."""
    n = config.resolution
    if n % SIZE_MULTIPLE:
        raise UserError(f"detail.resolution must be a multiple of {SIZE_MULTIPLE}, got {n}")
    backend = backend or make_backend(config, n)
    parts = detail_parts(model, identity_weights, texture, n)
    fade = border_fade(face_rasterizer(model, n).covered)
    on_device = getattr(backend, "assembles_on_device", False) if assemble_on_device is None else assemble_on_device
    if on_device:
        # Rasterize, assemble, run, fade and differentiate where the network runs: on a GPU the host-side
        # numpy gather and the 20 × 10 × N² input copy were most of the time (docs/detail.md).
        maps = backend.run_parts(parts, face_rasterizer(model, n), fade)
    else:
        disp = backend.run(assemble_inputs(parts, model), progress=progress) * fade
        maps = np.concatenate([disp[..., None], uv_gradients(disp)], axis=-1).astype(np.float32)
    if not np.isfinite(maps).all():
        raise UserError(f"the {backend.name} backend produced non-finite displacement; try detail.backend=torch")
    return DetailBases(maps=maps, backend=backend.name)
