"""iFacialMocap and Live Link Face outputs: real UDP datagrams on loopback, decoded the way the receiving apps do.

iFacialMocap: parsed like VMagicMirror (split on the single `=`, then `|`, `-`, `#`, `,`) and like
talking-head-anime-3's v2 parser (`&`); the parsers are checked first against the sample frame published on
ifacialmocap.com/for-developer/. Head angles are rebuilt as a Unity receiver does (Quaternion.Euler(x, y, z) =
R_y · R_x · R_z) and checked as motions of the avatar. Live Link Face: decoded with `struct` from the published
layout (Epic's AppleARKitLiveLinkSource.cpp) and, where installed, with pylivelinkface's own decoder; angles are
rebuilt with Unreal's FRotationMatrix formula.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from engine.names import ARKIT_BLENDSHAPES, arkit_to_ict
from engine.solve.pose import euler_to_rotation, rotation_to_quaternion
from engine.stream.face_angles import UNREAL_AXES
from engine.stream.ifacialmocap import IFacialMocapSender, encode_ifacialmocap
from engine.stream.livelink import (
    CURVE_COUNT,
    LIVE_LINK_CURVES,
    LiveLinkFaceSender,
    encode_live_link,
    frame_time,
    live_link_curves,
)
from engine.types import FaceState, HeadPose, TrackingState

REPO_ROOT = Path(__file__).resolve().parents[1]

# The sample frame on ifacialmocap.com/for-developer/ (v1), as the iPhone app sends it.
OFFICIAL_SAMPLE = (
    "mouthSmile_R-0|eyeLookOut_L-0|mouthUpperUp_L-11|eyeWide_R-0|mouthClose-8|mouthPucker-4|mouthRollLower-9|"
    "eyeBlink_R-7|eyeLookDown_L-17|cheekSquint_R-11|eyeBlink_L-7|tongueOut-0|jawRight-0|eyeLookIn_R-6|"
    "cheekSquint_L-11|mouthDimple_L-10|mouthPress_L-4|eyeSquint_L-11|mouthRight-0|mouthShrugLower-9|"
    "eyeLookUp_R-0|eyeLookOut_R-0|mouthPress_R-5|cheekPuff-2|jawForward-11|mouthLowerDown_L-9|mouthFrown_L-6|"
    "mouthShrugUpper-26|browOuterUp_L-4|browInnerUp-20|mouthDimple_R-10|browDown_R-0|mouthUpperUp_R-10|"
    "mouthRollUpper-8|mouthFunnel-12|mouthStretch_R-21|mouthFrown_R-13|eyeLookDown_R-17|jawOpen-12|jawLeft-0|"
    "browDown_L-0|mouthSmile_L-0|noseSneer_R-18|mouthLowerDown_R-8|noseSneer_L-21|eyeWide_L-0|mouthStretch_L-21|"
    "browOuterUp_R-4|eyeLookIn_L-4|eyeSquint_R-11|eyeLookUp_L-0|mouthLeft-1|"
    "=head#-21.488958,-6.038993,-6.6019735,-0.030653415,-0.10287084,-0.6584072|"
    "rightEye#6.0297494,2.4403017,0.25649446|leftEye#6.034903,-1.6660284,-0.17520553|"
)


# --- receivers -----------------------------------------------------------------------------------------------


@contextmanager
def udp_receiver() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 at an ephemeral port, 2 s receive timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


def send_and_receive(make_sender: Callable[[int], object], states: list[FaceState]) -> tuple[list[bytes], object]:
    """Send `states` through a sender aimed at a fresh receiver; one datagram back per state."""
    with udp_receiver() as sock:
        sender = make_sender(sock.getsockname()[1])
        try:
            for state in states:
                assert sender.send(state)  # type: ignore[attr-defined]
            datagrams = [sock.recv(65536) for _ in states]
        finally:
            sender.close()  # type: ignore[attr-defined]
    return datagrams, sender


def parse_vmagicmirror(datagram: bytes) -> tuple[dict[str, int], dict[str, list[float]]]:
    """iFacialMocap v1 as VMagicMirror reads it: exactly one `=`; before it `name-int|` items, after it
    `key#a,b,c|` items, every section closed by `|`."""
    text = datagram.decode("ascii")
    assert text.count("=") == 1, "VMagicMirror drops a datagram without exactly one '='"
    blend_part, pose_part = text.split("=")
    assert blend_part.endswith("|") and pose_part.endswith("|"), "every section ends with '|'"
    blends: dict[str, int] = {}
    for item in blend_part.split("|")[:-1]:
        name, value = item.split("-")  # two fields: a '-' inside a value would break this
        blends[name] = int(value)
    poses: dict[str, list[float]] = {}
    for item in pose_part.split("|")[:-1]:
        key, values = item.split("#")
        poses[key] = [float(v) for v in values.split(",")]
    return blends, poses


def parse_tha3_v2(datagram: bytes) -> tuple[dict[str, float], dict[str, list[float]]]:
    """iFacialMocap v2 as talking-head-anime-3's parser reads it: items split on `|`, `name&value` items,
    `=head#` / `rightEye#` / `leftEye#` prefixes."""
    blends: dict[str, float] = {}
    poses: dict[str, list[float]] = {}
    for part in datagram.decode("ascii").split("|"):
        if not part:
            continue
        if "&" in part:
            name, value = part.split("&")
            blends[name] = float(value) / 100.0
        else:
            for prefix in ("=head#", "rightEye#", "leftEye#"):
                if part.startswith(prefix):
                    poses[prefix.strip("=#")] = [float(v) for v in part[len(prefix) :].split(",")]
                    break
            else:
                raise AssertionError(f"unparsed item {part!r}")
    return blends, poses


def decode_live_link(datagram: bytes) -> dict[str, object]:
    """Live Link Face v6, big-endian, from the published layout: uint8 version, int32-prefixed device id and
    subject, FQualifiedFrameTime (int32, float, int32, int32), uint8 count, count float32."""
    version = datagram[0]
    offset = 1
    (n,) = struct.unpack_from(">i", datagram, offset)
    device = datagram[offset + 4 : offset + 4 + n].decode("utf-8")
    offset += 4 + n
    (n,) = struct.unpack_from(">i", datagram, offset)
    subject = datagram[offset + 4 : offset + 4 + n].decode("utf-8")
    offset += 4 + n
    frame, subframe, numerator, denominator = struct.unpack_from(">ifii", datagram, offset)
    count = datagram[offset + 16]
    offset += 17
    values = struct.unpack_from(f">{count}f", datagram, offset)
    assert offset + 4 * count == len(datagram), "nothing may follow the curves"
    return {
        "version": version, "device": device, "subject": subject, "frame": frame, "subframe": subframe,
        "rate": (numerator, denominator), "count": count, "curves": dict(zip(LIVE_LINK_CURVES, values, strict=True)),
    }  # fmt: skip


# --- states and rotations ------------------------------------------------------------------------------------


def make_state(
    arkit: dict[str, float] | None = None,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    translation: tuple[float, float, float] = (0.0, 0.0, -60.0),
    t_capture_ns: int | None = None,
) -> FaceState:
    """A state from ARKit weights and an engine head pose (euler_to_rotation: yaw > 0 to the subject's left,
    pitch < 0 looking up, roll < 0 tilting towards the subject's left shoulder)."""
    weights = arkit_to_ict(arkit or {})
    quaternion = rotation_to_quaternion(euler_to_rotation(yaw, pitch, roll))
    t = time.monotonic_ns() if t_capture_ns is None else t_capture_ns
    return FaceState(HeadPose(quaternion, np.array(translation)), weights, TrackingState.TRACKING, 1.0, t, 0)


def unity_euler(x: float, y: float, z: float) -> np.ndarray:
    """Unity's Quaternion.Euler(x, y, z) as a matrix: z about Z, then x about X, then y about Y (fixed axes)."""
    rx, ry, rz = (math.radians(a) for a in (x, y, z))
    mx = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    my = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    mz = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    return my @ mx @ mz


def unreal_rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Unreal's FRotationMatrix(FRotator(pitch, yaw, roll)), transposed into column-vector form (Unreal's
    matrices are row-vector: row i is the image of axis i)."""
    sp, cp = math.sin(math.radians(pitch)), math.cos(math.radians(pitch))
    sy, cy = math.sin(math.radians(yaw)), math.cos(math.radians(yaw))
    sr, cr = math.sin(math.radians(roll)), math.cos(math.radians(roll))
    rows = np.array([
        [cp * cy, cp * sy, sp],
        [sr * sp * cy - cr * sy, sr * sp * sy + cr * cy, -sr * cp],
        [-(cr * sp * cy + sr * sy), cy * sr - cr * sp * sy, cr * cp],
    ])  # fmt: skip
    return rows.T


FORWARD, UP = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])


# --- iFacialMocap --------------------------------------------------------------------------------------------


def test_parsers_read_the_official_sample_frame() -> None:
    blends, poses = parse_vmagicmirror(OFFICIAL_SAMPLE.encode())
    assert len(blends) == 52 and blends["eyeBlink_L"] == 7 and blends["mouthShrugUpper"] == 26
    assert poses["head"] == pytest.approx([-21.488958, -6.038993, -6.6019735, -0.030653415, -0.10287084, -0.6584072])
    assert list(poses) == ["head", "rightEye", "leftEye"]


def test_ifacialmocap_weights_arrive_as_percent_under_the_apps_names() -> None:
    arkit = {"eyeBlinkLeft": 0.37, "mouthSmileRight": 0.82, "jawOpen": 0.05, "mouthLeft": 0.4, "browInnerUp": 0.6}
    (datagram,), _ = send_and_receive(lambda port: IFacialMocapSender("127.0.0.1", port), [make_state(arkit)])
    blends, _ = parse_vmagicmirror(datagram)
    official, _ = parse_vmagicmirror(OFFICIAL_SAMPLE.encode())
    # The app's 52 names, less tongueOut (not driven, so not sent); every name spelled as the app spells it.
    assert set(blends) == set(official) - {"tongueOut"}
    assert blends["eyeBlink_L"] == 37
    assert blends["mouthSmile_R"] == 82
    assert blends["jawOpen"] == 5
    assert blends["mouthLeft"] == 40  # one feature moving left: no side suffix
    assert blends["browInnerUp"] == 60
    assert blends["eyeBlink_R"] == 0 and blends["mouthSmile_L"] == 0


def test_ifacialmocap_random_weights_round_to_the_nearest_percent() -> None:
    rng = np.random.default_rng(4)
    state = FaceState(HeadPose.identity(), rng.uniform(0, 1, 53), TrackingState.TRACKING, 1.0, 0, 0)
    blends, _ = parse_vmagicmirror(encode_ifacialmocap(state))
    arkit = state.arkit()
    for name, weight in arkit.items():
        wire = name[:-4] + "_L" if name.endswith("Left") else name[:-5] + "_R" if name.endswith("Right") else name
        wire = name if name in ("jawLeft", "jawRight", "mouthLeft", "mouthRight") else wire
        assert abs(blends[wire] - 100 * weight) <= 0.5 + 1e-9, name
        assert 0 <= blends[wire] <= 100


def test_ifacialmocap_head_turn_to_the_users_left() -> None:
    """20° to the user's left: Y = −20 (the author's convention, mirrored through x like the VMC Head bone);
    rebuilt by a Unity receiver, the avatar (facing +z, right hand towards +x) turns to its own left."""
    (datagram,), _ = send_and_receive(lambda port: IFacialMocapSender("127.0.0.1", port), [make_state(yaw=20.0)])
    _, poses = parse_vmagicmirror(datagram)
    x, y, z, px, py, pz = poses["head"]
    assert y == pytest.approx(-20.0, abs=1e-3)
    assert x == pytest.approx(0.0, abs=1e-3) and z == pytest.approx(0.0, abs=1e-3)
    face = unity_euler(x, y, z) @ FORWARD
    assert face[0] == pytest.approx(-math.sin(math.radians(20.0)), abs=1e-4)  # towards the avatar's left (−x)
    assert (px, py, pz) == pytest.approx((0.0, 0.0, -0.6), abs=1e-4)


def test_ifacialmocap_head_looking_up_and_tilting() -> None:
    states = [make_state(pitch=-15.0), make_state(roll=-10.0)]
    datagrams, _ = send_and_receive(lambda port: IFacialMocapSender("127.0.0.1", port), states)
    up_pose = parse_vmagicmirror(datagrams[0])[1]["head"]
    tilt_pose = parse_vmagicmirror(datagrams[1])[1]["head"]
    assert up_pose[0] == pytest.approx(-15.0, abs=1e-3)  # X < 0: looking up (Unity: +x pitches the face down)
    assert (unity_euler(*up_pose[:3]) @ FORWARD)[1] > 0.25
    assert tilt_pose[2] == pytest.approx(10.0, abs=1e-3)  # towards the user's left shoulder
    assert (unity_euler(*tilt_pose[:3]) @ UP)[0] < -0.17  # the top of the avatar's head goes to its left (−x)


def test_ifacialmocap_head_is_the_engine_rotation_mirrored_through_x() -> None:
    """Any pose, through the text (4 decimals) and Unity's Euler order: R_unity = S · R · S, S = diag(−1, 1, 1)."""
    rng = np.random.default_rng(5)
    mirror = np.diag([-1.0, 1.0, 1.0])
    for _ in range(20):
        yaw, pitch, roll = rng.uniform(-60, 60), rng.uniform(-40, 40), rng.uniform(-40, 40)
        state = make_state(yaw=yaw, pitch=pitch, roll=roll, translation=tuple(rng.normal(0, 5, 3) + [0, 0, -60]))
        x, y, z, px, py, pz = parse_vmagicmirror(encode_ifacialmocap(state))[1]["head"]
        rotation = euler_to_rotation(yaw, pitch, roll)
        np.testing.assert_allclose(unity_euler(x, y, z), mirror @ rotation @ mirror, atol=1e-4)
        np.testing.assert_allclose((px, py, pz), mirror @ state.pose.translation / 100.0, atol=1e-4)


def test_ifacialmocap_eye_angles_from_gaze_weights() -> None:
    """+X looks down, +Y looks towards the user's left (the app's sample: both eyes converge on the phone)."""
    arkit = {"eyeLookOutLeft": 0.5, "eyeLookDownLeft": 0.25, "eyeLookInRight": 0.5, "eyeLookUpRight": 0.5}
    _, poses = parse_vmagicmirror(encode_ifacialmocap(make_state(arkit)))
    assert poses["leftEye"] == pytest.approx([5.0, 15.0, 0.0], abs=1e-3)  # 20°/unit vertical, 30°/unit across
    assert poses["rightEye"] == pytest.approx([-10.0, 15.0, 0.0], abs=1e-3)
    _, sample = parse_vmagicmirror(OFFICIAL_SAMPLE.encode())
    # The published frame: the right eye turned towards the user's left, the left eye towards their right.
    assert sample["rightEye"][1] > 0 > sample["leftEye"][1]
    converging = parse_vmagicmirror(encode_ifacialmocap(make_state({"eyeLookInRight": 0.1, "eyeLookInLeft": 0.1})))
    assert converging[1]["rightEye"][1] > 0 > converging[1]["leftEye"][1]


def test_ifacialmocap_v2_uses_ampersands() -> None:
    state = make_state({"eyeBlinkLeft": 0.37, "jawOpen": 0.5}, yaw=20.0)
    (datagram,), _ = send_and_receive(lambda port: IFacialMocapSender("127.0.0.1", port, "v2"), [state])
    assert b"eyeBlink_L&37|" in datagram and b"-37|" not in datagram
    blends, poses = parse_tha3_v2(datagram)
    assert blends["eyeBlink_L"] == pytest.approx(0.37) and blends["jawOpen"] == pytest.approx(0.5)
    assert len(blends) == 51
    assert poses["head"][1] == pytest.approx(-20.0, abs=1e-3)
    assert datagram.count(b"=") == 1 and datagram.endswith(b"|")


def test_ifacialmocap_counts_and_rejects_bad_versions() -> None:
    datagrams, sender = send_and_receive(lambda port: IFacialMocapSender("127.0.0.1", port), [make_state()] * 3)
    assert len(datagrams) == 3 and sender.sent == 3 and sender.dropped == 0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="version"):
        IFacialMocapSender("127.0.0.1", 49983, "v3")  # type: ignore[arg-type]


# --- Live Link Face ------------------------------------------------------------------------------------------


def live_link_sender(**kwargs: object) -> Callable[[int], LiveLinkFaceSender]:
    return lambda port: LiveLinkFaceSender("127.0.0.1", port, **kwargs)  # type: ignore[arg-type]


def test_live_link_packet_layout_and_blend_shapes() -> None:
    arkit = {
        "eyeBlinkLeft": 0.37, "jawOpen": 0.5, "mouthSmileRight": 0.8, "browInnerUp": 0.6, "cheekPuff": 0.3,
        "noseSneerRight": 0.2,
    }  # fmt: skip
    datagrams, sender = send_and_receive(live_link_sender(subject="scapecast"), [make_state(arkit)] * 2)
    first, second = (decode_live_link(d) for d in datagrams)
    assert first["version"] == 6 and first["count"] == 61 == CURVE_COUNT
    assert first["subject"] == "scapecast"
    assert first["device"] == second["device"] == sender.device_id  # type: ignore[attr-defined]
    assert len(str(first["device"])) == 36
    assert first["rate"] == (60, 1)
    curves = first["curves"]
    assert isinstance(curves, dict)
    values = list(curves.values())
    # Apple's order as Unreal lists it: EyeBlinkLeft 0, JawOpen 17, MouthSmileRight 24, BrowInnerUp 43, ...
    assert values[0] == pytest.approx(0.37) and values[17] == pytest.approx(0.5) and values[24] == pytest.approx(0.8)
    assert values[43] == pytest.approx(0.6) and values[46] == pytest.approx(0.3) and values[50] == pytest.approx(0.2)
    assert values[51] == 0.0  # TongueOut: not driven
    others = [v for i, v in enumerate(values[:52]) if i not in (0, 17, 24, 43, 46, 50)]
    assert others == [0.0] * 46


def test_live_link_curve_names_are_arkits_capitalised() -> None:
    assert len(LIVE_LINK_CURVES) == 61
    assert {n[:1].lower() + n[1:] for n in LIVE_LINK_CURVES[:52]} == set(ARKIT_BLENDSHAPES)
    assert LIVE_LINK_CURVES[:3] == ("EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft")  # Apple's order, eyes first
    assert LIVE_LINK_CURVES[52:] == (
        "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw",
        "RightEyePitch", "RightEyeRoll",
    )  # fmt: skip


def test_live_link_head_turn_to_the_users_left() -> None:
    """FaceMirrored (default): 20° to the user's left is an Unreal yaw of −20°, sent as −20/180."""
    states = [make_state(yaw=20.0), make_state(pitch=-10.0), make_state(roll=-15.0)]
    datagrams, _ = send_and_receive(live_link_sender(), states)
    turn, up, tilt = (decode_live_link(d)["curves"] for d in datagrams)
    assert isinstance(turn, dict) and isinstance(up, dict) and isinstance(tilt, dict)
    assert turn["HeadYaw"] == pytest.approx(-20.0 / 180.0, abs=1e-6)
    assert turn["HeadPitch"] == pytest.approx(0.0, abs=1e-6) and turn["HeadRoll"] == pytest.approx(0.0, abs=1e-6)
    assert up["HeadPitch"] == pytest.approx(-10.0 / 180.0, abs=1e-6)  # the face looks down −X at rest: up is < 0
    assert tilt["HeadRoll"] == pytest.approx(15.0 / 180.0, abs=1e-6)
    # Rebuilt by Unreal (FRotationMatrix), the face (−X at rest) turns towards the user's left, which is +Y.
    face = unreal_rotation_matrix(turn["HeadPitch"] * 180, turn["HeadYaw"] * 180, turn["HeadRoll"] * 180) @ [-1, 0, 0]
    assert face[1] == pytest.approx(math.sin(math.radians(20.0)), abs=1e-5)


def test_live_link_head_angles_rebuild_the_engine_rotation_in_unreal_axes() -> None:
    rng = np.random.default_rng(6)
    for _ in range(20):
        yaw, pitch, roll = rng.uniform(-60, 60), rng.uniform(-40, 40), rng.uniform(-40, 40)
        curves = dict(zip(LIVE_LINK_CURVES, live_link_curves(make_state(yaw=yaw, pitch=pitch, roll=roll)), strict=True))
        rebuilt = unreal_rotation_matrix(curves["HeadPitch"] * 180, curves["HeadYaw"] * 180, curves["HeadRoll"] * 180)
        expected = UNREAL_AXES @ euler_to_rotation(yaw, pitch, roll) @ UNREAL_AXES.T
        np.testing.assert_allclose(rebuilt, expected, atol=1e-9)


def test_live_link_eye_angles() -> None:
    arkit = {"eyeLookOutLeft": 0.5, "eyeLookDownRight": 0.5, "eyeLookInRight": 0.2}
    (datagram,), _ = send_and_receive(live_link_sender(), [make_state(arkit)])
    curves = decode_live_link(datagram)["curves"]
    assert isinstance(curves, dict)
    assert curves["LeftEyeYaw"] == pytest.approx(-15.0 / 180.0, abs=1e-6)  # to the user's left: < 0, like the head
    assert curves["LeftEyePitch"] == pytest.approx(0.0, abs=1e-6)
    assert curves["RightEyePitch"] == pytest.approx(10.0 / 180.0, abs=1e-6)  # down: > 0, like the head
    assert curves["RightEyeYaw"] == pytest.approx(-6.0 / 180.0, abs=1e-5)  # the right eye inwards: the user's left
    assert curves["LeftEyeRoll"] == pytest.approx(0.0, abs=1e-6) and curves["RightEyeRoll"] == pytest.approx(
        0.0, abs=1e-6
    )


def test_live_link_face_relative_swaps_sides_and_negates_yaw_and_roll() -> None:
    state = make_state({"eyeBlinkLeft": 0.37, "jawLeft": 0.4, "eyeLookOutLeft": 0.5}, yaw=20.0, pitch=-10.0)
    mirrored = dict(zip(LIVE_LINK_CURVES, live_link_curves(state, face_mirrored=True), strict=True))
    relative = dict(zip(LIVE_LINK_CURVES, live_link_curves(state, face_mirrored=False), strict=True))
    assert mirrored["EyeBlinkLeft"] == pytest.approx(0.37) and mirrored["EyeBlinkRight"] == 0.0
    assert relative["EyeBlinkRight"] == pytest.approx(0.37) and relative["EyeBlinkLeft"] == 0.0
    assert relative["JawRight"] == pytest.approx(0.4) and relative["JawLeft"] == 0.0
    assert relative["HeadYaw"] == pytest.approx(-mirrored["HeadYaw"]) and relative["HeadYaw"] > 0.1
    assert relative["HeadPitch"] == pytest.approx(mirrored["HeadPitch"]) and relative["HeadPitch"] < -0.05
    assert relative["LeftEyeYaw"] == pytest.approx(-mirrored["LeftEyeYaw"]) and relative["LeftEyeYaw"] > 0.05


def test_live_link_frame_time_follows_the_capture_clock() -> None:
    t0 = time.monotonic_ns()
    states = [make_state(t_capture_ns=t0 + k * 500_000_000) for k in range(3)]  # every half second
    datagrams, sender = send_and_receive(live_link_sender(fps=60), states)
    decoded = [decode_live_link(d) for d in datagrams]
    frames = [int(d["frame"]) for d in decoded]  # type: ignore[call-overload]
    per_day = 86_400 * 60
    assert [(b - a) % per_day for a, b in zip(frames, frames[1:], strict=False)] == [30, 30]
    for state, d in zip(states, decoded, strict=True):
        frame, subframe = sender.frame_time(state.t_capture_ns)  # type: ignore[attr-defined]
        assert d["frame"] == frame and d["subframe"] == pytest.approx(subframe, abs=1e-6)
        assert 0.0 <= float(d["subframe"]) < 1.0  # type: ignore[arg-type]
    # The frame is the local time of day: within a second of the wall clock's.
    now = time.localtime()
    seconds_of_day = now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec
    assert min(abs(frames[0] / 60 - seconds_of_day), per_day / 60 - abs(frames[0] / 60 - seconds_of_day)) < 3.0


def test_frame_time_arithmetic() -> None:
    assert frame_time(2_500_000_000, 60) == (150, 0.0)
    frame, subframe = frame_time(1_000_000_000 // 120, 60)
    assert frame == 0 and subframe == pytest.approx(0.5, abs=1e-6)
    frame, subframe = frame_time(86_400 * 1_000_000_000 - 1, 60)
    assert frame == 86_400 * 60 - 1 and subframe < 1.0
    assert struct.unpack(">f", struct.pack(">f", subframe))[0] < 1.0  # still inside the frame after float32


def test_live_link_sender_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="subject"):
        LiveLinkFaceSender("127.0.0.1", 11111, subject="")
    with pytest.raises(ValueError, match="fps"):
        LiveLinkFaceSender("127.0.0.1", 11111, fps=0)
    with LiveLinkFaceSender() as a, LiveLinkFaceSender() as b:
        assert a.device_id != b.device_id  # one id per engine run
    with pytest.raises(ValueError, match="61"):
        encode_live_link("id", "subject", 0, 0.0, (60, 1), [0.0] * 60)


def test_live_link_decoded_by_pylivelinkface() -> None:
    pylivelinkface = pytest.importorskip("pylivelinkface")
    state = make_state({"eyeBlinkLeft": 0.37, "jawOpen": 0.5}, yaw=20.0)
    datagrams, sender = send_and_receive(live_link_sender(subject="scapecast_test"), [state])
    ok, face = pylivelinkface.PyLiveLinkFace.decode(datagrams[0])
    assert ok
    assert face.name == "scapecast_test"
    assert face.uuid == "$" + sender.device_id  # type: ignore[attr-defined]  # its reading of the id (see livelink.py)
    assert face._version == 6 and face.fps == 60 and face._denominator == 1
    assert face._frames == sender.frame_time(state.t_capture_ns)[0]  # type: ignore[attr-defined]
    shapes = pylivelinkface.FaceBlendShape
    assert [shape.name for shape in shapes] == list(LIVE_LINK_CURVES)  # its enum, transcribed independently
    assert face.get_blendshape(shapes.EyeBlinkLeft) == pytest.approx(0.37)
    assert face.get_blendshape(shapes.JawOpen) == pytest.approx(0.5)
    assert face.get_blendshape(shapes.HeadYaw) == pytest.approx(-20.0 / 180.0, abs=1e-6)
    assert face.get_blendshape(shapes.TongueOut) == 0.0


# --- an engine run -------------------------------------------------------------------------------------------


def test_engine_run_sends_both_formats_every_frame(tmp_path: Path) -> None:
    """`run` with iFacialMocap and Live Link on: one datagram of each per processed frame reaches the two
    loopback receivers, decodable as the apps decode them, and the summary counts them."""
    with udp_receiver() as ifm, udp_receiver() as live:
        summary_path = tmp_path / "summary.json"
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "run_engine.py"), "run", "--source", "demo", "--frames", "25",
             "--no-render", "--set", "stream.enabled=false",
             "--set", "stream.ifacialmocap_enabled=true", "--set", f"stream.ifacialmocap_port={ifm.getsockname()[1]}",
             "--set", "stream.livelink_enabled=true", "--set", f"stream.livelink_port={live.getsockname()[1]}",
             "--set", "stream.livelink_subject=Performer1", "--summary-json", str(summary_path)],
            capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        ifm_frames = [parse_vmagicmirror(ifm.recv(65536)) for _ in range(25)]
        live_frames = [decode_live_link(live.recv(65536)) for _ in range(25)]
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 25
    assert summary["outputs"] == {"ifacialmocap": {"sent": 25, "dropped": 0}, "livelink": {"sent": 25, "dropped": 0}}
    blinks = [blends["eyeBlink_L"] for blends, _ in ifm_frames]
    assert all(0 <= b <= 100 for b in blinks) and all("head" in poses for _, poses in ifm_frames)
    assert {f["subject"] for f in live_frames} == {"Performer1"} and {f["count"] for f in live_frames} == {61}
    assert len({f["device"] for f in live_frames}) == 1
    frames = [f["frame"] + f["subframe"] for f in live_frames]
    assert all(b >= a for a, b in zip(frames, frames[1:], strict=False))  # the capture clock runs forward
