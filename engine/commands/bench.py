"""`bench`: every benchmark in one run, printed as JSON and written into BENCHMARKS.md (`engine/bench.py`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.bench import BENCHMARKS_MD, refresh_benchmarks_md, run_benchmarks
from engine.config import Config
from engine.files import check_output_path


def cmd_bench(args: argparse.Namespace, config: Config) -> int:
    """`bench`: run everything, print JSON, refresh BENCHMARKS.md (unless --no-update)."""
    if args.json:
        check_output_path(Path(args.json), "--json")  # before minutes of measuring, not after
    results = run_benchmarks(config, quick=args.quick)
    text = json.dumps(results, indent=2, default=float)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    if not args.no_update and not BENCHMARKS_MD.is_file():  # an installed wheel: no source tree to update
        print("BENCHMARKS.md not updated: it belongs to a source checkout, and this is an installed package")
    elif not args.no_update:
        refresh_benchmarks_md(results)
        print(f"updated {BENCHMARKS_MD}")
    return 0


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    """`bench [--json PATH] [--quick] [--no-update]`."""
    p = sub.add_parser("bench", help="per-stage and end-to-end benchmarks; refreshes BENCHMARKS.md")
    p.add_argument("--json", help="write the results as JSON to PATH")
    p.add_argument("--quick", action="store_true", help="short runs (smoke test, numbers not representative)")
    p.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    p.set_defaults(handler=cmd_bench)
