"""`python -m engine.web serve …`: the `serve` command with the engine's global options (`--config`, `--set`,
`--debug`), for as long as `scapecast serve` is not registered in engine/cli.py (then both are the same)."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.config import ConfigError, load_config
from engine.errors import UserError
from engine.web.command import add_serve_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.web")
    parser.add_argument("--config", help="YAML config layered over configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--debug", action="store_true")
    add_serve_command(parser.add_subparsers(dest="command", required=True, metavar="serve"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args, load_config(args.config, args.overrides)) or 0)
    except (ConfigError, UserError) as exc:
        if args.debug:
            raise
        print(f"scapecast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
