"""iFacialMocap sender: the UDP text protocol of the iFacialMocap iPhone app, for VSeeFace, VNyan, Warudo,
VMagicMirror and the other apps that take "iFacialMocap" as a face tracker (default port 49983).

One UTF-8 (plain ASCII) datagram per frame:

    mouthSmile_R-0|eyeLookOut_L-0|...|eyeBlink_L-37|...|jawOpen-5|...|mouthLeft-1|=head#P,Y,R,X,Y,Z|rightEye#P,Y,R|leftEye#P,Y,R|

- Blendshapes: `name-value|`, value an integer 0 … 100 (weight × 100). Names are ARKit's with `_L` / `_R` for
  the sided pairs (`eyeBlink_L`, `mouthSmile_R`, `browOuterUp_L`); the unpaired ones keep ARKit's spelling,
  including `jawLeft`, `jawRight`, `mouthLeft`, `mouthRight` (left/right moves of one feature, not sides).
  Receivers look names up, the app sends them in no fixed order; this sender uses ARKit's order. `tongueOut` is
  left out: the engine cannot drive it and every receiver read for this module defaults a missing name to 0.
- `=head#` (the only `=` in the datagram: VMagicMirror splits on it and rejects a datagram with two): Euler
  angles X, Y, Z in degrees, then position X, Y, Z in metres.
- `rightEye#`, `leftEye#`: Euler angles X, Y, Z in degrees. Every section, the last included, ends with `|`.
- v2 (`version="v2"`): the same with `&` between name and value (`eyeBlink_L&37|`), so that a negative value
  cannot be mistaken for the separator. The phone sends v2 to a receiver whose start request ends in
  `|sendDataVersion=v2` (tha3, VRCFaceTracking's module, SnekStudio, hidano's Unity package) and v1 otherwise
  (VMagicMirror and facetrack-d parse only `-`). v1 is the default.

Sources: the format and the sample frame on the app's developer page (ifacialmocap.com/for-developer/: "Angle-
related data is sent in degrees"; values 0 ~ 100); the author's own PC sender
(github.com/emoto-yasushi/NVIDIA_ARSDK_iFacialMocap, ExpressionApp.cpp), which pushes this text unasked to
127.0.0.1:49983 and is the reference for the signs below; the receivers read: VMagicMirror
(iFacialMocapReceiver.cs), facetrack-d (ifacialmocap adaptor), talking-head-anime-3 (v1 and v2 parsers),
VRCFaceTracking's iFacialMocap module (v2).

Connection. The phone is the sender and the PC app the receiver: the app binds UDP 49983 on the PC and sends
`iFacialMocap_sahuasouryya9218sauhuiayeta91555dy3719` (optionally followed by `|sendDataVersion=v2`) to the
phone's port 49983, and the phone answers by streaming to the address that asked, at up to 60 fps. The phone can
also be set to push to a fixed PC address without that request, which is what the author's PC bridge and this
sender do: datagrams go to `host:port` (the receiving app's machine, default 127.0.0.1:49983) whether or not
anyone asked. The receiver only needs its port open; the start request it sends towards the "phone IP" it was
given is not needed (and, aimed at this machine, is received by nobody, since the receiving app holds the port).

Head, in the frame of the author's sender: the engine's head frame mirrored through x = 0 — the same mirror as the
VMC bridge's Head bone. X = pitch (> 0 looking down), Y = −yaw (> 0 turning to the subject's right), Z = −roll
(> 0 tilting towards the subject's left shoulder), for the engine's R = R_y(yaw)·R_x(pitch)·R_z(roll), which is
the z-x-y order of Unity's Quaternion.Euler(X, Y, Z) that the Unity receivers apply. Position: (−x, y, z) / 100 m
of the engine's camera-frame translation (the face about 0.6 m in front of the camera is at z ≈ −0.6, as in the
app's sample frame). Eyes, again as the author's sender has them, not mirrored: X > 0 looking down, Y > 0
looking towards the subject's left (the app's sample frame shows both eyes converging on the phone with that
sign), Z = 0; from the gaze blendshapes at 20° and 30° per unit (`engine.stream.face_angles`).
"""

from __future__ import annotations

from typing import Literal

from engine.names import ARKIT_BLENDSHAPES, UNSUPPORTED_ARKIT
from engine.stream.face_angles import eye_angles, head_yaw_pitch_roll
from engine.stream.udp import UdpSender
from engine.types import FaceState

DEFAULT_PORT = 49983
# What a receiver sends to the phone to start it (documented here; this sender never needs it).
START_REQUEST = "iFacialMocap_sahuasouryya9218sauhuiayeta91555dy3719"
START_REQUEST_V2 = START_REQUEST + "|sendDataVersion=v2"

# ARKit names that are one feature moving left or right, not a left/right pair: no `_L`/`_R` suffix.
_UNSIDED = frozenset({"jawLeft", "jawRight", "mouthLeft", "mouthRight"})


def ifacialmocap_name(arkit_name: str) -> str:
    """ARKit name → iFacialMocap name: `eyeBlinkLeft` → `eyeBlink_L`, `mouthSmileRight` → `mouthSmile_R`,
    `jawOpen` → `jawOpen`, `mouthLeft` → `mouthLeft`."""
    if arkit_name not in _UNSIDED:
        if arkit_name.endswith("Left"):
            return arkit_name[:-4] + "_L"
        if arkit_name.endswith("Right"):
            return arkit_name[:-5] + "_R"
    return arkit_name


# The sent channels in ARKit order, with their wire names (computed once: this runs every frame).
_CHANNELS: tuple[tuple[str, str], ...] = tuple(
    (name, ifacialmocap_name(name)) for name in ARKIT_BLENDSHAPES if name not in UNSUPPORTED_ARKIT
)


def _percent(weight: float) -> int:
    """Weight → integer 0 … 100, rounded half up (a NaN counts as 0: the text must stay parseable)."""
    if not weight > 0.0:
        return 0
    return 100 if weight >= 1.0 else int(weight * 100.0 + 0.5)


def encode_ifacialmocap(state: FaceState, version: Literal["v1", "v2"] = "v1") -> bytes:
    """One frame as the iFacialMocap datagram (see the module docstring). Exposed for tests and benchmarks."""
    sep = "-" if version == "v1" else "&"
    arkit = state.arkit()
    parts = [f"{wire}{sep}{_percent(arkit.get(name, 0.0))}|" for name, wire in _CHANNELS]
    yaw, pitch, roll = head_yaw_pitch_roll(state.pose)
    tx, ty, tz = (float(c) / 100.0 for c in state.pose.translation)
    eyes = eye_angles(arkit)
    parts.append(
        f"=head#{pitch:.4f},{-yaw:.4f},{-roll:.4f},{-tx:.4f},{ty:.4f},{tz:.4f}|"
        f"rightEye#{eyes.right_pitch:.4f},{eyes.right_yaw:.4f},0.0000|"
        f"leftEye#{eyes.left_pitch:.4f},{eyes.left_yaw:.4f},0.0000|"
    )
    return "".join(parts).encode("ascii")


class IFacialMocapSender(UdpSender):
    """Sends each FaceState to an iFacialMocap receiver at `host:port` as one UDP datagram (about 1 KB)."""

    name = "iFacialMocap"

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, version: Literal["v1", "v2"] = "v1"):
        if version not in ("v1", "v2"):
            raise ValueError(f"iFacialMocap version must be 'v1' or 'v2', got {version!r}")
        self.version = version
        super().__init__(host, port)

    def encode(self, state: FaceState) -> bytes:
        """The datagram for one frame (exposed so callers and tests can inspect it)."""
        return encode_ifacialmocap(state, self.version)

    def datagrams(self, state: FaceState) -> list[bytes]:
        return [self.encode(state)]
