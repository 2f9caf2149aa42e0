"""`view --connect tcp://ENGINE:5555`: a remote renderer: subscribe, fetch the identity, render locally
(the pieces: `engine/stream/viewer.py`)."""

from __future__ import annotations

import argparse

from engine.commands.curve_args import add_curve_args, client_keys
from engine.config import Config
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.render.renderer import AvatarRenderer
from engine.stream.client import StreamClient, engine_addresses, params_to_face_state
from engine.stream.schema import IDENTITY, PARAMS
from engine.stream.viewer import FrameSink, load_remote_identity


def cmd_view(args: argparse.Namespace, config: Config) -> int:
    """`view`: render what an engine publishes, frame by frame, into a window, PNGs or a video file."""
    addresses = engine_addresses(args.connect)
    keys = client_keys(args)
    sink = FrameSink(args.out, args.fps, (config.render.width, config.render.height))
    model = FaceModel.load()
    with StreamClient(addresses["params"], asset_address=args.assets or addresses["assets"], keys=keys) as client:
        hint = "is the engine running there, bound to a reachable stream.bind_address, with matching CURVE keys?"
        identity_message = client.wait(IDENTITY, args.timeout)
        if identity_message is None:
            raise UserError(f"nothing from {addresses['params']} within {args.timeout:g} s: {hint}")
        identity = load_remote_identity(client, identity_message, model, args.cache_dir)
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
                        identity = load_remote_identity(client, latest, model, args.cache_dir)
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
    add_curve_args(p)
    p.set_defaults(handler=cmd_view)
