"""The shipped MediaPipe → ICT landmark embedding (models/landmark_embedding.npz, tools/fit_landmark_embedding.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.face_model import DEFAULT_EMBEDDING_PATH, LandmarkEmbedding, ModelFileError
from engine.tracking import LANDMARK_REGION_NAMES, landmark_regions

# MediaPipe landmark id → ICT iBUG-68 landmark index, for points both schemes define the same way.
EYE_AND_MOUTH_CORNERS = {33: 36, 133: 39, 362: 42, 263: 45, 61: 48, 291: 54}


@pytest.fixture(scope="module")
def embedding() -> LandmarkEmbedding:
    return LandmarkEmbedding.load()


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ≈ s·R·src + t (Umeyama) for (N, 3) sets → (s, R (3, 3), t (3,))."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    scale = np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean()
    rot = u @ d @ vt
    return scale, rot, mu_d - scale * rot @ mu_s


def test_loads_from_models_alone(embedding):
    assert DEFAULT_EMBEDDING_PATH.parent.name == "models"
    assert embedding.vertex_ids.shape == (478, 3) and embedding.vertex_ids.dtype == np.int32
    assert embedding.barycentric.shape == (478, 3) and embedding.barycentric.dtype == np.float32
    assert set(LANDMARK_REGION_NAMES) <= set(embedding.residual_mm)


def test_barycentric_weights_are_convex(embedding):
    assert (embedding.barycentric >= 0).all()
    np.testing.assert_allclose(embedding.barycentric.sum(1), 1.0, atol=1e-5)


def test_landmarks_sit_on_real_face_and_eyeball_triangles(embedding, face_model):
    topo = face_model.topology
    triangles = {tuple(t) for t in np.sort(topo.triangles, axis=1).tolist()}
    used = np.sort(embedding.vertex_ids, axis=1).tolist()
    assert all(tuple(t) in triangles for t in used), "a landmark's vertex triple is not an ICT triangle"
    face = set(topo.region_vertices("face").tolist())
    assert set(embedding.vertex_ids[:468].ravel().tolist()) <= face
    (left_lo, left_hi), (right_lo, right_hi) = face_model.iris_ranges
    right_iris, left_iris = embedding.vertex_ids[468:473], embedding.vertex_ids[473:]
    assert ((right_iris >= right_lo) & (right_iris <= right_hi)).all()
    assert ((left_iris >= left_lo) & (left_iris <= left_hi)).all()


def test_left_right_and_iris_layout(embedding, face_model):
    points = embedding.apply(face_model.neutral)
    # ICT +x is the subject's left: MediaPipe 263 / 291 / 473 are the subject's left eye corner, mouth corner, iris.
    assert points[263, 0] > 0 > points[33, 0]
    assert points[291, 0] > 0 > points[61, 0]
    assert points[473, 0] > 0 > points[468, 0]
    for centre in (468, 473):
        c = points[centre]
        right, top, left, bottom = points[centre + 1 : centre + 5]
        # MediaPipe's iris contour order, both eyes: +x, +y, −x, −y of the centre (face_model_with_iris.obj).
        assert right[0] > c[0] > left[0] and top[1] > c[1] > bottom[1]
        diameter_mm = 10 * np.linalg.norm(right - left)
        assert 9.0 < diameter_mm < 14.0
        eye_corners = points[[33, 133]] if centre == 468 else points[[362, 263]]
        assert eye_corners[:, 0].min() < c[0] < eye_corners[:, 0].max()


def test_eye_and_mouth_corners_match_ict_landmark_vertices(embedding, face_model):
    with np.load(DEFAULT_EMBEDDING_PATH.parent / "ict_face_model.npz") as z:
        ict68 = z["landmark_vertices_68"]
    points = embedding.apply(face_model.neutral)
    for mp_id, ibug in EYE_AND_MOUTH_CORNERS.items():
        distance_mm = 10 * np.linalg.norm(points[mp_id] - face_model.neutral[ict68[ibug]])
        assert distance_mm < 3.0, f"MediaPipe {mp_id} is {distance_mm:.1f} mm from ICT's iBUG point {ibug}"


def test_neutral_matches_mediapipe_canonical_within_reported_residual(embedding, face_model, shared_dir):
    text = (shared_dir / "mediapipe-face-geometry/face_model_with_iris.obj").read_text()
    canonical = np.array([[float(x) for x in ln.split()[1:4]] for ln in text.splitlines() if ln.startswith("v ")])
    assert canonical.shape == (478, 3)
    embedded = embedding.apply(face_model.neutral.astype(np.float64))
    # Fitted on the 468 mesh landmarks; the iris points follow the same transform.
    scale, rot, shift = _similarity(canonical[:468], embedded[:468])
    distance_mm = 10 * np.linalg.norm(canonical @ (scale * rot).T + shift - embedded, axis=1)
    region = landmark_regions()
    for name in LANDMARK_REGION_NAMES:
        measured = distance_mm[region == name].mean()
        assert measured <= embedding.residual_mm[name] + 0.05, f"{name}: {measured:.2f} mm"
    # Both meshes are in centimetres at a human scale; a broken embedding would show here.
    assert 0.8 < scale < 1.25
    assert distance_mm.mean() < 4.0


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelFileError, match="fit_landmark_embedding"):
        LandmarkEmbedding.load(tmp_path / "nope.npz")
