"""`render --out DIR`: still images of key expressions, detail on and off, and the debug views; with
`--compare BEFORE_DIR`, one before | after sheet (`DIR/before_after.jpg`) against stills an earlier version wrote."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from engine.bundles import load_identity
from engine.config import Config
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.render.bench import synthetic_ridge_bases
from engine.render.stills import COMPARE_SHEET, DEFAULT_STILLS, KEY_EXPRESSION_NAMES, render_compare, render_stills


def cmd_render(args: argparse.Namespace, config: Config) -> int:
    """`render`: still PNGs of the named key expressions, detail on and off, and the debug views."""
    model = FaceModel.load()
    identity = load_identity(config.identity, model, config.detail)
    if args.synthetic_bases:
        identity = replace(identity, bases=synthetic_ridge_bases(config.detail.resolution))
    names = tuple(n.strip() for n in args.expressions.split(",") if n.strip())
    unknown = [n for n in names if n not in KEY_EXPRESSION_NAMES]
    if unknown:
        raise UserError(f"unknown key expression(s) {unknown}; known: {', '.join(KEY_EXPRESSION_NAMES)}")
    if args.compare:
        before = Path(args.compare)
        if not before.is_dir():
            raise UserError(
                f"--compare {before}: not a folder (render --out BEFORE_DIR with the earlier version first)"
            )
        try:
            sheet = render_compare(model, identity, config.render, before, Path(args.out) / COMPARE_SHEET, names,
                                   detail_gain=config.detail.scale_mm)  # fmt: skip
        except ValueError as e:
            raise UserError(str(e)) from e
        print(sheet)
        return 0
    written = render_stills(model, identity, config.render, Path(args.out), names, detail_gain=config.detail.scale_mm)
    for path in written:
        print(path)
    return 0


def add_render_command(sub: argparse._SubParsersAction) -> None:
    """`render`: still images of key expressions, detail on and off, and the debug views."""
    p = sub.add_parser("render", help="render still images of key expressions (detail on/off, debug views)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--expressions", default=",".join(DEFAULT_STILLS), help="comma-separated key expression names")
    p.add_argument("--synthetic-bases", action="store_true", help="replace the identity's bases with synthetic ridges")
    p.add_argument(
        "--compare",
        metavar="BEFORE_DIR",
        help=f"write only OUT/{COMPARE_SHEET}: the stills in BEFORE_DIR (an earlier `render --out`) beside the same "
        "expressions rendered now",
    )
    p.set_defaults(handler=cmd_render)
