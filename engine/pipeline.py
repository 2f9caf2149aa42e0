"""The live pipeline: four threads joined by one-slot hand-offs, with per-frame timing. No face math here.

    capture ──slot──▶ track ──slot──▶ solve + publish params ──slot──▶ render + encode + publish frame

Live sources (webcam, demo) overwrite the capture and render slots so those stages always take the newest
item (stale ones are dropped and counted); file sources make the producer wait so that every frame is
processed in order. Tracked frames are never dropped: the solver needs every one for its filters, and it is
the faster stage. Tracking and solving run on separate threads because MediaPipe's graph runs with the GIL
released: the solver works on frame n while MediaPipe reads frame n + 1, so solving costs the tracker's
throughput almost nothing where a second core exists.
`params` leave as soon as the frame is solved: small parameter messages never wait for the avatar render
(which on a CPU-only machine is the slowest stage), so remote renderers and VMC apps get the tracker's full
rate and latency while the local render runs at its own. Every stage creates its resources on its own thread
(OpenGL contexts belong to the thread that made them; the publisher's frame socket alone is used by the render
thread, handed over through the slot's lock). Timestamps are monotonic nanoseconds.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from engine.errors import Stopping
from engine.metrics import percentiles_ms
from engine.sources.base import FrameSource, now_ns
from engine.tracking import FaceSlots
from engine.types import FaceState, Frame, Landmarks, RenderedFrame, TrackingState

log = logging.getLogger(__name__)
T = TypeVar("T")


class Tracker(Protocol):
    def process(self, frame: Frame) -> list[Landmarks]: ...
    def close(self) -> None: ...


class Solver(Protocol):
    def solve(self, landmarks: Landmarks | None, t_capture_ns: int, frame_index: int) -> FaceState: ...


class Renderer(Protocol):
    # None: no frame this time (a supervised render process that is restarting); raises `Stopping` when it
    # gave up waiting because the engine is stopping.
    def render(self, state: FaceState) -> RenderedFrame | None: ...
    def close(self) -> None: ...


class Publisher(Protocol):
    def publish_params(self, state: FaceState) -> None: ...
    def publish_frame(self, frame: RenderedFrame) -> None: ...
    def publish_status(self, state: str, detail: dict[str, Any]) -> None: ...
    def publish_stats(self, stats: dict[str, Any]) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...


class OneSlot(Generic[T]):
    """A one-item hand-off. `put(wait=False)` replaces an unread item (counted in `dropped`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: T, wait: bool, stop: threading.Event) -> bool:
        """Hand over `item`; with `wait` block until the consumer took the previous one. False if stopped."""
        with self._cond:
            while wait and self._full and not self._closed and not stop.is_set():
                self._cond.wait(0.05)
            if self._closed or stop.is_set():
                return False
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify_all()
            return True

    def get(self, timeout: float = 0.1) -> T | None:
        """The waiting item, or None after `timeout` seconds (or when closed and empty)."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed and not self._full


@dataclass
class FrameResult:
    """Everything the pipeline knows about one processed frame. `stamps`: stage name → monotonic ns.

    `landmarks` and `state` are face 0's (the face that is rendered, drives VMC and the status topic);
    `states` holds every face slot's state when `max_faces` > 1 (index = face index), else just `state`."""

    frame: Frame
    landmarks: Landmarks | None
    state: FaceState
    rendered: RenderedFrame | None = None
    stamps: dict[str, int] = field(default_factory=dict)
    states: tuple[FaceState, ...] = ()

    def without_images(self) -> FrameResult:
        """A copy that keeps what statistics and reports read (index, clock, truth, states, stamps) but not
        the camera image, the rendered image or the landmarks (~1.7 MiB a frame together). The stamps dict
        is shared, so stamps the render thread adds to this result later still reach the copy."""
        frame = dataclasses.replace(self.frame, image=_NO_IMAGE)
        return dataclasses.replace(self, frame=frame, landmarks=None, rendered=None)


_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


@dataclass
class TrackedFrame:
    """A frame with its faces (`FaceSlots` order, each `face_index` its slot; empty: no face), on its way
    from the track to the solve thread."""

    frame: Frame
    faces: list[Landmarks]
    stamps: dict[str, int]

    @property
    def landmarks(self) -> Landmarks | None:
        """Face 0's landmarks, or None when face 0 is not in this frame."""
        return self.faces[0] if self.faces and self.faces[0].face_index == 0 else None


# (stage name, start stamp, end stamp): the per-stage durations reported in `stats` and the summary.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("capture_wait", "captured", "track_start"),
    ("track", "track_start", "tracked"),
    ("solve_wait", "tracked", "solve_start"),
    ("solve", "solve_start", "solved"),
    ("publish_params", "solved", "params_published"),
    ("handoff", "params_published", "render_start"),
    ("render", "render_start", "rendered"),
    ("publish_frame", "rendered", "frame_published"),
)


@dataclass
class PipelineParts:
    """Factories for each stage, each called on the thread that will use what it makes."""

    source: Callable[[], FrameSource]
    tracker: Callable[[], Tracker]
    solver: Callable[[], Solver]  # called once the source is open
    renderer: Callable[[], Renderer] | None = None
    publisher: Callable[[], Publisher] | None = None
    # Faces tracked and solved at once (`tracking.max_faces`): one solver each, `params` for each (`face`).
    max_faces: int = 1
    # Tracked frames a live neutral calibration averages (`request_calibration`, `solve.calibration_frames`).
    calibration_frames: int = 30
    # Consumers of every solved frame (VMC bridge, params JSONL), called on the solve thread after `params`.
    on_state: list[Callable[[FrameResult], None]] = field(default_factory=list)
    # Consumers of every rendered frame (report pictures, the virtual camera), called on the render thread.
    on_rendered: list[Callable[[FrameResult], None]] = field(default_factory=list)
    # Called once when the run ends, after every stage thread (the consumers' sockets and devices).
    on_close: list[Callable[[], None]] = field(default_factory=list)
    # The consumers above by name (vmc, vcam…), for the run summary's counts (`sent`, `dropped`).
    outputs: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Runs the four stage threads (capture, track, solve, render) until the source ends, `max_frames` are
    processed, `duration_s` passes, or `stop()` is called.

    Memory stays bounded however long it runs: `results` keeps the last `keep` FrameResults, and only the
    newest `keep_images` of them keep their images and landmarks (older ones are replaced by
    `FrameResult.without_images` copies; ~3 KB each, so the default window of two minutes at 30 fps holds
    ~10 MiB). Whole-run counts (`processed`, `tracked`, `rendered`) are counters; `stats(window=None)` covers
    the records kept."""

    def __init__(
        self,
        parts: PipelineParts,
        realtime: bool | None = None,
        keep: int = 3_600,
        render_niceness: int = 0,
        keep_images: int = 8,
    ) -> None:
        self.parts = parts
        self.render_niceness = render_niceness
        self._realtime = realtime
        self._stop = threading.Event()
        self._frames: OneSlot[Frame] = OneSlot()
        self._tracked: OneSlot[TrackedFrame] = OneSlot()
        self._solved: OneSlot[FrameResult] = OneSlot()
        self.results: collections.deque[FrameResult] = collections.deque(maxlen=keep)
        self.keep_images = max(1, keep_images)
        self.processed = 0  # solved (and params published)
        self.tracked = 0  # solved frames in which face 0 was tracked
        self.rendered = 0
        self._publisher: Publisher | None = None
        self.published: collections.Counter[str] = collections.Counter()
        self.errors: list[BaseException] = []
        self.invalid_frames = 0
        self.source_description = ""
        self.tracking_state = TrackingState.LOST
        self._calibration_requested = threading.Event()
        self._ready = threading.Event()  # set once the source is open and `_live` is known
        # Set by each stage once its resources exist (MediaPipe graph, solver, publisher, GL context or render
        # process): capture reads the first frame only then, so start-up costs no frames and no latency.
        self._stage_ready = {name: threading.Event() for name in ("track", "solve", "render")}
        self._live = False
        self._solvers: list[Solver] = []
        self._renderer: Renderer | None = None
        self.render_skipped = 0  # solved frames not rendered because the renderer was down
        self._render_state: str | None = None  # the renderer's state as last announced on `status`
        self._lock = threading.Lock()
        self.t_start_ns = 0
        self.t_end_ns = 0

    # -- control --------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask every thread to finish (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(
        self,
        max_frames: int | None = None,
        duration_s: float | None = None,
        on_tick: Callable[[Pipeline], None] | None = None,
        tick_s: float = 0.5,
    ) -> None:
        """Start the threads and block until done; Ctrl-C stops cleanly. Re-raises the first stage error."""
        self._max_frames = max_frames
        threads = [
            threading.Thread(target=self._guard(self._capture_loop, self._frames), name="capture", daemon=True),
            threading.Thread(target=self._guard(self._track_loop, self._tracked), name="track", daemon=True),
            threading.Thread(target=self._guard(self._solve_loop, self._solved), name="solve", daemon=True),
            threading.Thread(target=self._guard(self._render_loop, None), name="render", daemon=True),
        ]
        self.t_start_ns = now_ns()
        for thread in threads:
            thread.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while alive := [t for t in threads if t.is_alive()]:
                alive[0].join(tick_s)
                if on_tick is not None:
                    on_tick(self)
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop()
        except KeyboardInterrupt:
            log.info("interrupted: shutting down")
            self.stop()
        finally:
            self.stop()
            for thread in threads:
                thread.join(10.0)
            self.t_end_ns = now_ns()
            # The solve thread made the publisher and the render thread used its frame socket: both are done.
            if self._publisher is not None and not any(t.is_alive() for t in threads):
                self._publisher.close()
            for close in self.parts.on_close:
                try:
                    close()
                except Exception as exc:  # one output failing to close must not hide the run's own error
                    log.warning("closing an output failed: %s", exc)
        if self.errors:
            raise self.errors[0]

    def request_calibration(self) -> None:
        """Calibrate the neutral face on the next `calibration_frames` tracked frames of every face (the
        preview window's `c`, `run --calibrate`): the user holds a relaxed face meanwhile. Thread-safe."""
        self._calibration_requested.set()

    def _guard(self, loop: Callable[[], None], output: OneSlot[Any] | None) -> Callable[[], None]:
        """Run a stage loop; on exit close its output slot so the next stage drains and ends."""

        def run() -> None:
            try:
                loop()
            except BaseException as exc:  # a failing stage stops the others; run() re-raises it
                log.debug("stage %s failed", threading.current_thread().name, exc_info=True)
                self.errors.append(exc)
                self.stop()
            finally:
                if output is not None:
                    output.close()

        return run

    # -- stage threads --------------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        with self.parts.source() as source:
            self.source_description = source.description
            # Live sources (or --realtime) keep only the newest frame; files are processed frame by frame.
            self._live = source.live if self._realtime is None else self._realtime
            self._ready.set()
            while not all(event.wait(0.05) for event in self._stage_ready.values()):
                if self._stop.is_set():
                    return
            wait = not self._live
            # A file played in real time is paced at its own frame rate, like the camera that recorded it.
            period_ns = int(1e9 / source.fps) if self._live and not source.live and source.fps > 0 else 0
            next_due_ns = now_ns()
            while not self._stop.is_set():
                if period_ns:
                    time.sleep(max(0.0, (next_due_ns - now_ns()) / 1e9))
                    next_due_ns += period_ns
                frame = source.read()
                if frame is None:
                    break
                if not self._frames.put(frame, wait=wait, stop=self._stop):
                    break

    def _track_loop(self) -> None:
        tracker = self.parts.tracker()
        slots = FaceSlots(self.parts.max_faces)
        self._stage_ready["track"].set()
        try:
            while not self._ready.wait(0.05):
                if self._stop.is_set():
                    return
            while not self._stop.is_set():
                frame = self._frames.get()
                if frame is None:
                    if self._frames.closed:
                        break
                    continue
                stamps = {"captured": frame.t_capture_ns, "track_start": now_ns()}
                try:
                    faces = tracker.process(frame)
                except ValueError as exc:  # an invalid frame is a lost frame, not a crash
                    self.invalid_frames += 1
                    log.debug("invalid frame %d: %s", frame.index, exc)
                    faces = []
                faces = slots.assign(faces)
                stamps["tracked"] = now_ns()
                tracked = TrackedFrame(frame, faces, stamps)
                if not self._tracked.put(tracked, wait=True, stop=self._stop):
                    break
        finally:
            tracker.close()

    def _solve_loop(self) -> None:
        while not self._ready.wait(0.05):  # the solver is made for the open source (its camera, say)
            if self._stop.is_set():
                return
        solvers = self._solvers = [self.parts.solver() for _ in range(self.parts.max_faces)]
        seen = [False] * len(solvers)  # a face slot publishes once a face has filled it
        publisher = self._publisher = self.parts.publisher() if self.parts.publisher else None
        self._stage_ready["solve"].set()
        last_stats_ns = now_ns()
        while not self._stop.is_set():
            tracked = self._tracked.get()
            if publisher is not None:
                publisher.tick()  # identity re-sent every second, frames or not
            if tracked is None:
                if self._tracked.closed:
                    break
                continue
            frame, stamps = tracked.frame, tracked.stamps
            if self._calibration_requested.is_set():
                self._calibration_requested.clear()
                for solver in solvers:
                    calibrate = getattr(solver, "calibrate_neutral", None)  # test doubles may not calibrate
                    if calibrate is not None:
                        calibrate(self.parts.calibration_frames)
                log.info("calibrating the neutral face on the next %d tracked frames", self.parts.calibration_frames)
            stamps["solve_start"] = now_ns()
            # Recorded video processed frame by frame runs on its own clock: the filters then see the
            # performer's time, not the machine's speed (the same file gives the same weights on any machine).
            clock_ns = frame.clock_ns(media=not self._live)
            by_slot = {face.face_index: face for face in tracked.faces}
            states = []
            for slot, solver in enumerate(solvers):
                state = solver.solve(by_slot.get(slot), clock_ns, frame.index)
                if state.face_index != slot:  # a solver without landmarks does not know its slot
                    state = dataclasses.replace(state, face_index=slot)
                seen[slot] = seen[slot] or slot in by_slot
                states.append(state)
            stamps["solved"] = now_ns()
            result = FrameResult(frame, tracked.landmarks, states[0], stamps=stamps, states=tuple(states))
            self._publish_state(publisher, result)
            if publisher is not None:
                for slot in range(1, len(states)):
                    if seen[slot]:
                        publisher.publish_params(states[slot])
                        self.published["params"] += 1
            stamps["params_published"] = now_ns()
            for consume in self.parts.on_state:
                consume(result)
            with self._lock:
                self.results.append(result)
                self.processed += 1
                self.tracked += result.landmarks is not None
                if len(self.results) > self.keep_images:
                    # Replace, don't mutate: the render thread may still be drawing that very result.
                    older = -self.keep_images - 1
                    self.results[older] = self.results[older].without_images()
            if publisher is not None and stamps["params_published"] - last_stats_ns > 1_000_000_000:
                publisher.publish_stats(self.stats())
                self.published["stats"] += 1
                last_stats_ns = stamps["params_published"]
            if self.parts.renderer is not None:
                if not self._solved.put(result, wait=not self._live, stop=self._stop):
                    break
            if self._max_frames is not None and self.processed >= self._max_frames:
                self.stop()

    def _publish_state(self, publisher: Publisher | None, result: FrameResult) -> None:
        """`status` on a tracking-state change and on a render-state change (`render_restarting` while a render
        process is down, `render_running` once it is back), then `params` for this frame. On this (the solve)
        thread: the params socket belongs to it; the render thread only changes the renderer's `state`."""
        if result.state.tracking != self.tracking_state:
            self.tracking_state = result.state.tracking
            if publisher is not None:
                publisher.publish_status(self.tracking_state.value, {"frame": result.frame.index})
                self.published["status"] += 1
        render_state = getattr(self._renderer, "state", None)
        if render_state is not None and render_state != self._render_state:
            if publisher is not None and self._render_state is not None:
                restarts = getattr(self._renderer, "restarts", 0)
                publisher.publish_status(f"render_{render_state}", {"frame": result.frame.index, "restarts": restarts})
                self.published["status"] += 1
            self._render_state = render_state
        if publisher is not None:
            publisher.publish_params(result.state)
            self.published["params"] += 1

    def _render_loop(self) -> None:
        if self.parts.renderer is None:
            self._stage_ready["render"].set()
            return
        if self.render_niceness:
            # Before the GL context exists: Mesa's llvmpipe workers inherit the niceness of the thread that
            # creates them, so on a CPU-only machine the render yields to tracking rather than starving it.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.render_niceness)
        renderer = self._renderer = self.parts.renderer()
        attach_stop = getattr(renderer, "attach_stop", None)  # a render process: never outwait a stop
        if attach_stop is not None:
            attach_stop(self._stop)
        self._stage_ready["render"].set()
        try:
            # Drain what the solve thread handed over even after it stopped (a file's last frames).
            while not self._solved.closed:
                result = self._solved.get()
                if result is None:
                    continue
                stamps = result.stamps
                stamps["render_start"] = now_ns()
                try:
                    rendered = renderer.render(result.state)
                except Stopping:
                    break
                if rendered is None:  # the renderer is down (its process restarting): no frame this time
                    self.render_skipped += 1
                    continue
                result.rendered = rendered
                stamps["rendered"] = now_ns()
                if getattr(renderer, "calibration_requested", False):  # `c` in the preview window
                    self.request_calibration()
                if getattr(renderer, "preview_closed", False):  # the window closed, or Esc/q in it
                    log.info("preview window closed: stopping")
                    self.stop()
                if self._publisher is not None:
                    self._publisher.publish_frame(result.rendered)
                    self.published["frame"] += 1
                stamps["frame_published"] = now_ns()
                self.rendered += 1
                for consume in self.parts.on_rendered:
                    consume(result)
                if self._stop.is_set() and self._live:
                    break
        finally:
            renderer.close()

    # -- statistics -----------------------------------------------------------------------------------------
    def snapshot(self) -> list[FrameResult]:
        with self._lock:
            return list(self.results)

    def stats(self, window: int | None = 300) -> dict[str, Any]:
        """Per-stage p50 (ms), rates and capture→publish latency percentiles over the last `window` frames.

        `fps` is the rate of solved frames (`params` messages), `render_fps` the rate of rendered frames.
        """
        results = self.snapshot()
        if window is not None:
            results = results[-window:]
        stage_ms = {
            name: percentiles_ms([r.stamps[b] - r.stamps[a] for r in results if a in r.stamps and b in r.stamps])["p50"]
            for name, a, b in STAGES
        }
        rendered = [r for r in results if "frame_published" in r.stamps]
        return {
            "frames": self.processed,
            "rendered": self.rendered,
            "fps": _rate([r.stamps["params_published"] for r in results]),
            "render_fps": _rate([r.stamps["frame_published"] for r in rendered]),
            "latency_ms": percentiles_ms([r.stamps["params_published"] - r.stamps["captured"] for r in results]),
            "frame_latency_ms": percentiles_ms([r.stamps["frame_published"] - r.stamps["captured"] for r in rendered]),
            "stages_ms": stage_ms,
            "dropped": {"capture": self._frames.dropped, "solved": self._solved.dropped},
            "tracking": self.tracking_state.value,
            # The renderer's health where it reports one (a supervised render process: running / restarting).
            "render": {
                "state": getattr(self._renderer, "state", "running" if self._renderer is not None else "off"),
                "restarts": getattr(self._renderer, "restarts", 0),
                "skipped": self.render_skipped,
            },
            # The asset service's counts (requests, chunks, bytes, replies dropped to clients not reading).
            "assets": getattr(self._publisher, "asset_counters", {}),
            # Client connections the publisher could not accept (out of file descriptors).
            "refused_connections": getattr(self._publisher, "refused_connections", 0),
            # Each face's performer estimate (converged, camera in use), where the solver reports one.
            "performers": [status() for solver in self._solvers if (status := getattr(solver, "status", None))],
        }


def _rate(stamps_ns: list[int]) -> float:
    """Events per second over a list of monotonic timestamps (0 with fewer than two)."""
    if len(stamps_ns) < 2:
        return 0.0
    span = max(stamps_ns) - min(stamps_ns)
    return round((len(stamps_ns) - 1) / (span / 1e9), 2) if span > 0 else 0.0
