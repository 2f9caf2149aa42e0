"""`serve`: the avatar in a web browser — a page and a WebSocket fed by an engine's params (engine/web/server.py,
docs/web.md). `run --web` starts the same server beside its own engine (`engine.web.server.start_web_server`).

    scapecast serve [--connect tcp://HOST:5555] [--host 127.0.0.1] [--port 8080] [--token T | --insecure]
                    [--face N] [--cache-dir DIR] [--tile-bits 8|16] [--server-key F --client-key F] [--open]

Settings come from the `web` config section, then the flags.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
import webbrowser
from pathlib import Path

from engine.commands.curve_args import add_curve_args, client_keys
from engine.config import Config
from engine.web.server import ServeSettings, WebServerThread


def _settings(args: argparse.Namespace, config: Config):
    web = config.web
    connect = args.connect or f"tcp://127.0.0.1:{config.stream.params_port}"
    return ServeSettings(
        connect=connect,
        assets=args.assets,
        host=args.host if args.host is not None else web.host,
        port=args.port if args.port is not None else web.port,
        token=args.token if args.token is not None else web.token,
        insecure=args.insecure or web.insecure,
        face=args.face,
        cache_dir=Path(args.cache_dir) if args.cache_dir else web.cache_dir,
        tile_bits=args.tile_bits or web.tile_bits,
        keys=client_keys(args),
    )


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """Serve the page until Ctrl-C; prints the URL to open."""
    settings = _settings(args, config)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it like Ctrl-C: pages closed, summary printed
    with WebServerThread(settings, config.render, config.detail) as server:
        print(f"scapecast: the avatar of {server.server.params_address} at {server.url} (Ctrl-C stops)", flush=True)
        if server.server.public_url:
            print(f"scapecast: from other machines: {server.server.public_url}", flush=True)
        if args.open:
            webbrowser.open(server.url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        stats = server.call(server.server.stats)
    print(f"served {stats['frames']} frames")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    """`serve`: the avatar in a web browser."""
    p = sub.add_parser("serve", help="the avatar in a web browser: a page + WebSocket fed by an engine's params")
    p.add_argument(
        "--connect",
        metavar="tcp://HOST:PORT",
        help="the engine's (or relay's) params address (default: tcp://127.0.0.1:<stream.params_port>)",
    )
    p.add_argument("--assets", metavar="tcp://HOST:PORT", help="asset service address (default: params port + 2)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; others need a token or --insecure)")
    p.add_argument("--port", type=int, help="HTTP port (default 8080; 0 picks a free one)")
    p.add_argument("--token", help="pages must present ?token=TOKEN (generated when listening off loopback)")
    p.add_argument("--insecure", action="store_true", help="listen off loopback without a token")
    p.add_argument("--face", type=int, default=0, metavar="N", help="which tracked face to show")
    p.add_argument("--cache-dir", metavar="DIR", help="where fetched bundles and browser assets are kept")
    p.add_argument("--tile-bits", type=int, choices=(8, 16), help="detail tiles for browsers (default 8)")
    p.add_argument("--open", action="store_true", help="open the page in this machine's browser")
    add_curve_args(p)
    p.set_defaults(handler=cmd_serve)  # fmt: skip
