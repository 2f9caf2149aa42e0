"""Build `tests/data/` from `../shared`: the small files the tests read, so they run on a clone without it.

Copied byte for byte (Apache-2.0, with their licences):
  - MediaPipe's three test photos and the goldens the tests read (`testdata/mediapipe/`);
  - MediaPipe's canonical face mesh with iris (`mediapipe-face-geometry/face_model_with_iris.obj`).
Derived (MIT, with ICT-FaceKit's notice):
  - `tests/data/ict-facekit/ict_obj_samples.npz`: a few vertices of each ICT OBJ the shipped model is built from
    (the neutral, the 100 identity modes, the 53 expressions), exactly as ICT exports them. The full archive is
    24 MB (387 MB unpacked); the samples let `tests/test_face_model.py` compare the engine's model evaluation with
    ICT's own OBJs on every clone, and the full comparison still runs where `../shared` is present.

Which vertices: per shape the 8 that move most, 8 more among those it moves at all, and 8 anywhere on the mesh
(seeded, so a rerun on the same data picks the same ones); for the neutral, 16 per ICT region plus the mesh's
extreme points.

Usage: python tools/make_test_fixtures.py [--shared ../shared] [--out tests/data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# (source under ../shared, destination under tests/data): verbatim copies.
COPIES: list[tuple[str, str]] = [
    *[
        (f"testdata/mediapipe/images/{n}", f"mediapipe/images/{n}")
        for n in ("portrait.jpg", "business-person.png", "sergey.png")
    ],  # fmt: skip
    *[
        (f"testdata/mediapipe/golden/{n}", f"mediapipe/golden/{n}")
        for n in (
            "portrait_expected_face_landmarks.pbtxt",
            "business-person_expected_face_landmarks.json",
            "blendshapes.json",
        )
    ],  # fmt: skip
    *[
        (f"testdata/mediapipe/licenses/{n}", f"mediapipe/licenses/{n}")
        for n in ("mediapipe_LICENSE", "mediapipe-samples_LICENSE", "tfjs-models_LICENSE")
    ],  # fmt: skip
    ("mediapipe-face-geometry/face_model_with_iris.obj", "mediapipe-face-geometry/face_model_with_iris.obj"),
    ("mediapipe-face-geometry/LICENSE", "mediapipe-face-geometry/LICENSE"),
    ("ict-facekit/LICENSE", "ict-facekit/LICENSE"),
]
ICT_SAMPLES = "ict-facekit/ict_obj_samples.npz"
# ICT-FaceKit's vertex ranges (0-based, inclusive; its README), the same as tools/convert_ict.py's regions.
ICT_REGIONS = [(0, 9408), (9409, 11247), (11248, 13293), (13294, 14061), (14062, 17038), (17039, 21450),
               (21451, 23020), (23021, 24590), (24591, 25350), (25351, 26718)]  # fmt: skip
PER_SHAPE = 8  # vertices of each kind per shape: most moved, moved, anywhere
PER_REGION = 16  # neutral vertices per region
MOVED_CM = 1e-4  # a vertex a shape moves by more than this counts as moved


def obj_vertices(data: bytes) -> np.ndarray:
    """`v` lines of an OBJ as a (V, 3) float64 array (as tools/convert_ict.py reads them)."""
    lines = [ln[2:] for ln in data.split(b"\n") if ln.startswith(b"v ")]
    return np.array(b" ".join(lines).split(), dtype=np.float64).reshape(-1, 3)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pick(delta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted vertex ids for one shape: the PER_SHAPE most moved, PER_SHAPE more moved ones, PER_SHAPE anywhere."""
    magnitude = np.linalg.norm(delta, axis=1)
    top = np.argsort(-magnitude, kind="stable")[:PER_SHAPE]
    moved = np.setdiff1d(np.flatnonzero(magnitude > MOVED_CM), top)
    moved = rng.choice(moved, min(PER_SHAPE, len(moved)), replace=False)
    rest = np.setdiff1d(np.arange(len(delta)), np.concatenate([top, moved]))
    anywhere = rng.choice(rest, PER_SHAPE, replace=False)
    return np.unique(np.concatenate([top, moved, anywhere])).astype(np.int32)


def ict_samples(shared: Path) -> dict[str, np.ndarray]:
    """The arrays of ict_obj_samples.npz, read from ICT's neutral OBJ and its archive of shape OBJs."""
    ict = shared / "ict-facekit"
    neutral = obj_vertices((ict / "generic_neutral_mesh.obj").read_bytes())
    expressions: list[str] = json.loads((ict / "vertex_indices.json").read_text())["expressions"]
    names = [f"identity{k:03d}" for k in range(100)] + expressions
    shapes: dict[str, np.ndarray] = {}
    with tarfile.open(ict / "ict-facekit-objs.tar.xz", "r:xz") as tar:
        for member in tar:
            stem = Path(member.name).stem
            if member.name.endswith(".obj") and stem in names:
                shapes[stem] = obj_vertices(tar.extractfile(member).read())
    missing = sorted(set(names) - set(shapes))
    if missing:
        raise SystemExit(f"the ICT archive lacks {missing}")

    rng = np.random.default_rng(20261206)
    neutral_ids = [rng.choice(np.arange(lo, hi + 1), PER_REGION, replace=False) for lo, hi in ICT_REGIONS]
    extremes = np.concatenate([neutral.argmin(axis=0), neutral.argmax(axis=0)])
    neutral_ids = np.unique(np.concatenate([*neutral_ids, extremes])).astype(np.int32)
    ids = [pick(shapes[name] - neutral, rng) for name in names]
    return {
        "source": np.array("ICT-FaceKit Light (USC ICT, MIT): generic_neutral_mesh.obj and ict-facekit-objs.tar.xz"),
        "neutral_obj_sha256": np.array(sha256(ict / "generic_neutral_mesh.obj")),
        "archive_sha256": np.array(sha256(ict / "ict-facekit-objs.tar.xz")),
        "n_vertices": np.array(len(neutral)),
        "neutral_ids": neutral_ids,
        "neutral": neutral[neutral_ids].astype(np.float32),
        "shape_names": np.array(names),
        "shape_offsets": np.cumsum([0] + [len(i) for i in ids]).astype(np.int32),
        "shape_ids": np.concatenate(ids),
        "shape_vertices": np.concatenate([shapes[n][i] for n, i in zip(names, ids, strict=True)]).astype(np.float32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    args = ap.parse_args()
    if not (args.shared / "DESIGN.md").is_file():
        raise SystemExit(f"{args.shared} is not the shared data folder (no DESIGN.md)")
    for source, destination in COPIES:
        target = args.out / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.shared / source, target)
        print(f"copied {source} -> {target} ({target.stat().st_size / 1024:.0f} KiB)")
    target = args.out / ICT_SAMPLES
    target.parent.mkdir(parents=True, exist_ok=True)
    samples = ict_samples(args.shared)
    np.savez_compressed(target, **samples)
    print(
        f"wrote {target} ({target.stat().st_size / 1024:.0f} KiB): {len(samples['neutral_ids'])} neutral vertices, "
        f"{len(samples['shape_ids'])} vertices of {len(samples['shape_names'])} shapes"
    )


if __name__ == "__main__":
    main()
