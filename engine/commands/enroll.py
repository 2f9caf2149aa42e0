"""`enroll --image | --video | --webcam`: an identity bundle from one person's photos, video or webcam
(docs/identity.md). The work is `engine/enroll.py`."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable
from pathlib import Path

from engine.config import Config
from engine.enroll import VideoFrames, enroll
from engine.errors import UserError
from engine.identity import default_bundle_dir
from engine.sources.files import ImageSource
from engine.sources.webcam import WebcamSource
from engine.types import Frame


def _enroll_frames(args: argparse.Namespace, config: Config) -> tuple[Iterable[Frame], str, bool]:
    """The frames an `enroll` invocation names, a description of where they came from, and whether stills."""

    if args.image:
        with ImageSource(Path(args.image)) as images:
            return list(images), f"image {args.image}", True
    if args.video:
        return VideoFrames(Path(args.video)), f"video {args.video}", False
    index = 0 if args.webcam is True else int(args.webcam)
    with WebcamSource(index, config.source.width, config.source.height, config.source.fps) as camera:
        print(f"enroll: look at the camera with a relaxed, neutral face for {args.seconds:.0f} s")
        frames = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            frame = camera.read()
            if frame is not None:
                frames.append(frame)
    return frames, f"webcam:{index}", False


def cmd_enroll(args: argparse.Namespace, config: Config) -> int:
    """`enroll`: build an identity bundle and print where it went."""

    if sum(bool(x) for x in (args.image, args.video, args.webcam)) != 1:
        raise UserError("enroll needs exactly one of --image PATH, --video PATH or --webcam [N]")
    if args.resolution:
        if not 64 <= args.resolution <= 2048:
            raise UserError(f"--resolution must be between 64 and 2048, got {args.resolution}")
        config.detail.resolution = args.resolution
    directory = Path(args.out) if args.out else default_bundle_dir(args.name, config.identity.cache_dir)
    _check_bundle_folder(directory)  # before the work, not after it
    frames, source, static = _enroll_frames(args, config)
    if isinstance(frames, list) and not frames:
        raise UserError(f"{source} delivered no frames")
    identity = enroll(args.name, frames, source, config, directory, static=static, max_frames=args.max_frames)
    backend = identity.bases.backend if identity.bases is not None else "none"
    print(f"enrolled {args.name!r} from {source}: bundle written to {directory} (bases by {backend})")
    return 0


def _check_bundle_folder(directory: Path) -> None:
    """One line now, rather than a traceback after the work, when the bundle cannot be written there."""
    parent = directory.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the bundle folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK) or (directory.exists() and not os.access(directory, os.W_OK)):
        raise UserError(f"cannot write the bundle to {directory}: permission denied")


def add_enroll_command(sub: argparse._SubParsersAction) -> None:
    """`enroll --image | --video | --webcam`."""
    p = sub.add_parser("enroll", help="build an identity bundle from a photo, a video or the webcam")
    p.add_argument("--name", default="me", help="identity name (bundle folder name); default 'me'")
    p.add_argument("--image", help="a photo, or a folder of photos, of one face")
    p.add_argument("--video", help="a video of one face")
    p.add_argument("--webcam", nargs="?", const=True, default=None, metavar="N", help="capture from webcam N")
    p.add_argument("--seconds", type=float, default=3.0, help="webcam capture time (default 3 s)")
    p.add_argument("--max-frames", type=int, default=60, help="frames used for fitting and texture")
    p.add_argument("--resolution", type=int, help="detail basis resolution (default from config: 512)")
    p.add_argument("--out", help="bundle folder (default: the user cache dir, identities/<name>)")
    p.set_defaults(handler=cmd_enroll)
