"""Convert ICT-FaceKit's OBJs (../shared/ict-facekit) into one compact file: models/ict_face_model.npz.

Every ICT OBJ is the full mesh and only the `v` lines differ, so a shape is stored as its delta from the
neutral. Deltas are int16-quantized with one scale per shape (error ≤ max|delta| / 65534, ~1e-4 cm),
which is as small as float16 but an order of magnitude more precise.

Usage: python tools/convert_ict.py [--shared ../shared] [--out models/ict_face_model.npz] [--identities 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from engine.face_model import seam_split  # noqa: E402

# Vertex ranges (0-based, inclusive) from ICT-FaceKit's README; region ids are stored per vertex.
REGION_RANGES: list[tuple[str, int, int]] = [
    ("face", 0, 9408),
    ("head", 9409, 11247),
    ("mouth_socket", 11248, 13293),
    ("eye_socket", 13294, 14061),
    ("gums_tongue", 14062, 17038),
    ("teeth", 17039, 21450),
    ("eyeball_left", 21451, 23020),
    ("eyeball_right", 23021, 24590),
    ("eye_wet", 24591, 25350),
    ("eyelashes", 25351, 26718),
]
NARROW_FACE_LAST = 6705
# Iris sub-ranges of each eyeball (README "Eyeball Details"): used to bind MediaPipe's iris points.
IRIS_RANGES = {"left": (22221, 23020), "right": (23791, 24590)}


def parse_obj_vertices(text: bytes) -> np.ndarray:
    """`v` lines of an OBJ as a (V, 3) float64 array."""
    lines = [ln[2:] for ln in text.split(b"\n") if ln.startswith(b"v ")]
    return np.array(b" ".join(lines).split(), dtype=np.float64).reshape(-1, 3)


def parse_obj_topology(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Faces of an OBJ, fan-triangulated.

    Returns (triangles (T, 3) vertex ids, triangle_uv_ids (T, 3), uvs (U, 2), per-triangle material
    names); indices are 0-based.
    """
    uvs: list[list[float]] = []
    tris: list[tuple[int, int, int]] = []
    tri_uv: list[tuple[int, int, int]] = []
    tri_mat: list[str] = []
    material = ""
    for line in text.splitlines():
        if line.startswith("vt "):
            uvs.append([float(x) for x in line.split()[1:3]])
        elif line.startswith("usemtl "):
            material = line.split(maxsplit=1)[1].strip()
        elif line.startswith("f "):
            corners = [c.split("/") for c in line.split()[1:]]
            vids = [int(c[0]) - 1 for c in corners]
            tids = [int(c[1]) - 1 for c in corners]
            for k in range(1, len(corners) - 1):
                tris.append((vids[0], vids[k], vids[k + 1]))
                tri_uv.append((tids[0], tids[k], tids[k + 1]))
                tri_mat.append(material)
    return (
        np.asarray(tris, dtype=np.int32),
        np.asarray(tri_uv, dtype=np.int32),
        np.asarray(uvs, dtype=np.float32),
        tri_mat,
    )


def quantize(deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, V, 3) float deltas → int16 codes and (S,) float32 scales with delta ≈ code * scale."""
    peak = np.abs(deltas).reshape(len(deltas), -1).max(axis=1)
    scale = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)
    codes = np.round(deltas / scale[:, None, None]).astype(np.int16)
    return codes, scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "ict_face_model.npz")
    ap.add_argument("--identities", type=int, default=100, help="leading identity modes to keep")
    args = ap.parse_args()

    ict = args.shared / "ict-facekit"
    neutral_text = (ict / "generic_neutral_mesh.obj").read_bytes()
    neutral = parse_obj_vertices(neutral_text)
    triangles, triangle_uv_ids, uvs, tri_mat = parse_obj_topology(neutral_text.decode())
    indices = json.loads((ict / "vertex_indices.json").read_text())
    expression_names: list[str] = indices["expressions"]

    shapes: dict[str, np.ndarray] = {}
    with tarfile.open(ict / "ict-facekit-objs.tar.xz", "r:xz") as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".obj")]
        for member in tqdm(members, desc="reading ICT OBJs", unit="obj"):
            name = Path(member.name).stem
            file = tar.extractfile(member)
            assert file is not None
            shapes[name] = parse_obj_vertices(file.read())

    identity_names = [f"identity{k:03d}" for k in range(args.identities)]
    identity_deltas = np.stack([shapes[n] - neutral for n in identity_names])
    expression_deltas = np.stack([shapes[n] - neutral for n in expression_names])
    identity_codes, identity_scale = quantize(identity_deltas)
    expression_codes, expression_scale = quantize(expression_deltas)

    render_to_model, render_uv, render_triangles = seam_split(triangles, triangle_uv_ids, uvs)

    material_names = sorted(set(tri_mat))
    triangle_material = np.array([material_names.index(m) for m in tri_mat], dtype=np.uint8)
    region_names = [r[0] for r in REGION_RANGES]
    vertex_region = np.zeros(len(neutral), dtype=np.uint8)
    for rid, (_, lo, hi) in enumerate(REGION_RANGES):
        vertex_region[lo : hi + 1] = rid

    source_hash = hashlib.sha256(neutral_text + (ict / "vertex_indices.json").read_bytes()).hexdigest()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        model_id=np.array("ict-facekit-light"),
        source_sha256=np.array(source_hash),
        neutral=neutral.astype(np.float32),
        identity_codes=identity_codes,
        identity_scale=identity_scale,
        expression_codes=expression_codes,
        expression_scale=expression_scale,
        expression_names=np.array(expression_names),
        triangles=triangles,
        render_to_model=render_to_model,
        render_uv=render_uv.astype(np.float32),
        render_triangles=render_triangles,
        triangle_material=triangle_material,
        material_names=np.array(material_names),
        vertex_region=vertex_region,
        region_names=np.array(region_names),
        narrow_face_last=np.array(NARROW_FACE_LAST),
        iris_ranges=np.array([IRIS_RANGES["left"], IRIS_RANGES["right"]], dtype=np.int32),
        rigid_vertices=np.asarray(indices["idx_to_rigid_verts"], dtype=np.int32),
        fitting_vertices=np.asarray(indices["idx_to_fitting_verts"], dtype=np.int32),
        landmark_vertices_68=np.asarray(indices["idx_to_landmark_verts"], dtype=np.int32),
    )
    err_id = np.abs(identity_codes * identity_scale[:, None, None] - identity_deltas).max()
    err_ex = np.abs(expression_codes * expression_scale[:, None, None] - expression_deltas).max()
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB): {len(neutral)} vertices, "
        f"{len(triangles)} triangles, {len(render_to_model)} render vertices, {args.identities} identity modes, "
        f"{len(expression_names)} expressions; max quantization error identity {err_id:.2e} cm, "
        f"expression {err_ex:.2e} cm"
    )


if __name__ == "__main__":
    main()
