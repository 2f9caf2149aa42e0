"""The live pipeline: three threads joined by one-slot hand-offs, with per-frame timing. No face math here.

    capture ──slot──▶ track + solve ──slot──▶ publish params, render, encode + publish frame

Live sources (webcam, demo) overwrite the slot so the next stage always takes the newest frame (stale frames
are dropped and counted); file sources make the producer wait so that every frame is processed in order.
Every stage runs on its own thread and creates its own resources there (OpenGL contexts and ZeroMQ sockets are
bound to the thread that made them). Timestamps are monotonic nanoseconds.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from engine.metrics import percentiles_ms
from engine.sources.base import FrameSource, now_ns
from engine.types import FaceState, Frame, Landmarks, RenderedFrame, TrackingState

log = logging.getLogger(__name__)
T = TypeVar("T")


class Tracker(Protocol):
    def process(self, frame: Frame) -> list[Landmarks]: ...
    def close(self) -> None: ...


class Solver(Protocol):
    def solve(self, landmarks: Landmarks | None, t_capture_ns: int, frame_index: int) -> FaceState: ...


class Renderer(Protocol):
    def render(self, state: FaceState) -> RenderedFrame: ...
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
    """Everything the pipeline knows about one processed frame. `stamps`: stage name → monotonic ns."""

    frame: Frame
    landmarks: Landmarks | None
    state: FaceState
    rendered: RenderedFrame | None = None
    stamps: dict[str, int] = field(default_factory=dict)


# (stage name, start stamp, end stamp): the per-stage durations reported in `stats` and the summary.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("capture_wait", "captured", "track_start"),
    ("track", "track_start", "tracked"),
    ("solve", "tracked", "solved"),
    ("handoff", "solved", "publish_start"),
    ("publish_params", "publish_start", "params_published"),
    ("render", "params_published", "rendered"),
    ("publish_frame", "rendered", "frame_published"),
)


@dataclass
class PipelineParts:
    """Factories for each stage, each called on the thread that will use what it makes."""

    source: Callable[[], FrameSource]
    tracker: Callable[[], Tracker]
    solver: Callable[[], Solver]
    renderer: Callable[[], Renderer] | None = None
    publisher: Callable[[], Publisher] | None = None
    # Extra consumers of each result (VMC bridge, params JSONL, report), called on the publish thread.
    consumers: list[Callable[[FrameResult], None]] = field(default_factory=list)


class Pipeline:
    """Runs the three stage threads until the source ends, `max_frames` are processed, `duration_s` passes,
    or `stop()` is called. `results` keeps the last `keep` FrameResults (frames are dropped from old ones)."""

    def __init__(self, parts: PipelineParts, realtime: bool | None = None, keep: int = 100_000) -> None:
        self.parts = parts
        self._realtime = realtime
        self._stop = threading.Event()
        self._frames: OneSlot[Frame] = OneSlot()
        self._solved: OneSlot[FrameResult] = OneSlot()
        self.results: collections.deque[FrameResult] = collections.deque(maxlen=keep)
        self.processed = 0
        self.published: collections.Counter[str] = collections.Counter()
        self.errors: list[BaseException] = []
        self.invalid_frames = 0
        self.source_description = ""
        self.tracking_state = TrackingState.LOST
        self._ready = threading.Event()  # set once the source is open and `_live` is known
        self._live = False
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
            threading.Thread(target=self._guard(self._track_loop, self._solved), name="track", daemon=True),
            threading.Thread(target=self._guard(self._publish_loop, None), name="publish", daemon=True),
        ]
        self.t_start_ns = now_ns()
        for thread in threads:
            thread.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while any(t.is_alive() for t in threads):
                threads[-1].join(tick_s)
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
        if self.errors:
            raise self.errors[0]

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
        solver = self.parts.solver()
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
                stamps["tracked"] = now_ns()
                landmarks = faces[0] if faces else None
                state = solver.solve(landmarks, frame.t_capture_ns, frame.index)
                stamps["solved"] = now_ns()
                result = FrameResult(frame, landmarks, state, stamps=stamps)
                if not self._solved.put(result, wait=not self._live, stop=self._stop):
                    break
        finally:
            tracker.close()

    def _publish_loop(self) -> None:
        renderer = self.parts.renderer() if self.parts.renderer else None
        publisher = self.parts.publisher() if self.parts.publisher else None
        last_stats_ns = now_ns()
        try:
            while not self._stop.is_set():
                result = self._solved.get()
                if publisher is not None:
                    publisher.tick()
                if result is None:
                    if self._solved.closed:
                        break
                    continue
                stamps = result.stamps
                stamps["publish_start"] = now_ns()
                if result.state.tracking != self.tracking_state:
                    self.tracking_state = result.state.tracking
                    if publisher is not None:
                        publisher.publish_status(self.tracking_state.value, {"frame": result.frame.index})
                        self.published["status"] += 1
                if publisher is not None:
                    publisher.publish_params(result.state)
                    self.published["params"] += 1
                stamps["params_published"] = now_ns()
                if renderer is not None:
                    result.rendered = renderer.render(result.state)
                stamps["rendered"] = now_ns()
                if publisher is not None and result.rendered is not None:
                    publisher.publish_frame(result.rendered)
                    self.published["frame"] += 1
                stamps["frame_published"] = now_ns()
                for consume in self.parts.consumers:
                    consume(result)
                with self._lock:
                    self.results.append(result)
                    self.processed += 1
                if publisher is not None and stamps["frame_published"] - last_stats_ns > 1_000_000_000:
                    publisher.publish_stats(self.stats())
                    self.published["stats"] += 1
                    last_stats_ns = stamps["frame_published"]
                if self._max_frames is not None and self.processed >= self._max_frames:
                    self.stop()
        finally:
            if publisher is not None:
                publisher.close()
            if renderer is not None:
                renderer.close()

    # -- statistics -----------------------------------------------------------------------------------------
    def snapshot(self) -> list[FrameResult]:
        with self._lock:
            return list(self.results)

    def stats(self, window: int | None = 300) -> dict[str, Any]:
        """Per-stage p50 (ms), fps and capture→publish latency percentiles over the last `window` frames."""
        results = self.snapshot()
        if window is not None:
            results = results[-window:]
        stage_ms = {
            name: percentiles_ms([r.stamps[b] - r.stamps[a] for r in results if a in r.stamps and b in r.stamps])["p50"]
            for name, a, b in STAGES
        }
        fps = 0.0
        if len(results) > 1:
            span = results[-1].stamps["frame_published"] - results[0].stamps["frame_published"]
            fps = (len(results) - 1) / (span / 1e9) if span > 0 else 0.0
        return {
            "frames": self.processed,
            "fps": round(fps, 2),
            "latency_ms": percentiles_ms([r.stamps["params_published"] - r.stamps["captured"] for r in results]),
            "frame_latency_ms": percentiles_ms([r.stamps["frame_published"] - r.stamps["captured"] for r in results]),
            "stages_ms": stage_ms,
            "dropped": {"capture": self._frames.dropped, "solved": self._solved.dropped},
            "tracking": self.tracking_state.value,
        }
