"""The camera's field of view read from the face (engine/solve/camera.py): the ridge and its file, the running
reading's sampling, the performer estimate fitting at the camera read, and the shipped regressor on renders
tracked by real MediaPipe."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import ConfigError, PerformerConfig, SolveConfig, load_config
from engine.face_model import FaceModel, LandmarkEmbedding, ModelFileError
from engine.names import ICT_EXPRESSIONS
from engine.render.camera import euler_to_quaternion, quaternion_to_matrix
from engine.solve.camera import (
    CAMERA_FOV_PATH,
    MIN_SAMPLES,
    N_INPUTS,
    FovReading,
    FovRegressor,
    LensFeatures,
    shipped_fov_reading,
)
from engine.solve.expression import EmbeddedFace
from engine.solve.eyes import eyeball_centers
from engine.solve.face_solver import FaceSolver
from engine.solve.performer import Performer
from engine.solve.solver import valid_observation
from engine.solve.synthetic import synthetic_landmarks

SECOND = 1_000_000_000
PLAIN = SolveConfig(landmark_response=False, learned_prior=False, compiled=False, gaze_straight_pitch_deg=0.0)


@pytest.fixture(scope="module")
def embedding() -> LandmarkEmbedding:
    return LandmarkEmbedding.load()


class _FirstValue:
    """A lens that reads the first landmark's x as the only feature that matters (counts its calls)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, observed: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        self.calls += 1
        out = np.zeros(N_INPUTS)
        out[0] = observed[0, 0]
        return out


def _regressor_reading_feature_zero(gain: float, offset: float) -> FovRegressor:
    weights = np.zeros(N_INPUTS)
    weights[0] = gain
    return FovRegressor(np.zeros(N_INPUTS), weights, offset, 50.0)


def test_ridge_recovers_a_linear_camera_rule_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(0)
    # Like a face's landmarks: many correlated coordinates on a few underlying causes, at unequal scales.
    causes = rng.normal(size=(600, 12))
    x = causes @ rng.normal(size=(12, N_INPUTS)) * rng.uniform(0.01, 1.0, N_INPUTS) + rng.normal(
        0, 1e-3, (600, N_INPUTS)
    )
    fov = 50.0 + causes @ rng.normal(0, 5.0, 12)
    fitted = FovRegressor.fit(x[:500], fov[:500], ridge=1.0, lens_fov_y_deg=50.0)
    assert np.abs(fitted.predict(x[500:]) - fov[500:]).max() < 1.0
    fitted.save(tmp_path / "fov.npz", trained_on=np.str_("made-up"))
    loaded = FovRegressor.load(tmp_path / "fov.npz")
    np.testing.assert_allclose(loaded.predict(x[500:]), fitted.predict(x[500:]))
    assert loaded.lens_fov_y_deg == 50.0


def test_malformed_regressor_files_are_refused(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        FovRegressor.load(tmp_path / "absent.npz")
    good = _regressor_reading_feature_zero(1.0, 50.0)
    np.savez(
        tmp_path / "short.npz", mean=good.mean[:10], weights=good.weights[:10], intercept=50.0, lens_fov_y_deg=50.0
    )
    with pytest.raises(ModelFileError, match="inputs"):
        FovRegressor.load(tmp_path / "short.npz")
    bad = good.weights.copy()
    bad[5] = np.nan
    np.savez(tmp_path / "nan.npz", mean=good.mean, weights=bad, intercept=50.0, lens_fov_y_deg=50.0)
    with pytest.raises(ModelFileError, match="non-finite"):
        FovRegressor.load(tmp_path / "nan.npz")
    np.savez(tmp_path / "lens.npz", mean=good.mean, weights=good.weights, intercept=50.0, lens_fov_y_deg=0.0)
    with pytest.raises(ModelFileError, match="lens"):
        FovRegressor.load(tmp_path / "lens.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="unreadable"):
        FovRegressor.load(tmp_path / "junk.npz")


def test_reading_samples_ten_times_a_second_waits_for_enough_then_clips_and_resets() -> None:
    lens = _FirstValue()
    reading = FovReading(_regressor_reading_feature_zero(1.0, 0.0), lens, (30.0, 75.0))  # type: ignore[arg-type]
    observed = np.zeros((478, 3))
    for frame in range(30):  # one second at 30 fps: every third frame is a sample
        observed[0, 0] = 40.0 + frame  # the mean of the sampled frames is what is read
        reading.observe(observed, (640, 480), frame * SECOND // 30)
        if reading.samples < MIN_SAMPLES:
            assert reading.estimate() is None
    assert lens.calls == reading.samples == 10
    assert reading.estimate() == pytest.approx(np.mean(40.0 + np.arange(0, 30, 3)))
    observed[0, 0] = 500.0  # far outside the bounds: clipped
    for frame in range(30, 300):
        reading.observe(observed, (640, 480), frame * SECOND // 30)
    assert reading.estimate() == 75.0
    reading.reset()
    assert reading.samples == 0 and reading.estimate() is None


def _turning_neutral_face(face_model: FaceModel, embedding: LandmarkEmbedding, fov: float, frames: int):
    rng = np.random.default_rng(3)
    w_id = (rng.standard_normal(face_model.n_identity) * face_model.identity_prior_std).astype(np.float32)
    face = EmbeddedFace.build(face_model, embedding, w_id)
    centers = eyeball_centers(face_model, w_id)
    for i in range(frames):
        rotation = quaternion_to_matrix(euler_to_quaternion(20 * np.sin(i / 9), 6 * np.cos(i / 7), 0.0))
        yield synthetic_landmarks(face, centers, np.zeros(len(ICT_EXPRESSIONS)), rotation, 9.0, (640, 480),
                                  fov_y_deg=fov)  # fmt: skip


def test_the_performer_estimate_fits_at_the_camera_read(face_model, embedding) -> None:
    """`camera: learned`: the estimate's fitter uses the reading's camera (here a rule that reads 62°, then 70°),
    the status says it is estimated; a camera read again unchanged makes no new fitter; `assumed` keeps the
    prior's centre; a known camera is never read."""
    config = PerformerConfig(camera="learned", blend_s=0.1)
    solver = FaceSolver(face_model, embedding, Performer.auto(), PLAIN, config, estimate_in_background=False)
    assert solver.estimator is not None and solver.estimator.reading is not None
    rule = _regressor_reading_feature_zero(0.0, 62.0)
    solver.estimator.reading = FovReading(rule, _FirstValue(), (30.0, 75.0))  # type: ignore[arg-type]
    frames = list(_turning_neutral_face(face_model, embedding, 62.0, 300))
    assert solver.status()["camera"] == "assumed" and solver.status()["fov_y_deg"] == 50.0
    for i, landmarks in enumerate(frames[:150]):  # 5 s: estimates due at 0.7 (the reading's 8th sample), 1.4, 2.8
        solver.solve(landmarks, i * SECOND // 30, i)
    assert solver.estimator.estimates == 1  # the later ones read the same camera
    assert solver.fitter.fov_y_deg == pytest.approx(62.0)
    status = solver.status()
    assert status["fov_y_deg"] == 62.0 and status["camera"] == "read"
    # The mean face is kept: no identity modes are estimated by default.
    assert solver.fitter.identity_weights is None or not np.any(solver.fitter.identity_weights)
    solver.estimator.reading.regressor = _regressor_reading_feature_zero(0.0, 70.0)
    for i, landmarks in enumerate(frames[150:], start=150):  # the next estimate is due at 5.6 s
        solver.solve(landmarks, i * SECOND // 30, i)
    assert solver.estimator.estimates == 2 and solver.fitter.fov_y_deg == pytest.approx(70.0)
    for i in range(300, 390):  # three seconds without a face: whoever comes back is read afresh
        solver.solve(None, i * SECOND // 30, i)
    assert solver.estimator.reading.samples == 0
    assert solver.status()["camera"] == "assumed" and solver.fitter.fov_y_deg == 50.0

    assumed = FaceSolver(face_model, embedding, Performer.auto(), PLAIN, PerformerConfig(camera="assumed"))
    assert assumed.estimator is None and assumed.fitter.fov_y_deg == 50.0 and assumed.status()["camera"] == "assumed"
    known = FaceSolver(face_model, embedding, Performer.auto(), PLAIN.model_copy(update={"camera_fov_y_deg": 40.0}),
                       config)  # fmt: skip
    assert known.estimator is None and known.fitter.fov_y_deg == 40.0 and known.status()["camera"] == "given"


def test_legacy_estimate_camera_still_reads_and_bounds_are_checked() -> None:
    assert load_config().performer.camera == "learned"
    assert load_config(overrides=["performer.estimate_camera=true"]).performer.camera == "fit"
    assert load_config(overrides=["performer.estimate_camera=false"]).performer.camera == "assumed"
    with pytest.raises(ConfigError, match="boolean"):
        load_config(overrides=["performer.estimate_camera=maybe"])
    with pytest.raises(ConfigError, match="fov_min_deg"):
        load_config(overrides=["performer.fov_min_deg=80"])


def test_a_degenerate_sample_is_left_out() -> None:
    lens = _FirstValue()
    reading = FovReading(_regressor_reading_feature_zero(1.0, 0.0), lens, (30.0, 75.0))  # type: ignore[arg-type]
    observed = np.zeros((478, 3))
    for frame in range(30):
        observed[0, 0] = np.nan if frame == 3 else 40.0
        reading.observe(observed, (640, 480), frame * SECOND // 30)
    assert reading.samples == 10 and reading.estimate() == pytest.approx(40.0)  # the next frame took its place


def test_shipped_regressor_reads_cameras_on_renders_tracked_by_mediapipe(face_model) -> None:
    """Real renders (an identity no model was trained on) through 35° and 70° cameras, tracked by MediaPipe:
    the shipped regressor tells them apart and lands near each."""
    if not CAMERA_FOV_PATH.is_file():
        pytest.skip("no shipped camera regressor in models/")
    from engine.eval_synthetic import EVAL_SEED_BASE, ClipRenderer, SyntheticFace, performance, track_clip

    config = load_config()
    renderer = ClipRenderer(face_model, config.render)
    embedding = LandmarkEmbedding.load()
    read = {}
    for fov in (35.0, 70.0):
        seed = EVAL_SEED_BASE + 500_000 + int(fov)
        face = SyntheticFace.draw(face_model, seed, fov_y_deg=fov, size=(448, 336))
        frames, found = track_clip(renderer.frames(face, performance("random", 2.0, seed), quality_seed=seed), config)
        reading = shipped_fov_reading(face_model, embedding, config.performer)
        assert reading is not None
        for frame, landmarks in zip(frames, found, strict=True):
            observation = valid_observation(landmarks) if landmarks is not None else None
            if observation is not None:
                reading.observe(observation[0], landmarks.image_size, frame.t_media_ns)
        read[fov] = reading.estimate()
    assert read[35.0] is not None and read[70.0] is not None
    assert read[70.0] - read[35.0] > 15.0, read
    assert abs(read[35.0] - 35.0) < 12.0 and abs(read[70.0] - 70.0) < 12.0, read


def test_lens_features_are_the_people_priors_features(face_model, embedding) -> None:
    """The regressor reads what the people prior reads (its training tool's features): the same numbers."""
    from engine.solve.solver import FrameFitter

    fitter = FrameFitter(face_model, embedding, None, PLAIN, camera_fov_y_deg=50.0)
    lens = LensFeatures(face_model, embedding, 50.0)
    landmarks = next(iter(_turning_neutral_face(face_model, embedding, 40.0, 1)))
    observed = valid_observation(landmarks)[0]
    np.testing.assert_allclose(
        lens(observed, (640, 480)), fitter.prior_features(observed, fitter._camera((640, 480)))[:N_INPUTS]
    )
