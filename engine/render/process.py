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
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from engine.config import RenderConfig
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.identity import Identity
from engine.render.context import RenderContextError
from engine.types import FaceState, RenderedFrame

log = logging.getLogger(__name__)


class RenderProcessError(RuntimeError):
    """The render process failed or exited; the message says how."""


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
        from engine.render.renderer import AvatarRenderer

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
    ) -> None:
        self.config = config
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
            if not self._conn.poll(start_timeout_s):
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
            self._process.join(timeout=5.0)
            if self._process.is_alive():
                log.warning("the render process did not stop: terminating it")
                self._process.terminate()
                self._process.join(timeout=2.0)
        self._conn.close()
        del self._image
        self._shm.close()
        self._shm.unlink()

    def __enter__(self) -> RendererProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
