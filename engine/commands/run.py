"""`run` (the default command): the live engine from a source to its outputs (docs/engine.md).

Argument handling only; what the run builds and reports is `engine/app.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import signal
from pathlib import Path
from typing import Any

from engine.app import ParamsJsonl, StatusLine, build_parts, summarize
from engine.bundles import load_identity
from engine.config import Config
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.files import check_output_path, write_atomic
from engine.pipeline import Pipeline
from engine.render.vcam import INSTALL_HINT
from engine.sources.select import check_source_spec
from engine.web.server import start_web_server


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """The live engine (design §8 `run`)."""
    if args.frames is not None:
        if args.frames < 1:
            raise UserError(f"--frames must be at least 1, got {args.frames}")
        config.pipeline.frames = args.frames
    if args.duration is not None:
        if not (math.isfinite(args.duration) and args.duration > 0):
            raise UserError(f"--duration must be a positive number of seconds, got {args.duration}")
        config.pipeline.duration_s = args.duration
    if args.avatar:
        config.identity.name = args.avatar
    if args.performer:
        config.performer.name = args.performer
    if args.realtime:
        config.source.realtime = True
    if args.insecure:
        config.stream.insecure = True
    if args.no_window:
        config.render.backend = "egl"
    if args.vcam:
        config.stream.vcam_enabled = True
    if config.stream.vcam_enabled and args.no_render:
        raise UserError("--vcam shows the rendered avatar: it cannot run with --no-render")
    if config.stream.vcam_enabled:
        if importlib.util.find_spec("pyvirtualcam") is None:
            raise UserError(f"--vcam needs pyvirtualcam: {INSTALL_HINT}")
    source_spec = args.source or config.source.kind

    check_source_spec(source_spec)
    model = FaceModel.load()
    identity = load_identity(config.identity, model, config.detail)
    parts = build_parts(config, source_spec, model, identity, render=not args.no_render)
    if args.summary_json:
        check_output_path(Path(args.summary_json), "--summary-json")
    jsonl = ParamsJsonl(Path(args.params_jsonl)) if args.params_jsonl else None
    if jsonl is not None:
        parts.on_state.append(jsonl)
    pipeline = Pipeline(
        parts, realtime=True if config.source.realtime else None, render_niceness=config.pipeline.render_niceness
    )
    if args.calibrate:
        pipeline.request_calibration()  # from the first tracked frames: the user starts with a relaxed face
    web = start_web_server(config) if args.web else None
    if web is not None:
        print(f"scapecast: the avatar in a browser at {web.url}", flush=True)
    status = StatusLine() if config.pipeline.status_line and not args.quiet else None
    # Ctrl-C and SIGTERM only ask the stage threads to finish: the main thread is never interrupted mid-call,
    # and every stage closes its own resources (MediaPipe's graph aborts the process if torn down half-way).
    # Installed explicitly so Ctrl-C works even where a launcher started us with SIGINT ignored.
    previous = {sig: signal.signal(sig, lambda *_: pipeline.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        pipeline.run(config.pipeline.frames, config.pipeline.duration_s, on_tick=status)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if status is not None:
            status.finish()
        if jsonl is not None:
            jsonl.close()
        if web is not None:
            web.stop()
    summary = summarize(pipeline)
    if args.summary_json:
        try:
            write_atomic(Path(args.summary_json), json.dumps(summary, indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write --summary-json {args.summary_json}: {exc.strerror}") from None
    print(_summary_text(summary))
    return 0


# `FaceSolver.status()["camera"]` in words.
CAMERA_SOURCES = {
    "given": "given", "assumed": "assumed: set solve.camera_fov_y_deg", "read": "read from the face",
    "fitted": "fitted to the face",
}  # fmt: skip


def _summary_text(summary: dict[str, Any]) -> str:
    lines = [
        f"scapecast: {summary['frames']} frames from {summary['source']} in {summary['wall_s']} s, "
        f"{summary['fps']} fps, capture→publish p50 {summary['latency_ms']['p50']} ms "
        f"p95 {summary['latency_ms']['p95']} ms, tracking rate {summary['tracking_rate']:.3f}",
        f"  rendered {summary['rendered']} frames at {summary['render_fps']} fps, capture→frame publish p95 "
        f"{summary['frame_latency_ms']['p95']} ms",
        "  stages p50 (ms): " + ", ".join(f"{k} {v}" for k, v in summary["stages_ms"].items()),
        "  published: " + (", ".join(f"{k} {v}" for k, v in summary["published"].items()) or "nothing"),
    ]
    if summary["outputs"]:
        lines.append("  outputs: " + ", ".join(f"{name} {c['sent']} sent, {c['dropped']} dropped"
                                                for name, c in summary["outputs"].items()))  # fmt: skip
    for performer in summary.get("performers", []):
        how = CAMERA_SOURCES.get(str(performer.get("camera")), "")
        lines.append(f"  performer {performer['performer']}: camera {performer['fov_y_deg']}° ({how})")
    if "closed_loop" in summary:
        loop = summary["closed_loop"]
        lines.append(
            f"  closed loop: mean |w − w_true| {loop['mae']} on {loop['driven_channels']} driven channels "
            f"({loop['mae_all']} over all 53)"
        )
    return "\n".join(lines)


def add_run_command(sub: argparse._SubParsersAction) -> None:
    """`run` (the default command): the live engine."""
    p = sub.add_parser("run", help="the live engine (default command)")
    p.add_argument("--source", help="auto | webcam[:N] | demo | PATH (video, image or folder); default from config")
    p.add_argument(
        "--avatar", "--identity", dest="avatar", help="the rendered identity bundle (default from config: 'default')"
    )
    p.add_argument("--performer", help="who is tracked: auto (estimated online, the default) or an enrolled name")
    p.add_argument("--frames", type=int, help="stop after N processed frames")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--no-window", action="store_true", help="headless: no preview window")
    p.add_argument("--no-render", action="store_true", help="track and publish parameters only")
    p.add_argument(
        "--vcam", action="store_true",
        help="show the avatar as a system camera for video calls (pip install 'scapecast[vcam]'; docs/apps.md)",
    )  # fmt: skip
    p.add_argument("--web", action="store_true", help="also show the avatar to web browsers at web.host:web.port")
    p.add_argument("--realtime", action="store_true", help="file sources: keep wall-clock pace, drop stale frames")
    p.add_argument("--summary-json", help="write the run summary (fps, latency, accuracy) to PATH")
    p.add_argument("--params-jsonl", help="write one JSON line per processed frame to PATH")
    p.add_argument("--quiet", action="store_true", help="no live status line")
    p.add_argument(
        "--calibrate", action="store_true",
        help="calibrate the neutral face on the first tracked frames (hold a relaxed face); c in the window redoes it",
    )  # fmt: skip
    p.add_argument("--insecure", action="store_true", help="allow binding a non-loopback address without CURVE keys")
    p.set_defaults(handler=cmd_run)
