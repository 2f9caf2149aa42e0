"""The camera: projection and the model → camera transform from a head pose.

Pose convention (shared with the solver and the demo performer): `HeadPose` maps model coordinates (cm, y up,
+z towards the viewer, +x the subject's left) into the OpenGL camera frame (x right, y up, looking down −z)
as p_cam = scale · R(quaternion) · p + translation. The identity rotation is a frontal face; a positive
rotation about +y turns the face to the subject's left.

A framed camera (the default: `RenderConfig.follow_pose_translation = false`) keeps the avatar centred
whatever the user's position in the webcam: it uses the pose's rotation only and puts the model origin
(inside the head, behind the nose — a natural pivot) `camera_distance_cm` in front of the camera.
"""

from __future__ import annotations

import math

import numpy as np

from engine.types import HeadPose


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """(4,) w, x, y, z (any non-zero norm) → (3, 3) float64 rotation."""
    q = np.asarray(quaternion, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"head pose quaternion must be finite and non-zero, got {q}")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def euler_to_quaternion(yaw_deg: np.ndarray, pitch_deg: np.ndarray, roll_deg: np.ndarray) -> np.ndarray:
    """R = R_y(yaw) · R_x(pitch) · R_z(roll) as quaternions: (...,) degrees each → (..., 4) w, x, y, z.

    Positive yaw turns the face to the subject's left, positive pitch tilts the chin down, positive roll
    tilts the head towards the subject's right shoulder as seen by the camera (counter-clockwise).
    """
    half = [np.radians(np.asarray(a, dtype=np.float64)) / 2 for a in (yaw_deg, pitch_deg, roll_deg)]
    zeros = np.zeros_like(half[0])
    qy = np.stack([np.cos(half[0]), zeros, np.sin(half[0]), zeros], axis=-1)
    qx = np.stack([np.cos(half[1]), np.sin(half[1]), zeros, zeros], axis=-1)
    qz = np.stack([np.cos(half[2]), zeros, zeros, np.sin(half[2])], axis=-1)
    return quaternion_multiply(quaternion_multiply(qy, qx), qz)


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) w, x, y, z quaternions: the rotation b, then a."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


class Camera:
    """A perspective camera at the origin of the OpenGL camera frame.

    width, height: pixels. fov_y_deg: vertical field of view. distance_cm: where a framed pose puts the
    model origin (on the −z axis). near/far clip planes in cm.
    """

    def __init__(
        self, width: int, height: int, fov_y_deg: float = 25.0, distance_cm: float = 60.0, near_cm: float = 5.0,
        far_cm: float = 500.0,
    ) -> None:  # fmt: skip
        self.width = width
        self.height = height
        self.fov_y_deg = fov_y_deg
        self.distance_cm = distance_cm
        self.near_cm = near_cm
        self.far_cm = far_cm

    @property
    def focal_px(self) -> float:
        """Focal length in pixels (square pixels)."""
        return 0.5 * self.height / math.tan(math.radians(self.fov_y_deg) / 2)

    def projection(self) -> np.ndarray:
        """(4, 4) float32 OpenGL perspective matrix (column vectors: clip = P @ p_cam)."""
        f = 1.0 / math.tan(math.radians(self.fov_y_deg) / 2)
        n, far = self.near_cm, self.far_cm
        return np.array(
            [
                [f * self.height / self.width, 0, 0, 0],
                [0, f, 0, 0],
                [0, 0, (far + n) / (n - far), 2 * far * n / (n - far)],
                [0, 0, -1, 0],
            ],
            dtype=np.float32,
        )

    def framed_pose(self, quaternion: np.ndarray) -> HeadPose:
        """The full pose a framed render uses: this rotation, model origin `distance_cm` ahead, scale 1."""
        return HeadPose(np.asarray(quaternion, dtype=np.float64), np.array([0.0, 0.0, -self.distance_cm]), 1.0)

    def model_view(self, pose: HeadPose, follow_translation: bool = False) -> np.ndarray:
        """(4, 4) float32 model → camera matrix for `pose` (framed unless `follow_translation`)."""
        if not follow_translation:
            pose = self.framed_pose(pose.quaternion)
        if not (np.isfinite(pose.scale) and pose.scale > 0):
            raise ValueError(f"head pose scale must be a positive number, got {pose.scale}")
        matrix = np.eye(4)
        matrix[:3, :3] = pose.scale * quaternion_to_matrix(pose.quaternion)
        matrix[:3, 3] = pose.translation
        return matrix.astype(np.float32)

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(n, 3) camera-frame points (cm) → (n, 2) pixel coordinates, x right, y down (image rows)."""
        p = np.asarray(points_cam, dtype=np.float64)
        x = 0.5 * self.width + self.focal_px * p[:, 0] / -p[:, 2]
        y = 0.5 * self.height - self.focal_px * p[:, 1] / -p[:, 2]
        return np.stack([x, y], axis=1)
