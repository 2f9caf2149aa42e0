"""Loader for the user-supplied FaceScape bilinear model (`facescape_bm_v1.6_*.npz`), as a FaceModel.

FaceScape's model cannot be redistributed; users who registered for it point scapecast at their copy.
File format (design §2): `shape_bm_core` (3V, 52, n_id) — slice 0 the neutral, 1..51 the blendshapes in
`engine.names.FACESCAPE_EXPRESSIONS` order; `fv_indices` / `ft_indices` 1-based polygon corners (vertex / uv);
`texcoords` (U, 2); `lm_list_v16` landmark vertices; optional `id_mean`, `id_var`.

Residual form: core_res[:, 0] = core[:, 0], core_res[:, k] = core[:, k] − core[:, 0], so a mesh is
`(core_res · w_id) · [1, α1..α51]`. Expressions are re-slotted into the ICT 53-channel layout so the solver,
detail and renderer see one interface: FaceScape's single `BrowsU_C` and `Puff` drive both ICT sides at half
each (driving both sides from the one input reproduces the FaceScape shape).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.face_model import (
    FaceModel,
    FaceTopology,
    ModelFileError,
    PersonalizedFace,
    fan_triangulate,
    file_sha256,
    seam_split,
)
from engine.names import FACESCAPE_EXPRESSIONS, ICT_EXPRESSIONS, facescape_to_arkit_name, ict_to_arkit_name

_REQUIRED_KEYS = ("shape_bm_core", "fv_indices", "ft_indices", "texcoords")


def facescape_to_ict_matrix() -> np.ndarray:
    """(53, 51) float32 map S with ICT-slot deltas = FaceScape deltas @ S.T (merged channels split in half)."""
    matrix = np.zeros((len(ICT_EXPRESSIONS), len(FACESCAPE_EXPRESSIONS)), dtype=np.float32)
    for k, fs_name in enumerate(FACESCAPE_EXPRESSIONS):
        arkit = facescape_to_arkit_name(fs_name)
        slots = [i for i, ict in enumerate(ICT_EXPRESSIONS) if ict_to_arkit_name(ict) == arkit]
        matrix[slots, k] = 1.0 / len(slots)
    return matrix


class FaceScapeModel(FaceModel):
    """FaceScape's bilinear model behind the FaceModel interface: the expression basis depends on w_id."""

    def __init__(self, core_residual: np.ndarray, id_mean: np.ndarray, **kwargs: object) -> None:
        self.core_residual = core_residual  # (52, n_id, V, 3): slice 0 neutral, 1..51 deltas
        self.id_mean = id_mean
        self._slot_map = facescape_to_ict_matrix()
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def default_identity_weights(self) -> np.ndarray:
        return self.id_mean.astype(np.float32)

    def identity_neutral(self, identity_weights: np.ndarray) -> np.ndarray:
        w = self._check(identity_weights)
        return np.einsum("i,ivc->vc", w, self.core_residual[0]).astype(np.float32)

    def personalize(self, identity_weights: np.ndarray | None = None) -> PersonalizedFace:
        w = self._check(self.default_identity_weights() if identity_weights is None else identity_weights)
        neutral = np.einsum("i,ivc->vc", w, self.core_residual[0])
        facescape_deltas = np.einsum("i,kivc->kvc", w, self.core_residual[1:])  # (51, V, 3)
        ict_deltas = np.einsum("jk,kvc->jvc", self._slot_map, facescape_deltas)
        return PersonalizedFace(neutral.astype(np.float32), ict_deltas.astype(np.float32))

    def evaluate(self, identity_weights: np.ndarray, expression_weights: np.ndarray) -> np.ndarray:
        return self.personalize(identity_weights).evaluate(expression_weights)

    def _check(self, identity_weights: np.ndarray) -> np.ndarray:
        w = np.asarray(identity_weights, dtype=np.float32)
        if w.shape != (self.n_identity,):
            raise ValueError(f"FaceScape identity weights must have shape ({self.n_identity},), got {w.shape}")
        return w


def load_facescape_model(path: Path | str) -> FaceScapeModel:
    """Read a FaceScape bilinear model npz; errors name the missing or malformed field."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"FaceScape model not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ModelFileError(f"FaceScape model {path} is unreadable: {exc}") from exc
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelFileError(f"FaceScape model {path} lacks {', '.join(missing)}")
    core = np.asarray(data["shape_bm_core"], dtype=np.float32)
    n_shapes = len(FACESCAPE_EXPRESSIONS) + 1
    if core.ndim != 3 or core.shape[0] % 3 or core.shape[1] != n_shapes:
        raise ModelFileError(f"FaceScape shape_bm_core must be (3V, {n_shapes}, n_id), got {core.shape}")
    n_vertices, n_id = core.shape[0] // 3, core.shape[2]
    core = core.reshape(n_vertices, 3, n_shapes, n_id).transpose(2, 3, 0, 1)  # (52, n_id, V, 3)
    residual = core.copy()
    residual[1:] -= core[0][None]

    fv = np.asarray(data["fv_indices"], dtype=np.int64) - 1
    ft = np.asarray(data["ft_indices"], dtype=np.int64) - 1
    uvs = np.asarray(data["texcoords"], dtype=np.float32)
    if fv.shape != ft.shape or fv.ndim != 2 or fv.min() < 0 or fv.max() >= n_vertices or ft.max() >= len(uvs):
        raise ModelFileError(f"FaceScape fv_indices/ft_indices in {path} are inconsistent with the mesh")
    triangles = fan_triangulate(fv).astype(np.int32)
    triangle_uv_ids = fan_triangulate(ft)
    render_to_model, render_uv, render_triangles = seam_split(triangles, triangle_uv_ids, uvs)
    topology = FaceTopology(
        triangles=triangles,
        render_to_model=render_to_model,
        render_uv=render_uv,
        render_triangles=render_triangles,
        triangle_material=np.zeros(len(triangles), dtype=np.uint8),
        material_names=("M_Face",),
        vertex_region=np.zeros(n_vertices, dtype=np.uint8),
        region_names=("face",),
    )
    id_mean = np.asarray(data["id_mean"], dtype=np.float32) if "id_mean" in data else np.full(n_id, 1.0 / n_id)
    id_std = np.sqrt(np.asarray(data["id_var"], dtype=np.float32)) if "id_var" in data else None
    model = FaceScapeModel(
        core_residual=residual,
        id_mean=id_mean,
        model_id=f"facescape-bilinear:{path.name}",
        model_hash=file_sha256(path),
        neutral=np.einsum("i,ivc->vc", id_mean.astype(np.float32), residual[0]),
        identity_basis=residual[0],
        expression_basis=np.zeros((len(ICT_EXPRESSIONS), n_vertices, 3), np.float32),
        expression_names=ICT_EXPRESSIONS,
        topology=topology,
        # FaceScape ships no rigid-vertex set: its landmark list stands in for pose alignment.
        rigid_vertices=np.asarray(data.get("lm_list_v16", np.arange(n_vertices)), dtype=np.int32).ravel(),
        identity_prior_std=id_std,
    )
    model.expression_basis = model.personalize().expression_basis
    return model
