"""Training sets for the detail network: synthetic identities (`synth.py`) or FaceScape TU data on disk.

Both produce a `TrainingSet` in one UV layout at N×N (row 0 at v = 0). Synthetic sets use the ICT face tile;
FaceScape sets use FaceScape's own UV layout (the network is convolutional and layout-agnostic: it sees a
texture, a deforming map and a position map, however the face is unwrapped).

FaceScape TU layout read by `facescape_set` (one folder per subject, 20 key expressions each, named as in
FaceScape's release: `1_neutral` … `20_brow_lower`, the order of `weights.KEY_EXPRESSION_NAMES`):

    <root>/<subject>/models_reg/<k>_<name>.obj    TU mesh (v, vt, f) of expression k
    <root>/<subject>/models_reg/<k>_<name>.jpg    its UV texture (the neutral one is used as the identity's)
    <root>/<subject>/dpmap/<k>_<name>.png         16-bit displacement, d = (v − 32768) / 32768 × 0.914 mm
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from engine.detail.synth import DetailSynth
from engine.detail.uv_raster import FACE_MATERIAL, UVRasterizer
from engine.detail.weights import KEY_EXPRESSION_NAMES
from engine.errors import UserError
from engine.face_model import FaceModel, FaceTopology

FACESCAPE_DISPLACEMENT_MM = 0.914  # full 16-bit half-range in millimetres (FaceScape's dpmap encoding)


@dataclass(frozen=True)
class TrainingSet:
    """I identities × 20 key expressions at N×N.

    texture: (I, N, N, 3) uint8. position: (I, N, N, 3) float16 cm. deform: (I, 20, N, N, 3) float16 cm.
    bases: (I, 20, N, N) float16 mm. mask: (I, N, N) bool.
    """

    texture: np.ndarray
    position: np.ndarray
    deform: np.ndarray
    bases: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.texture)


def synthetic_set(
    model: FaceModel, n_identities: int, resolution: int, seed: int, progress: bool = True
) -> TrainingSet:
    """`n_identities` random synthetic identities (seeded: the same seed gives the same set)."""
    synth = DetailSynth(model, resolution)
    rng = np.random.default_rng(seed)
    samples = [synth.sample(rng) for _ in tqdm(range(n_identities), desc="synthetic identities", disable=not progress)]
    return TrainingSet(
        texture=np.stack([s.texture for s in samples]),
        position=np.stack([s.position for s in samples]).astype(np.float16),
        deform=np.stack([s.deform for s in samples]).astype(np.float16),
        bases=np.stack([s.bases for s in samples]).astype(np.float16),
        mask=np.stack([s.mask for s in samples]),
    )


def read_obj(path: Path) -> tuple[np.ndarray, FaceTopology]:
    """A textured OBJ → (V, 3) float32 vertices (file units) and a one-material FaceTopology (polygons fanned).

    Each distinct (v, vt) corner pair becomes a render vertex.
    """
    verts, uvs, corners, faces = [], [], [], []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read OBJ {path}: {exc}") from None
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            uvs.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            ids = []
            for token in parts[1:]:
                fields = token.split("/")
                if len(fields) < 2 or not fields[1]:
                    raise UserError(f"OBJ {path}: face corner {token!r} has no texture coordinate")
                ids.append((int(fields[0]) - 1, int(fields[1]) - 1))
            faces.append([*(len(corners) + k for k in range(len(ids)))])
            corners.extend(ids)
    if not verts or not uvs or not faces:
        raise UserError(f"OBJ {path} has no textured faces (v, vt and f lines are required)")
    pairs, corner_render = np.unique(np.asarray(corners), axis=0, return_inverse=True)
    corner_render = corner_render.ravel()
    tris = np.asarray([[f[0], f[k], f[k + 1]] for f in faces for k in range(1, len(f) - 1)])
    render_tris = corner_render[tris].astype(np.int32)
    topology = FaceTopology(
        triangles=pairs[:, 0][render_tris].astype(np.int32),
        render_to_model=pairs[:, 0].astype(np.int32),
        render_uv=np.asarray(uvs, np.float32)[pairs[:, 1]],
        render_triangles=render_tris,
        triangle_material=np.zeros(len(tris), np.uint8),
        material_names=(FACE_MATERIAL,),
        vertex_region=np.zeros(len(verts), np.uint8),
        region_names=("face",),
    )
    return np.asarray(verts, np.float32), topology


def read_displacement_png(path: Path, resolution: int) -> np.ndarray:
    """A FaceScape 16-bit displacement PNG → (N, N) float32 mm, row 0 at v = 0."""
    try:
        with Image.open(path) as img:
            if not img.mode.startswith("I"):
                raise UserError(f"displacement map {path} is {img.mode}, not 16-bit: FaceScape dpmaps are 16-bit PNGs")
            raw = np.asarray(img).astype(np.float32)
    except OSError as exc:
        raise UserError(f"cannot read displacement map {path}: {exc}") from None
    mm = (raw - 32768.0) / 32768.0 * FACESCAPE_DISPLACEMENT_MM
    resized = np.asarray(Image.fromarray(mm).resize((resolution, resolution), Image.BILINEAR))
    return resized[::-1].astype(np.float32)


def facescape_set(root: Path | str, resolution: int, progress: bool = True) -> TrainingSet:
    """Read every subject under `root` (layout in the module docstring); meshes in mm are converted to cm."""
    root = Path(root)
    subjects = sorted(p for p in root.iterdir() if (p / "models_reg").is_dir()) if root.is_dir() else []
    if not subjects:
        raise UserError(f"no FaceScape TU subjects under {root} (expected <subject>/models_reg and <subject>/dpmap)")
    textures, positions, deforms, bases, masks = [], [], [], [], []
    for subject in tqdm(subjects, desc="FaceScape subjects", disable=not progress):
        names = [f"{k + 1}_{name}" for k, name in enumerate(KEY_EXPRESSION_NAMES)]
        missing = [n for n in names if not (subject / "models_reg" / f"{n}.obj").is_file()]
        missing += [f"dpmap/{n}.png" for n in names if not (subject / "dpmap" / f"{n}.png").is_file()]
        if missing:
            raise UserError(f"FaceScape subject {subject} lacks {', '.join(missing[:4])}")
        meshes, topology = [], None
        for n in names:
            verts, topo = read_obj(subject / "models_reg" / f"{n}.obj")
            meshes.append(verts / 10.0)  # FaceScape meshes are in millimetres
            topology = topology or topo
        stack = np.stack(meshes)
        if stack.shape[1] != len(topology.vertex_region):
            raise UserError(f"FaceScape subject {subject}: expression meshes differ in vertex count")
        raster = UVRasterizer.build(topology, resolution)
        texture_path = subject / "models_reg" / f"{names[0]}.jpg"
        try:
            with Image.open(texture_path) as img:
                tex = np.asarray(img.convert("RGB").resize((resolution, resolution), Image.BILINEAR))[::-1]
        except OSError as exc:
            raise UserError(f"cannot read FaceScape texture {texture_path}: {exc}") from None
        mask = raster.filled
        textures.append(np.ascontiguousarray(tex) * mask[..., None])
        positions.append(raster.rasterize(stack[0]))
        deforms.append(raster.rasterize(stack - stack[:1]))
        maps = [read_displacement_png(subject / "dpmap" / f"{n}.png", resolution) for n in names]
        bases.append(np.stack(maps) * mask)
        masks.append(mask)
    return TrainingSet(
        texture=np.stack(textures).astype(np.uint8),
        position=np.stack(positions).astype(np.float16),
        deform=np.stack(deforms).astype(np.float16),
        bases=np.stack(bases).astype(np.float16),
        mask=np.stack(masks),
    )
