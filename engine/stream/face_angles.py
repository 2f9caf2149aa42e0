"""Head and eye angles for the apps that take Euler angles instead of quaternions (iFacialMocap, Live Link Face).

The engine's head frame (model → camera, `engine.types.HeadPose`): +x the subject's left, +y up, +z out of the
face towards the camera; right-handed. Its Euler convention is `engine.solve.pose.euler_to_rotation`:
R = R_y(yaw) · R_x(pitch) · R_z(roll), degrees, so that

    yaw   > 0   the face turns to the subject's left
    pitch > 0   the face turns down (a user looking up has a negative pitch)
    roll  > 0   the top of the head tilts towards the subject's right shoulder

The same order (z first, then x, then y, about fixed axes) is Unity's `Quaternion.Euler(x, y, z)`, which is how
VMagicMirror rebuilds the head rotation from iFacialMocap's angles (VSeeFace, VNyan and Warudo are Unity apps too,
closed source, not checked); and Unreal's FRotator (yaw about Z, then pitch about Y, then roll about X) maps
onto it too once the axes are converted (`unreal_rotator`).

Eyes. The engine has no eye rotation of its own: the ARKit gaze channels (eyeLook{In,Out,Up,Down}{Left,Right})
are turned into angles at a fixed number of degrees per unit weight, 30° horizontally and 20° vertically — the
factors that iFacialMocap's author uses for the same conversion in his NVIDIA Broadcast → iFacialMocap bridge
(github.com/emoto-yasushi/NVIDIA_ARSDK_iFacialMocap, ExpressionApp.cpp). The angles are in the head's frame,
with the head's sign convention: yaw > 0 looks towards the subject's left, pitch > 0 looks down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from engine.types import HeadPose

# Degrees of eye rotation per unit of ARKit gaze weight (see the module docstring for the source).
EYE_YAW_DEG_PER_UNIT = 30.0
EYE_PITCH_DEG_PER_UNIT = 20.0

# Engine (x, y, z) → Unreal (X forward, Y right, Z up): X = −z, Y = x, Z = y, the axis map Epic's ARKit plugin
# uses for ARKit's frame (AppleARKitConversion.h, ToFTransform: "as per SteamVRHMD::ToFMatrix"). It is a
# reflection (det −1): Unreal is left-handed.
UNREAL_AXES = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def rotation_matrix(quaternion: np.ndarray) -> np.ndarray:
    """(4,) w, x, y, z (any norm > 0) → (3, 3) rotation (the same formula as `engine.solve.pose`, without its
    scipy import, which the stream path does not otherwise need)."""
    w, x, y, z = (float(c) for c in quaternion)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def yaw_pitch_roll(rotation: np.ndarray) -> tuple[float, float, float]:
    """(3, 3) rotation → (yaw, pitch, roll) degrees with R = R_y(yaw) · R_x(pitch) · R_z(roll) (see above).

    R[1, 2] = −sin(pitch), R[0, 2] / R[2, 2] = tan(yaw), R[1, 0] / R[1, 1] = tan(roll). At pitch ±90° (a face
    pointing straight up or down, never tracked) yaw and roll are not separable and roll takes the rest.
    """
    r = rotation
    pitch = math.asin(max(-1.0, min(1.0, -float(r[1, 2]))))
    yaw = math.atan2(float(r[0, 2]), float(r[2, 2]))
    roll = math.atan2(float(r[1, 0]), float(r[1, 1]))
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def head_yaw_pitch_roll(pose: HeadPose) -> tuple[float, float, float]:
    """The head pose's (yaw, pitch, roll) in degrees, engine convention (see the module docstring)."""
    return yaw_pitch_roll(rotation_matrix(pose.quaternion))


def euler_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """R_y(yaw) · R_x(pitch) · R_z(roll), degrees: the inverse of `yaw_pitch_roll`."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    return np.array([
        [cy * cr + sy * sp * sr, -cy * sr + sy * sp * cr, sy * cp],
        [cp * sr, cp * cr, -sp],
        [-sy * cr + cy * sp * sr, sy * sr + cy * sp * cr, cy * cp],
    ])  # fmt: skip


class EyeAngles(NamedTuple):
    """Per-eye gaze in degrees relative to the head: yaw > 0 towards the subject's left, pitch > 0 down."""

    left_yaw: float
    left_pitch: float
    right_yaw: float
    right_pitch: float


def eye_angles(arkit: Mapping[str, float]) -> EyeAngles:
    """Eye angles from the ARKit gaze weights (missing channels count as 0).

    "In" is towards the nose and "Out" away from it, so the left eye looks to the subject's left with
    eyeLookOutLeft and the right eye with eyeLookInRight. Opposite channels are subtracted (the tracker rarely
    drives both; the difference keeps the angle continuous where a winner-takes-all choice would jump).
    """
    get = arkit.get
    left_yaw = (get("eyeLookOutLeft", 0.0) - get("eyeLookInLeft", 0.0)) * EYE_YAW_DEG_PER_UNIT
    right_yaw = (get("eyeLookInRight", 0.0) - get("eyeLookOutRight", 0.0)) * EYE_YAW_DEG_PER_UNIT
    left_pitch = (get("eyeLookDownLeft", 0.0) - get("eyeLookUpLeft", 0.0)) * EYE_PITCH_DEG_PER_UNIT
    right_pitch = (get("eyeLookDownRight", 0.0) - get("eyeLookUpRight", 0.0)) * EYE_PITCH_DEG_PER_UNIT
    return EyeAngles(float(left_yaw), float(left_pitch), float(right_yaw), float(right_pitch))


def unreal_rotator(rotation: np.ndarray) -> tuple[float, float, float]:
    """An engine-frame rotation as Unreal's FRotator (pitch, yaw, roll) in degrees.

    The rotation is carried into Unreal's axes (R_ue = M · R · Mᵀ, M = `UNREAL_AXES`) and decomposed with the
    formulas of FQuat::Rotator: yaw = atan2(R[1,0], R[0,0]), pitch = asin(R[2,0]), roll = atan2(−R[2,1],
    R[2,2]) in the column-vector form used here (Unreal's row-vector matrices hold these as rows). For a face,
    whose rest pose looks down −X (towards the camera), this gives: yaw = −engine yaw, pitch = engine pitch,
    roll = −engine roll.
    """
    r = UNREAL_AXES @ rotation @ UNREAL_AXES.T
    yaw = math.atan2(float(r[1, 0]), float(r[0, 0]))
    pitch = math.asin(max(-1.0, min(1.0, float(r[2, 0]))))
    roll = math.atan2(-float(r[2, 1]), float(r[2, 2]))
    return math.degrees(pitch), math.degrees(yaw), math.degrees(roll)
