"""The renderer in a child process: the same pixels as in-process, clear errors, a clean stop."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from engine.config import RenderConfig
from engine.identity import DetailBases, Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.bench import performance_states, synthetic_ridge_bases
from engine.render.process import RendererProcess, RenderProcessError
from engine.render.renderer import AvatarRenderer

CONFIG = RenderConfig(width=160, height=128, samples=0)


def _identity(face_model, bases: DetailBases | None = None) -> Identity:
    return Identity("process-test", face_model.model_id, face_model.default_identity_weights(),
                    np.zeros(len(ICT_EXPRESSIONS), np.float32), bases=bases)  # fmt: skip


def test_child_renders_the_same_pixels_as_the_in_process_renderer(face_model):
    identity = _identity(face_model, synthetic_ridge_bases(64))
    states = performance_states(3, seed=5)
    with RendererProcess(face_model, identity, CONFIG, detail_gain=1.5) as child:
        assert child.detail and child.info["gl_renderer"]
        remote = [child.render(state) for state in states]
    with AvatarRenderer(face_model, identity, CONFIG, detail_gain=1.5) as local:
        for state, frame in zip(states, remote, strict=True):
            expected = local.render(state).image
            assert frame.image.shape == (128, 160, 4) and frame.state is state
            np.testing.assert_array_equal(frame.image, expected)
            assert frame.t_render_done_ns > 0


def test_a_renderer_that_cannot_start_raises_the_childs_reason(face_model):
    bad = _identity(face_model, DetailBases(np.zeros((20, 8, 4, 3), np.float32), "bad"))  # not square
    with pytest.raises(RenderProcessError, match=r"detail bases must be \(20, N, N, 3\)"):
        RendererProcess(face_model, bad, CONFIG)


def test_a_dead_child_is_an_error_naming_its_exit_not_a_hang(face_model):
    child = RendererProcess(face_model, _identity(face_model), CONFIG)
    try:
        child.render(performance_states(1)[0])
        os.kill(child._process.pid, signal.SIGKILL)
        child._process.join(timeout=10)
        with pytest.raises(RenderProcessError, match="exit code -9|is gone"):
            child.render(performance_states(1)[0])
    finally:
        child.close()
    with pytest.raises(RenderProcessError, match="closed"):
        child.render(performance_states(1)[0])


def test_bad_state_is_reported_and_the_child_keeps_serving(face_model):
    with RendererProcess(face_model, _identity(face_model), CONFIG) as child:
        state = performance_states(1)[0]
        with pytest.raises(RenderProcessError, match="NaN"):
            child.render(replace(state, weights=np.full(53, np.nan)))
        assert child.render(state).image[..., 3].any()
        pid = child._process.pid
    assert not child._process.is_alive(), f"render process {pid} still running after close()"


def test_the_engine_renders_on_a_thread_when_no_process_can_be_started(face_model, monkeypatch):
    """No shared memory (a locked-down container): `run` falls back to the in-process renderer, not a crash."""
    from multiprocessing import shared_memory

    from engine.app import build_parts
    from engine.config import load_config

    def no_shm(*args, **kwargs):
        raise OSError(38, "Function not implemented: /dev/shm")

    monkeypatch.setattr(shared_memory, "SharedMemory", no_shm)
    config = load_config(overrides=["render.width=96", "render.height=96", "render.backend=egl"])
    parts = build_parts(config, "demo", face_model, _identity(face_model))
    renderer = parts.renderer()
    try:
        assert isinstance(renderer, AvatarRenderer)
        assert renderer.render(performance_states(1)[0]).image.shape == (96, 96, 4)
    finally:
        renderer.close()


def test_supervisor_restarts_a_failed_child_after_its_backoff() -> None:
    """Tiny fakes: a child that dies on its second frame; the supervisor returns None while it is down and
    starts a new one once the backoff has passed, doubling the backoff for a child that fails again."""
    import threading
    import time

    from engine.render.process import RenderProcessError, SupervisedRenderer
    from engine.types import FaceState, RenderedFrame

    started: list[object] = []

    class FakeChild:
        detail, info = False, {}
        preview_open, preview_closed, calibration_requested = True, False, False

        def __init__(self, stop) -> None:
            self.stop, self.frames, self.closed, self.pid = stop, 0, False, len(started)
            started.append(self)

        def render(self, state):
            self.frames += 1
            if self.frames == 2:
                raise RenderProcessError("the render process exited (exit code -9) without an answer")
            return RenderedFrame(np.zeros((2, 2, 4), np.uint8), state, 0)

        def close(self) -> None:
            self.closed = True

    supervisor = SupervisedRenderer(FakeChild, backoff_s=0.2, max_backoff_s=1.0)
    stop = threading.Event()
    supervisor.attach_stop(stop)
    state = FaceState.neutral()
    assert supervisor.render(state) is not None and supervisor.state == "running"
    assert supervisor.render(state) is None and supervisor.state == "restarting" and started[0].closed
    assert supervisor.render(state) is None and len(started) == 1  # still backing off
    time.sleep(0.25)
    assert supervisor.render(state) is not None and len(started) == 2 and supervisor.restarts == 1
    assert started[1].stop is stop  # a restarted child also gives up waiting when the engine stops
    assert supervisor.render(state) is None  # the new child dies too: the backoff doubles
    time.sleep(0.25)
    assert supervisor.render(state) is None and len(started) == 2
    time.sleep(0.2)
    assert supervisor.render(state) is not None and len(started) == 3
    supervisor.close()
    assert started[2].closed


def test_supervisor_gives_up_on_a_renderer_that_never_rendered() -> None:
    """Children that fail before their first frame (missing shaders, a broken driver) are not restarted for
    ever: the third in a row raises, naming the reason and --no-render; one that had rendered keeps restarting."""
    from engine.render.process import RenderProcessError, SupervisedRenderer
    from engine.types import FaceState, RenderedFrame

    class BrokenChild:
        detail, info = False, {}
        preview_open, preview_closed, calibration_requested = True, False, False
        pid = 1

        def __init__(self, stop) -> None:
            self.stop = stop

        def render(self, state):
            raise RenderProcessError("shader file missing: avatar.frag.glsl")

        def close(self) -> None:
            pass

    supervisor = SupervisedRenderer(BrokenChild, backoff_s=0.0, give_up_after=3)
    state = FaceState.neutral()
    assert supervisor.render(state) is None and supervisor.render(state) is None
    with pytest.raises(
        RenderProcessError, match=r"3 times without rendering a frame \(shader file missing.*--no-render"
    ):
        supervisor.render(state)

    class FlakyChild(BrokenChild):
        made = 0

        def __init__(self, stop) -> None:
            super().__init__(stop)
            FlakyChild.made += 1

        def render(self, state):
            if FlakyChild.made == 1:  # the first child works, every later one fails at once
                return RenderedFrame(np.zeros((2, 2, 4), np.uint8), state, 0)
            raise RenderProcessError("the render process exited (exit code -9) without an answer")

    supervisor = SupervisedRenderer(FlakyChild, backoff_s=0.0, give_up_after=3)
    assert supervisor.render(state) is not None
    FlakyChild.made = 2
    for _ in range(10):  # it worked once: a later run of failures is restarted, never fatal
        assert supervisor.render(state) is None
    assert supervisor.restarts >= 4
