"""Choose a capture source from its spec: `auto`, `webcam[:N]`, `demo`, or a path to a video / image / folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.bundles import load_identity
from engine.config import Config
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.sources.base import FrameSource, now_ns
from engine.sources.demo import DemoPerformer, DemoRecording
from engine.sources.files import IMAGE_SUFFIXES, ImageSource, VideoFileSource
from engine.sources.webcam import WebcamSource
from engine.types import Frame

log = logging.getLogger(__name__)


class PacedSource(FrameSource):
    """A live source from an endless frame iterator (the demo performer), delivered at `fps` like a camera."""

    live = True

    def __init__(self, frames: Iterator[Frame], fps: float, description: str, close: Callable[[], None]) -> None:
        self._frames = frames
        self.fps = fps
        self.description = description
        self._close = close
        self._next_due_ns = 0
        self._index = 0

    def read(self) -> Frame | None:
        delay = (self._next_due_ns - now_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        t = now_ns()
        self._next_due_ns = max(self._next_due_ns + int(1e9 / self.fps), t)
        # A camera stamps the frame when it is captured: the render of the demo frame ends now.
        out = Frame(frame.image, t, self._index, frame.true_weights, frame.true_pose)
        self._index += 1
        return out

    def close(self) -> None:
        self._close()


def parse_webcam_spec(spec: str) -> int | None:
    """`webcam` → 0, `webcam:2` → 2, anything else → None."""
    if spec == "webcam":
        return 0
    if spec.startswith("webcam:"):
        try:
            return int(spec.split(":", 1)[1])
        except ValueError:
            raise UserError(f"bad webcam source {spec!r}: expected webcam:N with N a camera index") from None
    return None


def open_demo(config: Config) -> FrameSource:
    """The built-in demo performer: the default (or configured) identity acting a scripted sequence."""

    model = FaceModel.load()
    identity = load_identity(config.identity, model, config.detail)
    src = config.source
    performer = DemoPerformer(model, identity, config.render, fps=src.fps, seed=src.demo_seed, size=src.demo_size)
    recording = DemoRecording.open(performer) if src.demo_recording else None
    if recording is not None:
        source = PacedSource(iter(recording), src.fps, "demo performer (recorded)", recording.close)
    else:
        source = PacedSource(iter(performer), src.fps, "demo performer (rendered live)", performer.close)
    source.camera_fov_y_deg = performer.config.fov_y_deg  # the camera the performer is rendered with
    # Who is in front of that camera, known exactly: the solver's performer unless one is configured.
    source.rendered_identity = identity
    return source


def check_source_spec(spec: str) -> None:
    """Fail early, with one clear line, on a source spec that cannot work (before any model is loaded)."""
    if spec in ("auto", "demo") or parse_webcam_spec(spec) is not None:
        return
    if not Path(spec).expanduser().exists():
        raise UserError(f"source not found: {spec} (expected auto, webcam[:N], demo, or a video/image path)")


def open_source(spec: str, config: Config) -> FrameSource:
    """Open the source named by `spec` (see module docstring); errors are one clear UserError line."""
    if spec == "auto":
        index = 0
        try:
            source = WebcamSource(index, config.source.width, config.source.height, config.source.fps)
            log.info("source auto: webcam %d opened", index)
            return source
        except UserError:
            log.info("source auto: no webcam opened; using the demo performer")
            return open_demo(config)
    if spec == "demo":
        return open_demo(config)
    index = parse_webcam_spec(spec)
    if index is not None:
        return WebcamSource(index, config.source.width, config.source.height, config.source.fps)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"source not found: {spec} (expected auto, webcam[:N], demo, or a video/image path)")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path, loop=config.source.loop)
    return VideoFileSource(path, loop=config.source.loop)
