"""Tracking stage: `Frame` (RGB uint8) → MediaPipe FaceMesh landmarks for each face (478 with the iris points).

Wraps MediaPipe's FaceMesh graph (`mediapipe==0.10.21`, models shipped in the wheel) with `refine_landmarks`
on, so each face has 468 canonical-mesh landmarks plus 10 iris points: 468 the subject's right iris centre,
469–472 its contour, 473 the subject's left iris centre, 474–477 its contour (MediaPipe's "left"/"right" are
the subject's, as in `FACEMESH_LEFT_IRIS` = 474–477).

Presence score: FaceMesh's solution graph gates faces on the landmark model's own presence flag
(`min_tracking_confidence`) but does not output that flag. What it does output is the face *detector's* score
on the frames where the detector runs (every frame in static mode; in video mode only when a face is
(re)acquired). So `Landmarks.presence` is the score of the detection that acquired the face, carried along
while the face keeps being tracked; a face that passed the gate without any known detection reports
`min_tracking_confidence`, the lower bound the gate guarantees.

Face indices. MediaPipe lists the faces of each frame in its own order, which can change from frame to frame
when several faces are tracked. `FaceSlots` gives each face a stable index (`Landmarks.face_index`, the
`face` field on the wire) by matching it to the faces of the previous frames; with `max_faces` 1 the only
face is always 0.

A `FaceTracker` is not thread-safe: use one per thread.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from types import TracebackType

import numpy as np
from scipy.optimize import linear_sum_assignment

from engine.config import TrackingConfig
from engine.types import Frame, Landmarks

N_LANDMARKS_REFINED = 478
N_LANDMARKS_BASIC = 468
MIN_IMAGE_SIZE = 32  # pixels; below this FaceMesh cannot find a face and some graph stages misbehave

_GRAPH = "mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb"
# Calculator options addressed by their expanded subgraph path inside the graph.
_DETECTION_THRESHOLD = (
    "__".join(
        ("facedetectionshortrangecpu", "facedetectionshortrange", "facedetection", "TensorsToDetectionsCalculator")
    )
    + ".min_score_thresh"
)
_TRACKING_THRESHOLD = "facelandmarkcpu__ThresholdingCalculator.threshold"


LANDMARK_REGION_NAMES = ("eyes", "brows", "nose", "lips", "face_oval", "iris", "other")


def landmark_regions() -> np.ndarray:
    """(478,) str: the region of each landmark, from MediaPipe's own connection sets (a fresh copy).

    `eyes`: eyelid contours; `brows`; `nose`; `lips`: outer and inner lip contours; `face_oval`: the face
    outline (a silhouette: it slides over the surface as the head turns, so solvers should trust it less);
    `iris`: 468..477; `other`: the rest of the mesh. Where MediaPipe's sets overlap, the later name wins.
    """
    return _landmark_regions().copy()


@functools.cache
def _landmark_regions() -> np.ndarray:
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def ids(*sets: frozenset[tuple[int, int]]) -> list[int]:
        return sorted({i for s in sets for edge in s for i in edge})

    region = np.full(N_LANDMARKS_REFINED, "other", dtype="<U9")
    region[ids(fmc.FACEMESH_FACE_OVAL)] = "face_oval"
    region[ids(fmc.FACEMESH_NOSE)] = "nose"
    region[ids(fmc.FACEMESH_LEFT_EYEBROW, fmc.FACEMESH_RIGHT_EYEBROW)] = "brows"
    region[ids(fmc.FACEMESH_LIPS)] = "lips"
    region[ids(fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_RIGHT_EYE)] = "eyes"
    region[N_LANDMARKS_BASIC:] = "iris"
    return region


class InvalidFrameError(ValueError):
    """A frame the tracker cannot take (wrong type, dtype, shape, size or memory layout); says which."""


def validate_image(image: object) -> np.ndarray:
    """Check that `image` is an (H, W, 3) uint8 C-contiguous RGB array at least MIN_IMAGE_SIZE a side.

    Returns the array unchanged; raises InvalidFrameError naming what was wrong.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidFrameError(f"frame image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidFrameError(f"frame image must be H×W×3 RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidFrameError(f"frame image must be uint8, got dtype {image.dtype}")
    height, width = image.shape[:2]
    if height < MIN_IMAGE_SIZE or width < MIN_IMAGE_SIZE:
        raise InvalidFrameError(f"frame image is {width}×{height}; at least {MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE} needed")
    if not image.flags.c_contiguous:
        raise InvalidFrameError("frame image must be C-contiguous (use np.ascontiguousarray on views and slices)")
    return image


# A serialized NormalizedLandmarkList with only x, y, z set is a run of 17-byte records:
# 0x0a 0x0f (landmark, 15 bytes) 0x0d x:f32 0x15 y:f32 0x1d z:f32 (little-endian).
_RECORD = 17
_TAG_COLUMNS = np.array([0, 1, 2, 7, 12])
_TAG_BYTES = np.array([0x0A, 0x0F, 0x0D, 0x15, 0x1D], dtype=np.uint8)
_FLOAT_COLUMNS = np.array([3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16])


def _landmark_array(serialized: bytes) -> np.ndarray:
    """A serialized NormalizedLandmarkList → (N, 3) float32 x, y, z.

    Decodes the wire bytes with numpy (~10 µs for 478 points, against ~300 µs parsing them into protobuf
    objects and reading 1,434 attributes from Python); parses properly if any record has another layout.
    """
    raw = np.frombuffer(serialized, dtype=np.uint8)
    if len(raw) % _RECORD == 0:
        records = raw.reshape(-1, _RECORD)
        if (records[:, _TAG_COLUMNS] == _TAG_BYTES).all():
            return np.ascontiguousarray(records[:, _FLOAT_COLUMNS]).view("<f4").reshape(-1, 3)
    from mediapipe.framework.formats import landmark_pb2

    parsed = landmark_pb2.NormalizedLandmarkList.FromString(serialized)
    return np.array([(p.x, p.y, p.z) for p in parsed.landmark], dtype=np.float32)


@functools.cache
def _graph_class() -> type:
    """MediaPipe's SolutionBase, returning proto-list outputs as serialized bytes instead of parsed messages
    (the landmarks are decoded by `_landmark_array`; parsing them into Python protobufs first costs more
    than the rest of the wrapper). Built on first use: importing mediapipe takes about a second."""
    from mediapipe.python._framework_bindings import _packet_getter
    from mediapipe.python.solution_base import PacketDataType, SolutionBase

    class _SerializedOutputs(SolutionBase):
        def _get_packet_content(self, packet_data_type: PacketDataType, output_packet: object) -> object:
            if packet_data_type == PacketDataType.PROTO_LIST and not output_packet.is_empty():
                return _packet_getter._get_serialized_proto_list(output_packet)
            return super()._get_packet_content(packet_data_type, output_packet)

    return _SerializedOutputs


def _boxes(points: np.ndarray) -> np.ndarray:
    """(F, N, 2) normalized points → (F, 4) boxes x0, y0, x1, y1."""
    return np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4), (B, 4) boxes → (A, B) intersection over union."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


class FaceTracker:
    """MediaPipe FaceMesh on RGB frames.

    `static=True` (or `config.static_image_mode`) treats every frame as an unrelated still: the face detector
    runs each time (slower, no temporal smoothing) — use it for photos and enrollment images. Otherwise the
    previous frame's landmarks seed the next frame's crop (video mode).
    """

    def __init__(self, config: TrackingConfig | None = None, *, static: bool | None = None) -> None:
        self.config = config if config is not None else TrackingConfig()
        self.static = self.config.static_image_mode if static is None else static
        self._graph = _graph_class()(
            binary_graph_path=_GRAPH,
            side_inputs={
                "num_faces": self.config.max_faces,
                "with_attention": self.config.refine_landmarks,
                "use_prev_landmarks": not self.static,
            },
            calculator_params={
                _DETECTION_THRESHOLD: self.config.min_detection_confidence,
                _TRACKING_THRESHOLD: self.config.min_tracking_confidence,
            },
            outputs=["multi_face_landmarks", "face_detections"],
        )
        self._prev_boxes = np.zeros((0, 4))
        self._prev_scores = np.zeros(0)

    @property
    def n_landmarks(self) -> int:
        """478 with refined landmarks (iris), 468 without."""
        return N_LANDMARKS_REFINED if self.config.refine_landmarks else N_LANDMARKS_BASIC

    def process(self, frame: Frame) -> list[Landmarks]:
        """Track one frame: a list with one `Landmarks` per face found (empty when there is none).

        Raises InvalidFrameError for an image that is not (H, W, 3) uint8 C-contiguous of a usable size.
        """
        return self.process_image(frame.image)

    def process_image(self, image: np.ndarray) -> list[Landmarks]:
        """Same as `process`, on a bare (H, W, 3) uint8 RGB array."""
        if self._graph is None:
            raise RuntimeError("FaceTracker is closed")
        image = validate_image(image)
        height, width = image.shape[:2]
        result = self._graph.process({"image": image})
        faces = result.multi_face_landmarks or []
        if not faces:
            self._prev_boxes, self._prev_scores = np.zeros((0, 4)), np.zeros(0)
            return []
        normalized = np.stack([_landmark_array(face) for face in faces]).astype(np.float64)
        # MediaPipe can emit NaN for a degenerate crop; such a face is unusable downstream, so it is dropped.
        finite = np.isfinite(normalized).all(axis=(1, 2))
        normalized = normalized[finite]
        boxes = _boxes(normalized[:, :, :2])
        presence = self._presence(boxes, result.face_detections)
        self._prev_boxes, self._prev_scores = boxes, presence
        scale = np.array([width, height, width], dtype=np.float64)
        return [
            Landmarks(
                normalized=normalized[k].astype(np.float32),
                pixels=(normalized[k] * scale).astype(np.float32),
                image_size=(width, height),
                presence=float(presence[k]),
                face_index=k,
            )
            for k in range(len(normalized))
        ]

    def _presence(self, boxes: np.ndarray, serialized_detections: list[bytes] | None) -> np.ndarray:
        """(F, 4) face boxes → (F,) presence: best-overlapping detection's score, else the carried score."""
        floor = self.config.min_tracking_confidence
        presence = np.full(len(boxes), floor)
        if serialized_detections:
            from mediapipe.framework.formats import detection_pb2

            detections = [detection_pb2.Detection.FromString(d) for d in serialized_detections]
            det_boxes = np.array(
                [
                    (b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height)
                    for b in (d.location_data.relative_bounding_box for d in detections)
                ]
            )
            det_scores = np.array([d.score[0] if d.score else floor for d in detections])
            ref_boxes, ref_scores = det_boxes, det_scores
        else:
            ref_boxes, ref_scores = self._prev_boxes, self._prev_scores
        if len(ref_boxes) and len(boxes):
            overlap = _iou(boxes, ref_boxes)
            best = overlap.argmax(axis=1)
            matched = overlap[np.arange(len(boxes)), best] > 0.1
            presence[matched] = np.maximum(ref_scores[best[matched]], floor)
        return presence

    def close(self) -> None:
        """Release the MediaPipe graph (idempotent)."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FaceSlots:
    """Stable face indices across frames for up to `max_faces` faces.

    Each slot remembers where its face was last seen (landmark centroid and size, in pixels). A new frame's
    faces are matched to the remembered slots by the distance between centroids in units of the slot's face
    size (an optimal one-to-one assignment), and a match only counts below `max_jump` face sizes — a face
    does not cross its own width between frames, a different person usually sits further away. Faces left
    over take the lowest free slots, so slot 0 (the face that is rendered and drives VMC and the status
    topic) is the first face found; a face that leaves and comes back near where it was gets its slot back
    while no other face has taken it.
    """

    def __init__(self, max_faces: int, max_jump: float = 1.0) -> None:
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        self.max_faces = max_faces
        self.max_jump = max_jump
        self._centers: list[np.ndarray | None] = [None] * max_faces
        self._sizes = np.ones(max_faces)

    def assign(self, faces: list[Landmarks]) -> list[Landmarks]:
        """One frame's faces (tracker order) → the same faces with `face_index` set to their slot, in slot
        order; at most `max_faces` of them (extra faces, beyond the slots, are dropped)."""
        if not faces:
            return []
        if self.max_faces == 1:  # the only face is face 0 (no positions to remember: nothing to match)
            first = faces[0]
            return [first if first.face_index == 0 else dataclasses.replace(first, face_index=0)]
        points = [np.asarray(f.pixels, dtype=np.float64)[:, :2] for f in faces]
        centers = np.array([p.mean(axis=0) for p in points])
        sizes = np.array([float(np.ptp(p, axis=0).max()) for p in points])
        slot_of = [-1] * len(faces)
        known = [k for k, c in enumerate(self._centers) if c is not None]
        if known and self.max_faces > 1:
            remembered = np.array([self._centers[k] for k in known])
            cost = np.linalg.norm(centers[:, None, :] - remembered[None, :, :], axis=2)
            cost /= np.maximum(self._sizes[known], 1e-6)[None, :]
            for face, column in zip(*linear_sum_assignment(cost), strict=True):
                if cost[face, column] < self.max_jump:
                    slot_of[face] = known[column]
        taken = {slot for slot in slot_of if slot >= 0}
        free = iter(k for k in range(self.max_faces) if k not in taken)
        for face in range(len(faces)):
            if slot_of[face] < 0:
                slot_of[face] = next(free, -1)
        out = []
        for face in sorted((f for f in range(len(faces)) if slot_of[f] >= 0), key=lambda f: slot_of[f]):
            slot = slot_of[face]
            self._centers[slot], self._sizes[slot] = centers[face], max(sizes[face], 1e-6)
            out.append(dataclasses.replace(faces[face], face_index=slot))
        return out


def benchmark(image: np.ndarray, frames: int = 200, config: TrackingConfig | None = None) -> dict[str, float]:
    """Milliseconds per frame of MediaPipe's own `FaceMesh` solution and of `FaceTracker` on the same
    (H, W, 3) uint8 image in video mode. The two run in pairs, alternating which goes first, so both see
    the same machine load; `overhead_ms` is the median paired difference (the wrapper's own cost: frame
    checks, decoding, presence), robust to load that a difference of medians is not.
    """
    import mediapipe as mp

    config = config if config is not None else TrackingConfig()
    image = validate_image(image)
    times = np.zeros((frames, 2), dtype=np.int64)
    with (
        mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=config.max_faces,
            refine_landmarks=config.refine_landmarks,
            min_detection_confidence=config.min_detection_confidence,
            min_tracking_confidence=config.min_tracking_confidence,
        ) as raw,
        FaceTracker(config, static=False) as tracker,
    ):
        runners = (lambda: raw.process(image), lambda: tracker.process_image(image))
        for k in range(-5, frames):  # the first frames run the detector and warm caches
            for which in (0, 1) if k % 2 == 0 else (1, 0):
                start = time.perf_counter_ns()
                runners[which]()
                if k >= 0:
                    times[k, which] = time.perf_counter_ns() - start
    ms = times / 1e6
    return {
        "mediapipe_p50_ms": float(np.median(ms[:, 0])),
        "mediapipe_p95_ms": float(np.percentile(ms[:, 0], 95)),
        "tracker_p50_ms": float(np.median(ms[:, 1])),
        "tracker_p95_ms": float(np.percentile(ms[:, 1], 95)),
        "overhead_ms": float(np.median(ms[:, 1] - ms[:, 0])),
    }
