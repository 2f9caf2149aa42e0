"""The demo performer: the avatar acting a scripted, varied sequence, rendered like webcam frames.

It is the built-in source when no webcam exists, and the ground truth for closed-loop accuracy: every
`Frame` carries the weights (53,) and head pose that produced it. The script (one loop, `len()` frames):

- a neutral hold, then each of the 19 non-neutral key expressions (design §4.1, `KEY_EXPRESSIONS`) in a
  seed-shuffled order, each somewhere between its table weights and the same pattern scaled to a peak of 1,
  with a head pose within ±15° yaw, ±10° pitch, ±8° roll;
- speech: syllable-rate jaw opening with some lip rounding;
- gaze: the eyes looking left, right, up and down;
- head motion: yaw, pitch and roll sweeps to ±25°;
- blinks every 2.5–4.5 s over everything.

Transitions ease with smoothstep between keyframes. The frames are RGB (no alpha): the render is composited
on a plain wall-coloured background with a slow light drift, as a camera would see it. Everything is
deterministic for a seed; rendering uses no MSAA (the tracker downsamples anyway, and it halves the cost).

`DemoRecording` plays the same performance pre-rendered (`models/demo_performance.mp4`, H.264, made by
`tools/build_demo_video.py`): a webcam delivers frames for free, and rendering them live on a 2-core
software rasterizer would take half the CPU from the engine it stands in front of. It is used only when
it is exactly what the live performer would render (same identity, script, size and camera), else the
performer renders live.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.config import RenderConfig
from engine.detail.weights import KEY_EXPRESSIONS, key_expression_weights
from engine.face_model import MODELS_DIR, FaceModel
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.camera import Camera, euler_to_quaternion
from engine.render.renderer import AvatarRenderer, Lighting
from engine.types import FaceState, Frame, HeadPose, TrackingState

N_CHANNELS = len(ICT_EXPRESSIONS)
DEMO_RECORDING = MODELS_DIR / "demo_performance.mp4"  # with its description beside it, demo_performance.json

log = logging.getLogger(__name__)


def _ch(name: str) -> int:
    return ICT_EXPRESSIONS.index(name)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class DemoScript:
    """One loop of the performance, sampled per frame.

    weights: (n, 53) float32 in [0, 1], ICT order. euler_deg: (n, 3) yaw, pitch, roll in degrees
    (`engine.render.camera.euler_to_quaternion`). segments: (name, first frame) of each scripted part.
    """

    fps: float
    weights: np.ndarray
    euler_deg: np.ndarray
    segments: tuple[tuple[str, int], ...]

    def __len__(self) -> int:
        return len(self.weights)

    @staticmethod
    def build(fps: float = 30.0, seed: int = 0) -> DemoScript:
        """The scripted performance for `seed` at `fps` (≈ 45 s per loop)."""
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        rng = np.random.default_rng(seed)
        keys: list[tuple[float, np.ndarray, np.ndarray]] = []  # (time s, weights, euler) keyframes
        segments: list[tuple[str, float]] = []
        t = 0.0

        def hold(duration: float, weights: np.ndarray, euler: np.ndarray, ease: float) -> None:
            nonlocal t
            keys.append((t + ease, weights, euler))
            keys.append((t + duration, weights, euler))
            t += duration

        zero, frontal = np.zeros(N_CHANNELS), np.zeros(3)
        keys.append((0.0, zero, frontal))
        segments.append(("neutral", 0.0))
        hold(1.0, zero, frontal, 0.0)

        table = key_expression_weights()
        for i in rng.permutation(np.arange(1, len(KEY_EXPRESSIONS))):
            segments.append((KEY_EXPRESSIONS[i][0], t))
            pattern = table[i] * rng.uniform(1.0, 1.0 / table[i].max())
            pose = rng.uniform([-15, -10, -8], [15, 10, 8])
            hold(1.1, pattern, pose, 0.45)
            hold(0.45, zero, pose * 0.5, 0.45)

        segments.append(("speech", t))
        speech_start = t
        hold(3.5, zero, rng.uniform([-8, -5, -4], [8, 5, 4]), 0.3)
        speech_end = t

        segments.append(("gaze", t))
        gaze = [
            {"eyeLookOut_L": 0.8, "eyeLookIn_R": 0.8},
            {"eyeLookIn_L": 0.8, "eyeLookOut_R": 0.8},
            {"eyeLookUp_L": 0.7, "eyeLookUp_R": 0.7},
            {"eyeLookDown_L": 0.6, "eyeLookDown_R": 0.6},
        ]
        for k in rng.permutation(len(gaze)):
            w = zero.copy()
            for name, value in gaze[k].items():
                w[_ch(name)] = value
            hold(0.8, w, frontal, 0.3)
        hold(0.4, zero, frontal, 0.3)

        segments.append(("head_motion", t))
        for pose in ([25, 0, 0], [-25, 0, 0], [0, 20, 0], [0, -20, 0], [0, 0, 20], [0, 0, -20], [15, 10, -10]):
            hold(0.9, zero, np.array(pose, float) * rng.uniform(0.85, 1.0), 0.7)
        hold(0.8, zero, frontal, 0.7)

        times = np.array([k[0] for k in keys])
        n = int(np.ceil(t * fps))
        frame_t = np.arange(n) / fps
        seg = np.clip(np.searchsorted(times, frame_t, side="right") - 1, 0, len(keys) - 2)
        span = np.maximum(times[seg + 1] - times[seg], 1e-9)
        s = _smoothstep((frame_t - times[seg]) / span)[:, None]
        key_w = np.stack([k[1] for k in keys])
        key_e = np.stack([k[2] for k in keys])
        weights = key_w[seg] + s * (key_w[seg + 1] - key_w[seg])
        euler = key_e[seg] + s * (key_e[seg + 1] - key_e[seg])

        # Speech: whole syllables at 4.5 Hz with a random loudness each, lip rounding on some of them.
        phase = 4.5 * np.clip(frame_t - speech_start, 0.0, None)
        syllable_id = np.floor(phase).astype(int)
        n_syllables = int(4.5 * (speech_end - speech_start - 0.3))
        talking = (frame_t >= speech_start) & (syllable_id < n_syllables)
        loud = rng.uniform(0.15, 0.55, syllable_id.max() + 1)[syllable_id]
        rounded = rng.uniform(0, 1, syllable_id.max() + 1)[syllable_id] < 0.3
        syllable = np.sin(np.pi * (phase % 1.0)) ** 2 * talking
        weights[:, _ch("jawOpen")] += loud * syllable
        weights[:, _ch("mouthFunnel")] += 0.5 * rounded * syllable

        # Blinks: 0.1 s closing, 0.15 s opening, every 2.5–4.5 s.
        blink = np.zeros(n)
        start = rng.uniform(1.0, 2.5)
        while start < t - 0.3:
            rel = frame_t - start
            blink = np.maximum(blink, np.where(rel < 0.1, _smoothstep(rel / 0.1), _smoothstep(1 - (rel - 0.1) / 0.15)))
            start += rng.uniform(2.5, 4.5)
        for name in ("eyeBlink_L", "eyeBlink_R"):
            weights[:, _ch(name)] = np.maximum(weights[:, _ch(name)], blink)

        return DemoScript(
            fps=fps,
            weights=np.clip(weights, 0.0, 1.0).astype(np.float32),
            euler_deg=euler.astype(np.float32),
            segments=tuple((name, int(round(start_t * fps))) for name, start_t in segments),
        )


class DemoPerformer:
    """An endless (or one-loop) iterator of rendered demo `Frame`s with `true_weights` and `true_pose`.

    The renderer (and its GL context) is created on the first frame, in the thread that iterates.
    `frame(i)` renders script frame i (mod one loop) directly; iteration numbers frames consecutively.
    `true_pose` follows `HeadPose`'s convention: p_cam = R·p + t, with the model origin `camera_distance_cm`
    straight ahead (the framed camera the performer renders with). `detail` (off by default) shades the
    identity's dynamic detail too: sub-millimetre relief the tracker cannot see at webcam sizes, for half
    the CPU time the pipeline's own avatar renderer needs on llvmpipe.
    """

    def __init__(
        self,
        model: FaceModel,
        identity: Identity,
        render_config: RenderConfig,
        fps: float = 30.0,
        seed: int = 0,
        size: int = 512,
        loop: bool = True,
        detail: bool = False,
    ) -> None:
        self.model = model
        self.identity = identity
        self.fps = fps
        self.seed = seed
        self.loop = loop
        self.detail = detail
        self.config = render_config.model_copy(
            update={
                "width": size, "height": size, "samples": 0, "background": (0.0, 0.0, 0.0, 0.0),
                "debug_view": "none", "follow_pose_translation": False, "backend": "egl",  # no preview window
            }
        )  # fmt: skip
        self.script = DemoScript.build(fps, seed)
        self.camera = Camera(size, size, self.config.fov_y_deg, self.config.camera_distance_cm)
        self._quaternions = euler_to_quaternion(*self.script.euler_deg.T.astype(np.float64))
        self._background = _wall(size, np.random.default_rng(seed))
        self._renderer: AvatarRenderer | None = None
        self._count = 0

    def __len__(self) -> int:
        """Frames in one loop of the script."""
        return len(self.script)

    def __iter__(self) -> Iterator[Frame]:
        while self.loop or self._count < len(self):
            yield self.frame(self._count % len(self), index=self._count)
            self._count += 1

    def true_pose(self, i: int) -> HeadPose:
        """The pose script frame i is rendered with."""
        return self.camera.framed_pose(self._quaternions[i % len(self)])

    def frame(self, i: int, index: int | None = None) -> Frame:
        """Render script frame i: (size, size, 3) uint8 RGB with its true weights and pose."""
        i = i % len(self)
        if self._renderer is None:
            self._renderer = AvatarRenderer(self.model, self.identity, self.config)
            self._renderer.detail = self.detail
        weights = self.script.weights[i]
        pose = self.true_pose(i)
        t = i / self.fps
        light = _drifting_light(t)
        self._renderer.lighting = light
        state = FaceState(pose, weights.astype(np.float64), TrackingState.TRACKING, 1.0, 0, i)
        rgba = self._renderer.render(state).image
        alpha = rgba[..., 3:4].astype(np.float32) * (1.0 / 255.0)
        gain = float(light.key_color[0])  # the wall brightens and dims with the key light
        rgb = rgba[..., :3] * alpha + self._background * (gain * (1.0 - alpha))
        image = np.clip(rgb, 0, 255).astype(np.uint8)
        return Frame(image, time.monotonic_ns(), i if index is None else index, weights.copy(), pose)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> DemoPerformer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wall(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 background: a muted wall colour, lighter at the top, a soft vignette."""
    base = rng.uniform([150, 150, 150], [200, 195, 190])
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    shade = (1.08 - 0.2 * y) * (1.0 - 0.15 * ((x - 0.5) ** 2 + (y - 0.5) ** 2))
    return (base[None, None, :] * shade[..., None]).astype(np.float32)


def _drifting_light(t: float) -> Lighting:
    """The default lighting with the key light swinging ±20° sideways and ±10 % in intensity, slowly."""
    light = Lighting()
    angle = np.radians(20.0) * np.sin(2 * np.pi * t / 17.0)
    c, s = np.cos(angle), np.sin(angle)
    d = light.key_direction
    light.key_direction = np.array([c * d[0] + s * d[2], d[1], -s * d[0] + c * d[2]], np.float32)
    light.key_color = light.key_color * np.float32(1.0 + 0.1 * np.sin(2 * np.pi * t / 11.0))
    return light


def identity_fingerprint(identity: Identity) -> str:
    """A short hash of what the performer's pixels depend on in an identity: its shape and its texture."""
    digest = hashlib.sha256(np.asarray(identity.identity_weights, np.float32).tobytes())
    if identity.texture is not None:
        digest.update(np.ascontiguousarray(identity.texture).tobytes())
    return digest.hexdigest()[:16]


def script_fingerprint(script: DemoScript) -> str:
    """A short hash of a script's per-frame weights and head angles."""
    digest = hashlib.sha256(script.weights.tobytes())
    digest.update(script.euler_deg.tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class RecordingInfo:
    """What a demo recording was rendered from (the JSON beside the video)."""

    frames: int
    fps: float
    seed: int
    size: int
    fov_y_deg: float
    camera_distance_cm: float
    identity: str  # identity_fingerprint
    script: str  # script_fingerprint

    @staticmethod
    def describe(performer: DemoPerformer) -> RecordingInfo:
        """The description of what `performer` renders."""
        return RecordingInfo(
            frames=len(performer), fps=performer.fps, seed=performer.seed, size=performer.config.width,
            fov_y_deg=performer.config.fov_y_deg, camera_distance_cm=performer.config.camera_distance_cm,
            identity=identity_fingerprint(performer.identity), script=script_fingerprint(performer.script),
        )  # fmt: skip

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @staticmethod
    def load(path: Path) -> RecordingInfo:
        return RecordingInfo(**json.loads(path.read_text()))


class DemoRecording:
    """The demo performance decoded from a video made by `tools/build_demo_video.py`, as the same `Frame`s
    (true weights and pose attached) the live `DemoPerformer` it was recorded from would render, looping.

    A frame that fails to decode mid-way is rendered live instead, so the stream never stops.
    Use `DemoRecording.open(performer)`, which refuses (None, with the reason logged) a recording that is
    missing, unreadable, or not what `performer` would render.
    """

    def __init__(self, video: Path, performer: DemoPerformer) -> None:
        self.video = video
        self.performer = performer
        self.fps = performer.fps
        self._capture = cv2.VideoCapture(str(video))
        self._position = 0  # script frame the capture decodes next

    @staticmethod
    def open(performer: DemoPerformer, video: Path = DEMO_RECORDING) -> DemoRecording | None:
        """The recording of exactly `performer`'s performance, or None (reason logged) when there is none."""
        info_path = video.with_suffix(".json")
        if not video.is_file() or not info_path.is_file():
            log.info("no demo recording at %s: the performer renders live", video)
            return None
        try:
            info = RecordingInfo.load(info_path)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("demo recording description %s is unreadable (%s): the performer renders live", info_path, exc)
            return None
        wanted = RecordingInfo.describe(performer)
        if info != wanted:
            diff = {k: (v, getattr(wanted, k)) for k, v in asdict(info).items() if getattr(wanted, k) != v}
            log.info("demo recording %s is of another performance %s: the performer renders live", video.name, diff)
            return None
        recording = DemoRecording(video, performer)
        frame_count = int(recording._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        ok, first = recording._capture.read()
        if not ok or first is None or first.shape != (info.size, info.size, 3) or frame_count != info.frames:
            log.warning("demo recording %s is unreadable or truncated: the performer renders live", video)
            recording.close()
            return None
        recording._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return recording

    def __len__(self) -> int:
        return len(self.performer)

    def __iter__(self) -> Iterator[Frame]:
        count = 0
        while self.performer.loop or count < len(self):
            yield self.frame(count % len(self), index=count)
            count += 1

    def frame(self, i: int, index: int | None = None) -> Frame:
        """Script frame i (sequential access decodes; a jump seeks), like `DemoPerformer.frame`."""
        i = i % len(self)
        if i != self._position:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, bgr = self._capture.read()
        self._position = i + 1
        if not ok or bgr is None:
            log.warning("demo recording frame %d did not decode: rendering it live", i)
            self._position = -1  # re-seek on the next frame
            return self.performer.frame(i, index)
        weights = self.performer.script.weights[i]
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Frame(image, time.monotonic_ns(), i if index is None else index, weights.copy(),
                     self.performer.true_pose(i))  # fmt: skip

    def close(self) -> None:
        self._capture.release()
        self.performer.close()

    def __enter__(self) -> DemoRecording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
