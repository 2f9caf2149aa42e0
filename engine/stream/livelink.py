"""Live Link Face sender: the UDP packets Epic's Live Link Face iPhone app sends to Unreal Engine (port 11111).

One datagram per frame, packet version 6, all numbers big-endian (Unreal's FNboSerializeToBuffer, "network byte
order"):

    uint8    version            6
    int32    len, bytes         device id (UTF-8, no terminator): a UUID string, 36 characters
    int32    len, bytes         subject name (UTF-8): the Live Link subject Unreal shows, e.g. "scapecast"
    int32    frame number       FQualifiedFrameTime: FFrameTime.FrameNumber …
    float32  sub-frame          … and its fraction in [0, 1) …
    int32    rate numerator     … at FFrameRate numerator / denominator (60 / 1 here)
    int32    rate denominator
    uint8    count              61
    float32  × 61               the curves in EARFaceBlendShape order (`LIVE_LINK_CURVES`)

Sources: Epic's AppleARKitFaceSupport plugin (AppleARKitLiveLinkSource.cpp: the publisher writes version,
device id, subject, frame time, count, values; the listener rejects another version or a count other than
EARFaceBlendShape::MAX = 61; the version 5 source lists the history: 4 added the device id, 5 a timecode, and
the version 6 reader takes an FQualifiedFrameTime in its place) and AppleARKitConversion.h (ToBlendShapeMap:
the curve values, the head and eye angles "Map the -180..180 range to -1..1", a zero for an unsupported blend
shape); Unreal's ARTrackable.h for the enum order; the PyPI package pylivelinkface 0.1, which decodes the same
bytes (it reads the version byte and the device id's length as one little-endian int32 and the id as 37 bytes
starting with the length's last byte, '$' = 36: which is why it only decodes a 36-character device id).

Curves 0 … 51 are the ARKit blend shapes in [0, 1] under Unreal's names (ARKit's with a capital first letter:
`eyeBlinkLeft` → `EyeBlinkLeft`); `TongueOut` is always 0 (the engine cannot drive it and the slot must hold
a number — Epic's own code writes 0 for an unsupported shape). Curves 52 … 60 are HeadYaw, HeadPitch, HeadRoll,
LeftEyeYaw, LeftEyePitch, LeftEyeRoll, RightEyeYaw, RightEyePitch, RightEyeRoll: Unreal FRotator angles / 180
(so −1 … 1, 1 = 180°) of the head transform and of each eye relative to the head, in Unreal's axes (X = −z,
Y = x, Z = y of the engine frame: the face at rest looks down −X, towards the camera).

Mirroring follows Epic's two modes. `face_mirrored=True` (default, Epic's FaceMirrored): curve names are the
subject's own sides (EyeBlinkLeft = the performer's left eye, as in the VMC and iFacialMocap outputs) and the
angles are the plain FRotator values: HeadYaw < 0 when the performer turns to their left, HeadPitch < 0 when they
look up, HeadRoll > 0 when the head tilts towards their left shoulder; eyes alike (LeftEyeYaw < 0 looking to the
performer's left). `face_mirrored=False` (Epic's FaceRelative, "as if looking out of the device"): Left and Right
curves are swapped (JawLeft/JawRight and MouthLeft/MouthRight too) and the yaw and roll curves negated, exactly
as ToBlendShapeMap does. Which mode an Unreal character was set up with is the character's business: switch here
if the avatar mirrors the performer.

Frame time: the capture clock of each FaceState (`t_capture_ns`, monotonic) carried onto the local time of day,
counted in frames at `fps` — what a phone on its default system-clock timecode sends — so that the frame time
grows with the capture time, and Unreal's Timecode mode can line it up with a system-clock timecode. It wraps
at local midnight (5 184 000 frames a day at 60 fps, well inside int32).
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Mapping

from engine.names import ARKIT_BLENDSHAPES, to_vrm_name
from engine.stream.face_angles import euler_rotation, eye_angles, rotation_matrix, unreal_rotator
from engine.stream.udp import UdpSender
from engine.types import FaceState

DEFAULT_PORT = 11111
PACKET_VERSION = 6

# EARFaceBlendShape (Unreal's ARTrackable.h), the order of the 61 floats.
LIVE_LINK_CURVES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawLeft", "JawRight", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthLeft", "MouthRight", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
    "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
    "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)  # fmt: skip
CURVE_COUNT = len(LIVE_LINK_CURVES)  # 61

_FROM_UNREAL = {to_vrm_name(name): name for name in ARKIT_BLENDSHAPES}


def _swap_sides(name: str) -> str:
    if name.endswith("Left"):
        return name[:-4] + "Right"
    if name.endswith("Right"):
        return name[:-5] + "Left"
    return name


# For each of the 52 blend-shape slots, the ARKit channel that fills it, per mode.
_SOURCES_MIRRORED: tuple[str, ...] = tuple(_FROM_UNREAL[name] for name in LIVE_LINK_CURVES[:52])
_SOURCES_RELATIVE: tuple[str, ...] = tuple(_swap_sides(name) for name in _SOURCES_MIRRORED)

_FRAME_TIME = struct.Struct(">ifiiB")  # frame number, sub-frame, rate numerator, rate denominator, count
_CURVES = struct.Struct(f">{CURVE_COUNT}f")
_LARGEST_SUBFRAME = struct.unpack(">f", bytes.fromhex("3f7fffff"))[0]  # the largest float32 below 1
_DAY_NS = 86_400 * 1_000_000_000


def live_link_curves(state: FaceState, face_mirrored: bool = True) -> list[float]:
    """The 61 curve values of one frame in `LIVE_LINK_CURVES` order (see the module docstring)."""
    arkit: Mapping[str, float] = state.arkit()
    sources = _SOURCES_MIRRORED if face_mirrored else _SOURCES_RELATIVE
    values = [float(arkit.get(name, 0.0)) for name in sources]
    sign = 1.0 if face_mirrored else -1.0  # FaceRelative negates yaw and roll, never pitch
    eyes = eye_angles(arkit)
    for rotation in (
        rotation_matrix(state.pose.quaternion),
        euler_rotation(eyes.left_yaw, eyes.left_pitch),
        euler_rotation(eyes.right_yaw, eyes.right_pitch),
    ):
        pitch, yaw, roll = unreal_rotator(rotation)
        values += [sign * yaw / 180.0, pitch / 180.0, sign * roll / 180.0]
    return values


def encode_live_link(
    device_id: str,
    subject: str,
    frame_number: int,
    subframe: float,
    rate: tuple[int, int],
    curves: list[float],
) -> bytes:
    """One Live Link Face packet (version 6) from its fields. Exposed for tests and benchmarks."""
    if len(curves) != CURVE_COUNT:
        raise ValueError(f"Live Link Face needs {CURVE_COUNT} curves, got {len(curves)}")
    device = device_id.encode("utf-8")
    name = subject.encode("utf-8")
    return b"".join((
        struct.pack(">Bi", PACKET_VERSION, len(device)),
        device,
        struct.pack(">i", len(name)),
        name,
        _FRAME_TIME.pack(frame_number, subframe, rate[0], rate[1], CURVE_COUNT),
        _CURVES.pack(*curves),
    ))  # fmt: skip


def frame_time(ns_of_day: int, fps: int) -> tuple[int, float]:
    """Nanoseconds since midnight → (frame number, sub-frame in [0, 1)) at `fps` frames per second."""
    frames, remainder = divmod(ns_of_day * fps, 1_000_000_000)
    # float32 rounds 0.99999999 up to 1.0, which would be the next frame: keep it inside the frame.
    return frames, min(remainder / 1e9, _LARGEST_SUBFRAME)


def _local_midnight_ns() -> int:
    """Today's local midnight on the wall clock, in ns since the epoch."""
    now = time.localtime()
    return int(time.mktime((now.tm_year, now.tm_mon, now.tm_mday, 0, 0, 0, 0, 0, -1))) * 1_000_000_000


class LiveLinkFaceSender(UdpSender):
    """Sends each FaceState to Unreal's Live Link Face listener at `host:port` as one UDP datagram (~310 bytes).

    `subject`: the Live Link subject name (1 … 255 UTF-8 bytes). `device_id`: fixed for the sender's life, a new
    UUID by default (keep it 36 characters if pylivelinkface must read the packets). `fps`: the frame-time rate.
    `face_mirrored`: Epic's FaceMirrored (True) or FaceRelative (False) convention, see the module docstring.
    """

    name = "Live Link Face"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        subject: str = "scapecast",
        device_id: str | None = None,
        fps: int = 60,
        face_mirrored: bool = True,
    ):
        self.device_id = device_id if device_id is not None else str(uuid.uuid4()).upper()
        for what, text in (("subject", subject), ("device id", self.device_id)):
            if not 1 <= len(text.encode("utf-8")) <= 255:
                raise ValueError(f"Live Link Face {what} must be 1 to 255 bytes of UTF-8, got {text!r}")
        if not 1 <= fps <= 1000:
            raise ValueError(f"Live Link Face fps must be 1 to 1000, got {fps}")
        self.subject = subject
        self.fps = int(fps)
        self.face_mirrored = face_mirrored
        # The monotonic capture clock → wall clock → time of day, offsets taken once (per-frame cost: additions).
        self._day_origin_ns = time.time_ns() - time.monotonic_ns() - _local_midnight_ns()
        super().__init__(host, port)

    def frame_time(self, t_capture_ns: int) -> tuple[int, float]:
        """(frame number, sub-frame) of a capture time (monotonic ns): local time of day at `fps`."""
        return frame_time((t_capture_ns + self._day_origin_ns) % _DAY_NS, self.fps)

    def packet(self, state: FaceState) -> bytes:
        """The datagram for one frame (exposed so callers and tests can inspect it)."""
        frame, subframe = self.frame_time(state.t_capture_ns)
        curves = live_link_curves(state, self.face_mirrored)
        return encode_live_link(self.device_id, self.subject, frame, subframe, (self.fps, 1), curves)

    def datagrams(self, state: FaceState) -> list[bytes]:
        return [self.packet(state)]
