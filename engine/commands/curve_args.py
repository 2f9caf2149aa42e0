"""The `--server-key` / `--client-key` options of the commands that connect to an engine (view, relay)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import UserError
from engine.stream.security import ClientKeys


def client_keys(args: argparse.Namespace):
    """ClientKeys from --server-key/--client-key, or None; both or neither."""

    if (args.server_key is None) != (args.client_key is None):
        raise UserError("CURVE needs both --server-key (the server's .key) and --client-key (your .key_secret)")
    return ClientKeys.load(Path(args.server_key), Path(args.client_key)) if args.server_key else None


def add_curve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-key", metavar="FILE", help="the engine's public key (server.key), when it uses CURVE")
    p.add_argument("--client-key", metavar="FILE", help="this client's key pair (NAME.key_secret)")
