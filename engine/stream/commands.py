"""CLI subcommands of the streaming layer: `keys` (CURVE key pairs), `relay` (fan-out), `view` (remote renderer)."""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from engine.config import Config
from engine.errors import UserError

log = logging.getLogger(__name__)


def _client_keys(args: argparse.Namespace):
    """ClientKeys from --server-key/--client-key, or None; both or neither."""
    from engine.stream.security import ClientKeys

    if (args.server_key is None) != (args.client_key is None):
        raise UserError("CURVE needs both --server-key (the server's .key) and --client-key (your .key_secret)")
    return ClientKeys.load(Path(args.server_key), Path(args.client_key)) if args.server_key else None


def _add_curve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-key", metavar="FILE", help="the engine's public key (server.key), when it uses CURVE")
    p.add_argument("--client-key", metavar="FILE", help="this client's key pair (NAME.key_secret)")


# ---- keys -------------------------------------------------------------------------------------------------


def _cmd_keys(args: argparse.Namespace, config: Config) -> int:
    from engine.stream.security import make_keys

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
    p.set_defaults(handler=_cmd_keys)


# ---- relay ------------------------------------------------------------------------------------------------


def _cmd_relay(args: argparse.Namespace, config: Config) -> int:
    from engine.stream.relay import Relay

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
    with Relay(args.connect, stream, _client_keys(args)) as relay:
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
    _add_curve_args(p)
    p.set_defaults(handler=_cmd_relay)


# ---- view -------------------------------------------------------------------------------------------------


def _remote_cache_dir(identity_id: str, cache_dir: str | None) -> Path:
    """`cache_dir/<id>`, default `$XDG_CACHE_HOME/scapecast/remote/<id>` (the id made safe as a folder name)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scapecast" / "remote"
    return Path(cache_dir or cache) / (re.sub(r"[^A-Za-z0-9_.-]", "_", identity_id).strip(".") or "_")


class _Sink:
    """Where rendered frames go: numbered PNGs in a folder, a video file, or a window."""

    def __init__(self, out: str | None, fps: float, size: tuple[int, int]):
        import cv2

        self._cv2 = cv2
        self._dir: Path | None = None
        self._video = None
        self.frames = 0
        if out is None:
            if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
                raise UserError("no display to show a window on: pass --out DIR (PNGs) or --out FILE.mp4")
        elif Path(out).suffix.lower() in (".mp4", ".avi", ".mkv", ".mov"):
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if Path(out).suffix.lower() in (".mp4", ".mov") else "MJPG"))
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            self._video = cv2.VideoWriter(out, fourcc, fps, size)
            if not self._video.isOpened():
                raise UserError(f"cannot open video file {out} for writing")
        else:
            self._dir = Path(out)
            self._dir.mkdir(parents=True, exist_ok=True)

    def write(self, rgba) -> bool:
        """Write one (H, W, 4) uint8 RGBA image; False when the user closed the window."""
        cv2 = self._cv2
        if self._dir is not None:
            cv2.imwrite(str(self._dir / f"frame_{self.frames:06d}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        elif self._video is not None:
            self._video.write(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))
        else:
            cv2.imshow("scapecast view", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))
            if cv2.waitKey(1) in (27, ord("q")):
                return False
        self.frames += 1
        return True

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
        elif self._dir is None:
            self._cv2.destroyAllWindows()


def _load_remote_identity(client, identity_message, model, cache_dir: str | None):
    """Fetch the announced bundle (hash-checked, cached) and load it; the shipped default when none is served."""
    from engine.identity import DEFAULT_IDENTITY_DIR, load_bundle

    header = identity_message.header
    if header["model_id"] and header["model_id"] != model.model_id:
        raise UserError(f"the engine renders face model {header['model_id']!r}; this viewer has {model.model_id!r}")
    if not header["assets"]:
        log.warning("the engine serves no identity bundle: rendering the shipped default identity")
        return load_bundle(DEFAULT_IDENTITY_DIR, model)
    directory = _remote_cache_dir(header["id"], cache_dir)
    client.fetch_assets(directory)
    log.info("identity %r fetched into %s", header["id"], directory)
    return load_bundle(directory, model)


def _cmd_view(args: argparse.Namespace, config: Config) -> int:
    from engine.face_model import FaceModel
    from engine.render.renderer import AvatarRenderer
    from engine.stream.client import StreamClient, engine_addresses, params_to_face_state
    from engine.stream.schema import IDENTITY, PARAMS

    addresses = engine_addresses(args.connect)
    keys = _client_keys(args)
    sink = _Sink(args.out, args.fps, (config.render.width, config.render.height))
    model = FaceModel.load()
    with StreamClient(addresses["params"], asset_address=args.assets or addresses["assets"], keys=keys) as client:
        hint = "is the engine running there, bound to a reachable stream.bind_address, with matching CURVE keys?"
        identity_message = client.wait(IDENTITY, args.timeout)
        if identity_message is None:
            raise UserError(f"nothing from {addresses['params']} within {args.timeout:g} s: {hint}")
        identity = _load_remote_identity(client, identity_message, model, args.cache_dir)
        identity_id = identity_message.header["id"]
        renderer = AvatarRenderer(model, identity, config.render, detail_gain=config.detail.scale_mm)
        previous = None
        try:
            while args.frames is None or sink.frames < args.frames:
                message = client.wait(PARAMS, args.timeout, newer_than=previous, face=args.face)
                if message is None:
                    which = f" for face {args.face}" if args.face else ""
                    raise UserError(f"no params{which} from {addresses['params']} for {args.timeout:g} s: {hint}")
                previous = message
                if message.header["identity"] != identity_id:  # the engine switched identity: fetch the new one
                    latest = client.wait(IDENTITY, args.timeout)
                    if latest is not None and latest.header["id"] == message.header["identity"]:
                        identity = _load_remote_identity(client, latest, model, args.cache_dir)
                        identity_id = latest.header["id"]
                        renderer.close()
                        renderer = AvatarRenderer(model, identity, config.render, detail_gain=config.detail.scale_mm)
                if not sink.write(renderer.render(params_to_face_state(message)).image):
                    break
        except KeyboardInterrupt:
            pass
        finally:
            renderer.close()
            sink.close()
    print(f"rendered {sink.frames} frames" + (f" to {args.out}" if args.out else ""))
    return 0


def add_view_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="remote renderer: subscribe to an engine, fetch its identity, render locally")
    p.add_argument("--connect", required=True, metavar="tcp://HOST:PORT", help="the engine's params address (5555)")
    p.add_argument("--assets", metavar="tcp://HOST:PORT", help="asset service address (default: params port + 2)")
    p.add_argument("--out", metavar="DIR|FILE.mp4", help="write PNGs to DIR or a video file (default: a window)")
    p.add_argument("--frames", type=int, metavar="N", help="stop after N rendered frames")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate written into a video file")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="give up after S seconds of silence")
    p.add_argument("--face", type=int, default=0, metavar="N", help="which tracked face to render (tracking.max_faces)")
    p.add_argument("--cache-dir", metavar="DIR", help="where fetched bundles are kept (default: the user cache)")
    _add_curve_args(p)
    p.set_defaults(handler=_cmd_view)
