"""Pipeline wiring: one-slot hand-offs, file vs live pacing, stage errors, stop, statistics.

The stage objects here are small fakes: these tests isolate the threading from MediaPipe and OpenGL
(the end-to-end runs with real stages are in test_engine_run.py).
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
import weakref

import numpy as np
import pytest

from engine.pipeline import OneSlot, Pipeline, PipelineParts
from engine.sources.base import FrameSource, now_ns
from engine.types import FaceState, Frame, HeadPose, Landmarks, RenderedFrame, TrackingState


class CountingSource(FrameSource):
    def __init__(self, count: int, live: bool, period_s: float = 0.0) -> None:
        self.count, self.live, self.period_s = count, live, period_s
        self.description = "live fake" if live else "file fake"
        self.emitted = 0
        self.closed = False

    def read(self) -> Frame | None:
        if self.emitted >= self.count:
            return None
        time.sleep(self.period_s)
        frame = Frame(np.zeros((8, 8, 3), np.uint8), now_ns(), self.emitted)
        self.emitted += 1
        return frame

    def close(self) -> None:
        self.closed = True


class SlowTracker:
    def __init__(self, delay_s: float = 0.0, fail_at: int | None = None) -> None:
        self.delay_s, self.fail_at = delay_s, fail_at

    def process(self, frame: Frame) -> list[Landmarks]:
        if frame.index == self.fail_at:
            raise RuntimeError("tracker exploded")
        time.sleep(self.delay_s)
        points = np.zeros((478, 3))
        return [Landmarks(points, points, (8, 8), 1.0)]

    def close(self) -> None:
        pass


class EchoSolver:
    def solve(self, landmarks, t_capture_ns: int, frame_index: int) -> FaceState:
        weights = np.full(53, frame_index / 1000.0)
        state = TrackingState.TRACKING if landmarks is not None else TrackingState.LOST
        return FaceState(HeadPose.identity(), weights, state, 1.0, t_capture_ns, frame_index)


class RecordingRenderer:
    def __init__(self) -> None:
        self.thread = None

    def render(self, state: FaceState) -> RenderedFrame:
        self.thread = threading.current_thread().name
        return RenderedFrame(np.zeros((4, 4, 4), np.uint8), state, now_ns())

    def close(self) -> None:
        pass


def test_one_slot_overwrites_and_counts_drops() -> None:
    slot: OneSlot[int] = OneSlot()
    stop = threading.Event()
    assert slot.put(1, wait=False, stop=stop) and slot.put(2, wait=False, stop=stop)
    assert slot.dropped == 1 and slot.get() == 2 and slot.get(timeout=0.01) is None
    slot.close()
    assert slot.closed and not slot.put(3, wait=False, stop=stop)


def test_one_slot_wait_blocks_until_taken() -> None:
    slot: OneSlot[int] = OneSlot()
    stop = threading.Event()
    slot.put(1, wait=True, stop=stop)
    taken: list[int] = []
    reaching_for_it: list[float] = []

    def consumer() -> None:
        time.sleep(0.1)
        reaching_for_it.append(time.monotonic())
        taken.append(slot.get())

    thread = threading.Thread(target=consumer)
    thread.start()
    slot.put(2, wait=True, stop=stop)  # must wait for the consumer
    returned = time.monotonic()
    thread.join()
    # Ordered by events, not by a duration: a loaded host may pause this thread for longer than the sleep.
    assert reaching_for_it and returned >= reaching_for_it[0]
    assert taken == [1] and slot.get() == 2 and slot.dropped == 0


def test_file_source_processes_every_frame_in_order() -> None:
    source = CountingSource(25, live=False)
    renderer = RecordingRenderer()
    parts = PipelineParts(lambda: source, lambda: SlowTracker(0.004), EchoSolver, lambda: renderer)
    pipeline = Pipeline(parts)
    pipeline.run()
    indices = [r.frame.index for r in pipeline.snapshot()]
    assert indices == list(range(25))
    assert source.closed and renderer.thread == "render"
    assert pipeline.rendered == 25 and all("frame_published" in r.stamps for r in pipeline.snapshot())
    assert pipeline.snapshot()[-1].rendered is not None  # the newest keep their images
    stats = pipeline.stats()
    assert stats["frames"] == 25 and stats["dropped"] == {"capture": 0, "solved": 0}
    assert stats["stages_ms"]["track"] >= 3.0  # the tracker's 4 ms sleep is measured where it happens


def test_long_runs_keep_bounded_records_and_release_images() -> None:
    # A streamer's engine runs for hours: only the newest few results may hold images and landmarks, and the
    # record window is bounded, while whole-run counts stay exact.
    images: list[weakref.ref] = []

    class ImageSource(CountingSource):
        def read(self) -> Frame | None:
            frame = super().read()
            if frame is not None:
                images.append(weakref.ref(frame.image))
            return frame

    parts = PipelineParts(lambda: ImageSource(300, live=False), SlowTracker, EchoSolver, RecordingRenderer)
    pipeline = Pipeline(parts, keep=100, keep_images=5)
    pipeline.run()
    results = pipeline.snapshot()
    assert len(results) == 100 and [r.frame.index for r in results] == list(range(200, 300))
    assert all(r.frame.image.size == 0 and r.landmarks is None and r.rendered is None for r in results[:-5])
    assert all(r.frame.image.size > 0 and r.landmarks is not None for r in results[-5:])
    gc.collect()
    assert sum(ref() is not None for ref in images) <= 5 + 2  # the window, plus frames still in a slot
    assert pipeline.processed == 300 and pipeline.tracked == 300 and pipeline.rendered == 300
    assert all("frame_published" in r.stamps for r in results)  # stamps added after stripping still land


class MediaClockSource(CountingSource):
    """A recorded clip: frames 40 ms apart on the recording's clock, however fast they are read."""

    def read(self) -> Frame | None:
        frame = super().read()
        return None if frame is None else dataclasses.replace(frame, t_media_ns=frame.index * 40_000_000)


@pytest.mark.parametrize("tracker_delay_s", [0.0, 0.01])
def test_recorded_video_is_solved_on_its_own_clock(tracker_delay_s: float) -> None:
    parts = PipelineParts(lambda: MediaClockSource(12, live=False), lambda: SlowTracker(tracker_delay_s), EchoSolver)
    pipeline = Pipeline(parts)
    pipeline.run()
    clocks = [r.state.t_capture_ns for r in pipeline.snapshot()]
    assert clocks == [k * 40_000_000 for k in range(12)]  # the same at any processing speed
    # Played in real time (`--realtime`) the same clip is a live stream: the capture clock counts.
    parts = PipelineParts(lambda: MediaClockSource(5, live=False), SlowTracker, EchoSolver)
    live = Pipeline(parts, realtime=True)
    live.run()
    assert all(r.state.t_capture_ns == r.frame.t_capture_ns > 10**9 for r in live.snapshot())


def test_live_source_drops_stale_frames() -> None:
    # Frames arrive every 2 ms but tracking takes 15 ms: most frames must be skipped, newest first.
    parts = PipelineParts(lambda: CountingSource(200, live=True, period_s=0.002), lambda: SlowTracker(0.015),
                          EchoSolver)  # fmt: skip
    pipeline = Pipeline(parts)
    pipeline.run()
    indices = [r.frame.index for r in pipeline.snapshot()]
    assert len(indices) < 120 and indices == sorted(indices)
    assert pipeline.stats()["dropped"]["capture"] > 50


def test_max_frames_and_stop() -> None:
    parts = PipelineParts(lambda: CountingSource(10_000, live=True, period_s=0.001), SlowTracker, EchoSolver)
    pipeline = Pipeline(parts)
    pipeline.run(max_frames=30)
    assert 30 <= pipeline.processed <= 31
    pipeline = Pipeline(parts)
    t0 = time.monotonic()
    pipeline.run(duration_s=0.3)
    assert time.monotonic() - t0 < 3.0


def test_stage_error_propagates_and_stops_everything() -> None:
    source = CountingSource(1000, live=False)
    parts = PipelineParts(lambda: source, lambda: SlowTracker(fail_at=5), EchoSolver)
    pipeline = Pipeline(parts)
    with pytest.raises(RuntimeError, match="tracker exploded"):
        pipeline.run()
    assert source.closed and pipeline.processed <= 5


def test_outputs_close_once_after_every_stage_even_when_a_stage_fails() -> None:
    """`on_close` runs after the render thread's last `on_rendered` call, once, whether the run ends or fails;
    a failing close does not hide the stage's own error."""
    events: list[str] = []

    def closer(name: str, fail: bool = False):
        def close() -> None:
            events.append(f"close {name}")
            if fail:
                raise OSError("device gone")

        return close

    for tracker, expected_error in ((SlowTracker(), None), (SlowTracker(fail_at=5), "tracker exploded")):
        events.clear()
        parts = PipelineParts(lambda: CountingSource(12, live=False), lambda t=tracker: t, EchoSolver,
                              RecordingRenderer)  # fmt: skip
        parts.on_rendered.append(lambda result: events.append("frame"))
        parts.on_close += [closer("a", fail=True), closer("b")]
        pipeline = Pipeline(parts)
        if expected_error:
            with pytest.raises(RuntimeError, match=expected_error):
                pipeline.run()
        else:
            pipeline.run()
        assert events[-2:] == ["close a", "close b"] and events.count("close a") == 1
        assert "frame" not in events[-2:] and events.count("frame") == pipeline.rendered


def test_invalid_frames_count_as_lost_not_crashes() -> None:
    class PickyTracker(SlowTracker):
        def process(self, frame: Frame) -> list[Landmarks]:
            if frame.index % 2:
                raise ValueError("frame is not HxWx3 uint8")
            return super().process(frame)

    parts = PipelineParts(lambda: CountingSource(10, live=False), PickyTracker, EchoSolver)
    pipeline = Pipeline(parts)
    pipeline.run()
    states = [r.state.tracking for r in pipeline.snapshot()]
    assert pipeline.invalid_frames == 5 and states.count(TrackingState.LOST) == 5


def test_realtime_file_source_keeps_its_frame_rate() -> None:
    """--realtime plays a file at its own fps (newest frame wins) instead of decoding it all at once."""
    source = CountingSource(20, live=False)
    source.fps = 50.0
    pipeline = Pipeline(PipelineParts(lambda: source, SlowTracker, EchoSolver), realtime=True)
    t0 = time.monotonic()
    pipeline.run()
    assert time.monotonic() - t0 >= 0.35  # 20 frames at 50 fps: 0.4 s
    assert pipeline.processed >= 15


def test_the_solver_is_made_once_the_source_is_open() -> None:
    """The solver factory may depend on the open source (its camera's field of view): it runs after it."""
    order: list[str] = []

    def make_source() -> FrameSource:
        time.sleep(0.2)  # a slow camera open: the solve thread must wait for it
        order.append("source")
        return CountingSource(3, live=False)

    def make_solver() -> EchoSolver:
        order.append("solver")
        return EchoSolver()

    pipeline = Pipeline(PipelineParts(source=make_source, tracker=SlowTracker, solver=make_solver))
    pipeline.run()
    assert order == ["source", "solver"] and pipeline.processed == 3


def test_solver_camera_field_of_view_follows_the_source_unless_configured() -> None:
    from engine.app import solve_config_for
    from engine.config import load_config

    auto = load_config()
    assert auto.solve.camera_fov_y_deg is None
    demo_like = CountingSource(1, live=True)
    demo_like.camera_fov_y_deg = 31.0  # a source that knows its camera (the demo performer's render camera)
    assert solve_config_for(auto, demo_like).camera_fov_y_deg == 31.0
    # A webcam or a file does not know its lens: left to the performer estimate.
    assert solve_config_for(auto, CountingSource(1, live=False)).camera_fov_y_deg is None
    assert solve_config_for(auto, None).camera_fov_y_deg is None
    pinned = load_config(overrides=["solve.camera_fov_y_deg=60"])
    assert solve_config_for(pinned, demo_like).camera_fov_y_deg == 60.0


def test_demo_source_reports_its_render_camera() -> None:
    from engine.config import load_config
    from engine.sources.select import open_source

    config = load_config(overrides=["render.fov_y_deg=31"])  # another lens: the performer renders live
    source = open_source("demo", config)
    try:
        assert source.camera_fov_y_deg == 31.0 and "live" in source.description
    finally:
        source.close()


class CalibratingSolver(EchoSolver):
    """Records calibration requests with the frame they arrived before."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int]] = []
        self.next_index = 0

    def calibrate_neutral(self, frames: int) -> None:
        self.requests.append((self.next_index, frames))

    def solve(self, landmarks, t_capture_ns: int, frame_index: int) -> FaceState:
        self.next_index = frame_index + 1
        return super().solve(landmarks, t_capture_ns, frame_index)


def test_calibration_request_reaches_every_face_solver() -> None:
    """`request_calibration` before the run (`run --calibrate`): every face's solver starts calibrating on the
    first tracked frame, with the configured frame count, once."""
    solvers: list[CalibratingSolver] = []

    def make_solver() -> CalibratingSolver:
        solvers.append(CalibratingSolver())
        return solvers[-1]

    parts = PipelineParts(lambda: CountingSource(10, live=False), SlowTracker, make_solver, max_faces=2,
                          calibration_frames=12)  # fmt: skip
    pipeline = Pipeline(parts)
    pipeline.request_calibration()
    pipeline.run()
    assert len(solvers) == 2 and all(s.requests == [(0, 12)] for s in solvers)


class KeyRenderer(RecordingRenderer):
    """A renderer whose preview window saw `c` at frame `calibrate_at` and was closed at frame `close_at`."""

    def __init__(self, calibrate_at: int, close_at: int) -> None:
        super().__init__()
        self.calibrate_at, self.close_at = calibrate_at, close_at
        self.calibration_requested = self.preview_closed = False

    def render(self, state: FaceState) -> RenderedFrame:
        self.calibration_requested = state.frame_index == self.calibrate_at
        self.preview_closed = state.frame_index >= self.close_at
        return super().render(state)


def test_preview_window_keys_calibrate_and_close_stops() -> None:
    solvers: list[CalibratingSolver] = []

    def make_solver() -> CalibratingSolver:
        solvers.append(CalibratingSolver())
        return solvers[-1]

    renderer = KeyRenderer(calibrate_at=3, close_at=40)
    # A file source: every frame is rendered, so the "key presses" land on known frames.
    parts = PipelineParts(lambda: CountingSource(100_000, live=False), SlowTracker, make_solver, lambda: renderer,
                          calibration_frames=7)  # fmt: skip
    pipeline = Pipeline(parts)
    t0 = time.monotonic()
    pipeline.run()  # ends only because the "window" closed
    assert time.monotonic() - t0 < 20.0 and 40 < pipeline.rendered < 100
    assert len(solvers[0].requests) == 1
    frame, frames = solvers[0].requests[0]
    assert frames == 7 and frame > 3  # requested after frame 3 was rendered, applied to a later frame


def test_stats_carry_each_face_performer_estimate() -> None:
    class EstimatingSolver(EchoSolver):
        def status(self) -> dict:
            return {"performer": "auto", "converged": True, "fov_y_deg": 47.5}

    parts = PipelineParts(lambda: CountingSource(4, live=False), SlowTracker, EstimatingSolver, max_faces=2)
    pipeline = Pipeline(parts)
    pipeline.run()
    assert pipeline.stats()["performers"] == [{"performer": "auto", "converged": True, "fov_y_deg": 47.5}] * 2
    plain = Pipeline(PipelineParts(lambda: CountingSource(2, live=False), SlowTracker, EchoSolver))
    plain.run()
    assert plain.stats()["performers"] == []


def test_the_demo_performer_is_solved_as_who_it_renders_and_a_file_as_anyone(tmp_path) -> None:
    import cv2

    from engine.app import build_parts
    from engine.bundles import load_identity
    from engine.config import load_config
    from engine.face_model import FaceModel

    config = load_config()
    model = FaceModel.load()
    avatar = load_identity(config.identity, model)
    parts = build_parts(config, "demo", model, avatar, render=False)
    source = parts.source()
    try:
        solver = parts.solver()
        assert solver.performer.rendered and np.array_equal(solver.performer.identity_weights, avatar.identity_weights)
        assert solver.fitter.fov_y_deg == source.camera_fov_y_deg and solver.estimator is None
    finally:
        source.close()
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    parts = build_parts(config, str(image), model, avatar, render=False)
    with parts.source():
        solver = parts.solver()
    assert solver.performer.online and not solver.performer.rendered
    assert solver.fitter.fov_y_deg == config.performer.fov_prior_deg and solver.rest is not None
    # A named profile is used as named, even in front of the demo.
    config.performer.name = "default"
    parts = build_parts(config, "demo", model, avatar, render=False)
    source = parts.source()
    try:
        solver = parts.solver()
        assert solver.performer.name == "default" and not solver.performer.online and not solver.performer.rendered
    finally:
        source.close()


class RecordingPublisher:
    """Keeps every `status` message (state, detail) and counts the rest."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, dict]] = []
        self.params = 0

    def publish_params(self, state: FaceState) -> None:
        self.params += 1

    def publish_frame(self, frame: RenderedFrame) -> None:
        pass

    def publish_status(self, state: str, detail: dict) -> None:
        self.statuses.append((state, detail))

    def publish_stats(self, stats: dict) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_status_says_when_the_render_process_goes_down_and_comes_back() -> None:
    """A supervised renderer that is down for frames 10-19: `status` announces render_restarting then
    render_running (with the restart count), from the solve thread, once each; params never pause."""

    class FlakyRenderer(RecordingRenderer):
        def __init__(self) -> None:
            super().__init__()
            self.state, self.restarts = "running", 0

        def render(self, state: FaceState) -> RenderedFrame | None:
            down = 10 <= state.frame_index < 20
            if self.state == "restarting" and not down:
                self.restarts += 1
            self.state = "restarting" if down else "running"
            return None if down else super().render(state)

    publisher = RecordingPublisher()
    parts = PipelineParts(lambda: CountingSource(40, live=False), SlowTracker, EchoSolver, FlakyRenderer,
                          lambda: publisher)  # fmt: skip
    pipeline = Pipeline(parts)
    pipeline.run()
    render_statuses = [
        (state, detail["restarts"]) for state, detail in publisher.statuses if state.startswith("render")
    ]
    assert render_statuses == [("render_restarting", 0), ("render_running", 1)]
    assert publisher.params == 40 and pipeline.render_skipped == 10
