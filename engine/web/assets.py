"""The browser's asset set for one identity bundle: made once, cached by content hash, served immutable.

`WebAssets.build(bundle_dir, model)` reads an identity bundle (engine/identity.py) and lays out exactly what the
desktop renderer draws (`engine.render.mesh.AvatarMesh`, the same function, so both render one mesh):

    manifest.<h>.json   what the page needs to know: counts, array offsets in mesh.bin, per-identity uniforms
                        (eye poles and centres, mouth depth, head albedo, displacement range), the tiles and their
                        scales, and the file names below
    mesh.<h>.bin        little-endian arrays, each at a 4-byte aligned offset listed in the manifest:
                          rest      float32 (R, 6)   rest position (cm) and unit normal per render vertex
                          uv        float32 (R, 2)   face-tile UV
                          classes   uint8   (R,)     ShadeClass
                          albedo    float32 (R, 3)   procedural sRGB albedo
                          indices   uint16  (T, 3)   triangles sorted by DrawGroup (counts: `group_counts`)
                          masks     uint16  (R, 4·K) activation masks A_j of the key-expression blendshapes, /65535
                          morph_*   the 53 expression deltas, sparse and quantized (below)
    albedo.<h>.png      the identity's face-tile albedo, 8-bit RGB, top row = v = 1 (as in the bundle)
    bases-NN.<h>.png    the 20 detail bases, one PNG tile each (RGB: F̂, ∂F̂/∂u, ∂F̂/∂v), 8- or 16-bit, top row =
                        v = 1; value = lo + q / (2^bits − 1) · (hi − lo) with (lo, hi) per tile and channel in the
                        manifest. 8-bit tiles render within one level of 255 of the float16 bundle (measured: max
                        |Δ| 1, mean 0.005 on a smile at 512²), at 4.3 MB instead of 29 MB.

Only drawn vertices are kept (R = 28,151 of ICT's 28,911 render vertices: the transparent eye layers the desktop
renderer never draws are dropped and the triangles renumbered, which keeps indices 16-bit). Expression deltas:
for shape j, `morph_count[j]` entries of `morph_index` (uint16 vertex) and `morph_delta` (int16 × 6: position,
normal) scaled by `morph_scale[j]` (position cm, normal) — an entry exists only where the quantized delta is not
zero, so the eyeballs (turned by gaze, not blended) and the rigid back of the head carry no deltas. Quantization:
per shape, the largest |Δ| is 32767 steps (jawOpen: 1.2·10⁻⁴ cm a step).

The cache key hashes everything the output depends on: this format's version, the face model's hash, the bundle's
`identity.json` (which holds the sha256 of its texture and bases), the tile depth, and the source of the modules
that shape the mesh (mesh, materials, face model, eyes, detail weights, names, this file) — a change to any of
them builds afresh. Each
served file's name carries the first 16 hex digits of its own sha256, so browsers may cache it forever.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import face_model, names
from engine.detail import weights
from engine.face_model import FaceModel
from engine.identity import Identity, load_bundle, read_bundle_meta
from engine.render import materials, mesh
from engine.render.materials import ShadeClass
from engine.render.mesh import AvatarMesh
from engine.solve import eyes
from engine.web.png import encode_png

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
N_BASES = 20
# A served file name: stem, optional -NN, a 16-hex content hash, an extension. Nothing else is ever looked up.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_CONTENT_TYPES = {".json": "application/json", ".bin": "application/octet-stream", ".png": "image/png"}


def default_cache_root() -> Path:
    """`$XDG_CACHE_HOME/scapecast/web` (`~/.cache` when XDG_CACHE_HOME is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scapecast" / "web"


def _source_hash() -> str:
    """sha256 of the code that decides what the mesh and its uniforms are (a change rebuilds cached sets): the mesh
    layout, materials, the face model's personalization and normals, eyeball centres, masks, channel names."""

    digest = hashlib.sha256()
    for module in (mesh, materials, weights, face_model, eyes, names):
        digest.update(inspect.getsource(module).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def cache_key(bundle_dir: Path, model: FaceModel, bits: int = 8) -> str:
    """The content key of the asset set for `bundle_dir` (24 hex digits)."""
    digest = hashlib.sha256(f"scapecast-web-{FORMAT_VERSION}-{bits}-{model.model_hash}-".encode())
    digest.update((Path(bundle_dir) / "identity.json").read_bytes())
    digest.update(_source_hash().encode())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class WebFile:
    """One servable file: its path, media type and, for compressible ones, a gzip copy beside it."""

    path: Path
    content_type: str
    gzip_path: Path | None = None


class WebAssets:
    """A built asset set in `directory`: `manifest` (dict), `manifest_name`, and `files` {served name: WebFile}."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index = json.loads((self.directory / "index.json").read_text())
        self.manifest_name: str = index["manifest"]
        self.manifest: dict = json.loads((self.directory / self.manifest_name).read_text())
        self.files: dict[str, WebFile] = {}
        for name in index["files"]:
            if not is_served_name(name):
                raise ValueError(f"asset set {directory} lists an invalid file name {name!r}")
            path = self.directory / name
            gz = path.with_name(name + ".gz")
            suffix = Path(name).suffix
            self.files[name] = WebFile(path, _CONTENT_TYPES[suffix], gz if gz.is_file() else None)

    @staticmethod
    def load_or_build(bundle_dir: Path, model: FaceModel, cache_root: Path | None = None, bits: int = 8) -> WebAssets:
        """The cached set for this bundle, built first when absent (a damaged cache entry is rebuilt)."""
        root = Path(cache_root) if cache_root is not None else default_cache_root()
        directory = root / cache_key(bundle_dir, model, bits)
        if (directory / "index.json").is_file():
            try:
                return WebAssets(directory)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("web asset cache %s is damaged (%s): rebuilding", directory, exc)
        identity = load_bundle(bundle_dir, model)
        meta = read_bundle_meta(bundle_dir)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=root))
        try:
            write_asset_set(identity, model, tmp, bits=bits, origin=str(meta.get("source", "")))
            if directory.exists():  # another process built it meanwhile: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return WebAssets(directory)


def is_served_name(name: str) -> bool:
    """Whether `name` has the shape of a served asset name (lower-case letters, digits, '-', '.'; no '..')."""
    return (
        0 < len(name) <= 64
        and set(name) <= _NAME_CHARS
        and ".." not in name
        and not name.startswith(("-", "."))
        and Path(name).suffix in _CONTENT_TYPES
    )


def _hashed(directory: Path, stem: str, ext: str, data: bytes, compress: bool = False) -> str:
    """Write `data` as `stem.<sha16>.ext` (and a .gz copy when `compress`); the name written."""
    name = f"{stem}.{hashlib.sha256(data).hexdigest()[:16]}.{ext}"
    (directory / name).write_bytes(data)
    if compress:
        (directory / f"{name}.gz").write_bytes(gzip.compress(data, 6, mtime=0))
    return name


def quantize_tiles(maps: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(20, N, N, 3) float bases → (codes uint8/uint16 (20, N, N, 3), lo (20, 3), hi (20, 3)) per tile and channel."""
    f = np.asarray(maps, np.float32)
    lo = f.min(axis=(1, 2))
    hi = f.max(axis=(1, 2))
    top = (1 << bits) - 1
    span = np.where(hi > lo, hi - lo, 1.0)
    codes = np.rint((f - lo[:, None, None]) / span[:, None, None] * top)
    return codes.astype(np.uint8 if bits == 8 else np.uint16), lo, hi


def dequantize_tiles(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `quantize_tiles` (what the page computes): float32 (20, N, N, 3)."""
    top = float((1 << bits) - 1)
    return (lo[:, None, None] + codes.astype(np.float32) / top * (hi - lo)[:, None, None]).astype(np.float32)


def sparse_morph(basis: np.ndarray) -> dict[str, np.ndarray]:
    """(E, R, 6) per-unit-weight deltas → the quantized sparse arrays of the manifest (see the module docstring)."""
    counts, indices, deltas, scales = [], [], [], []
    for shape in basis:
        peak = np.abs(shape).reshape(-1, 2, 3).max(axis=(0, 2))  # (position, normal)
        scale = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)
        q = np.rint(shape.reshape(-1, 2, 3) / scale[None, :, None]).astype(np.int16).reshape(-1, 6)
        keep = np.flatnonzero(np.any(q != 0, axis=1))
        counts.append(len(keep))
        indices.append(keep.astype(np.uint16))
        deltas.append(q[keep])
        scales.append(scale)
    return {
        "morph_count": np.asarray(counts, np.int32),
        "morph_index": np.concatenate(indices),
        "morph_delta": np.concatenate(deltas),
        "morph_scale": np.stack(scales).astype(np.float32),
    }


def _pack(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, dict]]:
    """Concatenate arrays at 4-byte aligned offsets: (bytes, {name: {offset, dtype, shape}})."""
    blob = bytearray()
    layout = {}
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        blob += b"\0" * (-len(blob) % 4)
        layout[name] = {"offset": len(blob), "dtype": a.dtype.name, "shape": list(a.shape)}
        blob += a.astype(a.dtype.newbyteorder("<")).tobytes()
    return bytes(blob), layout


def write_asset_set(identity: Identity, model: FaceModel, directory: Path, bits: int = 8, origin: str = "") -> dict:
    """Write the browser asset set of `identity` into `directory`; returns the manifest."""

    if bits not in (8, 16):
        raise ValueError(f"detail tiles are 8 or 16 bits, not {bits}")
    directory = Path(directory)
    mesh = AvatarMesh.build(model, identity.identity_weights)
    used = np.unique(mesh.triangles)  # drawn vertices only; order kept, so the eyeballs stay contiguous runs
    remap = np.full(mesh.n_vertices, -1, np.int64)
    remap[used] = np.arange(len(used))
    if len(used) > 65535:
        raise ValueError(f"{len(used)} drawn vertices do not fit 16-bit indices")
    eye_ranges = np.searchsorted(used, mesh.eye_ranges)  # [first, last) in the kept numbering
    masks = np.zeros((mesh.n_vertices, 4 * mesh.mask_texels), np.float32)
    masks[:, : mesh.masks.shape[1]] = mesh.masks
    arrays = {
        "rest": mesh.rest[used],
        "uv": mesh.uv[used],
        "classes": mesh.classes[used].astype(np.uint8),
        "albedo": mesh.albedo[used],
        "indices": remap[mesh.triangles].astype(np.uint16),
        "masks": np.rint(np.clip(masks[used], 0.0, 1.0) * 65535).astype(np.uint16),
        **sparse_morph(mesh.basis[:, used]),
    }
    blob, layout = _pack(arrays)
    files: dict[str, str] = {"mesh": _hashed(directory, "mesh", "bin", blob, compress=True)}

    # The same per-identity uniform values AvatarRenderer._bind_program_uniforms computes (a test compares them).
    head_albedo = mesh.albedo[mesh.classes == ShadeClass.HEAD].mean(axis=0)
    albedo_map = identity.texture is not None
    if albedo_map:
        texture = np.asarray(identity.texture)
        head_albedo = np.median(texture.reshape(-1, 3), axis=0).astype(np.float32) / 255.0
        files["albedo"] = _hashed(directory, "albedo", "png", encode_png(texture[::-1]))
    teeth = mesh.rest[mesh.classes == ShadeClass.TEETH, 2]
    front = float(teeth.max()) if len(teeth) else 10.0
    bases = None
    if identity.bases is not None:
        maps = np.asarray(identity.bases.maps, np.float32)
        codes, lo, hi = quantize_tiles(maps, bits)
        tiles = [_hashed(directory, f"bases-{i:02d}", "png", encode_png(codes[i][::-1])) for i in range(N_BASES)]
        bases = {
            "bits": bits,
            "resolution": int(maps.shape[1]),
            "tiles": tiles,
            "lo": lo.tolist(),
            "hi": hi.tolist(),
        }
    manifest = {
        "format": FORMAT_VERSION,
        "identity": identity.name,
        "model_id": model.model_id,
        "origin": origin,
        "vertices": int(len(used)),
        "triangles": int(len(mesh.triangles)),
        "group_counts": [int(c) for c in mesh.group_counts],
        "mask_texels": int(mesh.mask_texels),
        "mask_channels": [int(c) for c in mesh.channels],
        "eye_ranges": eye_ranges.tolist(),
        "eye_centers": mesh.eye_centers.tolist(),
        "uniforms": {
            "u_eye_pole": mesh.eye_poles.tolist(),
            "u_head_albedo": np.asarray(head_albedo, np.float32).tolist(),
            "u_mouth_depth": [front, front - 5.0],
            "u_debug_range_mm": float(max(np.abs(identity.bases.maps[..., 0]).max(), 1e-3))
            if identity.bases is not None
            else 0.5,
        },
        "albedo_map": albedo_map,
        "arrays": layout,
        "bases": bases,
        "files": files,
    }
    manifest_name = _hashed(directory, "manifest", "json", json.dumps(manifest, indent=1).encode())
    served = [manifest_name, files["mesh"], *([files["albedo"]] if albedo_map else []), *(bases or {}).get("tiles", [])]
    (directory / "index.json").write_text(json.dumps({"manifest": manifest_name, "files": served}))
    return manifest
