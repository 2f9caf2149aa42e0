"""The avatar renderer in a child process, for the live pipeline.

moderngl keeps Python's GIL through every GL call, and on a software rasterizer a frame's draw and readback
take 20–40 ms of it: a render thread would stall the tracking thread (MediaPipe, the solver, `params`)
for that long every frame. The child process owns the GL context and the `AvatarRenderer`; face states
go to it over a pipe and images come back through one shared-memory buffer, so waiting for a frame costs
the parent nothing but a blocked `recv` (which releases the GIL).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from engine.config import RenderConfig
from engine.errors import Stopping, UserError
from engine.face_model import FaceModel
from engine.identity import Identity
from engine.render.context import RenderContextError
from engine.types import FaceState, RenderedFrame

log = logging.getLogger(__name__)


class RenderProcessError(RuntimeError):
    """The render process failed, exited or hung; the message says how."""


class RenderStopped(Stopping):
    """The engine is stopping: a render that was waiting for the child gave up."""


def _serve(
    conn: Connection,
    shm_name: str,
    model: FaceModel,
    identity: Identity,
    config: RenderConfig,
    options: dict[str, Any],
) -> None:
    """The child: build the renderer, then render each state sent until None or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    niceness = int(options.get("niceness", 0))
    if niceness > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)  # before the GL context: llvmpipe's workers inherit it
    shm = shared_memory.SharedMemory(name=shm_name)
    renderer = None
    target: np.ndarray | None = None
    try:
        from engine.render.renderer import AvatarRenderer  # in the child only: the parent never loads GL

        try:
            renderer = AvatarRenderer(model, identity, config, detail_gain=options["detail_gain"])
            renderer.detail = options["detail"]
        except Exception as exc:  # sent to the parent, which raises it as one clear line
            conn.send(("error", f"{type(exc).__name__}: {exc}", isinstance(exc, UserError)))
            return
        conn.send(("ready", {"gl_renderer": renderer.context.info["GL_RENDERER"], "detail": renderer.detail}))
        target = np.ndarray((config.height, config.width, 4), np.uint8, buffer=shm.buf)
        while True:
            try:
                state = conn.recv()
            except EOFError:  # the parent is gone
                return
            if state is None:
                return
            try:
                frame = renderer.render(state)
                target[...] = frame.image
                conn.send(
                    ("ok", frame.t_render_done_ns, renderer.preview_open, renderer.preview_closed,
                     renderer.calibration_requested)
                )  # fmt: skip
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}", False, False, False))
    finally:
        if renderer is not None:
            renderer.close()
        target = None  # release the buffer's export before closing the mapping
        shm.close()


class RendererProcess:
    """`AvatarRenderer` in a child process, with the same `render(state) -> RenderedFrame` / `close()`.

    Construction waits for the child's GL context (up to `start_timeout_s`); a child that cannot render
    (no EGL, a bad identity) raises here with the child's message. `niceness` lowers the child's priority
    (with its llvmpipe workers) so tracking keeps the CPU it needs. Not thread-safe: one caller at a time.
    """

    def __init__(
        self,
        model: FaceModel,
        identity: Identity,
        config: RenderConfig,
        detail_gain: float = 1.0,
        detail: bool = True,
        niceness: int = 0,
        start_timeout_s: float = 120.0,
        frame_timeout_s: float = 2.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        # A frame not back within this long is a hung child (stopped, deadlocked): it is given up on.
        self.frame_timeout_s = frame_timeout_s
        # Set when the engine stops: a render waiting for the child returns at once (RenderStopped).
        self.stop = stop
        self._shape = (config.height, config.width, 4)
        self._shm = shared_memory.SharedMemory(create=True, size=int(np.prod(self._shape)))
        self._image = np.ndarray(self._shape, np.uint8, buffer=self._shm.buf)
        context = multiprocessing.get_context("spawn")  # never fork a process that has threads and GL state
        self._conn, child_conn = context.Pipe()
        options = {"detail_gain": detail_gain, "detail": detail, "niceness": niceness}
        self._process = context.Process(
            target=_serve, args=(child_conn, self._shm.name, model, identity, config, options),
            name="scapecast-render", daemon=True,
        )  # fmt: skip
        self.preview_open = True
        self.preview_closed = False  # the user closed the child's preview window (or pressed Esc/q)
        self.calibration_requested = False  # the user pressed c in it
        self._closed = False
        try:
            self._process.start()
            child_conn.close()
            if not self._wait(start_timeout_s):
                raise RenderProcessError(f"the render process did not start within {start_timeout_s:.0f} s")
            reply = self._receive()
        except BaseException:
            self.close()
            raise
        if reply[0] != "ready":
            self.close()
            message, is_user_error = reply[1], reply[2]
            if is_user_error:
                raise RenderContextError(message.split(": ", 1)[-1])
            raise RenderProcessError(f"the render process could not start: {message}")
        self.info: dict[str, Any] = reply[1]
        self.detail = bool(self.info["detail"])

    @property
    def pid(self) -> int | None:
        """The child's process id (for supervision and tests)."""
        return self._process.pid

    def _wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the child's next message, a little at a time so that a stopping engine
        is never held up by a child that does not answer; RenderStopped once `stop` is set."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.stop is not None and self.stop.is_set():
                raise RenderStopped("the engine is stopping")
            if self._conn.poll(min(0.05, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False

    def _receive(self) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._process.join(timeout=1.0)
            raise RenderProcessError(
                f"the render process exited (exit code {self._process.exitcode}) without an answer"
            ) from None

    def render(self, state: FaceState) -> RenderedFrame:
        """Draw `state` in the child and copy the image out: RenderedFrame with (H, W, 4) uint8 RGBA."""
        if self._closed:
            raise RenderProcessError("the render process is closed")
        try:
            self._conn.send(state)
        except (BrokenPipeError, OSError):
            raise RenderProcessError(f"the render process is gone (exit code {self._process.exitcode})") from None
        if not self._wait(self.frame_timeout_s):
            raise RenderProcessError(f"the render process sent no frame within {self.frame_timeout_s:g} s (hung)")
        reply = self._receive()
        if reply[0] != "ok":
            raise RenderProcessError(f"the render process failed: {reply[1]}")
        self.preview_open, self.preview_closed, self.calibration_requested = (bool(v) for v in reply[2:5])
        return RenderedFrame(self._image.copy(), state, int(reply[1]))

    def close(self) -> None:
        """Stop the child (politely, then by force) and free the shared buffer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=1.0)
            if self._process.is_alive():
                # SIGKILL: a stopped (SIGSTOP) or hung child ignores everything gentler, and stopping the
                # engine must not wait for it.
                log.warning("the render process did not stop: killing it")
                self._process.kill()
                self._process.join(timeout=1.0)
        self._conn.close()
        del self._image
        self._shm.close()
        self._shm.unlink()

    def __enter__(self) -> RendererProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SupervisedRenderer:
    """A `RendererProcess` that is restarted when it dies or hangs, so the engine never goes down with it.

    `render(state)` returns the frame, or None while the child is down: the caller publishes no frame then,
    and everything else (tracking, `params`) runs on. A child that exits, crashes or sends no frame within
    its `frame_timeout_s` is killed and started again after a backoff that doubles from `backoff_s` up to
    `max_backoff_s` (and resets once a restarted child has rendered for a while). `state` ("running",
    "restarting") and `restarts` are read by the pipeline's `stats`. The first start is not retried: a
    child that cannot start at all (no EGL) raises, as `RendererProcess` does, so the engine can fall back.
    Restarts are for a renderer that worked: children that fail `give_up_after` times in a row without ever
    rendering a frame (missing shaders, a broken driver) raise `RenderProcessError`, so the run stops with
    the reason instead of running on without frames.
    """

    def __init__(
        self, start: Any, backoff_s: float = 0.25, max_backoff_s: float = 30.0, healthy_after_s: float = 10.0,
        give_up_after: int = 3,
    ) -> None:  # fmt: skip
        self._start = start  # (stop event or None) -> RendererProcess
        self.give_up_after = give_up_after
        self.frames = 0  # rendered by any child of this supervisor
        self._failures_before_first_frame = 0
        self.backoff_s, self.max_backoff_s, self.healthy_after_s = backoff_s, max_backoff_s, healthy_after_s
        self._child: RendererProcess | None = start(None)
        self.detail = self._child.detail
        self.info = self._child.info
        self.stop: threading.Event | None = None
        self.state = "running"
        self.restarts = 0
        self._next_backoff_s = backoff_s
        self._restart_at = 0.0
        self._started_at = time.monotonic()
        self.preview_open, self.preview_closed, self.calibration_requested = True, False, False

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def attach_stop(self, stop: threading.Event) -> None:
        """The engine's stop event: a render waiting for the child gives up as soon as it is set."""
        self.stop = stop
        if self._child is not None:
            self._child.stop = stop

    def render(self, state: FaceState) -> RenderedFrame | None:
        """The frame for `state`, or None while the child is down (then restarted when its backoff ends)."""
        if self._child is None and time.monotonic() >= self._restart_at:
            self._restart()
        if self._child is None:
            return None
        try:
            frame = self._child.render(state)
        except RenderProcessError as exc:
            self._down(str(exc))
            return None
        self.preview_open = self._child.preview_open
        self.preview_closed = self._child.preview_closed
        self.calibration_requested = self._child.calibration_requested
        self.state = "running"
        self.frames += 1
        if time.monotonic() - self._started_at > self.healthy_after_s:
            self._next_backoff_s = self.backoff_s  # it has stayed up: the next failure restarts quickly again
        return frame

    def _never_worked(self, reason: str) -> None:
        """Count a failure; raise once `give_up_after` children in a row failed and none ever rendered."""
        if self.frames:
            return
        self._failures_before_first_frame += 1
        if self._failures_before_first_frame >= self.give_up_after:
            raise RenderProcessError(
                f"the render process failed {self._failures_before_first_frame} times without rendering a "
                f"frame ({reason}); run with --no-render to track and publish parameters only"
            )

    def _down(self, reason: str) -> None:
        assert self._child is not None
        log.warning("render process down (%s): restarting it in %.1f s; params continue", reason,
                    self._next_backoff_s)  # fmt: skip
        self._child.close()
        self._child = None
        self.state = "restarting"
        self._never_worked(reason)
        self._restart_at = time.monotonic() + self._next_backoff_s
        self._next_backoff_s = min(self._next_backoff_s * 2.0, self.max_backoff_s)

    def _restart(self) -> None:
        try:
            child = self._start(self.stop)
        except RenderStopped:
            return
        except (OSError, RenderProcessError, RenderContextError) as exc:
            self._never_worked(str(exc))
            log.warning("render process restart failed (%s): trying again in %.1f s", exc, self._next_backoff_s)
            self._restart_at = time.monotonic() + self._next_backoff_s
            self._next_backoff_s = min(self._next_backoff_s * 2.0, self.max_backoff_s)
            return
        self._child = child
        self.restarts += 1
        self._started_at = time.monotonic()
        log.info("render process restarted (%d so far)", self.restarts)

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None
