"""FaceSolver: tracking states with explicit time stamps, bad input, calibration, filters (design §3.4, §3.6–3.7)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.config import ConfigError, SolveConfig, load_config
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.solve.eyes import eyeball_centers
from engine.solve.face_solver import FaceSolver, _state_filter, channel_groups
from engine.solve.filters import OneEuroFilter, continuous_quaternion
from engine.solve.pose import euler_to_rotation, quaternion_to_rotation, rotation_angle_deg
from engine.solve.synthetic import constructed_embedding, synthetic_landmarks
from engine.types import Landmarks, TrackingState

MS = 1_000_000
SMILE = ICT_EXPRESSIONS.index("mouthSmile_L")
JAW = ICT_EXPRESSIONS.index("jawOpen")


@pytest.fixture(scope="module")
def embedding(face_model: FaceModel) -> LandmarkEmbedding:
    """Constructed from the model alone: these tests are about the state machine, not the embedding."""
    return constructed_embedding(face_model, seed=1)


def _config(**overrides: object) -> SolveConfig:
    """The constructed embedding is not the one the shipped response and prior were measured on: leave them off."""
    return SolveConfig(landmark_response=False, learned_prior=False, **overrides)


def _identity(face_model: FaceModel, offset: np.ndarray | None = None) -> Identity:
    n = len(ICT_EXPRESSIONS)
    return Identity(
        "test",
        face_model.model_id,
        face_model.default_identity_weights(),
        offset if offset is not None else np.zeros(n),
    )


def _face(solver: FaceSolver, face_model: FaceModel, weights: np.ndarray, yaw: float = 0.0) -> Landmarks:
    return synthetic_landmarks(solver.fitter.face, eyeball_centers(face_model), weights, euler_to_rotation(yaw, 0, 0))


def _smile(value: float = 0.8) -> np.ndarray:
    w = np.zeros(len(ICT_EXPRESSIONS))
    w[SMILE] = value
    w[JAW] = 0.5
    return w


def test_tracking_coasting_lost_and_recovery(face_model, embedding) -> None:
    config = _config(coast_seconds=0.5, ease_seconds=1.0, filter_enabled=False)
    solver = FaceSolver(face_model, embedding, _identity(face_model), config)
    face = _face(solver, face_model, _smile(), yaw=15)

    first = solver.solve(face, 0, 0)
    assert first.tracking is TrackingState.TRACKING
    assert first.weights[SMILE] > 0.6 and 0.0 < first.confidence <= 1.0

    coasting = solver.solve(None, 250 * MS, 1)
    assert coasting.tracking is TrackingState.COASTING
    np.testing.assert_array_equal(coasting.weights, first.weights)  # held, not decayed
    np.testing.assert_array_equal(coasting.pose.quaternion, first.pose.quaternion)
    assert 0.0 <= coasting.confidence < first.confidence

    easing = solver.solve(None, 1000 * MS, 2)  # 0.5 s into the 1 s ease
    assert easing.tracking is TrackingState.LOST and easing.confidence == 0.0
    assert 0.0 < easing.weights[SMILE] < first.weights[SMILE]
    tilt_first = rotation_angle_deg(quaternion_to_rotation(first.pose.quaternion), np.eye(3))
    tilt_easing = rotation_angle_deg(quaternion_to_rotation(easing.pose.quaternion), np.eye(3))
    assert 0.0 < tilt_easing < tilt_first

    lost = solver.solve(None, 1600 * MS, 3)  # past coast + ease: fully neutral
    assert lost.tracking is TrackingState.LOST
    np.testing.assert_allclose(lost.weights, 0.0)
    assert rotation_angle_deg(quaternion_to_rotation(lost.pose.quaternion), np.eye(3)) < 1e-6

    back = solver.solve(face, 1700 * MS, 4)  # no restart needed
    assert back.tracking is TrackingState.TRACKING
    np.testing.assert_allclose(back.weights, first.weights, atol=1e-6)


def test_never_seen_a_face_is_lost_and_neutral(face_model, embedding) -> None:
    solver = FaceSolver(face_model, embedding, _identity(face_model), _config())
    state = solver.solve(None, 0, 0)
    assert state.tracking is TrackingState.LOST
    np.testing.assert_array_equal(state.weights, 0.0)


def _bad_landmarks(good: Landmarks) -> list[object]:
    nan = good.pixels.copy()
    nan[100, 1] = np.nan
    inf = good.pixels.copy()
    inf[5] = np.inf
    flat = np.zeros((478, 3))  # all points on top of each other
    return [
        replace(good, pixels=nan),
        replace(good, pixels=inf),
        replace(good, pixels=good.pixels[:300]),
        replace(good, pixels=good.pixels.reshape(-1)),
        replace(good, pixels=flat),
        replace(good, image_size=(0, 0)),
        replace(good, pixels="not an array"),
        "not landmarks at all",
    ]


def test_bad_landmarks_are_no_face_never_an_exception(face_model, embedding) -> None:
    solver = FaceSolver(face_model, embedding, _identity(face_model), _config(coast_seconds=0.5))
    good = _face(solver, face_model, _smile())
    tracked = solver.solve(good, 0, 0)
    for i, bad in enumerate(_bad_landmarks(good), start=1):
        state = solver.solve(bad, i * MS, i)  # type: ignore[arg-type]
        assert state.tracking is TrackingState.COASTING, bad
        assert np.isfinite(state.weights).all() and np.isfinite(state.pose.quaternion).all()
        np.testing.assert_array_equal(state.weights, tracked.weights)
    assert solver.solve(good, 20 * MS, 20).tracking is TrackingState.TRACKING
    for presence in (float("nan"), 7.0, -1.0):
        state = solver.solve(replace(good, presence=presence), 30 * MS, 30)
        assert state.tracking is TrackingState.TRACKING and 0.0 <= state.confidence <= 1.0


def test_landmarks_without_irises_are_accepted(face_model, embedding) -> None:
    solver = FaceSolver(face_model, embedding, _identity(face_model), _config(filter_enabled=False))
    face = _face(solver, face_model, _smile())
    state = solver.solve(replace(face, pixels=face.pixels[:468], normalized=face.normalized[:468]), 0, 0)
    assert state.tracking is TrackingState.TRACKING
    assert state.weights[SMILE] > 0.6


def test_neutral_offset_is_subtracted_and_rescaled(face_model, embedding) -> None:
    offset = np.zeros(len(ICT_EXPRESSIONS))
    offset[SMILE] = 0.5
    plain = FaceSolver(face_model, embedding, _identity(face_model), _config(filter_enabled=False))
    calibrated = FaceSolver(face_model, embedding, _identity(face_model, offset), _config(filter_enabled=False))
    face = _face(plain, face_model, _smile(0.8))
    raw = plain.solve(face, 0, 0).weights[SMILE]
    assert calibrated.solve(face, 0, 0).weights[SMILE] == pytest.approx((raw - 0.5) / 0.5, abs=1e-6)
    relaxed = _face(plain, face_model, _smile(0.3))
    assert calibrated.solve(relaxed, MS, 1).weights[SMILE] == 0.0  # below the rest offset: clamped, not negative


def test_filter_smooths_noise_and_eyes_are_faster_than_mouth(face_model, embedding) -> None:
    solver = FaceSolver(face_model, embedding, _identity(face_model), _config())
    rest = _face(solver, face_model, np.zeros(len(ICT_EXPRESSIONS)))
    blink_and_smile = np.zeros(len(ICT_EXPRESSIONS))
    blink_and_smile[ICT_EXPRESSIONS.index("eyeBlink_L")] = 0.9
    blink_and_smile[SMILE] = 0.9
    step = _face(solver, face_model, blink_and_smile)
    for i in range(5):
        solver.solve(rest, i * 33 * MS, i)
    state = solver.solve(step, 5 * 33 * MS, 5)
    raw = solver.last_fit.weights
    blink = ICT_EXPRESSIONS.index("eyeBlink_L")
    # One frame after a step the filtered value lags the raw one, the eye channel less than the mouth.
    assert state.weights[SMILE] < raw[SMILE]
    assert state.weights[blink] / raw[blink] > state.weights[SMILE] / raw[SMILE]
    assert set(np.concatenate(list(channel_groups().values()))) == set(range(len(ICT_EXPRESSIONS)))


def test_a_one_frame_blink_passes_the_filter_and_lid_jitter_does_not() -> None:
    # A real blink can close the lids for a single frame at 30 fps; the eye group's filter halved it.
    config = SolveConfig()
    filt = _state_filter(config)
    blink, gaze = ICT_EXPRESSIONS.index("eyeBlink_L"), ICT_EXPRESSIONS.index("eyeLookUp_L")
    rng = np.random.default_rng(0)
    x = np.zeros(len(ICT_EXPRESSIONS) + 8)  # the weights and the pose
    outputs, inputs = [], []
    for i in range(60):  # 2 s of lid jitter at rest
        x[[blink, gaze]] = 0.05 + rng.normal(0, 0.01, 2)
        inputs.append(x[blink])
        outputs.append(filt(x, i * 33 * MS)[blink])
    assert np.std(np.diff(outputs)) < 0.6 * np.std(np.diff(inputs))
    x[[blink, gaze]] = 0.8
    out = filt(x, 60 * 33 * MS)
    assert out[blink] > 0.6  # most of the step in the same frame
    assert out[gaze] < out[blink] - 0.2  # the eye group's filter is slower


def test_the_jaw_follows_a_syllable_and_its_jitter_at_rest_does_not() -> None:
    # Speech opens and closes the jaw within a few frames; with the lips' filter it lagged the face by a frame.
    filt = _state_filter(SolveConfig())
    jaw, funnel = ICT_EXPRESSIONS.index("jawOpen"), ICT_EXPRESSIONS.index("mouthFunnel")
    rng = np.random.default_rng(1)
    x = np.zeros(len(ICT_EXPRESSIONS) + 8)
    outputs, inputs = [], []
    for i in range(60):  # 2 s of a relaxed mouth
        x[[jaw, funnel]] = 0.05 + rng.normal(0, 0.01, 2)
        inputs.append(x[jaw])
        outputs.append(filt(x, i * 33 * MS)[jaw])
    assert np.std(np.diff(outputs)) < 0.7 * np.std(np.diff(inputs))
    opened = []
    for i, level in enumerate([0.5, 0.5, 0.5, 0.05, 0.05]):  # a syllable: three frames open
        x[[jaw, funnel]] = level
        opened.append(filt(x, (60 + i) * 33 * MS)[[jaw, funnel]])
    jaw_out, funnel_out = np.array(opened).T
    assert jaw_out[0] > 0.4 and jaw_out[0] > funnel_out[0] + 0.05  # most of the opening in its first frame
    assert jaw_out[-1] < 0.15 and jaw_out[-1] < funnel_out[-1] - 0.05  # closed again two frames later


def test_one_euro_filter_reference_behaviour() -> None:
    f = OneEuroFilter(1.0, 0.0, 1.0)
    assert f(np.array([2.0]), 0)[0] == 2.0  # the first sample passes through
    # With beta 0 it is a first-order low-pass at min_cutoff: α = 1 / (1 + τ/Δt), τ = 1/(2π·1 Hz).
    alpha = 1.0 / (1.0 + (1.0 / (2 * np.pi)) / 0.1)
    assert f(np.array([3.0]), 100 * MS)[0] == pytest.approx(2.0 + alpha, rel=1e-9)
    assert f(np.array([9.0]), 100 * MS)[0] == pytest.approx(2.0 + alpha)  # same time stamp: unchanged
    fast = OneEuroFilter(1.0, 1.0, 1.0)
    slow = OneEuroFilter(1.0, 0.0, 1.0)
    for t in range(10):  # a ramp: beta > 0 raises the cutoff with speed and lags less
        x = np.array([float(t)])
        out_fast, out_slow = fast(x, t * 33 * MS), slow(x, t * 33 * MS)
    assert abs(out_fast[0] - 9.0) < abs(out_slow[0] - 9.0)


def test_pose_filter_keeps_quaternions_continuous(face_model, embedding) -> None:
    """q and −q are one rotation: the filter sees whichever continues the previous output."""
    q = np.array([0.9, 0.1, 0.3, 0.2])
    q /= np.linalg.norm(q)
    assert np.array_equal(continuous_quaternion(-q, q), q)
    assert np.array_equal(continuous_quaternion(q, None), q)
    solver = FaceSolver(face_model, embedding, _identity(face_model), _config())
    face = _face(solver, face_model, _smile(), yaw=25)
    first = solver.solve(face, 0, 0).pose.quaternion
    for i in range(1, 6):
        state = solver.solve(face, i * 33 * MS, i)
        assert np.linalg.norm(state.pose.quaternion) == pytest.approx(1.0)
        # A held pose stays put (warm starts move the fit by hundredths of a degree, no more).
        assert rotation_angle_deg(quaternion_to_rotation(state.pose.quaternion), quaternion_to_rotation(first)) < 0.2


def test_config_rejects_unknown_channel_names(tmp_path) -> None:
    config = load_config(overrides=["solve.channel_regularization={jawOpen: 0.2}"])
    assert config.solve.channel_regularization == {"jawOpen": 0.2}
    with pytest.raises(ConfigError, match="jawOpn"):
        load_config(overrides=["solve.channel_regularization={jawOpn: 0.2}"])


def test_live_neutral_calibration_makes_a_resting_face_read_neutral(face_model, embedding) -> None:
    """A user whose relaxed face reads as a half smile with raised inner brows: after `calibrate_neutral`
    that face reads neutral, frames without a face do not count, and expressions on top still read."""
    brows = ICT_EXPRESSIONS.index("browInnerUp_L"), ICT_EXPRESSIONS.index("browInnerUp_R")
    rest = np.zeros(len(ICT_EXPRESSIONS))
    rest[SMILE] = 0.3
    rest[list(brows)] = 0.4
    solver = FaceSolver(face_model, embedding, _identity(face_model), _config(filter_enabled=False))
    face = _face(solver, face_model, rest, yaw=10)
    before = solver.solve(face, 0, 0).weights
    assert before[SMILE] > 0.2 and before[list(brows)].min() > 0.25  # the rest face reads as an expression

    solver.calibrate_neutral(5)
    assert solver.calibrating
    for i in range(1, 5):
        solver.solve(face, i * 33 * MS, i)
        solver.solve(None, i * 33 * MS + MS, i)  # a dropped frame in between: not a calibration frame
    assert solver.calibrating  # 4 of 5 tracked frames so far
    solver.solve(face, 200 * MS, 6)
    assert not solver.calibrating
    np.testing.assert_allclose(solver.neutral_offset[SMILE], before[SMILE], atol=0.02)

    after = solver.solve(face, 233 * MS, 7).weights
    assert after[SMILE] < 0.03 and after[list(brows)].max() < 0.03
    stronger = rest.copy()
    stronger[SMILE] = 0.9
    stronger[JAW] = 0.6
    on_top = solver.solve(_face(solver, face_model, stronger, yaw=10), 266 * MS, 8).weights
    assert on_top[SMILE] > 0.5 and on_top[JAW] > 0.4  # what is beyond the rest face still reads
    with pytest.raises(ValueError, match="at least 1 frame"):
        solver.calibrate_neutral(0)
