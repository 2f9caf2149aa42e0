"""File sources: a video file (OpenCV) or one image / a folder of images (sorted by name)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np

from engine.errors import UserError
from engine.sources.base import FrameSource, now_ns
from engine.types import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# The rate a folder of images is played at (its frames' media clock).
IMAGE_SEQUENCE_FPS = 30.0
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def read_image_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file (alpha composited onto black); UserError names unreadable files."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise UserError(f"image not found: {path}")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise UserError(f"cannot read image {path}: not a supported image file or corrupt")
    if image.dtype != np.uint8:  # 16-bit PNGs: keep the top byte
        image = (image / 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3].astype(np.float32) * alpha).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2RGB)


class VideoFileSource(FrameSource):
    """Every frame of a video file, in order; `loop` restarts at the end."""

    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"video not found: {self.path}")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise UserError(f"cannot open video {self.path}: unsupported format or corrupt file")
        ok, first = self._capture.read()
        if not ok or first is None:
            self._capture.release()
            raise UserError(f"cannot read video {self.path}: it holds no decodable frame")
        self._pending: np.ndarray | None = first
        self.loop = loop
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.description = f"video {self.path.name}"
        self._index = 0
        self.ended_early = 0  # frames the container declared but the file did not deliver
        self._loop_start = 0  # index of the first frame of the current pass (loop)
        self._loop_offset_ns = 0  # media time at which the current pass started
        self._last_media_ns = 0

    def read(self) -> Frame | None:
        if self._pending is not None:
            bgr, self._pending = self._pending, None
        else:
            ok, bgr = self._capture.read()
            if not ok and self.loop and self._index > 0:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._loop_offset_ns = self._last_media_ns + round(1e9 / (self.fps or IMAGE_SEQUENCE_FPS))
                self._loop_start = self._index
                ok, bgr = self._capture.read()
            if not ok or bgr is None:
                self._report_end()
                return None
        self._last_media_ns = self._loop_offset_ns + self._position_ns(self._index - self._loop_start)
        frame = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), now_ns(), self._index, t_media_ns=self._last_media_ns)
        self._index += 1
        return frame

    def _report_end(self) -> None:
        """Say once, when a video ends before the frame count its container declares, that frames are missing
        (a truncated or damaged file would otherwise just end early, as if it were complete)."""
        missing = self.frame_count - self._index
        if missing > 0 and not self.ended_early:
            self.ended_early = missing
            log.warning("video %s ended after %d of its %d frames: truncated or damaged (%d missing)",
                        self.path.name, self._index, self.frame_count, missing)  # fmt: skip

    def _position_ns(self, position: int) -> int:
        """The presentation time (ns from the first frame) of the frame just decoded, the `position`-th of this
        pass; from its index at the nominal rate where the container reports none (OpenCV gives 0 or NaN)."""
        if position == 0:
            return 0
        msec = float(self._capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
        if math.isfinite(msec) and msec > 0.0:
            return round(msec * 1e6)
        return round(position * 1e9 / (self.fps or IMAGE_SEQUENCE_FPS))

    def close(self) -> None:
        self._capture.release()


class ImageSource(FrameSource):
    """One image file, or every image in a folder sorted by name; unreadable files are clear errors."""

    def __init__(self, path: Path, loop: bool = False) -> None:
        path = Path(path)
        if path.is_dir():
            self.paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.paths:
                raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        elif path.is_file():
            self.paths = [path]
        else:
            raise UserError(f"image not found: {path}")
        self.loop = loop
        self.fps = IMAGE_SEQUENCE_FPS
        self.description = f"images {path.name} ({len(self.paths)})"
        self._index = 0

    def read(self) -> Frame | None:
        if self._index >= len(self.paths) and not self.loop:
            return None
        image = read_image_rgb(self.paths[self._index % len(self.paths)])
        # A folder of images plays as a clip at the nominal rate, on its own clock like a video.
        frame = Frame(image, now_ns(), self._index, t_media_ns=round(self._index * 1e9 / self.fps))
        self._index += 1
        return frame
