"""Webcam capture (OpenCV), newest frame wins; a camera that disappears is reopened with backoff."""

from __future__ import annotations

import logging
import time

import cv2

from engine.errors import UserError
from engine.sources.base import FrameSource, now_ns
from engine.types import Frame

log = logging.getLogger(__name__)


def open_capture(index: int, width: int, height: int, fps: float) -> cv2.VideoCapture | None:
    """An opened VideoCapture delivering frames, or None if no camera answers at `index`."""
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        return None
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    capture.set(cv2.CAP_PROP_FPS, fps)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # do not queue stale frames in the driver
    ok, _ = capture.read()
    if not ok:
        capture.release()
        return None
    return capture


class WebcamSource(FrameSource):
    """Frames from camera `index`. A lost camera is reopened with exponential backoff (up to `max_backoff_s`)."""

    live = True
    # Drivers do not report the lens: `camera_fov_y_deg` stays None and the performer estimate finds it.

    def __init__(
        self, index: int, width: int = 640, height: int = 480, fps: float = 30.0, max_backoff_s: float = 5.0
    ) -> None:
        self.index = index
        self._settings = (width, height, fps)
        self._capture = open_capture(index, width, height, fps)
        if self._capture is None:
            raise UserError(f"no webcam at index {index} (none opened; try --source demo or another index)")
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or fps)
        self.description = f"webcam:{index}"
        self.max_backoff_s = max_backoff_s
        self.reconnects = 0
        self._index = 0
        self._closed = False

    def read(self) -> Frame | None:
        backoff = 0.1
        while not self._closed:
            if self._capture is not None:
                ok, bgr = self._capture.read()
                if ok and bgr is not None:
                    frame = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), now_ns(), self._index)
                    self._index += 1
                    return frame
                log.warning("webcam %d stopped delivering frames; reopening", self.index)
                self._capture.release()
                self._capture = None
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            self._capture = open_capture(self.index, *self._settings)
            if self._capture is not None:
                self.reconnects += 1
                log.info("webcam %d reopened", self.index)
        return None

    def close(self) -> None:
        self._closed = True
        if self._capture is not None:
            self._capture.release()
            self._capture = None
