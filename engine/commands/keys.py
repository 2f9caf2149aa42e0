"""`keys DIR`: CURVE key pairs for the engine and its clients, and the allow-list folder (docs/protocol.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.config import Config
from engine.errors import UserError
from engine.stream.security import make_keys


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    """`keys`: write the key pairs and the allow-list, and print the settings that use them."""
    try:
        files = make_keys(Path(args.directory), args.client or ["viewer"])
    except OSError as exc:
        raise UserError(f"cannot write keys to {args.directory}: {exc.strerror}") from None
    for label, path in files.items():
        print(f"{label:<22} {path}")
    print("engine:  --set stream.curve_server_secret=" + str(files["server secret"]))
    print("         --set stream.curve_allowed_clients=" + str(files["allow-list"]))
    first = (args.client or ["viewer"])[0]
    print(f"viewer:  --server-key {files['server public']} --client-key {files[f'{first} secret']}")
    return 0


def add_keys_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make CURVE key pairs (server + clients) and the client allow-list folder")
    p.add_argument("directory", help="where to write server.key[_secret], NAME.key[_secret] and allowed/")
    p.add_argument("--client", action="append", metavar="NAME", help="a client key pair to make (repeatable)")
    p.set_defaults(handler=cmd_keys)
