"""MediaPipe tracking wrapper: real FaceMesh on MediaPipe's own test photos, compared with its goldens.

The photos and goldens are in the repository (tests/data/mediapipe/, Apache-2.0): these tests run on every clone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import TrackingConfig
from engine.tracking import FaceTracker, InvalidFrameError, _landmark_array, validate_image
from engine.types import Frame

MEDIAPIPE_TOLERANCE = 0.03  # normalized; what MediaPipe's own landmark tests accept


def _image(test_data: Path, name: str) -> np.ndarray:
    return np.ascontiguousarray(Image.open(test_data / "mediapipe/images" / name).convert("RGB"))


def _portrait_golden(test_data: Path) -> np.ndarray:
    text = (test_data / "mediapipe/golden/portrait_expected_face_landmarks.pbtxt").read_text()
    xs = [float(v) for v in re.findall(r"\bx:\s*([-\d.eE+]+)", text)]
    ys = [float(v) for v in re.findall(r"\by:\s*([-\d.eE+]+)", text)]
    return np.stack([xs, ys], axis=1)


def test_copied_photos_and_goldens_match_shared(test_data, shared_dir):
    """tests/data/mediapipe/ is a byte-for-byte copy of files in ../shared/testdata/mediapipe/ (made by
    tools/make_test_fixtures.py): a refreshed original shows here."""
    copies = sorted(p for p in (test_data / "mediapipe").rglob("*") if p.is_file())
    assert {p.parent.name for p in copies} == {"images", "golden", "licenses"}
    for copy in copies:
        original = shared_dir / "testdata/mediapipe" / copy.relative_to(test_data / "mediapipe")
        assert copy.read_bytes() == original.read_bytes(), f"{copy} differs from {original}"


@pytest.fixture(scope="module")
def still_tracker():
    with FaceTracker(TrackingConfig(), static=True) as tracker:
        yield tracker


def test_portrait_matches_mediapipe_golden(test_data, still_tracker):
    image = _image(test_data, "portrait.jpg")
    golden = _portrait_golden(test_data)
    faces = still_tracker.process(Frame(image, t_capture_ns=0, index=0))
    assert len(faces) == 1
    face = faces[0]
    assert face.normalized.shape == (478, 3) and face.pixels.shape == (478, 3)
    assert np.isfinite(face.normalized).all()
    assert face.image_size == (image.shape[1], image.shape[0])
    assert golden.shape == (478, 2)
    error = np.abs(face.normalized[:, :2] - golden)
    assert error.max() < MEDIAPIPE_TOLERANCE, f"max deviation {error.max():.4f} at landmark {error.argmax() // 2}"
    assert 0.5 <= face.presence <= 1.0


def test_business_person_matches_golden_and_pixels_are_scaled(test_data, still_tracker):
    image = _image(test_data, "business-person.png")
    golden_path = test_data / "mediapipe/golden/business-person_expected_face_landmarks.json"
    data = json.loads(golden_path.read_text())
    golden = np.asarray(data["landmarks"])
    (face,) = still_tracker.process_image(image)
    assert np.abs(face.normalized[:, :2] - golden[:, :2]).max() < MEDIAPIPE_TOLERANCE
    height, width = image.shape[:2]
    np.testing.assert_allclose(face.pixels[:, 0], face.normalized[:, 0] * width, rtol=1e-5)
    np.testing.assert_allclose(face.pixels[:, 1], face.normalized[:, 1] * height, rtol=1e-5)
    # z in pixels is scaled by the width, like x (MediaPipe's convention), not by the height.
    np.testing.assert_allclose(face.pixels[:, 2], face.normalized[:, 2] * width, rtol=1e-5, atol=1e-3)


def test_iris_points_belong_to_the_subjects_eyes(test_data, still_tracker):
    (face,) = still_tracker.process_image(_image(test_data, "sergey.png"))
    px = face.pixels
    # Frontal, unmirrored photo: the subject's right eye (outer corner 33) is on the image's left.
    assert px[33, 0] < px[263, 0]
    for centre, contour, corners in ((468, slice(469, 473), (33, 133)), (473, slice(474, 478), (362, 263))):
        lo, hi = sorted(px[list(corners), 0])
        assert lo < px[centre, 0] < hi
        np.testing.assert_allclose(px[contour, :2].mean(axis=0), px[centre, :2], atol=3.0)


def test_video_mode_tracks_consecutive_frames(test_data):
    image = _image(test_data, "portrait.jpg")
    with FaceTracker(TrackingConfig(static_image_mode=False)) as tracker:
        first = tracker.process(Frame(image, 0, 0))
        second = tracker.process(Frame(image, 33_000_000, 1))
    assert len(first) == len(second) == 1
    # The second frame is tracked from the first's crop, not re-detected: same face, same presence.
    assert np.abs(first[0].normalized[:, :2] - second[0].normalized[:, :2]).max() < 0.01
    assert second[0].presence == pytest.approx(first[0].presence)


def test_decoded_landmarks_equal_mediapipe_solution_output(test_data, still_tracker):
    import mediapipe as mp

    image = _image(test_data, "sergey.png")
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as reference:
        expected = reference.process(image).multi_face_landmarks[0]
    reference_xyz = np.array([(p.x, p.y, p.z) for p in expected.landmark], dtype=np.float32)
    (face,) = still_tracker.process_image(image)
    np.testing.assert_array_equal(face.normalized, reference_xyz)


def test_landmark_decoding_handles_other_record_layouts():
    from mediapipe.framework.formats import landmark_pb2

    values = [(0.5, 0.25, -0.125), (0.0, 1.0, 0.0)]
    plain = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in values:
        plain.landmark.add(x=x, y=y, z=z)
    np.testing.assert_array_equal(_landmark_array(plain.SerializeToString()), values)
    # A set `visibility` lengthens one record: the byte-level decoder must notice and parse instead.
    plain.landmark[0].visibility = 0.9
    np.testing.assert_array_equal(_landmark_array(plain.SerializeToString()), values)


def test_two_faces_each_with_its_own_landmarks(test_data):
    portrait = Image.open(test_data / "mediapipe/images/portrait.jpg").convert("RGB")
    right = np.asarray(portrait.resize((600, 750)))  # the portrait's face is small: keep it detectable
    left = np.zeros_like(right)
    sergey = _image(test_data, "sergey.png")
    left[: sergey.shape[0], : sergey.shape[1]] = sergey
    image = np.ascontiguousarray(np.concatenate([left, right], axis=1))
    with FaceTracker(TrackingConfig(max_faces=2), static=True) as tracker:
        faces = tracker.process_image(image)
    assert len(faces) == 2
    assert sorted(f.face_index for f in faces) == [0, 1]
    split = left.shape[1] / image.shape[1]
    centres = sorted(float(np.median(f.normalized[:, 0])) for f in faces)
    assert centres[0] < split < centres[1], "each face's landmarks must stay in its own half"
    assert all(0.5 <= f.presence <= 1.0 for f in faces)


def test_faces_with_non_finite_landmarks_are_dropped():
    from types import SimpleNamespace

    from mediapipe.framework.formats import landmark_pb2

    def serialized(value: float) -> bytes:
        face = landmark_pb2.NormalizedLandmarkList()
        for k in range(478):
            face.landmark.add(x=0.3 + k * 1e-4, y=0.4, z=value)
        return face.SerializeToString()

    class FakeGraph:  # stands in for MediaPipe: one good face and one whose depth came out NaN
        def process(self, _inputs):
            faces = [serialized(float("nan")), serialized(0.01)]
            return SimpleNamespace(multi_face_landmarks=faces, face_detections=None)

        def close(self):
            pass

    tracker = FaceTracker(TrackingConfig(max_faces=2), static=True)
    tracker._graph.close()
    tracker._graph = FakeGraph()
    faces = tracker.process_image(np.zeros((64, 64, 3), np.uint8))
    assert len(faces) == 1
    assert np.isfinite(faces[0].normalized).all() and np.isfinite(faces[0].pixels).all()
    assert faces[0].normalized[0, 2] == pytest.approx(0.01)
    tracker.close()


def test_no_face_gives_empty_list(still_tracker):
    assert still_tracker.process(Frame(np.zeros((256, 256, 3), np.uint8), 0, 0)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert still_tracker.process_image(noise) == []


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 64), np.uint8), "H×W×3"),
        (np.zeros((64, 64, 4), np.uint8), "H×W×3"),
        (np.zeros((1, 1, 3), np.uint8), "1×1"),
        (np.zeros((64, 128, 3), np.uint8)[:, ::2], "C-contiguous"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_invalid_frames_are_refused_with_a_reason(image, message):
    with pytest.raises(InvalidFrameError, match=message):
        validate_image(image)


def test_tracker_refuses_invalid_frame_and_closes(still_tracker):
    with pytest.raises(InvalidFrameError, match="uint8"):
        still_tracker.process(Frame(np.zeros((64, 64, 3), np.int16), 0, 0))
    tracker = FaceTracker(TrackingConfig(), static=True)
    tracker.close()
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.process_image(np.zeros((64, 64, 3), np.uint8))
