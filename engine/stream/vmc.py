"""VMC protocol bridge (OSC over UDP) for VSeeFace, VNyan, Warudo and other VRM apps.

One OSC bundle per frame, in this order (VMC protocol, Performer → Marionette, default port 39539):

    /VMC/Ext/Blend/Val  (s name, f value)   one per supported ARKit channel (51)
    /VMC/Ext/Blend/Apply
    /VMC/Ext/Root/Pos   (s "root", f px, py, pz, f qx, qy, qz, qw)
    /VMC/Ext/T          (f seconds)         sender time, lets receivers see the link is alive
    /VMC/Ext/OK         (i 1)               avatar loaded

VMC speaks Unity's frame: left-handed, metres, x right, y up, z forward (away from the viewer). The engine's
head pose is right-handed (x right, y up, z towards the viewer, centimetres), so the bridge negates z and
scales by 1/100; a rotation mirrored through the z = 0 plane keeps its z component and negates x and y
(the same conversion UniVRM applies between glTF and Unity).
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


def _message(address: str, *args: object) -> OscMessageBuilder:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder


class VmcBridge:
    """Sends each FaceState to a VMC receiver at `host:port` as one OSC bundle over UDP."""

    def __init__(self, host: str = "127.0.0.1", port: int = 39539, casing: Literal["arkit", "vrm"] = "arkit"):
        if casing not in ("arkit", "vrm"):
            raise ValueError(f"VMC name casing must be 'arkit' or 'vrm', got {casing!r}")
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
