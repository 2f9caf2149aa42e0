"""Enrollment: texture unwrapping recovers a known albedo from a render; the command builds a loadable bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.bundles import load_identity
from engine.config import Config
from engine.detail.uv_raster import face_rasterizer
from engine.enroll import TrackedFrame, push_pull_fill, unwrap_texture
from engine.face_model import LandmarkEmbedding
from engine.identity import load_bundle
from engine.render.renderer import AvatarRenderer
from engine.tracking import FaceTracker
from engine.types import FaceState, Frame, HeadPose, TrackingState

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 256


def test_unwrap_recovers_the_rendered_albedo(face_model) -> None:
    """Render the default identity frontally, unwrap the render, compare with the albedo that was rendered."""
    config = Config()
    identity = load_identity(config.identity, face_model)
    render_config = config.render.model_copy(update={"width": 640, "height": 640})
    state = FaceState(HeadPose(np.array([1.0, 0, 0, 0]), np.array([0.0, 0.0, -60.0])), np.zeros(53),
                      TrackingState.TRACKING, 1.0, 0, 0)  # fmt: skip
    with AvatarRenderer(face_model, identity, render_config) as renderer:
        rgba = renderer.render(state).image
    image = np.ascontiguousarray((rgba[..., :3] * (rgba[..., 3:4] / 255.0) + 128 * (1 - rgba[..., 3:4] / 255.0))
                                 .astype(np.uint8))  # fmt: skip
    frame = Frame(image, 0, 0)
    with FaceTracker(config.tracking, static=True) as tracker:
        faces = tracker.process(frame)
    assert faces, "MediaPipe must find the rendered face"
    recovered = unwrap_texture(face_model, identity.identity_weights, [TrackedFrame(frame, faces[0])],
                               LandmarkEmbedding.load(), size=SIZE, progress=False)  # fmt: skip
    truth = cv2.resize(identity.texture, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
    raster = face_rasterizer(face_model, SIZE)
    # Compare the frontal core of the face (cheeks, nose, lips, eyes): there the render shows the albedo.
    rest = face_model.personalize(identity.identity_weights).neutral
    surface = np.einsum("hwk,hwkc->hwc", raster.barycentric, rest[raster.corners_model])
    core = raster.covered & (np.abs(surface[..., 0]) < 4.0) & (surface[..., 1] > -6.0) & (surface[..., 1] < 5.0)
    assert core.sum() > 2000
    got, want = recovered[core].astype(np.float64), truth[core]
    # Shading scales the colour (lighting is not removed), so compare the pattern: correlation per channel.
    correlation = np.mean([np.corrcoef(got[:, c], want[:, c])[0, 1] for c in range(3)])
    print(f"albedo correlation {correlation:.3f}")
    assert correlation > 0.75, correlation
    shuffled = want[np.random.default_rng(0).permutation(len(want))]
    assert np.mean([np.corrcoef(got[:, c], shuffled[:, c])[0, 1] for c in range(3)]) < 0.2


def test_push_pull_fill_extrapolates_smoothly() -> None:
    image = np.zeros((32, 32, 3), np.float32)
    known = np.zeros((32, 32), bool)
    image[:, :16] = [200, 100, 50]
    known[:, :16] = True
    filled = push_pull_fill(image, known)
    assert np.allclose(filled[:, :16], image[:, :16])
    assert np.allclose(filled[:, 16:], [200, 100, 50], atol=1e-3)  # one colour extends as itself


def test_enroll_command_builds_a_loadable_bundle(face_model, test_data, tmp_path) -> None:
    photo = test_data / "mediapipe/images/portrait.jpg"
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "enroll", "--name", "obama", "--image", str(photo),
         "--resolution", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(out) in proc.stdout
    identity = load_bundle(out, face_model)
    assert identity.name == "obama" and identity.texture.shape == (1024, 1024, 3)
    assert identity.bases is not None and identity.bases.resolution == 64
    assert np.abs(identity.identity_weights).max() > 0.1  # the fit moved away from the mean face
    assert "tracking" in proc.stderr and "detail bases" in proc.stderr  # progress bars


def test_enroll_without_a_face_is_a_clear_error(tmp_path) -> None:
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 180, np.uint8))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "enroll", "--image", str(blank), "--out",
         str(tmp_path / "b")], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no face found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args", [["--image", "a.png", "--video", "b.mp4"], []])
def test_enroll_needs_exactly_one_source(args, tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "run_engine.py"), "enroll", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "exactly one of" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resolution", "10"], "--resolution must be between 64 and 2048, got 10"),
        (["--out", "/dev/null/bundle"], "cannot create the bundle folder /dev/null"),
    ],
)
def test_enroll_refuses_bad_options_before_any_work(args, message, tmp_path) -> None:
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "run_engine.py"), "enroll", "--image", str(photo), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert "tracking" not in proc.stderr  # refused before the first frame was tracked


def test_enroll_on_a_one_pixel_image_says_no_face(tmp_path) -> None:
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.full((1, 1, 3), 128, np.uint8))
    command = [sys.executable, str(REPO_ROOT / "run_engine.py"), "enroll", "--image", str(tiny), "--out", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "no face found" in proc.stderr and "Traceback" not in proc.stderr


def test_a_long_video_is_tracked_whole_but_only_spaced_frames_are_kept(tmp_path) -> None:
    from engine.config import load_config
    from engine.enroll import VideoFrames, track_frames
    from engine.face_model import MODELS_DIR

    source = cv2.VideoCapture(str(MODELS_DIR / "demo_performance.mp4"))
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (256, 256))
    for _ in range(60):
        ok, bgr = source.read()
        assert ok
        writer.write(cv2.resize(bgr, (256, 256)))
    writer.release()
    source.release()
    frames = VideoFrames(clip)
    assert len(frames) == 60
    kept = track_frames(frames, load_config(), static=False, keep_every=6, total=len(frames))
    assert 8 <= len(kept) <= 10 and all(t.frame.index % 6 == 0 for t in kept)
