"""Capture sources: webcam, video file, image file or folder, demo performer → `Frame`.

A source is an iterator of Frames with `close()`. `live` sources (webcam, demo) run at their own pace and the
pipeline keeps only the newest frame; file sources are processed frame by frame, in order.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator
from typing import Any

from engine.types import Frame


class FrameSource(abc.ABC):
    """One stream of frames. `read()` returns the next Frame, or None at the end of a finite source."""

    #: True for sources that run at their own pace (stale frames may be dropped downstream).
    live: bool = False
    #: Nominal frame rate, frames per second (0 when unknown).
    fps: float = 0.0
    #: What this source is, for logs and the summary.
    description: str = ""
    #: The vertical field of view (degrees) of the camera behind the frames, when the source knows it; the
    #: solver's perspective correction uses it unless `solve.camera_fov_y_deg` is set.
    camera_fov_y_deg: float | None = None
    #: Who is in front of the camera when the source renders it itself (the demo performer: an
    #: `engine.identity.Identity`, exact); the solver's performer unless `performer.name` names one.
    rendered_identity: Any = None

    @abc.abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None when a finite source is exhausted."""

    def close(self) -> None:  # noqa: B027 - sources without resources need no cleanup
        """Release devices and files."""

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_ns() -> int:
    """Monotonic nanoseconds: every timestamp in the engine uses this clock."""
    return time.monotonic_ns()
