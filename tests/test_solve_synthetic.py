"""Pose + expression recovery on landmarks made from the model itself (design §3.1–3.2, §3.5).

Random identities, a few active channels each (values in [0.2, 1]), head rotations up to ±30° about every
axis, isotropic Gaussian noise of 0.5 mm on every landmark. Gaze turns the iris points about the eyeball
centres (the renderer's convention, `engine.solve.eyes.eye_rotations`).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.names import ICT_EXPRESSIONS
from engine.solve.eyes import eyeball_centers
from engine.solve.pose import euler_to_rotation, rotation_angle_deg
from engine.solve.solver import FrameFitter, valid_observation
from engine.solve.synthetic import constructed_embedding, random_expression, synthetic_landmarks

NOISE_CM = 0.05
# Exact projections of the model: each eye turns on its own (random gaze per eye), and irises that look straight
# read straight (`gaze_straight_pitch_deg` calibrates MediaPipe's habit, which these landmarks do not have).
EXACT = SolveConfig(gaze_yoke=0.0, gaze_straight_pitch_deg=0.0)


def _run(model: FaceModel, embedding: LandmarkEmbedding, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, 53) absolute weight errors and (samples,) rotation errors in degrees."""
    rng = np.random.default_rng(seed)
    errors = np.empty((samples, len(ICT_EXPRESSIONS)))
    rotation_errors = np.empty(samples)
    for k in range(samples):
        identity = np.zeros(model.n_identity, np.float32)
        identity[:60] = rng.normal(size=60)
        fitter = FrameFitter(model, embedding, identity, EXACT)
        truth = random_expression(rng)
        rotation = euler_to_rotation(*rng.uniform(-30, 30, size=3))
        landmarks = synthetic_landmarks(
            fitter.face, eyeball_centers(model, identity), truth, rotation, noise_cm=NOISE_CM, rng=rng
        )
        observation = valid_observation(landmarks)
        assert observation is not None
        fit = fitter.fit(observation[0], has_iris=observation[1], image_size=landmarks.image_size)
        errors[k] = np.abs(fit.weights - truth)
        rotation_errors[k] = rotation_angle_deg(fit.rotation, rotation)
    return errors, rotation_errors


def test_random_identities_expressions_and_poses(face_model: FaceModel, shipped_or_constructed) -> None:
    errors, rotation_errors = _run(face_model, shipped_or_constructed, samples=200, seed=1)
    assert errors.mean() <= 0.03
    assert rotation_errors.max() <= 1.0
    # Not just "all zeros is close to a sparse truth": active channels must be recovered too.
    assert errors[errors > 0].size > 0


def test_independent_of_the_shipped_embedding(face_model: FaceModel) -> None:
    """The same math on an embedding built from the model alone (random front-face points, eyes on ICT's
    iBUG-68 eye vertices): the solver must not depend on how good the shipped embedding is."""
    embedding = constructed_embedding(face_model, seed=4)
    errors, rotation_errors = _run(face_model, embedding, samples=60, seed=2)
    assert errors.mean() <= 0.03
    assert rotation_errors.max() <= 1.0


def test_driven_channels_are_recovered_not_zeroed(face_model: FaceModel, shipped_or_constructed) -> None:
    """Single strong channels read back close to their value (an all-zero answer would fail here). The
    regularization shrinks low-energy channels (brows, lids) by up to ~18 % without noise: hence 0.15."""
    fitter = FrameFitter(face_model, shipped_or_constructed, None, EXACT)
    centers = eyeball_centers(face_model)
    rng = np.random.default_rng(0)
    for name in ("jawOpen", "mouthSmile_L", "browInnerUp_R", "eyeBlink_L", "eyeLookOut_R", "eyeLookUp_L"):
        truth = np.zeros(len(ICT_EXPRESSIONS))
        truth[ICT_EXPRESSIONS.index(name)] = 0.7
        landmarks = synthetic_landmarks(fitter.face, centers, truth, euler_to_rotation(15, -10, 5), rng=rng)
        observed, has_iris = valid_observation(landmarks)
        fit = fitter.fit(observed, has_iris=has_iris, image_size=landmarks.image_size)
        assert fit.weights[ICT_EXPRESSIONS.index(name)] == pytest.approx(0.7, abs=0.15), name


def test_yaw_to_the_subjects_left_is_a_positive_rotation_about_y(face_model, shipped_or_constructed) -> None:
    fitter = FrameFitter(face_model, shipped_or_constructed, None, EXACT)
    centers = eyeball_centers(face_model)
    landmarks = synthetic_landmarks(fitter.face, centers, np.zeros(53), euler_to_rotation(20, 0, 0))
    # Turned to the subject's left, the nose tip (landmark 1) moves to the image's right of the face centre.
    assert landmarks.pixels[1, 0] > landmarks.pixels[:468, 0].mean()
    observed, _ = valid_observation(landmarks)
    fit = fitter.fit(observed, image_size=landmarks.image_size)
    axis_angle_y = np.arctan2(fit.rotation[0, 2], fit.rotation[2, 2])
    assert np.degrees(axis_angle_y) == pytest.approx(20.0, abs=0.5)
