"""Pose math: Umeyama alignment, quaternion conversions, the camera-frame convention (design §3.1)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.solve.pose import (
    euler_to_rotation,
    focal_length_px,
    head_pose_from_fit,
    pixels_to_observed,
    quaternion_to_rotation,
    rotation_angle_deg,
    rotation_to_quaternion,
    umeyama,
)


def test_umeyama_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(size=(60, 3)) * 5.0
    rotation = euler_to_rotation(35.0, -20.0, 50.0)
    target = 12.5 * source @ rotation.T + np.array([300.0, -40.0, 7.0])
    rot, trans, scale = umeyama(source, target)
    assert rotation_angle_deg(rot, rotation) < 1e-8
    assert scale == pytest.approx(12.5)
    np.testing.assert_allclose(trans, [300.0, -40.0, 7.0], atol=1e-8)


def test_umeyama_weights_ignore_outliers_with_zero_weight() -> None:
    rng = np.random.default_rng(1)
    source = rng.normal(size=(40, 3))
    rotation = euler_to_rotation(-10.0, 5.0, 0.0)
    target = 3.0 * source @ rotation.T
    target[:5] += 100.0  # grossly wrong points
    weights = np.ones(40)
    weights[:5] = 0.0
    rot, _, scale = umeyama(source, target, weights)
    assert rotation_angle_deg(rot, rotation) < 1e-8 and scale == pytest.approx(3.0)
    assert rotation_angle_deg(umeyama(source, target)[0], rotation) > 1.0


def test_umeyama_never_returns_a_reflection() -> None:
    rng = np.random.default_rng(2)
    source = rng.normal(size=(30, 3))
    mirrored = source * np.array([-1.0, 1.0, 1.0])
    rot, _, _ = umeyama(source, mirrored)
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_quaternion_round_trip_and_hemisphere() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        rotation = euler_to_rotation(*rng.uniform(-180, 180, size=3))
        quat = rotation_to_quaternion(rotation)
        assert quat[0] >= 0 and np.linalg.norm(quat) == pytest.approx(1.0)
        np.testing.assert_allclose(quaternion_to_rotation(quat), rotation, atol=1e-12)
    yaw = rotation_to_quaternion(euler_to_rotation(30.0, 0.0, 0.0))
    np.testing.assert_allclose(yaw, [np.cos(np.radians(15)), 0.0, np.sin(np.radians(15)), 0.0], atol=1e-12)


def test_pixels_become_a_right_handed_y_up_frame() -> None:
    pixels = np.array([[10.0, 20.0, -5.0], [30.0, 5.0, 2.0]])
    observed = pixels_to_observed(pixels, image_height=100)
    np.testing.assert_allclose(observed, [[10.0, 80.0, 5.0], [30.0, 95.0, -2.0]])


def test_head_pose_is_metric_for_the_assumed_camera() -> None:
    """One cm spanning f/D pixels puts the head at distance D; its pixel offset from the image centre
    becomes centimetres at that distance."""
    width, height, fov, distance = 640, 480, 25.0, 60.0
    px_per_cm = focal_length_px(height, fov) / distance
    trans_px = np.array([320.0 + 2.0 * px_per_cm, 240.0 - 1.0 * px_per_cm, 0.0])
    pose = head_pose_from_fit(np.eye(3), trans_px, px_per_cm, (width, height), fov)
    np.testing.assert_allclose(pose.translation, [2.0, -1.0, -60.0])
    np.testing.assert_allclose(pose.quaternion, [1.0, 0.0, 0.0, 0.0])
    assert pose.scale == 1.0
    closer = head_pose_from_fit(np.eye(3), trans_px, 2 * px_per_cm, (width, height), fov)
    assert closer.translation[2] == pytest.approx(-30.0)
