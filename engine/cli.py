"""Command line: `run_engine.py` / `scapecast` subcommands (design §8).

Every subcommand reads configs/default.yaml, then `--config FILE`, then `--set section.key=value`.
User errors (bad config, missing files, no camera) print one line and exit non-zero; `--debug` shows
the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from engine.commands.bench import add_bench_command
from engine.commands.enroll import add_enroll_command
from engine.commands.evaluate import add_eval_command
from engine.commands.keys import add_keys_command
from engine.commands.model_info import add_model_info_command
from engine.commands.relay import add_relay_command
from engine.commands.render import add_render_command
from engine.commands.report import add_report_command
from engine.commands.run import add_run_command
from engine.commands.serve import add_serve_command
from engine.commands.view import add_view_command
from engine.config import ConfigError, load_config
from engine.errors import UserError

log = logging.getLogger("scapecast")


# Each subcommand module contributes one `add_*` function; order here is the order in --help.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_run_command,
    add_enroll_command,
    add_bench_command,
    add_report_command,
    add_eval_command,
    add_model_info_command,
    add_view_command,
    add_relay_command,
    add_keys_command,
    add_serve_command,
    add_render_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scapecast", description="Real-time streaming avatar engine.")
    parser.add_argument("--config", help="YAML config layered over configs/default.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_GLOBAL_WITH_VALUE = ("--config", "--set")


def _strip_global_options(argv: list[str]) -> list[str]:
    """argv without the global options (`--config X`, `--set X`, `--debug`, and their `=` forms)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_WITH_VALUE:
            skip = True
        elif arg != "--debug" and not arg.startswith(tuple(f"{o}=" for o in _GLOBAL_WITH_VALUE)):
            rest.append(arg)
    return rest


def _global_options_first(argv: list[str]) -> list[str]:
    """Move global options in front of the subcommand, so `run --set a.b=1` works like `--set a.b=1 run`."""
    rest = _strip_global_options(argv)
    front, i = [], 0
    while i < len(argv):
        if argv[i] in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front += argv[i : i + 2]
            i += 2
            continue
        if argv[i] == "--debug" or argv[i].startswith(tuple(f"{o}=" for o in _GLOBAL_WITH_VALUE)):
            front.append(argv[i])
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> int:
    """Entry point of `run_engine.py` and the `scapecast` console script."""
    parser = build_parser()
    argv = _global_options_first(list(sys.argv[1:] if argv is None else argv))
    known = {a for a in parser._subparsers._group_actions[0].choices}  # type: ignore[union-attr]
    # `run` is the default subcommand: `scapecast --source demo` means `scapecast run --source demo`.
    if not any(a in known for a in argv) and not any(a in ("-h", "--help") for a in argv):
        globals_end = len(argv) - len(_strip_global_options(argv))
        argv = [*argv[:globals_end], "run", *argv[globals_end:]]
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config, args.overrides)
        return int(args.handler(args, config) or 0)
    except (ConfigError, UserError) as exc:
        if args.debug:
            raise
        print(f"scapecast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except OSError as exc:
        # A file or folder the command could not make or write (read-only or full disk, no such parent): one
        # line naming it. The commands check their outputs before long work where they can; this is the net.
        if args.debug or exc.strerror is None:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"scapecast: error: {exc.strerror}{where}", file=sys.stderr)
        return 1
