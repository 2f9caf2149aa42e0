"""The demo performer: a scripted, deterministic performance that MediaPipe tracks like a webcam face."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.config import RenderConfig
from engine.detail.weights import KEY_EXPRESSIONS, key_expression_weights
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.camera import quaternion_to_matrix
from engine.sources.demo import DemoPerformer, DemoScript
from engine.types import HeadPose

SIZE = 256


def _identity(face_model) -> Identity:
    return Identity("demo-test", face_model.model_id, face_model.default_identity_weights(), np.zeros(53, np.float32))


@pytest.fixture(scope="module")
def performer(face_model):
    with DemoPerformer(face_model, _identity(face_model), RenderConfig(), seed=3, size=SIZE) as p:
        yield p


def test_script_covers_every_key_expression():
    script = DemoScript.build(30.0, seed=0)
    table = key_expression_weights()
    names = [name for name, _ in script.segments]
    for i, (name, _) in enumerate(KEY_EXPRESSIONS[1:], start=1):
        start = script.segments[names.index(name)][1]
        window = script.weights[start : start + 45]
        pattern = table[i] / np.linalg.norm(table[i])
        # Some frame of the segment is this key expression's pattern (up to scale), blinks aside.
        w = window.copy()
        if name != "eye_closed":
            w[:, [ICT_EXPRESSIONS.index("eyeBlink_L"), ICT_EXPRESSIONS.index("eyeBlink_R")]] = 0
        cosine = (w @ pattern) / np.maximum(np.linalg.norm(w, axis=1), 1e-9)
        assert cosine.max() > 0.99, name
        assert (w @ pattern).max() >= 0.95 * np.linalg.norm(table[i]), name


def test_script_has_blinks_speech_gaze_and_bounded_smooth_head_motion():
    script = DemoScript.build(30.0, seed=1)
    w = script.weights
    blink = w[:, ICT_EXPRESSIONS.index("eyeBlink_L")]
    closures = np.flatnonzero((blink[1:] > 0.9) & (blink[:-1] <= 0.9))
    assert len(closures) >= len(script) / 30.0 / 5.0, "a blink every few seconds"
    speech = dict(script.segments)["speech"]
    jaw = w[speech : speech + 90, ICT_EXPRESSIONS.index("jawOpen")]
    assert ((jaw[1:-1] > jaw[:-2]) & (jaw[1:-1] >= jaw[2:]) & (jaw[1:-1] > 0.1)).sum() >= 8, "syllables"
    gaze = dict(script.segments)["gaze"]
    looks = [n for n in ICT_EXPRESSIONS if n.startswith("eyeLook")]
    assert all(w[gaze : gaze + 110, ICT_EXPRESSIONS.index(n)].max() > 0.5 for n in looks)
    assert ((w >= 0) & (w <= 1)).all()
    euler = script.euler_deg
    assert np.abs(euler).max() <= 25.0 + 1e-4 and np.abs(euler[:, 0]).max() > 20.0
    assert np.abs(np.diff(euler, axis=0)).max() < 4.0, "no pose jumps: ≤ 120°/s at 30 fps"
    step = np.abs(np.diff(w, axis=0)).max(axis=0)
    lids = [ICT_EXPRESSIONS.index("eyeBlink_L"), ICT_EXPRESSIONS.index("eyeBlink_R")]
    assert step[lids].max() < 0.55, "a blink closes in ~3 frames"
    assert np.delete(step, lids).max() < 0.25, "everything else eases"


def test_deterministic_for_a_seed_and_varied_across_seeds(face_model, performer):
    a = DemoScript.build(30.0, seed=3)
    np.testing.assert_array_equal(a.weights, performer.script.weights)
    b = DemoScript.build(30.0, seed=4)
    assert [n for n, _ in a.segments] != [n for n, _ in b.segments]
    first = performer.frame(100).image
    with DemoPerformer(face_model, _identity(face_model), RenderConfig(), seed=3, size=SIZE) as again:
        np.testing.assert_array_equal(again.frame(100).image, first)


def test_frames_are_rgb_with_truth_and_loop(performer):
    frames = list(itertools.islice(iter(performer), 3))
    f = frames[1]
    assert f.image.shape == (SIZE, SIZE, 3) and f.image.dtype == np.uint8
    assert [fr.index for fr in frames] == [0, 1, 2] and frames[0].t_capture_ns < frames[2].t_capture_ns
    np.testing.assert_array_equal(f.true_weights, performer.script.weights[1])
    assert isinstance(f.true_pose, HeadPose)
    # The same pose convention as the solver: p_cam = R p + t, the model origin straight ahead.
    np.testing.assert_allclose(f.true_pose.translation, [0, 0, -performer.config.camera_distance_cm])
    rot = quaternion_to_matrix(f.true_pose.quaternion)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    # Plain background in the corners (no transparency), the face in the middle differs from it.
    assert (
        f.image[:8, :8].reshape(-1, 3).std(axis=0).max() < 3
        and np.abs(f.image[SIZE // 2, SIZE // 2].astype(int) - f.image[4, 4]).sum() > 30
    )
    # Loops: frame len(performer) + 1 is script frame 1 again.
    np.testing.assert_array_equal(performer.frame(len(performer) + 1).true_weights, f.true_weights)


def test_one_loop_when_not_looping(face_model):
    p = DemoPerformer(face_model, _identity(face_model), RenderConfig(), fps=2.0, size=64, loop=False)
    try:
        assert sum(1 for _ in p) == len(p) == len(DemoScript.build(2.0, 0))
    finally:
        p.close()
    with pytest.raises(ValueError, match="fps"):
        DemoScript.build(0.0)


def test_mediapipe_tracks_the_performance(performer):
    """≥ 95 % of a strided sample of one loop's frames has a face for MediaPipe FaceMesh (still-image mode,
    so every frame is found from scratch)."""
    from engine.tracking import FaceTracker

    sample = range(0, len(performer), max(1, len(performer) // 36))
    with FaceTracker(static=True) as tracker:
        found = np.array([len(tracker.process(performer.frame(i))) == 1 for i in sample])
    assert found.mean() >= 0.95, f"tracked {found.mean():.0%}: missed frames {np.array(sample)[~found]}"


# -- the shipped recording ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_identity(face_model):
    from engine.identity import DEFAULT_IDENTITY_DIR, load_bundle

    return load_bundle(DEFAULT_IDENTITY_DIR, face_model, with_bases=False)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_shipped_recording_is_what_the_performer_renders(face_model, default_identity):
    """models/demo_performance.mp4 must be the live performer's frames (else rebuild it with
    tools/build_demo_video.py): same count, same true weights and poses, pixels within H.264's loss."""
    from engine.config import Config
    from engine.sources.demo import DEMO_RECORDING, DemoRecording

    assert DEMO_RECORDING.is_file(), "the demo recording is shipped in models/"
    config = Config()
    performer = DemoPerformer(face_model, default_identity, config.render, loop=False)
    recording = DemoRecording.open(performer)
    assert recording is not None, "the shipped recording does not match the performer: rebuild it"
    with recording:
        checked = {0: None, 260: None, 700: None, len(performer) - 1: None}
        frames = list(recording)
        assert len(frames) == len(performer.script)
        for i, frame in enumerate(frames):
            assert frame.index == i
            np.testing.assert_array_equal(frame.true_weights, performer.script.weights[i])
            if i in checked:
                checked[i] = _psnr(frame.image, performer.frame(i).image)
        np.testing.assert_allclose(frames[300].true_pose.quaternion, performer.true_pose(300).quaternion)
    assert min(checked.values()) >= 33.0, f"PSNR recording vs live render per frame: {checked}"


def test_recording_is_refused_unless_it_is_exactly_this_performance(face_model, default_identity, tmp_path):
    import shutil

    from engine.config import Config
    from engine.sources.demo import DEMO_RECORDING, DemoRecording

    render = Config().render
    other_seed = DemoPerformer(face_model, default_identity, render, seed=1)
    other_face = DemoPerformer(face_model, _identity(face_model), render)
    other_size = DemoPerformer(face_model, default_identity, render, size=256)
    narrow_lens = DemoPerformer(face_model, default_identity, render.model_copy(update={"fov_y_deg": 45.0}))
    for performer in (other_seed, other_face, other_size, narrow_lens):
        assert DemoRecording.open(performer) is None
    same = DemoPerformer(face_model, default_identity, render)
    video = tmp_path / "demo.mp4"
    assert DemoRecording.open(same, video) is None  # missing
    shutil.copy(DEMO_RECORDING.with_suffix(".json"), video.with_suffix(".json"))
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(5000))  # a corrupt video
    assert DemoRecording.open(same, video) is None
    shutil.copy(DEMO_RECORDING, video)
    video.with_suffix(".json").write_text("{not json")
    assert DemoRecording.open(same, video) is None
    shutil.copy(DEMO_RECORDING.with_suffix(".json"), video.with_suffix(".json"))
    recording = DemoRecording.open(same, video)
    assert recording is not None
    recording.close()


def test_demo_source_plays_the_recording_and_renders_live_when_told():
    from engine.config import load_config
    from engine.sources.select import open_source

    source = open_source("demo", load_config())
    try:
        assert "recorded" in source.description
        frame = source.read()
        assert frame is not None and frame.image.shape == (512, 512, 3) and frame.true_weights is not None
    finally:
        source.close()
    live = open_source("demo", load_config(overrides=["source.demo_recording=false"]))
    try:
        assert "live" in live.description
    finally:
        live.close()
