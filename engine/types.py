"""The typed records that pipeline stages hand to each other.

Every stage consumes and produces one of these; none reaches into another stage's internals.
Units: pixels for image coordinates, centimetres for geometry, nanoseconds (monotonic) for time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from engine.names import ICT_EXPRESSIONS, ict_to_arkit


@dataclass(frozen=True)
class Frame:
    """One captured image. `image`: (H, W, 3) uint8 RGB; `t_capture_ns`: monotonic ns at capture (or at read,
    for files). `t_media_ns`: the recording's own clock (a video's presentation time, ns from its first frame)
    or None for live sources; `clock_ns` is the time the face moved on, the one filters must follow."""

    image: np.ndarray
    t_capture_ns: int
    index: int
    # Demo performer only: the weights (53,) and pose that produced this frame, for closed-loop accuracy.
    true_weights: np.ndarray | None = None
    true_pose: HeadPose | None = None
    t_media_ns: int | None = None

    def clock_ns(self, media: bool) -> int:
        """The frame's time on the recording's clock when `media` and it has one, else its capture time.
        Recorded video processed frame by frame must use the former: its speed is the machine's, not the
        performer's."""
        return self.t_media_ns if media and self.t_media_ns is not None else self.t_capture_ns


@dataclass(frozen=True)
class Landmarks:
    """MediaPipe FaceMesh output for one face.

    normalized: (478, 3) x, y in [0, 1] of width/height, z relative depth scaled like x.
    pixels: (478, 3) x, y in pixels, z in pixels (normalized z × width).
    """

    normalized: np.ndarray
    pixels: np.ndarray
    image_size: tuple[int, int]  # (width, height)
    presence: float
    face_index: int = 0


@dataclass(frozen=True)
class HeadPose:
    """Head pose: model (cm, y up, +z to viewer) → camera. quaternion wxyz, translation cm, uniform scale."""

    quaternion: np.ndarray  # (4,) w, x, y, z
    translation: np.ndarray  # (3,)
    scale: float = 1.0

    @staticmethod
    def identity() -> HeadPose:
        return HeadPose(np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), 1.0)


class TrackingState(StrEnum):
    """`tracking`: a face this frame; `coasting`: holding the last state; `lost`: eased to neutral."""

    TRACKING = "tracking"
    COASTING = "coasting"
    LOST = "lost"


@dataclass(frozen=True)
class FaceState:
    """The solver's per-frame result: what gets rendered and published.

    weights: (53,) in [0, 1], ICT order (`engine.names.ICT_EXPRESSIONS`).
    """

    pose: HeadPose
    weights: np.ndarray
    tracking: TrackingState
    confidence: float
    t_capture_ns: int
    frame_index: int
    face_index: int = 0
    expression_names: tuple[str, ...] = field(default=ICT_EXPRESSIONS)

    def arkit(self) -> dict[str, float]:
        """The ARKit-52 view (51 supported channels; `tongueOut` is announced as unsupported)."""
        return ict_to_arkit(self.weights)

    @staticmethod
    def neutral(
        t_capture_ns: int = 0, frame_index: int = -1, tracking: TrackingState = TrackingState.LOST
    ) -> FaceState:
        """The rest face, frontal, zero confidence (what `lost` eases to)."""
        zeros = np.zeros(len(ICT_EXPRESSIONS))
        return FaceState(HeadPose.identity(), zeros, tracking, 0.0, t_capture_ns, frame_index)


@dataclass(frozen=True)
class RenderedFrame:
    """A rendered avatar image: (H, W, 4) uint8 RGBA, with the state that produced it."""

    image: np.ndarray
    state: FaceState
    t_render_done_ns: int
