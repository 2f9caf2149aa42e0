"""Head pose from landmarks: weighted similarity alignment (Umeyama 1991) and the pose conventions.

Frames. Model: cm, y up, +z towards the viewer, +x the subject's left (ICT). Observed: MediaPipe pixels turned
into a right-handed y-up frame, `(x, H − y, −z)` (MediaPipe's z grows away from the camera). Camera (OpenGL):
x right, y up, looking down −z. A frontal face has the identity rotation; a head turned to the subject's left
is a positive rotation about +y.

Weak perspective: observed ≈ s·R·model + t with s in pixels per cm, after the solver has undone the pinhole
camera's depth-dependent magnification (`engine.solve.solver.perspective_corrected`). `HeadPose` reports R and
a metric translation for a camera of vertical field of view `fov_y_deg` (distance = focal length / s).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg.lapack

from engine.types import HeadPose

_dgesdd = scipy.linalg.lapack.dgesdd
_FLIP_LAST = np.array([1.0, 1.0, -1.0])


def umeyama(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares similarity `target ≈ s·R·source + t` (Umeyama 1991), optionally weighted.

    source, target: (n, 3); weights: (n,) ≥ 0 or None. Returns R (3, 3) proper rotation, t (3,), s > 0.
    """
    return umeyama_from_source(umeyama_source(source, weights), target, with_scale)


def umeyama_source(
    source: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The source-only half of `umeyama` (normalized weights, weighted mean, centred points, weighted variance),
    to be computed once for a fixed source and reused with `umeyama_from_source`."""
    # Weighted means and covariance as single matrix products (the numpy wrappers cost more than the arithmetic
    # on these tiny arrays); the 3 × 3 SVD straight from LAPACK (the routine numpy.linalg.svd calls).
    n = len(source)
    if weights is None:
        w = np.full(n, 1.0 / n)
    else:
        w = np.asarray(weights, dtype=np.float64)
        w = w / float(w.sum())
    mu_s = w @ source
    src = source - mu_s
    return w, mu_s, src, float(w @ np.einsum("ij,ij->i", src, src))


def umeyama_from_source(
    prepared: tuple[np.ndarray, np.ndarray, np.ndarray, float], target: np.ndarray, with_scale: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    """`umeyama(source, target, weights, with_scale)` with `prepared = umeyama_source(source, weights)`."""
    w, mu_s, src, var_s = prepared
    mu_t = w @ target
    tgt = target - mu_t
    cov = (tgt.T * w) @ src  # (3, 3) Σ w tgt srcᵀ
    u, sig, vt, info = _dgesdd(cov)
    if info != 0:
        raise np.linalg.LinAlgError("SVD did not converge")
    (a, b, c), (d, e, f), (g, h, i) = cov.tolist()
    if a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g) < 0:
        # det(U)·det(Vᵀ) has the sign of det(cov) (σ ≥ 0): avoid a reflection
        u = u * _FLIP_LAST
        rot = u @ vt
        scale = float(sig[0] + sig[1] - sig[2]) / var_s if with_scale else 1.0
    else:
        rot = u @ vt
        scale = float(sig[0] + sig[1] + sig[2]) / var_s if with_scale else 1.0
    return rot, mu_t - scale * rot @ mu_s, scale


def pixels_to_observed(pixels: np.ndarray, image_height: int) -> np.ndarray:
    """(n, 3) MediaPipe pixel landmarks (x right, y down, z away from camera) → (n, 3) y-up right-handed."""
    return pixels * np.array([1.0, -1.0, -1.0]) + np.array([0.0, float(image_height), 0.0])


def rotation_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """(3, 3) rotation → (4,) unit quaternion w, x, y, z with w ≥ 0 (Shepperd's method)."""
    # Python floats: nine numpy element reads and a small array's arithmetic cost more than the method itself.
    # For a rotation the branch taken has s = 4·|q_k| ≥ 2 (its component is the largest, q_k² ≥ 1/4): no zero division.
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = np.asarray(rot, dtype=np.float64).tolist()
    trace = m00 + m11 + m22
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = (0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s)
    elif m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        q = ((m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s)
    elif m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        q = ((m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
        q = ((m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s)
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    sign = 1.0 if q[0] >= 0 else -1.0
    return np.array([sign * v / norm for v in q])


def quaternion_to_rotation(quat: np.ndarray) -> np.ndarray:
    """(4,) quaternion w, x, y, z (any norm > 0) → (3, 3) rotation."""
    w, x, y, z = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_angle_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> float:
    """Angle of the relative rotation R_aᵀ R_b in degrees."""
    cos = (np.trace(rot_a.T @ rot_b) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def euler_to_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """R = R_y(yaw) · R_x(pitch) · R_z(roll), degrees; positive yaw turns the face to the subject's left."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def focal_length_px(image_height: int, fov_y_deg: float) -> float:
    """Pinhole focal length in pixels for a vertical field of view."""
    return 0.5 * image_height / math.tan(math.radians(fov_y_deg) / 2.0)


def head_pose_from_fit(
    rot: np.ndarray, trans_px: np.ndarray, scale_px_per_cm: float, image_size: tuple[int, int], fov_y_deg: float
) -> HeadPose:
    """Similarity in the (perspective-corrected) y-up pixel frame → `HeadPose` in the OpenGL camera frame.

    The head is assumed to be as large as the model, so its apparent size gives its distance D = f/s and the
    translation is metric: the model origin at ((t − c)/s, −D), c the image centre. `scale` is therefore 1
    (monocular size and distance cannot be told apart).
    """
    width, height = image_size
    focal = focal_length_px(height, fov_y_deg)
    x_cm = (float(trans_px[0]) - 0.5 * width) / scale_px_per_cm
    y_cm = (float(trans_px[1]) - 0.5 * height) / scale_px_per_cm
    return HeadPose(rotation_to_quaternion(rot), np.array([x_cm, y_cm, -focal / scale_px_per_cm]), 1.0)
