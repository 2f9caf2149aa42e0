"""Wiring for the `run` command: identity resolution, stage factories, the live status line and the summary.

The pipeline (`engine/pipeline.py`) only moves data between stages; this module decides which stages to
build from the config and what to report when the run ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from engine.bundles import load_performer_identity
from engine.config import Config, SolveConfig, StreamConfig
from engine.errors import UserError
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import DEFAULT_IDENTITY_DIR, Identity, default_bundle_dir
from engine.metrics import closed_loop_metrics
from engine.pipeline import FrameResult, Pipeline, PipelineParts
from engine.render.process import RendererProcess, RenderProcessError, SupervisedRenderer
from engine.render.renderer import AvatarRenderer
from engine.render.vcam import CHROMA_GREEN, VirtualCamera
from engine.solve.face_solver import FaceSolver
from engine.solve.performer import Performer
from engine.solve.solver import DEFAULT_FOV_Y_DEG
from engine.sources.select import open_source
from engine.stream.ifacialmocap import IFacialMocapSender
from engine.stream.livelink import LiveLinkFaceSender
from engine.stream.publisher import Publisher
from engine.stream.vmc import VmcBridge
from engine.tracking import FaceTracker

log = logging.getLogger(__name__)


class ParamsJsonl:
    """Writes one JSON line per processed frame: frame index, capture time, tracking, pose, ARKit blendshapes.

    Each line goes out in one unbuffered write; a write that fails or falls short (a full disk) is cut back to
    the last whole line, then this output stops with one warning while the engine runs on."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write --params-jsonl {path}: {exc.strerror}") from None
        self._size = 0  # bytes of whole lines written
        self.lines = 0

    def __call__(self, result: FrameResult) -> None:
        if self._fd is None:
            return
        state = result.state
        record = {
            "frame": result.frame.index,
            "t_capture_ns": state.t_capture_ns,
            "tracking": {"state": state.tracking.value, "confidence": round(float(state.confidence), 4)},
            "pose": {
                "quaternion": [round(float(x), 6) for x in state.pose.quaternion],
                "translation": [round(float(x), 4) for x in state.pose.translation],
                "scale": round(float(state.pose.scale), 6),
            },
            "blendshapes": {k: round(v, 5) for k, v in state.arkit().items()},
        }
        line = (json.dumps(record) + "\n").encode()
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write (disk full?)")
            self._size += written
            self.lines += 1
        except OSError as exc:
            self._stop(exc)

    def _stop(self, exc: OSError) -> None:
        """Cut a partial line off, close, and say so once; the run goes on without this output."""
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        log.warning("--params-jsonl %s stopped after %d lines: %s; the engine keeps running", self.path,
                    self.lines, exc.strerror or exc)  # fmt: skip

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def build_parts(
    config: Config, source_spec: str, model: FaceModel, identity: Identity, render: bool = True
) -> PipelineParts:
    """Stage factories for one run (each called on its own thread)."""

    embedding = LandmarkEmbedding.load()
    engine_id = f"scapecast-{uuid.uuid4().hex[:8]}"

    def make_renderer() -> Any:
        if config.pipeline.render_process:

            def start(stop: Any) -> RendererProcess:
                return RendererProcess(
                    model, identity, config.render, detail_gain=config.detail.scale_mm,
                    detail=config.detail.enabled, niceness=config.pipeline.render_niceness, stop=stop,
                )  # fmt: skip

            try:
                # Supervised: a render child that dies or hangs is restarted; tracking and params go on.
                return SupervisedRenderer(start)
            except (OSError, RenderProcessError) as exc:  # no /dev/shm, no process spawning: render on a thread
                log.warning("render process unavailable (%s); rendering on a thread of the engine", exc)

        renderer = AvatarRenderer(model, identity, config.render, detail_gain=config.detail.scale_mm)
        renderer.detail = config.detail.enabled  # no-op when the identity has no bases
        return renderer

    def make_publisher() -> Any:
        bundle = default_bundle_dir(identity.name, config.identity.cache_dir)
        asset_dir = bundle if (bundle / "identity.json").is_file() else DEFAULT_IDENTITY_DIR
        return Publisher(config.stream, engine_id, identity_info=identity_info(identity), asset_dir=asset_dir)

    on_state: list[Callable[[FrameResult], None]] = []
    on_rendered: list[Callable[[FrameResult], None]] = []
    on_close: list[Callable[[], None]] = []
    outputs = app_outputs(config.stream)
    for output in outputs.values():
        on_state.append(lambda result, send=output.send: send(result.state))
        on_close.append(output.close)

    opened: list[Any] = []  # the source, once the capture thread has opened it
    vcam: list[Any] = []  # the virtual camera, opened with the source (it runs at the source's rate)

    def make_source() -> Any:
        source = open_source(source_spec, config)
        opened.append(source)
        if config.stream.vcam_enabled and render:
            try:
                vcam.append(open_virtual_camera(config, source.fps))
                outputs["vcam"] = vcam[0]
            except BaseException:
                source.close()
                raise
        return source

    if config.stream.vcam_enabled and render:
        on_rendered.append(lambda result: vcam[0].push(result.rendered.image) if vcam and result.rendered else None)
        on_close.append(lambda: vcam[0].close() if vcam else None)

    solve_configs: list[Any] = []  # worked out (and logged) once, for every face's solver

    configured = load_performer(config, model)

    def make_solver() -> Any:
        source = opened[0] if opened else None
        if not solve_configs:
            solve_configs.append(solve_config_for(config, source))
        # A source that renders who it shows (the demo performer) overrides `auto`, not a named profile.
        rendered = getattr(source, "rendered_identity", None)
        performer = configured
        if rendered is not None and configured.online:
            performer = Performer.rendered_avatar(rendered, getattr(source, "camera_fov_y_deg", None))
        # A recorded video processed frame by frame takes each performer estimate on the frame it is due, so its
        # weights do not depend on how fast this machine fits; a live source must never wait for a fit.
        background = source is None or source.live or config.source.realtime
        return FaceSolver(model, embedding, performer, solve_configs[0], config.performer, background)

    return PipelineParts(
        source=make_source,
        tracker=lambda: FaceTracker(config.tracking),
        solver=make_solver,
        renderer=make_renderer if render else None,
        publisher=make_publisher if config.stream.enabled else None,
        max_faces=config.tracking.max_faces,
        calibration_frames=config.solve.calibration_frames,
        on_state=on_state,
        on_rendered=on_rendered,
        on_close=on_close,
        outputs=outputs,
    )


def app_outputs(stream: StreamConfig) -> dict[str, Any]:
    """The UDP senders to other apps that the config turns on, by name (each has `send(state)`, `close()` and
    counts `sent` and `dropped`)."""
    outputs: dict[str, Any] = {}
    if stream.vmc_enabled:
        outputs["vmc"] = VmcBridge(
            stream.vmc_host, stream.vmc_port, stream.vmc_name_casing, stream.vmc_pose, stream.vmc_expressions,
            stream.vmc_head_position,
        )  # fmt: skip
    if stream.ifacialmocap_enabled:
        outputs["ifacialmocap"] = IFacialMocapSender(stream.ifacialmocap_host, stream.ifacialmocap_port)
    if stream.livelink_enabled:
        outputs["livelink"] = LiveLinkFaceSender(stream.livelink_host, stream.livelink_port, stream.livelink_subject)
    return outputs


def open_virtual_camera(config: Config, source_fps: float) -> Any:
    """The virtual camera at `stream.vcam_fps`, else the source's rate (30 when it has none), showing the
    render over `stream.vcam_background`, else the render background where opaque, else chroma-key green."""

    stream = config.stream
    if stream.vcam_background is not None:
        background = tuple(round(255 * c) for c in stream.vcam_background)
    elif config.render.background[3] == 1.0:
        background = tuple(round(255 * c) for c in config.render.background[:3])
    else:
        background = CHROMA_GREEN
    fps = stream.vcam_fps or source_fps or 30.0
    return VirtualCamera(config.render.width, config.render.height, fps, background, stream.vcam_device)  # type: ignore[arg-type]


def solve_config_for(config: Config, source: Any) -> SolveConfig:
    """The solve settings for one source: `solve.camera_fov_y_deg` when set, else the source's own camera's
    field of view when it knows it (the demo performer's render camera), else none: the performer estimate
    finds it (`performer: auto`), or the prior `performer.fov_prior_deg` stands in (an enrolled performer)."""
    if config.solve.camera_fov_y_deg is not None:
        return config.solve
    fov = getattr(source, "camera_fov_y_deg", None)
    if fov:
        log.info("solver: camera vertical field of view %.0f° (the source's)", fov)
        return config.solve.model_copy(update={"camera_fov_y_deg": fov})
    auto = config.performer.name == "auto"
    if auto and config.performer.camera != "assumed":
        log.info(
            "solver: camera field of view unknown: estimated online (performer.camera: %s)", config.performer.camera
        )
    else:
        assumed = config.performer.fov_prior_deg if auto else DEFAULT_FOV_Y_DEG
        log.info("solver: camera field of view unknown: %.0f° assumed (set solve.camera_fov_y_deg)", assumed)
    return config.solve


def load_performer(config: Config, model: FaceModel) -> Performer:
    """Who is tracked: `auto` (estimated online), else the profile `enroll` saved under `performer.name`
    (its identity and neutral calibration; the bundle's detail bases are not read)."""
    if config.performer.name == "auto":
        return Performer.auto()
    return Performer.from_identity(load_performer_identity(config.performer.name, config.identity.cache_dir, model))


def identity_info(identity: Identity) -> dict[str, Any]:
    """What the `identity` topic announces about the avatar."""
    # `origin` (where the bundle came from), not `source`: the envelope's `source` is the engine's id, and
    # subscribers count each engine's `seq` by it.
    return {"id": identity.name, "model_id": identity.model_id, "origin": identity.source}


class StatusLine:
    """A one-line live status on stderr (rewritten in place on a terminal, a line every 5 s otherwise)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_line_s = 0.0

    def __call__(self, pipeline: Pipeline) -> None:
        import time

        stats = pipeline.stats(window=60)
        p95 = stats["latency_ms"]["p95"]
        latency = "–" if p95 is None else f"{p95:.1f} ms"
        text = (
            f"[scapecast] {pipeline.source_description or 'starting'} | frames {stats['frames']} | "
            f"{stats['fps']:.1f} fps (render {stats['render_fps']:.1f}) | latency p95 {latency} | {stats['tracking']}"
        )
        if self.tty:
            self.stream.write("\r" + text.ljust(100)[:140])
            self.stream.flush()
        elif time.monotonic() - self._last_line_s >= 5.0:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_line_s = time.monotonic()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")


def summarize(pipeline: Pipeline) -> dict[str, Any]:
    """The `--summary-json` document (design §8)."""
    results = pipeline.snapshot()
    stats = pipeline.stats(window=None)
    summary: dict[str, Any] = {
        "source": pipeline.source_description,
        "frames": stats["frames"],
        "fps": stats["fps"],
        "rendered": stats["rendered"],
        "render_fps": stats["render_fps"],
        "latency_ms": stats["latency_ms"],
        "frame_latency_ms": stats["frame_latency_ms"],
        "stages_ms": stats["stages_ms"],
        "tracking_rate": round(pipeline.tracked / pipeline.processed, 4) if pipeline.processed else 0.0,
        "published": dict(pipeline.published),
        "dropped": stats["dropped"],
        "invalid_frames": pipeline.invalid_frames,
        "render": stats["render"],
        "outputs": {
            name: {"sent": output.sent, "dropped": getattr(output, "dropped", 0)}
            for name, output in pipeline.parts.outputs.items()
        },
        "wall_s": round((pipeline.t_end_ns - pipeline.t_start_ns) / 1e9, 3),
        # Each face's performer state at the end (the camera in use, whether it was read from the face).
        "performers": stats["performers"],
    }
    with_truth = [r for r in results if r.frame.true_weights is not None]
    if with_truth:
        truth = np.stack([r.frame.true_weights for r in with_truth])
        solved = np.stack([r.state.weights for r in with_truth])
        summary["closed_loop"] = closed_loop_metrics(truth, solved)
    return summary
