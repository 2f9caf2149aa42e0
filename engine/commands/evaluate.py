"""`eval`: accuracy on real videos against reference tracks, and on rendered held-out identities
(`engine/evaluate.py`, `engine/eval_synthetic.py`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from engine.bench import BENCHMARKS_MD, replace_block
from engine.config import Config
from engine.errors import UserError
from engine.eval_synthetic import evaluate_synthetic
from engine.evaluate import EVAL_BEGIN, EVAL_END, evaluate_real, markdown
from engine.files import check_output_path, write_atomic


def cmd_eval(args: argparse.Namespace, config: Config) -> int:
    """`eval`: run the parts asked for, write JSON and Markdown, print the Markdown."""
    out_json = Path(args.out) if args.out else None
    if out_json is not None:
        check_output_path(out_json, "--out")
    report: dict[str, Any] = {}
    if not args.no_real:
        folder = Path(args.videos)
        if not folder.is_dir():
            raise UserError(f"no video folder {folder} (pass --videos DIR, or --no-real)")
        report["real"] = evaluate_real(folder, config, args.only)
    if args.synthetic:
        report["synthetic"] = evaluate_synthetic(
            config, identities=args.identities, seconds=args.seconds, spread_identities=args.spread
        )
    text = markdown(report)
    if args.update_benchmarks:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        body = text.replace(
            "# scapecast eval\n", f"Measured {stamp} by `eval{' --synthetic' if args.synthetic else ''}`.\n"
        )
        replace_block(BENCHMARKS_MD, EVAL_BEGIN, EVAL_END, body.replace("\n## ", "\n### ").strip())
        print(f"updated {BENCHMARKS_MD}")
    if out_json is not None:
        write_atomic(out_json, json.dumps(report, indent=1) + "\n")
        write_atomic(out_json.with_suffix(".md"), text)
    print(text)
    return 0


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    """`eval [--videos DIR] [--synthetic] [--out report.json]`."""
    p = sub.add_parser("eval", help="accuracy on real videos with reference tracks and on synthetic faces")
    p.add_argument("--videos", default="../shared/testdata/real", help="folder of videos with reference/*.jsonl")
    p.add_argument("--only", nargs="*", help="only these videos (stems or file names)")
    p.add_argument("--no-real", action="store_true", help="skip the real videos")
    p.add_argument("--synthetic", action="store_true", help="also the rendered held-out identities (minutes)")
    p.add_argument("--identities", type=int, default=3, help="synthetic: held-out identities per camera")
    p.add_argument("--seconds", type=float, default=10.0, help="synthetic: length of each performance")
    p.add_argument("--spread", type=int, default=20, help="synthetic: identities doing one script (consistency)")
    p.add_argument("--out", help="write the report to PATH (JSON) and PATH with .md")
    p.add_argument("--update-benchmarks", action="store_true", help="rewrite BENCHMARKS.md's accuracy block")
    p.set_defaults(handler=cmd_eval)
