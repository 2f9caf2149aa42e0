"""Several faces at once (`tracking.max_faces`): stable face indices across frames, one solver and one
`params` stream (`face` field) per face. The unit tests drive `FaceSlots` with synthetic landmark sets; the
end-to-end test runs real MediaPipe, the solver and ZeroMQ on two demo performers side by side."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from engine.config import SolveConfig, StreamConfig, TrackingConfig
from engine.face_model import MODELS_DIR, FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.pipeline import Pipeline, PipelineParts
from engine.solve.face_solver import FaceSolver
from engine.sources.base import FrameSource, now_ns
from engine.tracking import FaceSlots, FaceTracker
from engine.types import Frame, Landmarks, TrackingState


def _face(center_x: float, center_y: float, size: float = 100.0, index: int = 0) -> Landmarks:
    """478 points spread over a `size`-pixel square around the centre (the tracker's own index `index`)."""
    rng = np.random.default_rng(int(center_x * 7 + center_y))
    pixels = np.column_stack([rng.uniform(-0.5, 0.5, (478, 2)) * size + [center_x, center_y], np.zeros(478)])
    return Landmarks(pixels / 640.0, pixels, (640, 480), 1.0, index)


def _slots_by_x(faces: list[Landmarks]) -> dict[int, float]:
    return {f.face_index: round(float(f.pixels[:, 0].mean()), -1) for f in faces}


def test_slots_follow_faces_when_the_tracker_reorders_them() -> None:
    slots = FaceSlots(2)
    first = slots.assign([_face(150, 200, index=0), _face(450, 200, index=1)])
    assert _slots_by_x(first) == {0: 150, 1: 450}
    # MediaPipe lists them the other way round and both moved a little: the indices stay with the faces.
    second = slots.assign([_face(470, 210, index=0), _face(160, 190, index=1)])
    assert _slots_by_x(second) == {0: 160, 1: 470}
    assert [f.face_index for f in second] == [0, 1]  # slot order


def test_a_face_keeps_its_slot_while_another_comes_and_goes() -> None:
    slots = FaceSlots(3)
    slots.assign([_face(150, 200), _face(450, 200)])
    only_right = slots.assign([_face(455, 200)])
    assert _slots_by_x(only_right) == {1: 460}  # face 1 is still 1 though it is alone now
    # A newcomer far from every remembered face takes the lowest free slot (0, whose face left).
    newcomer = slots.assign([_face(455, 200), _face(300, 400)])
    assert _slots_by_x(newcomer) == {0: 300, 1: 460}
    # The first face returns near its old place while 0 is taken: it gets the next free slot.
    back = slots.assign([_face(455, 200), _face(300, 400), _face(150, 200)])
    assert _slots_by_x(back) == {0: 300, 1: 460, 2: 150}


def test_one_face_is_always_face_zero_and_extra_faces_are_dropped() -> None:
    single = FaceSlots(1)
    assert [f.face_index for f in single.assign([_face(100, 100, index=0)])] == [0]
    assert [f.face_index for f in single.assign([_face(600, 400, index=0)])] == [0]  # a jump: still face 0
    pair = FaceSlots(2)
    out = pair.assign([_face(100, 100), _face(300, 100), _face(500, 100)])
    assert len(out) == 2 and {f.face_index for f in out} == {0, 1}
    with pytest.raises(ValueError, match="max_faces"):
        FaceSlots(0)


class _ListSource(FrameSource):
    def __init__(self, images: list[np.ndarray]) -> None:
        self.images, self.index = images, 0
        self.live, self.fps, self.description = False, 30.0, "two demo performers"

    def read(self) -> Frame | None:
        if self.index >= len(self.images):
            return None
        frame = Frame(self.images[self.index], now_ns(), self.index)
        self.index += 1
        return frame

    def close(self) -> None:
        pass


def _demo_frames(count: int) -> list[np.ndarray]:
    """The shipped demo recording's frames 0.. and 150.. side by side (two performers, different moments)."""
    capture = cv2.VideoCapture(str(MODELS_DIR / "demo_performance.mp4"))
    frames = []
    while len(frames) < 150 + count:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    if len(frames) < 150 + count:
        pytest.skip("the shipped demo recording could not be decoded")
    return [np.ascontiguousarray(np.concatenate([frames[i], frames[150 + i]], axis=1)) for i in range(count)]


def test_two_performers_are_solved_and_published_as_face_0_and_1(face_model: FaceModel) -> None:
    from engine.stream.client import StreamClient
    from engine.stream.publisher import Publisher

    images = _demo_frames(40)
    embedding = LandmarkEmbedding.load()
    identity = Identity("t", face_model.model_id, face_model.default_identity_weights(), np.zeros(len(ICT_EXPRESSIONS)))
    publishers: list[Publisher] = []

    def make_publisher() -> Publisher:
        publishers.append(Publisher(StreamConfig(params_port=0, frame_port=0, asset_port=0), "two-faces"))
        return publishers[0]

    parts = PipelineParts(
        source=lambda: _ListSource(images),
        tracker=lambda: FaceTracker(TrackingConfig(max_faces=2)),
        solver=lambda: FaceSolver(face_model, embedding, identity, SolveConfig(camera_fov_y_deg=25.0)),
        publisher=make_publisher,
        max_faces=2,
    )
    pipeline = Pipeline(parts, realtime=False)
    received: dict[int, int] = {}

    def listen() -> None:
        while not publishers:
            time.sleep(0.01)
        with StreamClient(publishers[0].endpoints["params"]) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(received) < 2:
                for face in (0, 1):
                    message = client.latest("params", face)
                    if message is not None:
                        received[face] = int(message.header["face"])
                time.sleep(0.01)

    listener = threading.Thread(target=listen)
    listener.start()
    pipeline.run()
    listener.join(65)
    assert not pipeline.errors
    results = list(pipeline.results)
    assert len(results) == len(images)
    assert received == {0: 0, 1: 1}  # both faces on the wire, each with its own index
    # Both tracked nearly always, and each index stays on its own side of the picture (stable slots).
    sides = {0: set(), 1: set()}
    tracked = {0: 0, 1: 0}
    for result in results:
        assert [s.face_index for s in result.states] == [0, 1]
        for state in result.states:
            if state.tracking == TrackingState.TRACKING:
                tracked[state.face_index] += 1
                sides[state.face_index].add(bool(state.pose.translation[0] > 0))
    assert min(tracked.values()) >= 0.9 * len(results)
    assert len(sides[0]) == 1 and len(sides[1]) == 1 and sides[0] != sides[1]
    # Two different moments of the performance: the faces' weights differ.
    last = results[-1].states
    assert float(np.abs(last[0].weights - last[1].weights).max()) > 0.1
    assert pipeline.published["params"] >= 2 * len(results) - 5
