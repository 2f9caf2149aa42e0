"""VMC protocol bridge (OSC over UDP) for VSeeFace, VNyan, Warudo and other VRM apps.

One OSC bundle per frame, in this order (VMC protocol, Performer → Marionette, default port 39539):

    /VMC/Ext/Blend/Val  (s name, f value)   one per supported ARKit channel (51)
    /VMC/Ext/Blend/Apply
    /VMC/Ext/Bone/Pos   (s "Head", f 0, 0, 0, f qx, qy, qz, qw)       pose "head" (default)
    /VMC/Ext/Root/Pos   (s "root", f px, py, pz, f qx, qy, qz, qw)   pose "root" instead
    /VMC/Ext/T          (f seconds)         sender time, lets receivers see the link is alive
    /VMC/Ext/OK         (i 1)               avatar loaded

VMC speaks Unity's frame: left-handed, metres, x right, y up, z forward.

Pose "head" (what face trackers send): the head's rotation as the avatar's Head bone, a local rotation in
the humanoid's normalized frame — the avatar faces +z with its right hand towards +x, and the identity is
its rest pose facing its camera. The engine's head frame has +x on the subject's left, so the rotation is
mirrored through x = 0: (qx, qy, qz, qw) → (qx, −qy, −qz, qw). A user turning to their left turns the
avatar to its own left (the receiving app decides whether its view mirrors). Position 0: the bone keeps its
place on the neck; the avatar's body and root stay where the receiver put them.

Pose "root": the whole head pose as the avatar's root transform in the camera's Unity frame — the camera at
the origin looking down +z, the head at about z = +0.6 m: the engine's right-handed camera frame mirrored
through z = 0 (position (x, y, −z)/100 m, rotation (−qx, −qy, qz, qw); UniVRM's glTF ↔ Unity conversion).
For receivers that place a floating head; most VRM apps want "head".
Names: `arkit` casing sends `eyeBlinkLeft`; `vrm` sends VRM "perfect sync" PascalCase `EyeBlinkLeft`.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import UDPClient

from engine.names import to_vrm_name
from engine.types import FaceState, HeadPose


def unity_root_pose(pose: HeadPose) -> tuple[np.ndarray, np.ndarray]:
    """Engine pose → (position (3,) metres, quaternion (4,) x, y, z, w) in Unity's left-handed frame."""
    w, x, y, z = (float(c) for c in pose.quaternion)
    tx, ty, tz = (float(c) for c in pose.translation)
    return np.array([tx, ty, -tz]) / 100.0, np.array([-x, -y, z, w])


def unity_head_rotation(pose: HeadPose) -> np.ndarray:
    """Engine head rotation → (4,) x, y, z, w: the avatar's Head bone rotation in Unity's humanoid frame."""
    w, x, y, z = (float(c) for c in pose.quaternion)
    return np.array([x, -y, -z, w])


def _message(address: str, *args: object) -> OscMessageBuilder:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder


class VmcBridge:
    """Sends each FaceState to a VMC receiver at `host:port` as one OSC bundle over UDP."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 39539,
        casing: Literal["arkit", "vrm"] = "arkit",
        pose: Literal["head", "root"] = "head",
    ):
        if casing not in ("arkit", "vrm"):
            raise ValueError(f"VMC name casing must be 'arkit' or 'vrm', got {casing!r}")
        if pose not in ("head", "root"):
            raise ValueError(f"VMC pose must be 'head' or 'root', got {pose!r}")
        self.pose = pose
        self._client = UDPClient(host, port)
        self._rename = to_vrm_name if casing == "vrm" else str
        self._t0_ns = time.monotonic_ns()
        self.sent = 0
        self.dropped = 0

    def bundle(self, state: FaceState) -> OscBundle:
        """The OSC bundle for one frame (exposed so callers and tests can inspect it)."""
        builder = OscBundleBuilder(IMMEDIATELY)
        for name, value in state.arkit().items():
            builder.add_content(_message("/VMC/Ext/Blend/Val", self._rename(name), float(value)).build())
        builder.add_content(_message("/VMC/Ext/Blend/Apply").build())
        if self.pose == "head":
            rotation = unity_head_rotation(state.pose)
            builder.add_content(_message("/VMC/Ext/Bone/Pos", "Head", 0.0, 0.0, 0.0, *map(float, rotation)).build())
        else:
            position, quaternion = unity_root_pose(state.pose)
            builder.add_content(
                _message("/VMC/Ext/Root/Pos", "root", *map(float, position), *map(float, quaternion)).build()
            )
        builder.add_content(_message("/VMC/Ext/T", (time.monotonic_ns() - self._t0_ns) / 1e9).build())
        builder.add_content(_message("/VMC/Ext/OK", 1).build())
        return builder.build()

    def send(self, state: FaceState) -> bool:
        """Send one frame's bundle as one UDP datagram (about 2.5 KB); False (and counted) if the OS refused it."""
        try:
            self._client.send(self.bundle(state))
        except OSError:  # non-blocking socket: a full send buffer or an unreachable host drops this frame only
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VmcBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
