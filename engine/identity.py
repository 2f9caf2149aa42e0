"""Identity: who the avatar is. w_id, neutral calibration, UV albedo and the 20 detail bases (design §5).

The on-disk bundle is read and written here, one directory per identity
(`$XDG_CACHE_HOME/scapecast/identities/<name>/` by default; a default identity ships in `models/`):

    identity.json   schema version, name, model id + hash, w_id, neutral calibration, source, created (UTC),
                    sha256 of every other file, and what the bases were made with
    texture.png     UV albedo of the face tile, stored as an ordinary picture (top row = v = 1)
    bases.npz       maps (20, N, N, 3) float16 [F̂_i mm, ∂F̂/∂u, ∂F̂/∂v mm per unit UV], resolution, backend

In memory every UV map (texture and bases) has row 0 at v = 0, the layout OpenGL takes as-is; only the PNG
is flipped so that it looks upright in an image viewer. Bundles are written to a temporary directory and
swapped in with `os.replace`, so a reader never sees half a bundle. A truncated file, a wrong checksum, an
old schema or another model's hash raises `BundleError`; `engine.bundles.load_identity` turns damaged bases
into a rebuild.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import UserError
from engine.face_model import MODELS_DIR, FaceModel, file_sha256

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_IDENTITY_DIR = MODELS_DIR / "default_identity"
N_BASES = 20
_JSON, _TEXTURE, _BASES = "identity.json", "texture.png", "bases.npz"
BUNDLE_FILES = (_JSON, _TEXTURE, _BASES)  # every file a bundle may hold (the asset service serves no other)


class BundleError(UserError):
    """An identity bundle is missing, corrupt (checksum, truncated file) or stale (other model, old schema)."""


@dataclass(frozen=True)
class DetailBases:
    """The 20 key-expression displacement bases of one identity, in the face UV tile.

    maps: (20, N, N, 3) float32 — channel 0 F̂_i in millimetres along the base-mesh normal, channels 1, 2 its
    UV gradient ∂F̂/∂u, ∂F̂/∂v in millimetres per unit UV. Row 0 of the image is v = 0.
    """

    maps: np.ndarray
    backend: str

    @property
    def resolution(self) -> int:
        return int(self.maps.shape[1])


@dataclass(frozen=True)
class Identity:
    """Everything identity-specific the solver and renderer need.

    identity_weights: (n_id,) float32 model identity coefficients. neutral_offset: (53,) float32 weights the
    user's relaxed face reads as (subtracted before clamping). texture: (H, W, 3) uint8 UV albedo of the face
    tile with row 0 at v = 0, or None for the plain skin material. model_hash: sha256 of the model file the
    weights belong to ("" until saved or loaded).
    """

    name: str
    model_id: str
    identity_weights: np.ndarray
    neutral_offset: np.ndarray
    texture: np.ndarray | None = None
    bases: DetailBases | None = None
    source: str = ""
    model_hash: str = ""


def default_bundle_dir(name: str, cache_dir: Path | str | None = None) -> Path:
    """Where bundle `name` lives: `cache_dir/<name>`, else `$XDG_CACHE_HOME/scapecast/identities/<name>`
    (`~/.cache` when XDG_CACHE_HOME is unset). The name `default` with no cache dir is the shipped one."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise BundleError(f"identity name {name!r} must be a plain name (no path separators)")
    if cache_dir is None:
        if name == "default":
            return DEFAULT_IDENTITY_DIR
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scapecast" / "identities"
    else:
        root = Path(cache_dir)
    return root / name


def save_bundle(identity: Identity, directory: Path | str) -> Path:
    """Write `identity` as a bundle directory (replacing any previous one atomically); returns the directory."""
    directory = Path(directory)
    if not identity.model_hash:
        raise BundleError(f"identity {identity.name!r} has no model hash: build it from a loaded FaceModel")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is as readable as any other directory
    try:
        files: dict[str, str] = {}
        meta: dict[str, object] = {
            "schema_version": SCHEMA_VERSION,
            "name": identity.name,
            "model_id": identity.model_id,
            "model_hash": identity.model_hash,
            "identity_weights": np.asarray(identity.identity_weights, np.float32).tolist(),
            "neutral_offset": np.asarray(identity.neutral_offset, np.float32).tolist(),
            "source": identity.source,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if identity.texture is not None:
            tex = np.asarray(identity.texture)
            if tex.dtype != np.uint8 or tex.ndim != 3 or tex.shape[2] != 3:
                raise BundleError(f"texture must be (H, W, 3) uint8, got {tex.shape} {tex.dtype}")
            Image.fromarray(tex[::-1]).save(tmp / _TEXTURE, optimize=False, compress_level=6)
            files[_TEXTURE] = file_sha256(tmp / _TEXTURE)
        if identity.bases is not None:
            maps = np.asarray(identity.bases.maps)
            if maps.ndim != 4 or maps.shape[0] != N_BASES or maps.shape[1] != maps.shape[2] or maps.shape[3] != 3:
                raise BundleError(f"bases must be ({N_BASES}, N, N, 3), got {maps.shape}")
            with open(tmp / _BASES, "wb") as fh:
                np.savez_compressed(
                    fh,
                    maps=maps.astype(np.float16),
                    resolution=np.int32(maps.shape[1]),
                    backend=np.str_(identity.bases.backend),
                )
            files[_BASES] = file_sha256(tmp / _BASES)
            meta["bases"] = {"resolution": int(maps.shape[1]), "backend": identity.bases.backend}
        meta["files"] = files
        (tmp / _JSON).write_text(json.dumps(meta, indent=1))
        _swap_in(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _swap_in(tmp: Path, directory: Path) -> None:
    """Move the finished `tmp` to `directory`; an existing bundle is moved aside first (rename is atomic)."""
    if directory.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        os.replace(directory, old / "bundle")
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


def read_bundle_meta(directory: Path | str) -> dict:
    """The parsed `identity.json` of a bundle (schema checked); raises BundleError when absent or unreadable."""
    directory = Path(directory)
    path = directory / _JSON
    if not path.is_file():
        raise BundleError(f"no identity bundle at {directory} ({_JSON} missing); run `scapecast enroll` to make one")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"identity bundle {directory}: {_JSON} is unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        got = meta.get("schema_version") if isinstance(meta, dict) else None
        raise BundleError(
            f"identity bundle {directory} has schema version {got!r}, this engine reads {SCHEMA_VERSION}: rebuild it"
        )
    return meta


def load_bundle(directory: Path | str, model: FaceModel, with_bases: bool = True, check_model: bool = True) -> Identity:
    """Read and verify a bundle made for `model`. `with_bases=False` skips `bases.npz` (to rebuild it);
    `check_model=False` accepts another model file's hash (to adopt w_id and texture into a rebuild).

    Raises BundleError naming the problem: missing or unreadable file, checksum mismatch, another model's
    hash, or arrays of the wrong shape.
    """
    directory = Path(directory)
    meta = read_bundle_meta(directory)
    if check_model and meta.get("model_hash") != model.model_hash:
        raise BundleError(
            f"identity bundle {directory} was made for model {meta.get('model_id')!r} "
            f"(sha256 {str(meta.get('model_hash'))[:12]}…), not the loaded {model.model_id!r} "
            f"(sha256 {model.model_hash[:12]}…): it is stale, rebuild it"
        )
    try:
        w_id = np.asarray(meta["identity_weights"], dtype=np.float32)
        offset = np.asarray(meta["neutral_offset"], dtype=np.float32)
        files = dict(meta["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"identity bundle {directory}: {_JSON} lacks a valid field ({exc})") from None
    if w_id.shape != (model.n_identity,):
        raise BundleError(f"identity bundle {directory}: w_id has {w_id.shape} entries, model has {model.n_identity}")
    if offset.shape != (len(model.expression_names),):
        raise BundleError(f"identity bundle {directory}: neutral_offset has shape {offset.shape}")
    if not (np.isfinite(w_id).all() and np.isfinite(offset).all()):
        raise BundleError(f"identity bundle {directory}: w_id or neutral_offset holds NaN or infinite values")
    wanted = [n for n in files if n != _BASES or with_bases]
    for name in wanted:
        path = directory / name
        if not path.is_file():
            raise BundleError(f"identity bundle {directory}: {name} is missing")
        if file_sha256(path) != files[name]:
            raise BundleError(f"identity bundle {directory}: {name} fails its checksum (corrupt or edited)")
    texture = _read_texture(directory / _TEXTURE) if _TEXTURE in files else None
    bases = _read_bases(directory / _BASES) if _BASES in files and with_bases else None
    return Identity(
        name=str(meta.get("name", directory.name)),
        model_id=str(meta.get("model_id", "")),
        identity_weights=w_id,
        neutral_offset=offset,
        texture=texture,
        bases=bases,
        source=str(meta.get("source", "")),
        model_hash=model.model_hash,
    )


# A face texture is at most a few thousand pixels a side; a larger image is refused before it is decoded (a
# small PNG can claim gigapixels: a decompression bomb).
MAX_TEXTURE_PIXELS = 8192 * 8192


def _read_texture(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_TEXTURE_PIXELS:
                raise BundleError(f"identity bundle texture {path} claims {img.width}×{img.height} pixels: refused")
            return np.ascontiguousarray(np.asarray(img.convert("RGB"))[::-1])
    except (OSError, Image.DecompressionBombError) as exc:
        raise BundleError(f"identity bundle texture {path} is unreadable ({exc})") from None


#: The largest detail bases accepted: 20 maps at the largest `detail.resolution` (2048²), float16 or float32.
MAX_BASES_VALUES = N_BASES * 2048 * 2048 * 3


def _check_bases_header(path: Path) -> None:
    """Refuse a bases file whose `maps` array claims more values than any real bundle has, before anything is
    decompressed (a 478 KiB zip of zeros can expand to gigabytes)."""
    import zipfile

    with zipfile.ZipFile(path) as archive, archive.open("maps.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
    values = int(np.prod(shape, dtype=np.int64))
    if dtype not in (np.float16, np.float32) or values > MAX_BASES_VALUES:
        raise BundleError(f"identity bundle bases {path} claim {shape} {dtype} maps: refused (too large or not float)")


def _read_bases(path: Path) -> DetailBases:
    try:
        _check_bases_header(path)
        with np.load(path, allow_pickle=False) as z:
            maps = z["maps"].astype(np.float32)
            backend = str(z["backend"])
    except BundleError:
        raise
    except Exception as exc:  # zipfile/npy raise many types for one meaning: the file is damaged
        raise BundleError(f"identity bundle bases {path} are unreadable ({type(exc).__name__}: {exc})") from None
    if maps.ndim != 4 or maps.shape[0] != N_BASES or maps.shape[3] != 3:
        raise BundleError(f"identity bundle bases {path} have shape {maps.shape}, expected ({N_BASES}, N, N, 3)")
    if not np.isfinite(maps).all():
        raise BundleError(f"identity bundle bases {path} hold non-finite values")
    return DetailBases(maps=maps, backend=backend)
