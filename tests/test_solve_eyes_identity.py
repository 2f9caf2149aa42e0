"""Eyes (gaze convention, blink), the enrollment fit, and the solve benchmark (design §3.3–3.5, §9)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import SolveConfig
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.names import ICT_EXPRESSIONS
from engine.solve.bench import bench_solve
from engine.solve.expression import EmbeddedFace
from engine.solve.eyes import (
    GAZE_CHANNELS,
    GazeRanges,
    eye_rotations,
    eyeball_centers,
    gaze_angles,
    mean_pitch_deg,
    with_lid_asymmetry,
    yoked,
)
from engine.solve.identity_fit import fit_identity
from engine.solve.landmark_sets import IRIS
from engine.solve.pose import euler_to_rotation, umeyama
from engine.solve.solver import FrameFitter, valid_observation
from engine.solve.synthetic import constructed_embedding, synthetic_landmarks
from engine.types import Landmarks


@pytest.fixture(scope="module")
def embedding(face_model: FaceModel):
    return constructed_embedding(face_model, seed=2)


def _weights(**channels: float) -> np.ndarray:
    w = np.zeros(len(ICT_EXPRESSIONS))
    for name, value in channels.items():
        w[ICT_EXPRESSIONS.index(name)] = value
    return w


def test_lid_asymmetry_turns_a_symmetric_read_into_the_lids_wink() -> None:
    """The wink of liveportrait_d6.mp4's frame 50: the lids read 0.72 / 0.29, the prior 0.63 / 0.62."""
    lids, prior = np.array([0.72, 0.29]), np.array([0.63, 0.62])
    wink = with_lid_asymmetry(prior, lids, share=1.0, deadzone=0.2)
    assert wink.mean() == pytest.approx(prior.mean())  # the level both eyes share stays the prior's
    assert wink[0] - wink[1] == pytest.approx(0.42 - 0.2 + 0.01)  # the difference beyond the dead zone
    np.testing.assert_allclose(with_lid_asymmetry(prior, lids, share=1.0), [0.84, 0.41], atol=1e-12)
    np.testing.assert_allclose(with_lid_asymmetry(prior, lids, share=0.0, deadzone=0.0), prior)
    # Lids differing by less than the dead zone (one person's eye shapes, a turned head) change nothing.
    np.testing.assert_allclose(with_lid_asymmetry(prior, np.array([0.15, 0.0]), 1.0, 0.2), prior)
    # A difference the clip bounds cannot hold is clipped, not wrapped.
    np.testing.assert_allclose(with_lid_asymmetry(np.array([0.1, 0.1]), np.array([1.0, 0.0]), 1.0), [0.6, 0.0])


def test_mean_pitch_is_the_gaze_angles_mean_pitch() -> None:
    """The per-frame scalar helper reads what its array reference reads, for any ranges."""
    rng = np.random.default_rng(3)
    for ranges in (GazeRanges(), GazeRanges(30.0, 20.0, 35.0)):
        for _ in range(20):
            weights = rng.uniform(0.0, 1.0, len(ICT_EXPRESSIONS))
            assert mean_pitch_deg(weights, ranges) == pytest.approx(gaze_angles(weights, ranges)[:, 1].mean())


def test_gaze_convention_directions() -> None:
    """Looking out turns each eye away from the nose: the left eye towards +x, the right towards −x."""
    angles = gaze_angles(_weights(eyeLookOut_L=1.0, eyeLookOut_R=1.0, eyeLookUp_L=1.0, eyeLookDown_R=0.5))
    assert angles[0, 0] == pytest.approx(30.0) and angles[1, 0] == pytest.approx(-30.0)
    assert angles[0, 1] == pytest.approx(25.0) and angles[1, 1] == pytest.approx(-12.5)
    rotations = eye_rotations(_weights(eyeLookOut_L=1.0, eyeLookUp_R=1.0))
    forward = np.array([0.0, 0.0, 1.0])
    assert (rotations[0] @ forward)[0] > 0.4  # left eye: +x
    assert (rotations[1] @ forward)[1] > 0.4  # right eye: up


@pytest.mark.parametrize(
    ("yoke", "truth"),
    [
        (1.0, _weights(eyeLookIn_L=0.6, eyeLookOut_R=0.6, eyeLookUp_L=0.3, eyeLookUp_R=0.3)),  # both eyes left, up
        (1.0, _weights(eyeLookOut_L=0.5, eyeLookIn_R=0.5, eyeLookDown_L=0.4, eyeLookDown_R=0.4)),
        (0.0, _weights(eyeLookIn_L=0.6, eyeLookIn_R=0.6)),  # crossed eyes: each eye on its own reads them fully
        (0.0, _weights(eyeLookOut_L=0.5, eyeLookUp_R=0.7)),
    ],
)
def test_gaze_is_read_from_the_irises(face_model, embedding, yoke: float, truth: np.ndarray) -> None:
    # Exact projections of the model: its irises look straight when they read straight (no MediaPipe habit).
    fitter = FrameFitter(face_model, embedding, None, SolveConfig(gaze_yoke=yoke, gaze_straight_pitch_deg=0.0))
    assert fitter.eyes.valid
    landmarks = synthetic_landmarks(fitter.face, eyeball_centers(face_model), truth, euler_to_rotation(-20, 10, 0))
    observed, _ = valid_observation(landmarks)
    fit = fitter.fit(observed, image_size=landmarks.image_size)
    np.testing.assert_allclose(fit.weights[GAZE_CHANNELS], truth[GAZE_CHANNELS], atol=0.05)


@pytest.mark.parametrize("yaw_deg", [0.0, -20.0])
def test_yoked_eyes_still_read_crossed_eyes(face_model, embedding, yaw_deg: float) -> None:
    """Each eye 18° towards the nose, read with the eyes yoked (the default): both read inwards, by about the
    convergence beyond the dead zone (8°, 0.27 of the 30° range; the corners' motion correction, which uses
    the gaze being read, moves it a little), and neither looks out or up or down."""
    fitter = FrameFitter(face_model, embedding, None, SolveConfig(gaze_straight_pitch_deg=0.0))
    truth = _weights(eyeLookIn_L=0.6, eyeLookIn_R=0.6)
    landmarks = synthetic_landmarks(fitter.face, eyeball_centers(face_model), truth, euler_to_rotation(yaw_deg, 5, 0))
    observed, _ = valid_observation(landmarks)
    gaze = fitter.fit(observed, image_size=landmarks.image_size).weights[GAZE_CHANNELS]
    read = dict(zip(("out_L", "out_R", "in_L", "in_R", "up_L", "up_R", "down_L", "down_R"), gaze, strict=True))
    assert 0.12 < read["in_L"] < 0.4 and 0.12 < read["in_R"] < 0.4
    assert max(read["out_L"], read["out_R"], read["up_L"], read["up_R"], read["down_L"], read["down_R"]) < 0.05


def test_yoked_gaze_averages_the_open_eyes_and_ignores_a_closed_one() -> None:
    """Each eye's noise is halved by the mean of both; a closed eye's iris (it follows the lid) is left out."""
    angles = np.array([[10.0, -4.0], [2.0, 6.0]])  # (left, right) × (yaw, pitch)
    both_open = yoked(angles, np.zeros(2), 1.0)
    np.testing.assert_allclose(both_open, [[6.0, 1.0], [6.0, 1.0]])
    np.testing.assert_allclose(yoked(angles, np.zeros(2), 0.0), angles)
    np.testing.assert_allclose(yoked(angles, np.zeros(2), 0.5), [[8.0, -1.5], [4.0, 3.5]])
    winking = yoked(angles, np.array([0.0, 1.0]), 1.0)  # the right eye closed
    np.testing.assert_allclose(winking[0], winking[1])
    assert np.abs(winking[0] - angles[0]).max() < 0.5  # the open left eye's reading, nearly untouched


def test_yoked_gaze_keeps_crossed_eyes_beyond_the_dead_zone() -> None:
    """Convergence (the left eye turned to −x, the right to +x) beyond the dead zone survives the yoke; less of
    it, and any divergence, is averaged away like noise."""
    crossed = np.array([[-16.0, 2.0], [12.0, 4.0]])  # convergence 14°, version −2°
    np.testing.assert_allclose(yoked(crossed, np.zeros(2), 1.0, 10.0), [[-6.0, 3.0], [2.0, 3.0]])
    np.testing.assert_allclose(yoked(crossed, np.zeros(2), 0.5, 10.0), [[-11.0, 2.5], [7.0, 3.5]])
    np.testing.assert_allclose(yoked(crossed, np.zeros(2), 1.0, 20.0), [[-2.0, 3.0], [-2.0, 3.0]])
    diverged = np.array([[16.0, 0.0], [-12.0, 0.0]])
    np.testing.assert_allclose(yoked(diverged, np.zeros(2), 1.0, 0.0), [[2.0, 0.0], [2.0, 0.0]])


def test_gaze_straight_ahead_is_subtracted(face_model, embedding) -> None:
    """`gaze_straight_pitch_deg` is what eyes that look straight read: irises that read that look ahead."""
    up = _weights(eyeLookUp_L=0.2, eyeLookUp_R=0.2)  # 5° up: what the calibration says straight eyes read
    plain = FrameFitter(face_model, embedding, None, SolveConfig(gaze_straight_pitch_deg=0.0))
    calibrated = FrameFitter(face_model, embedding, None, SolveConfig(gaze_straight_pitch_deg=5.0))
    landmarks = synthetic_landmarks(plain.face, eyeball_centers(face_model), up, euler_to_rotation(10, -5, 0))
    observed, _ = valid_observation(landmarks)
    assert plain.fit(observed, image_size=landmarks.image_size).weights[GAZE_CHANNELS].max() > 0.15
    assert calibrated.fit(observed, image_size=landmarks.image_size).weights[GAZE_CHANNELS].max() < 0.05


def test_gaze_is_pinned_unless_a_learned_prior_reads_it(face_model, embedding) -> None:
    """The people prior leaves gaze to the irises (its mask is 0 there): pinned. The demo performer's prior reads
    gaze from its own renders: anchored, so it can pull. Without a prior: pinned."""
    from engine.solve.solver import shipped_prior

    config = SolveConfig(gaze_anchor=0.3)
    demo, people = shipped_prior(config, None), shipped_prior(config, None, people=True)
    if demo is None or people is None:
        pytest.skip("no shipped priors in models/")
    assert people.mask[GAZE_CHANNELS].max() == 0 and demo.mask[GAZE_CHANNELS].min() > 0
    assert FrameFitter(face_model, embedding, None, config, prior=demo).gaze_anchor == 0.3
    assert FrameFitter(face_model, embedding, None, config, prior=people).gaze_anchor == 0.0
    assert FrameFitter(face_model, embedding, None, config).gaze_anchor == 0.0


def test_blink_reads_the_upper_lid_and_ignores_a_squint(face_model, embedding) -> None:
    fitter = FrameFitter(face_model, embedding, None, SolveConfig())
    centers = eyeball_centers(face_model)
    blink_l = ICT_EXPRESSIONS.index("eyeBlink_L")
    for truth in (_weights(eyeBlink_L=0.8), _weights(eyeSquint_L=0.9, mouthSmile_L=0.8)):
        landmarks = synthetic_landmarks(fitter.face, centers, truth, np.eye(3))
        observed, _ = valid_observation(landmarks)
        assert fitter.fit(observed, image_size=landmarks.image_size).weights[blink_l] == pytest.approx(
            truth[blink_l], abs=0.08
        )


def test_eyes_disable_themselves_on_an_embedding_without_eyes(face_model, embedding) -> None:
    """Irises bound to the cheek are not eyes: the solver keeps its least-squares eye channels."""
    from dataclasses import replace

    broken = replace(embedding, vertex_ids=embedding.vertex_ids.copy())
    broken.vertex_ids[list(IRIS[0]) + list(IRIS[1])] = broken.vertex_ids[200]
    assert not FrameFitter(face_model, broken, None, SolveConfig()).eyes_active


def _shape_error(model: FaceModel, embedding, truth: EmbeddedFace, identity_weights: np.ndarray | None) -> float:
    """Mean landmark distance (cm) between two identities' neutral landmarks after similarity alignment."""
    fitted = EmbeddedFace.build(model, embedding, identity_weights).neutral[:468]
    target = truth.neutral[:468]
    rot, trans, scale = umeyama(fitted, target)
    return float(np.linalg.norm(scale * fitted @ rot.T + trans - target, axis=1).mean())


def test_identity_fit_recovers_the_shape_of_a_random_identity(face_model, embedding) -> None:
    rng = np.random.default_rng(5)
    identity = np.zeros(face_model.n_identity, np.float32)
    identity[:60] = rng.normal(size=60)
    truth = EmbeddedFace.build(face_model, embedding, identity)
    centers = eyeball_centers(face_model, identity)
    frames = [
        synthetic_landmarks(truth, centers, np.zeros(53), euler_to_rotation(*rng.uniform(-20, 20, 3)), 12.0,
                            noise_cm=0.05, rng=rng)
        for _ in range(3)
    ]  # fmt: skip
    frames.append(None)  # unusable frames are skipped
    fit = fit_identity(face_model, embedding, frames, config=SolveConfig(landmark_response=False))
    assert fit.frames == 3
    before = _shape_error(face_model, embedding, truth, None)
    after = _shape_error(face_model, embedding, truth, fit.identity_weights)
    assert after < 0.6 * before
    assert fit.identity_weights.shape == (face_model.n_identity,)
    assert fit.neutral_offset.shape == (53,) and np.all((fit.neutral_offset >= 0) & (fit.neutral_offset <= 1))
    assert fit.neutral_offset.mean() < 0.08  # a relaxed face mostly reads as relaxed
    assert 0.0 < fit.residual_px < 3.0


def test_identity_fit_without_a_usable_frame_is_a_user_error(face_model, embedding) -> None:
    bad = Landmarks(np.full((478, 3), np.nan), np.full((478, 3), np.nan), (640, 480), 1.0)
    with pytest.raises(UserError, match="usable face"):
        fit_identity(face_model, embedding, [None, bad])


def test_bench_solve_reports_time_and_accuracy(face_model, embedding) -> None:
    config = SolveConfig(landmark_response=False, learned_prior=False)  # synthetic landmarks are not MediaPipe's
    result = bench_solve(frames=40, model=face_model, embedding=embedding, config=config)
    assert result["frames"] == 40
    times = result["solve_ms"]
    assert 0.0 < times["p50"] <= times["p95"] <= times["max"] and 0.0 < times["mean"] <= times["max"]
    assert 0.0 < result["mae"] < 0.05 and result["rotation_error_deg"]["p95"] < 1.0
