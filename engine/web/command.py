"""`scapecast serve` and the pieces `run --web` uses: the avatar in a browser (engine/web/server.py).

    scapecast serve [--connect tcp://HOST:5555] [--host 127.0.0.1] [--port 8080] [--token T | --insecure]
                    [--face N] [--cache-dir DIR] [--tile-bits 8|16] [--server-key F --client-key F] [--open]

Settings come from the `web` config section (`WebConfig`; until engine/config.py has that section, its defaults),
then the flags. `start_web_server(config)` starts the same server on a thread of the calling process, subscribed to
that process's own engine over loopback — what `run --web` calls next to the engine.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
import webbrowser
from pathlib import Path

from engine.config import Config
from engine.errors import UserError
from engine.web.config import WebConfig

log = logging.getLogger(__name__)


def web_config(config: Config) -> WebConfig:
    """The config's `web` section, or the defaults while the schema has none."""
    section = getattr(config, "web", None)
    return section if isinstance(section, WebConfig) else WebConfig.model_validate(section or {})


def _client_keys(args: argparse.Namespace):
    """ClientKeys from --server-key/--client-key, or None; both or neither (as `view`)."""
    from engine.stream.security import ClientKeys

    if (args.server_key is None) != (args.client_key is None):
        raise UserError("CURVE needs both --server-key (the server's .key) and --client-key (your .key_secret)")
    return ClientKeys.load(Path(args.server_key), Path(args.client_key)) if args.server_key else None


def _settings(args: argparse.Namespace, config: Config):
    from engine.web.server import ServeSettings

    web = web_config(config)
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
        keys=_client_keys(args),
    )


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """Serve the page until Ctrl-C; prints the URL to open."""
    from engine.web.server import WebServerThread

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
    """Register `serve` (cli.py's _SUBCOMMANDS list)."""
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
    p.add_argument("--server-key", metavar="FILE", help="the engine's public key (server.key), when it uses CURVE")
    p.add_argument("--client-key", metavar="FILE", help="this client's key pair (NAME.key_secret)")
    p.set_defaults(handler=cmd_serve)  # fmt: skip


def start_web_server(config: Config, host: str | None = None, port: int | None = None):
    """`run --web`: serve this process's own engine (its params over loopback) from a thread; returns a
    WebServerThread (`.url`, `.stop()`). Call it before the pipeline starts; stop it after the run."""
    from engine.web.server import ServeSettings, WebServerThread

    stream = config.stream
    if not stream.enabled:
        raise UserError("run --web shows the engine's params: it needs stream.enabled=true")
    if stream.params_port == 0:
        raise UserError("run --web needs a fixed stream.params_port (0 binds a port only known later)")
    if stream.curve_server_secret is not None:
        raise UserError("run --web cannot subscribe to a CURVE engine from inside it; run `scapecast serve "
                        "--server-key … --client-key …` beside it instead")  # fmt: skip
    web = web_config(config)
    settings = ServeSettings(
        connect=f"tcp://127.0.0.1:{stream.params_port}",
        assets=f"tcp://127.0.0.1:{stream.asset_port}",
        host=host if host is not None else web.host,
        port=port if port is not None else web.port,
        token=web.token,
        insecure=web.insecure,
        cache_dir=web.cache_dir,
        tile_bits=web.tile_bits,
    )
    server = WebServerThread(settings, config.render, config.detail)
    log.info("the avatar in a browser: %s", server.url)
    return server
