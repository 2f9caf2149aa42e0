"""`params` → the browser's per-frame message, computed once per frame by `serve` for every page.

The page renders a frame from this message alone, with the desktop renderer's own numbers: the CPU-side maths
that `AvatarRenderer.upload` does per frame runs here, in the same Python functions, and the page only applies
it (one source of truth; nothing of it is ported to JavaScript):

- ARKit blendshapes → the 53 ICT weights (`engine.names.arkit_to_ict`'s mapping), float32, and the pose as
  `params_to_face_state` reads it;
- the model-view matrix (`engine.render.camera.Camera.model_view`, framed or following the pose translation);
- the active key expressions and their packed coefficients c_kj (`engine.render.renderer.key_weight_uniforms`
  with `render.detail_key_threshold`);
- the eyeball rotations (`engine.solve.eyes.eye_rotations`), only when a gaze channel is non-zero (the desktop
  keeps the rest rows then, bit for bit).

Wire format (one binary WebSocket message, little-endian):

    uint32      n: length of the JSON header in bytes
    n bytes     UTF-8 JSON, space-padded so that 4 + n is a multiple of 4:
                {"type": "params", "seq", "frame_index", "face", "identity", "source", "t_capture_ns",
                 "tracking": {"state", "confidence"}, "pose": {"quaternion", "translation", "scale"},
                 "n_active", "active": [1..19], "eyes": bool, "age_ms"}
    float32[53]            ICT weights (the order of engine.names.ICT_EXPRESSIONS)
    float32[16]            model-view matrix, column-major (as uniformMatrix4fv takes it)
    float32[18]            left then right eyeball rotation, row-major 3×3 (identity when "eyes" is false)
    float32[n_active·4·K]  the active key expressions' coefficients, K = the manifest's mask_texels

`age_ms` is how old the capture was when this message was made: on one machine (the engine reached over
loopback) capture → now on the shared monotonic clock, exactly; across machines the engine's own capture → publish
plus the time here since receiving (the network hop between is not known and not counted). The page adds its
WebSocket hop (half the ping round trip) and its own wait until the frame is drawn.
"""

from __future__ import annotations

import json
import math
import struct
import time

import numpy as np

from engine.config import RenderConfig
from engine.detail.weights import N_KEY_EXPRESSIONS
from engine.names import ARKIT_BLENDSHAPES, ICT_EXPRESSIONS, arkit_to_ict_names
from engine.render.camera import Camera
from engine.render.mesh import mask_channels
from engine.render.renderer import key_weight_uniforms
from engine.solve.eyes import GAZE_CHANNELS, eye_rotations
from engine.stream.schema import Message
from engine.types import HeadPose

N_WEIGHTS = len(ICT_EXPRESSIONS)
_IDENTITY_EYES = np.tile(np.eye(3, dtype=np.float32).reshape(-1), 2)
# engine.names.arkit_to_ict's mapping, tabulated once: it derives each channel's ICT indices from the names on
# every call (~0.6 ms a frame, most of serve's per-frame cost); a test holds the two equal.
_ARKIT_TO_ICT = {name: [ICT_EXPRESSIONS.index(n) for n in arkit_to_ict_names(name)] for name in ARKIT_BLENDSHAPES}


def ict_weights(blendshapes: dict[str, float]) -> np.ndarray:
    """{ARKit name: weight} → (53,) float32 ICT weights, as `engine.names.arkit_to_ict` (merged pairs drive both
    sides; the message was validated, so every name is known)."""
    out = np.zeros(N_WEIGHTS, np.float64)
    for name, value in blendshapes.items():
        for index in _ARKIT_TO_ICT[name]:
            out[index] = value
    return out.astype(np.float32)


class FramePreparer:
    """Makes the per-frame binary message for `render` settings (camera, framing, key threshold).

    same_clock: the engine runs on this machine (its monotonic clock is ours), so ages are exact.
    """

    def __init__(self, render: RenderConfig, same_clock: bool = True) -> None:
        self.render = render
        self.same_clock = same_clock
        self.camera = Camera(render.width, render.height, render.fov_y_deg, render.camera_distance_cm)
        self.channels = mask_channels()
        self.mask_texels = -(-len(self.channels) // 4)

    def prepare(self, message: Message, now_ns: int | None = None) -> bytes:
        """The binary WebSocket message for one validated `params` Message."""
        header = message.header
        pose = header["pose"]
        weights = ict_weights(header["blendshapes"])
        head = HeadPose(np.asarray(pose["quaternion"], float), np.asarray(pose["translation"], float), pose["scale"])
        model_view = self.camera.model_view(head, self.render.follow_pose_translation).T
        uniforms = key_weight_uniforms(weights, self.channels, self.mask_texels, self.render.detail_key_threshold)
        n_active = len(uniforms.active)
        coefficients = uniforms.coefficients[: n_active * 4 * self.mask_texels]
        gaze = bool(np.any(weights[GAZE_CHANNELS]))
        eyes = eye_rotations(np.asarray(weights, dtype=np.float64)).astype(np.float32) if gaze else _IDENTITY_EYES
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        if self.same_clock:
            age_ns = now_ns - int(header["t_capture_ns"])
        else:
            age_ns = int(header["t_publish_ns"]) - int(header["t_capture_ns"]) + now_ns - message.t_receive_ns
        meta = {
            "type": "params",
            "seq": message.seq,
            "frame_index": header["frame_index"],
            "face": header["face"],
            "identity": header["identity"],
            "source": header["source"],
            "t_capture_ns": header["t_capture_ns"],
            "tracking": header["tracking"],
            "pose": header["pose"],
            "n_active": n_active,
            "active": [int(a) for a in uniforms.active],
            "eyes": gaze,
            "age_ms": round(age_ns / 1e6, 3),
        }
        text = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
        text += b" " * (-(4 + len(text)) % 4)
        body = np.concatenate(
            [weights, model_view.reshape(-1), np.asarray(eyes, np.float32).reshape(-1), coefficients]
        ).astype("<f4")
        return struct.pack("<I", len(text)) + text + body.tobytes()


def parse_frame(data: bytes, mask_texels: int) -> tuple[dict, dict[str, np.ndarray]]:
    """The inverse of `FramePreparer.prepare` (tests, tools): (JSON header, {weights, model_view, eyes, coef})."""
    (n,) = struct.unpack_from("<I", data, 0)
    meta = json.loads(data[4 : 4 + n])
    floats = np.frombuffer(data, "<f4", offset=4 + n)
    n_coef = meta["n_active"] * 4 * mask_texels
    if len(floats) != N_WEIGHTS + 16 + 18 + n_coef:
        raise ValueError(f"frame message holds {len(floats)} floats, expected {N_WEIGHTS + 34 + n_coef}")
    arrays = {
        "weights": floats[:N_WEIGHTS],
        "model_view": floats[N_WEIGHTS : N_WEIGHTS + 16],
        "eyes": floats[N_WEIGHTS + 16 : N_WEIGHTS + 34],
        "coef": floats[N_WEIGHTS + 34 :],
    }
    return meta, arrays


def max_message_bytes() -> int:
    """An upper bound of one message's size (every key active; JSON of 51 weights and the header)."""
    return 4 + 4096 + 4 * (N_WEIGHTS + 34 + (N_KEY_EXPRESSIONS - 1) * 4 * math.ceil(len(mask_channels()) / 4))
