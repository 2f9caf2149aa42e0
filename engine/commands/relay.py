"""`relay --connect tcp://ENGINE:5555 --bind ADDRESS`: fan an engine's stream out (`engine/stream/relay.py`)."""

from __future__ import annotations

import argparse

from engine.commands.curve_args import add_curve_args, client_keys
from engine.config import Config
from engine.errors import UserError
from engine.stream.relay import Relay


def cmd_relay(args: argparse.Namespace, config: Config) -> int:
    """`relay`: re-publish an engine's three sockets until Ctrl-C."""
    stream = config.stream
    if args.bind is not None:
        host, _, port = args.bind.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--bind expects HOST:PORT (ports PORT..PORT+2 are used), got {args.bind!r}")
        base = int(port)
        stream = stream.model_copy(update={"bind_address": host, "params_port": base, "frame_port": base + 1,
                                           "asset_port": base + 2})  # fmt: skip
    if args.insecure:
        stream = stream.model_copy(update={"insecure": True})
    with Relay(args.connect, stream, client_keys(args)) as relay:
        print(f"relaying {args.connect} → {', '.join(relay.endpoints.values())} (Ctrl-C stops)")
        try:
            relay.wait()
        except KeyboardInterrupt:
            pass
    return 0


def add_relay_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relay", help="fan an engine's stream out to more subscribers (ZeroMQ XSUB/XPUB proxy)")
    p.add_argument("--connect", required=True, metavar="tcp://HOST:PORT", help="the engine's params address")
    p.add_argument("--bind", metavar="HOST:PORT", help="where to re-publish (default: the stream section's ports)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    add_curve_args(p)
    p.set_defaults(handler=cmd_relay)
