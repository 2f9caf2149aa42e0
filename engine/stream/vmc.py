"""VMC protocol bridge (OSC over UDP) for VSeeFace, VNyan, Warudo, EVMC4U and other VRM apps.

Each frame is a few OSC bundles, each one UDP datagram under `MAX_DATAGRAM_BYTES` (a 1500-byte Ethernet MTU
less IP/UDP headers and some room for tunnels: a fragmented datagram is lost whole when one fragment is).
VMC protocol, Performer → Marionette, default port 39539:

    bundle 1..k   /VMC/Ext/Blend/Val  (s name, f value)    the expression sets below, in order
    last bundle   /VMC/Ext/Blend/Val  …                    what is left of them
                  /VMC/Ext/Blend/Apply                     after every value: receivers apply the set here
                  /VMC/Ext/Bone/Pos   (s "Head", f px, py, pz, f qx, qy, qz, qw)    pose "head" (default)
                  /VMC/Ext/Root/Pos   (s "root", f px, py, pz, f qx, qy, qz, qw)    pose "root" instead
                  /VMC/Ext/T          (f seconds)          sender time: receivers see the link is alive
                  /VMC/Ext/OK         (i 1, i 3, i 0, i tracking)   loaded, calibrated, normal mode, tracking

A datagram arriving out of order costs at most one frame of those values (an Apply before them applies them
on the next frame). /VMC/Ext/OK's four arguments are the v2.5 calibration fields (state 3: calibrated, mode
0: normal) and the v2.7 tracking status (1 while a face is tracked, 0 while coasting or lost).

Expression sets (`expressions`):
- `perfect_sync`: the 51 ARKit channels by name. VRM "perfect sync" clips are PascalCase (`EyeBlinkLeft`)
  and UniVRM's `BlendShapeKey` compares names case-sensitively, so `vrm` casing is the default; `arkit`
  sends `eyeBlinkLeft` for receivers that want Apple's names.
- `vrm0`: VRM 0.x presets every VRM 0.x model has: Blink, Blink_L, Blink_R, A, I, U, E, O, Joy, Angry,
  Sorrow, Fun — derived from the ARKit weights (`preset_weights`), so models without perfect-sync clips move.
- `vrm1`: the same for VRM 1.0 names: blink, blinkLeft, blinkRight, aa, ih, ou, ee, oh, happy, angry, sad,
  relaxed, surprised.
A model that has perfect-sync clips *and* presets binding the same meshes gets both (a blink then closes the
eyes at half the weight); for such a model send `perfect_sync` alone (docs/protocol.md).

VMC speaks Unity's frame: left-handed, metres, x right, y up, z forward.

Pose "head" (what face trackers send): the head's rotation as the avatar's Head bone, a local rotation in
the humanoid's normalized frame — the avatar faces +z with its right hand towards +x, and the identity is
its rest pose facing its camera. The engine's head frame has +x on the subject's left, so the rotation is
mirrored through x = 0: (qx, qy, qz, qw) → (qx, −qy, −qz, qw). A user turning to their left turns the
avatar to its own left (the receiving app decides whether its view mirrors). Bone/Pos carries the bone's
*local* position too, and receivers that synchronise bone positions (EVMC4U does by default) move the bone
there: the bridge sends `head_position`, the Head's rest offset under the Neck of a typical humanoid
(configurable: `stream.vmc_head_position`), never (0, 0, 0), which would sink the head into the neck.

Pose "root": the whole head pose as the avatar's root transform in the camera's Unity frame — the camera at
the origin looking down +z, the head at about z = +0.6 m: the engine's right-handed camera frame mirrored
through z = 0 (position (x, y, −z)/100 m, rotation (−qx, −qy, qz, qw); UniVRM's glTF ↔ Unity conversion).
For receivers that place a floating head; most VRM apps want "head".
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np

from engine.names import to_vrm_name
from engine.stream.udp import UdpSender
from engine.types import FaceState, HeadPose, TrackingState

#: Largest datagram sent: a 1500-byte MTU less 28 bytes of IP/UDP headers and ~70 for VPN/PPPoE tunnels.
MAX_DATAGRAM_BYTES = 1400
_BUNDLE_START = b"#bundle\0" + struct.pack(">Q", 1)  # time tag 1: "immediately"
_BUNDLE_HEADER = len(_BUNDLE_START)  # each element then adds a 4-byte size before its message

ExpressionSet = Literal["perfect_sync", "vrm0", "vrm1"]
EXPRESSION_SETS: tuple[str, ...] = ("perfect_sync", "vrm0", "vrm1")

#: VRM 0.x preset names and their VRM 1.0 equivalents, in the order they are sent (`surprised` is VRM 1.0 only).
VRM0_PRESETS: tuple[str, ...] = (
    "Blink",
    "Blink_L",
    "Blink_R",
    "A",
    "I",
    "U",
    "E",
    "O",
    "Joy",
    "Angry",
    "Sorrow",
    "Fun",
)
VRM1_PRESETS: tuple[str, ...] = (
    "blink", "blinkLeft", "blinkRight", "aa", "ih", "ou", "ee", "oh", "happy", "angry", "sad", "relaxed", "surprised",
)  # fmt: skip
_VRM1_OF_VRM0 = dict(zip(VRM0_PRESETS, VRM1_PRESETS, strict=False))


def preset_weights(arkit: dict[str, float]) -> dict[str, float]:
    """VRM 0.x preset weights (plus VRM 1.0's `surprised`) from ARKit weights; each in [0, 1].

    Blinks: `Blink` is the closure both eyes share and `Blink_L/R` the rest of each eye's, so a model whose
    three clips move the same eyelids closes each eye exactly as far as ARKit says (a wink stays a wink).
    Visemes: the mouth's opening (jawOpen), rounding (funnel, pucker) and spread (stretch, smile) split over
    A (open), I (spread, nearly closed), U (round, nearly closed), E (spread and open), O (round and open);
    together they never open the mouth wider than jawOpen, or more than the lips round or spread.
    Emotions: Joy is a smile with narrowed eyes (VRM's "^^" face), Fun a smile with open eyes, Angry lowered
    brows, Sorrow raised inner brows with a frown, surprised wide eyes with raised brows; each is damped by
    its opposites so a smile never reads as anger. A heuristic, not a learned mapping (docs/protocol.md).
    """

    def get(name: str) -> float:
        return min(1.0, max(0.0, float(arkit.get(name, 0.0))))

    def pair(stem: str) -> float:
        return 0.5 * (get(stem + "Left") + get(stem + "Right"))

    left, right = get("eyeBlinkLeft"), get("eyeBlinkRight")
    both = min(left, right)
    opening = get("jawOpen")
    rounding = max(get("mouthFunnel"), get("mouthPucker"))
    spread = max(pair("mouthStretch"), pair("mouthSmile"))
    closed = max(0.0, 1.0 - 2.0 * opening)  # lips nearly together: the closed-mouth visemes
    smile, frown = pair("mouthSmile"), pair("mouthFrown")
    squint = max(pair("eyeSquint"), pair("cheekSquint"))
    brow_down, brow_inner_up, brow_outer_up = pair("browDown"), get("browInnerUp"), pair("browOuterUp")
    weights = {
        "Blink": both,
        "Blink_L": left - both,
        "Blink_R": right - both,
        "A": opening * (1.0 - rounding) * (1.0 - spread),
        "I": spread * closed * (1.0 - rounding),
        "U": rounding * closed,
        "E": opening * spread * (1.0 - rounding),
        "O": opening * rounding,
        "Joy": smile * squint,
        "Angry": brow_down * (1.0 - smile),
        "Sorrow": min(1.0, brow_inner_up * (0.5 + frown)) * (1.0 - smile) * (1.0 - brow_down),
        "Fun": smile * (1.0 - squint),
        "surprised": pair("eyeWide") * max(brow_inner_up, brow_outer_up) * (1.0 - brow_down),
    }
    return {name: min(1.0, max(0.0, value)) for name, value in weights.items()}


def blend_values(
    state: FaceState, expressions: Sequence[str] = ("perfect_sync", "vrm0"), casing: str = "vrm"
) -> list[tuple[str, float]]:
    """(name, value) pairs of one frame's `/VMC/Ext/Blend/Val` messages, in the order they are sent."""
    arkit = state.arkit()
    values: list[tuple[str, float]] = []
    if "perfect_sync" in expressions:
        rename = to_vrm_name if casing == "vrm" else str
        values += [(rename(name), float(value)) for name, value in arkit.items()]
    if "vrm0" in expressions or "vrm1" in expressions:
        presets = preset_weights(arkit)
        if "vrm0" in expressions:
            values += [(name, presets[name]) for name in VRM0_PRESETS]
        if "vrm1" in expressions:
            values += [(_VRM1_OF_VRM0.get(name, name), presets[name]) for name in (*VRM0_PRESETS, "surprised")]
    return values


def unity_root_pose(pose: HeadPose) -> tuple[np.ndarray, np.ndarray]:
    """Engine pose → (position (3,) metres, quaternion (4,) x, y, z, w) in Unity's left-handed frame."""
    w, x, y, z = (float(c) for c in pose.quaternion)
    tx, ty, tz = (float(c) for c in pose.translation)
    return np.array([tx, ty, -tz]) / 100.0, np.array([-x, -y, z, w])


def unity_head_rotation(pose: HeadPose) -> np.ndarray:
    """Engine head rotation → (4,) x, y, z, w: the avatar's Head bone rotation in Unity's humanoid frame."""
    w, x, y, z = (float(c) for c in pose.quaternion)
    return np.array([x, -y, -z, w])


def osc_message(address: str, *args: str | float | int) -> bytes:
    """One OSC 1.0 message: padded address, type tags, big-endian arguments (str `s`, float `f`, int `i`).

    Written out rather than built with python-osc's `OscMessageBuilder`, which costs ~15 µs a message
    (~1 ms a frame); tests/test_vmc.py checks the bytes equal the builder's."""
    tags, data = ",", []
    for arg in args:
        if isinstance(arg, str):
            tags += "s"
            data.append(_osc_string(arg))
        elif isinstance(arg, int) and not isinstance(arg, bool):
            tags += "i"
            data.append(struct.pack(">i", arg))
        elif isinstance(arg, float):
            tags += "f"
            data.append(struct.pack(">f", arg))
        else:
            raise TypeError(f"OSC argument {arg!r} is not str, int or float")
    return _osc_string(address) + _osc_string(tags) + b"".join(data)


def _osc_string(text: str) -> bytes:
    """UTF-8, NUL-terminated, padded with NULs to a multiple of 4 bytes."""
    raw = text.encode()
    return raw + b"\0" * (4 - len(raw) % 4)


@functools.lru_cache(maxsize=1024)
def _blend_prefix(name: str) -> bytes:
    """A Blend/Val message up to its float: the same for every frame."""
    return _osc_string("/VMC/Ext/Blend/Val") + _osc_string(",sf") + _osc_string(name)


def pack_bundles(messages: Sequence[bytes], limit: int = MAX_DATAGRAM_BYTES) -> list[bytes]:
    """Messages, in order, into as few OSC bundles (time tag "immediately") as keep each within `limit` bytes."""
    bundles: list[bytes] = []
    parts: list[bytes] = []
    size = _BUNDLE_HEADER
    for message in messages:
        grown = size + 4 + len(message)
        if parts and grown > limit:
            bundles.append(b"".join(parts))
            parts, size = [], _BUNDLE_HEADER
            grown = size + 4 + len(message)
        if grown > limit:
            raise ValueError(f"an OSC message of {len(message)} bytes does not fit a {limit}-byte datagram")
        if not parts:
            parts.append(_BUNDLE_START)
        parts += [struct.pack(">i", len(message)), message]
        size = grown
    if parts:
        bundles.append(b"".join(parts))
    return bundles


class VmcBridge(UdpSender):
    """Sends each FaceState to a VMC receiver at `host:port` as OSC bundles over UDP (a few per frame)."""

    name = "VMC"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 39539,
        casing: Literal["arkit", "vrm"] = "vrm",
        pose: Literal["head", "root"] = "head",
        expressions: Sequence[ExpressionSet] = ("perfect_sync", "vrm0"),
        head_position: Sequence[float] = (0.0, 0.1, 0.0),
    ):
        if casing not in ("arkit", "vrm"):
            raise ValueError(f"VMC name casing must be 'arkit' or 'vrm', got {casing!r}")
        if pose not in ("head", "root"):
            raise ValueError(f"VMC pose must be 'head' or 'root', got {pose!r}")
        unknown = [name for name in expressions if name not in EXPRESSION_SETS]
        if unknown or not expressions:
            raise ValueError(f"VMC expressions must be a non-empty list of {EXPRESSION_SETS}, got {list(expressions)}")
        if len(head_position) != 3 or not all(np.isfinite(head_position)):
            raise ValueError(f"VMC head position must be three finite metres, got {head_position}")
        self.casing = casing
        self.pose = pose
        self.expressions = tuple(expressions)
        self.head_position = tuple(float(c) for c in head_position)
        super().__init__(host, port)
        self._t0_ns = time.monotonic_ns()

    def messages(self, state: FaceState) -> list[bytes]:
        """One frame's OSC messages (encoded), in the order they are sent."""
        messages = [_blend_prefix(name) + struct.pack(">f", value) for name, value in self._blend_values(state)]
        messages.append(osc_message("/VMC/Ext/Blend/Apply"))
        if self.pose == "head":
            rotation = unity_head_rotation(state.pose)
            messages.append(osc_message("/VMC/Ext/Bone/Pos", "Head", *self.head_position, *map(float, rotation)))
        else:
            position, quaternion = unity_root_pose(state.pose)
            messages.append(osc_message("/VMC/Ext/Root/Pos", "root", *map(float, position), *map(float, quaternion)))
        messages.append(osc_message("/VMC/Ext/T", (time.monotonic_ns() - self._t0_ns) / 1e9))
        tracking = int(state.tracking == TrackingState.TRACKING)
        messages.append(osc_message("/VMC/Ext/OK", 1, 3, 0, tracking))
        return messages

    def bundles(self, state: FaceState) -> list[bytes]:
        """One frame's OSC bundles (each one datagram of at most `MAX_DATAGRAM_BYTES`)."""
        return pack_bundles(self.messages(state))

    def _blend_values(self, state: FaceState) -> list[tuple[str, float]]:
        return blend_values(state, self.expressions, self.casing)

    def datagrams(self, state: FaceState) -> list[bytes]:
        return self.bundles(state)
