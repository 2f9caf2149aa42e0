"""The linear face model: identity + expression weights → vertices, plus topology, UVs, regions and the
MediaPipe landmark embedding.

Default model: ICT-FaceKit Light (MIT), converted by `tools/convert_ict.py` into `models/ict_face_model.npz`.
A mesh is `v = neutral + B_id·w_id + B_exp·w_exp` (centimetres, y up, +z towards the viewer, +x the subject's
left). `personalize(w_id)` pre-multiplies the identity once so the per-frame cost is one (53 × 3V) product.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from engine.errors import UserError
from engine.paths import MODELS_DIR

DEFAULT_MODEL_PATH = MODELS_DIR / "ict_face_model.npz"
DEFAULT_EMBEDDING_PATH = MODELS_DIR / "landmark_embedding.npz"
N_LANDMARKS = 478


class ModelFileError(UserError):
    """A model or embedding file is missing, truncated or of the wrong format."""


def read_npz(path: Path | str, what: str, made_by: str) -> dict[str, np.ndarray]:
    """Every array of the model file `path` (no pickles), for the loaders of `models/*.npz`. A missing or unreadable
    file is one line of ModelFileError naming `what` it is, the file, and the tool `made_by` that makes it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path} (make it with {made_by})")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zip/npy errors come in many types; all mean the same thing here
        raise ModelFileError(f"{what} {path} is unreadable: {exc} (make it again with {made_by})") from exc


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (model ids and bundle checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seam_split(
    triangles: np.ndarray, triangle_uv_ids: np.ndarray, uvs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split vertices at UV seams: one render vertex per distinct (model vertex, uv) corner pair.

    triangles, triangle_uv_ids: (T, 3) int; uvs: (U, 2). Returns render_to_model (R,) int32,
    render_uv (R, 2) float32 and render_triangles (T, 3) int32 with triangles == render_to_model[render_triangles].
    """
    pairs = np.stack([np.ravel(triangles), np.ravel(triangle_uv_ids)], axis=1)
    unique_pairs, inverse = np.unique(pairs, axis=0, return_inverse=True)
    render_to_model = unique_pairs[:, 0].astype(np.int32)
    render_uv = np.asarray(uvs, dtype=np.float32)[unique_pairs[:, 1]]
    return render_to_model, render_uv, inverse.reshape(-1, 3).astype(np.int32)


def fan_triangulate(polygons: np.ndarray) -> np.ndarray:
    """(F, k) polygon corner ids → (F·(k−2), 3) triangles (0, i, i+1), polygon by polygon."""
    polygons = np.asarray(polygons)
    k = polygons.shape[1]
    tris = [polygons[:, [0, i, i + 1]] for i in range(1, k - 1)]
    return np.stack(tris, axis=1).reshape(-1, 3)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (counter-clockwise triangles face outwards).

    vertices: (..., V, 3) cm — a batch of meshes at once; triangles: (T, 3) → (..., V, 3) float32.
    """
    v = np.asarray(vertices, dtype=np.float32)
    a, b, c = (v[..., triangles[:, k], :] for k in range(3))
    face = np.cross(b - a, c - a)  # length = 2 × area: the weighting
    n_vertices = v.shape[-2]
    rows = triangles.ravel()
    cols = np.repeat(np.arange(len(triangles)), 3)
    incidence = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_vertices, len(triangles)))
    lead = face.shape[:-2]
    flat = np.moveaxis(face, -2, 0).reshape(len(triangles), -1)  # (T, ... * 3)
    summed = np.moveaxis((incidence @ flat).reshape(n_vertices, *lead, 3), 0, -2)
    norm = np.linalg.norm(summed, axis=-1, keepdims=True)
    return (summed / np.maximum(norm, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class FaceTopology:
    """Mesh connectivity shared by every identity and expression.

    triangles: (T, 3) int32 model-vertex ids. render_to_model: (R,) int32 seam-split render vertex → model
    vertex. render_uv: (R, 2) float32 (u may exceed 1: one UV tile per material). render_triangles: (T, 3)
    int32 render-vertex ids. triangle_material: (T,) uint8 into material_names. vertex_region: (V,) uint8
    into region_names.
    """

    triangles: np.ndarray
    render_to_model: np.ndarray
    render_uv: np.ndarray
    render_triangles: np.ndarray
    triangle_material: np.ndarray
    material_names: tuple[str, ...]
    vertex_region: np.ndarray
    region_names: tuple[str, ...]

    def region_vertices(self, *names: str) -> np.ndarray:
        """(k,) int32 model-vertex ids of the named regions (`face`, `head`, `teeth`, …)."""
        unknown = [n for n in names if n not in self.region_names]
        if unknown:
            raise KeyError(f"unknown region(s) {unknown}; known: {', '.join(self.region_names)}")
        ids = [self.region_names.index(n) for n in names]
        return np.flatnonzero(np.isin(self.vertex_region, ids)).astype(np.int32)


@dataclass(frozen=True)
class PersonalizedFace:
    """One identity's rest shape and expression basis: `evaluate(w)` is the per-frame mesh.

    neutral: (V, 3) float32 cm. expression_basis: (E, V, 3) float32 cm per unit weight.
    """

    neutral: np.ndarray
    expression_basis: np.ndarray

    @cached_property
    def _flat_basis(self) -> np.ndarray:
        return np.ascontiguousarray(self.expression_basis.reshape(len(self.expression_basis), -1))

    def evaluate(self, expression_weights: np.ndarray, n_vertices: int | None = None) -> np.ndarray:
        """(E,) weights → (V, 3) float32 vertices; `n_vertices` evaluates only the leading vertices
        (face + head are the first 11,248 of ICT, so the per-frame path can skip teeth and eyes)."""
        n = len(self.neutral) if n_vertices is None else n_vertices
        weights = np.asarray(expression_weights, dtype=np.float32)
        flat = self.neutral[:n].reshape(-1) + weights @ self._flat_basis[:, : 3 * n]
        return flat.reshape(n, 3)


class FaceModel:
    """A linear face model with named expressions (ICT order) and identity modes."""

    def __init__(
        self,
        model_id: str,
        model_hash: str,
        neutral: np.ndarray,
        identity_basis: np.ndarray,
        expression_basis: np.ndarray,
        expression_names: tuple[str, ...],
        topology: FaceTopology,
        rigid_vertices: np.ndarray,
        iris_ranges: np.ndarray | None = None,
        identity_prior_std: np.ndarray | None = None,
    ) -> None:
        self.model_id = model_id
        self.model_hash = model_hash
        self.neutral = neutral
        self.identity_basis = identity_basis
        self.expression_basis = expression_basis
        self.expression_names = expression_names
        self.topology = topology
        self.rigid_vertices = rigid_vertices
        self.iris_ranges = iris_ranges
        # ICT identity modes are principal components at one standard deviation each.
        self.identity_prior_std = (
            identity_prior_std if identity_prior_std is not None else np.ones(len(identity_basis), np.float32)
        )

    @property
    def n_vertices(self) -> int:
        return len(self.neutral)

    @property
    def n_identity(self) -> int:
        return len(self.identity_basis)

    def default_identity_weights(self) -> np.ndarray:
        """(n_id,) the mean identity."""
        return np.zeros(self.n_identity, dtype=np.float32)

    def identity_neutral(self, identity_weights: np.ndarray) -> np.ndarray:
        """(n_id,) → (V, 3) float32 rest shape of that identity."""
        w = np.asarray(identity_weights, dtype=np.float32)
        if w.shape != (self.n_identity,):
            raise ValueError(f"identity weights must have shape ({self.n_identity},), got {w.shape}")
        flat = self.neutral.reshape(-1) + w @ self.identity_basis.reshape(self.n_identity, -1)
        return flat.reshape(-1, 3)

    def personalize(self, identity_weights: np.ndarray | None = None) -> PersonalizedFace:
        """Pre-multiply an identity: its rest shape and its (E, V, 3) expression basis."""
        w = self.default_identity_weights() if identity_weights is None else identity_weights
        return PersonalizedFace(self.identity_neutral(w), self.expression_basis)

    def evaluate(self, identity_weights: np.ndarray, expression_weights: np.ndarray) -> np.ndarray:
        """(n_id,), (E,) → (V, 3) float32 vertices in cm."""
        return self.personalize(identity_weights).evaluate(expression_weights)

    def summary(self) -> dict[str, object]:
        """Counts per region, expressions and identity modes (for `model-info`)."""
        topo = self.topology
        regions = {name: int((topo.vertex_region == k).sum()) for k, name in enumerate(topo.region_names)}
        return {
            "model_id": self.model_id,
            "model_hash": self.model_hash[:16],
            "vertices": self.n_vertices,
            "triangles": len(topo.triangles),
            "render_vertices": len(topo.render_to_model),
            "regions": regions,
            "expressions": list(self.expression_names),
            "identity_modes": self.n_identity,
            "rigid_vertices": len(self.rigid_vertices),
        }

    @staticmethod
    def load(path: Path | str = DEFAULT_MODEL_PATH) -> FaceModel:
        """Load the converted ICT model (`tools/convert_ict.py`); needs nothing outside `models/`."""
        path = Path(path)
        data = read_npz(path, "face model", "tools/convert_ict.py")
        identity = data["identity_codes"].astype(np.float32) * data["identity_scale"][:, None, None]
        expression = data["expression_codes"].astype(np.float32) * data["expression_scale"][:, None, None]
        topology = FaceTopology(
            triangles=data["triangles"],
            render_to_model=data["render_to_model"],
            render_uv=data["render_uv"],
            render_triangles=data["render_triangles"],
            triangle_material=data["triangle_material"],
            material_names=tuple(str(s) for s in data["material_names"]),
            vertex_region=data["vertex_region"],
            region_names=tuple(str(s) for s in data["region_names"]),
        )
        return FaceModel(
            model_id=str(data["model_id"]),
            model_hash=file_sha256(path),
            neutral=data["neutral"].astype(np.float32),
            identity_basis=identity,
            expression_basis=expression,
            expression_names=tuple(str(s) for s in data["expression_names"]),
            topology=topology,
            rigid_vertices=data["rigid_vertices"],
            iris_ranges=data["iris_ranges"],
        )


@dataclass(frozen=True)
class LandmarkEmbedding:
    """MediaPipe's 478 landmarks as points on the model surface.

    vertex_ids: (478, 3) int32 model vertices of each landmark's triangle; barycentric: (478, 3) float32.
    residual_mm: per-region registration residual reported by the tool that made it.
    """

    vertex_ids: np.ndarray
    barycentric: np.ndarray
    residual_mm: dict[str, float]

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """(478, V) sparse map: landmarks = matrix @ vertices (V, 3)."""
        rows = np.repeat(np.arange(len(self.vertex_ids)), 3)
        n_vertices = int(self.vertex_ids.max()) + 1
        return sp.csr_matrix(
            (self.barycentric.ravel(), (rows, self.vertex_ids.ravel())), shape=(len(self.vertex_ids), n_vertices)
        )

    def apply(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) or (..., V, 3) vertices → (478, 3) / (..., 478, 3) landmark positions."""
        gathered = vertices[..., self.vertex_ids, :]  # (..., 478, 3, 3)
        return np.einsum("...lkc,lk->...lc", gathered, self.barycentric)

    @staticmethod
    def load(path: Path | str = DEFAULT_EMBEDDING_PATH) -> LandmarkEmbedding:
        """Load `models/landmark_embedding.npz` (made by `tools/fit_landmark_embedding.py`)."""
        z = read_npz(path, "landmark embedding", "tools/fit_landmark_embedding.py")
        try:
            names = [str(s) for s in z["residual_regions"]]
            return LandmarkEmbedding(
                vertex_ids=z["vertex_ids"].astype(np.int32),
                barycentric=z["barycentric"].astype(np.float32),
                residual_mm=dict(zip(names, (float(x) for x in z["residual_mm"]), strict=True)),
            )
        except Exception as exc:  # a missing array, a wrong count
            raise ModelFileError(f"landmark embedding {path} is unreadable: {exc}") from exc
