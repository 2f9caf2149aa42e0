"""`report --source SPEC --out DIR`: run on a source, then an HTML page with pictures (`engine/report.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.app import build_parts, summarize
from engine.bundles import load_identity
from engine.config import Config
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.pipeline import Pipeline
from engine.report import FrameSampler, write_report
from engine.sources.select import check_source_spec


def cmd_report(args: argparse.Namespace, config: Config) -> int:
    """`report`: run on a source, then write the HTML page."""

    check_source_spec(args.source)
    out = Path(args.out)
    try:  # before minutes of work, not after
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".scapecast-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc.strerror}") from None
    if args.identity:
        config.identity.name = args.identity
    config.stream.enabled = False  # a report is offline: nothing to publish, no window
    config.render.backend = "egl"
    model = FaceModel.load()
    identity = load_identity(config.identity, model, config.detail)
    parts = build_parts(config, args.source, model, identity)
    sampler = FrameSampler(args.frames // args.samples, limit=args.samples)
    parts.on_rendered.append(sampler)
    pipeline = Pipeline(parts, keep=max(args.frames, 1))  # every frame's record: the curves cover the whole run
    pipeline.run(max_frames=args.frames)
    summary = summarize(pipeline)
    page = write_report(Path(args.out), summary, pipeline.snapshot(), sampler, identity)
    print(f"report written to {page}")
    return 0


def add_report_command(sub: argparse._SubParsersAction) -> None:
    """`report --source SPEC --out DIR`."""
    p = sub.add_parser("report", help="run on a source and write an HTML page with pictures")
    p.add_argument("--source", default="demo", help="auto | webcam[:N] | demo | PATH (default demo)")
    p.add_argument("--identity", help="identity bundle name")
    p.add_argument("--frames", type=int, default=240, help="frames to process (default 240)")
    p.add_argument("--samples", type=int, default=8, help="input | avatar pairs to show (default 8)")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.set_defaults(handler=cmd_report)
