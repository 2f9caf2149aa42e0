"""Record the demo performance (`models/demo_performance.mp4` + `.json`) that `run --source demo` plays.

Renders one loop of `DemoPerformer` (the shipped default identity, the default seed, size and camera) and
encodes it as H.264 (CRF 24, ≈ 1.5 MiB, ≈ 40 dB PSNR) through an ffmpeg binary: `imageio-ffmpeg`'s bundled one
(`pip install imageio-ffmpeg`, a build-time tool only — OpenCV decodes the result at run time) or `ffmpeg` on
PATH. Re-run it whenever the renderer, the demo script or the default identity changes: the test
`tests/test_demo_source.py::test_shipped_recording_is_what_the_performer_renders` says when.

Usage: python tools/build_demo_video.py [--crf 24] [--out models/demo_performance.mp4]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import cv2  # noqa: E402
from tqdm import tqdm  # noqa: E402

from engine.bundles import load_identity  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.face_model import FaceModel  # noqa: E402
from engine.sources.demo import DEMO_RECORDING, DemoPerformer, RecordingInfo  # noqa: E402


def ffmpeg_binary() -> str:
    """imageio-ffmpeg's static ffmpeg (it has libx264), else one on PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        found = shutil.which("ffmpeg")
        if found is None:
            sys.exit("needs an ffmpeg with libx264: pip install imageio-ffmpeg (or install ffmpeg)")
        return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_RECORDING)
    ap.add_argument("--crf", type=int, default=24, help="x264 quality (lower: larger, closer to the render)")
    args = ap.parse_args()
    config = Config()
    model = FaceModel.load()
    identity = load_identity(config.identity, model, config.detail)
    src = config.source
    performer = DemoPerformer(model, identity, config.render, fps=src.fps, seed=src.demo_seed, size=src.demo_size,
                              loop=False)  # fmt: skip
    size = src.demo_size
    partial = args.out.with_suffix(".partial.mp4")
    command = [
        ffmpeg_binary(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}",
        "-r", str(src.fps), "-i", "-", "-c:v", "libx264", "-preset", "veryslow", "-crf", str(args.crf),
        "-pix_fmt", "yuv420p", "-g", str(2 * round(src.fps)), "-movflags", "+faststart", str(partial),
    ]  # fmt: skip
    encoder = subprocess.Popen(command, stdin=subprocess.PIPE)
    assert encoder.stdin is not None
    with performer:
        for frame in tqdm(performer, total=len(performer), desc="rendering the demo performance", unit="frame"):
            encoder.stdin.write(frame.image.tobytes())
    encoder.stdin.close()
    if encoder.wait() != 0:
        partial.unlink(missing_ok=True)
        sys.exit(f"ffmpeg failed (exit {encoder.returncode})")
    decoded = int(cv2.VideoCapture(str(partial)).get(cv2.CAP_PROP_FRAME_COUNT))
    if decoded != len(performer):
        partial.unlink(missing_ok=True)
        sys.exit(f"OpenCV decodes {decoded} frames of {len(performer)}: not written")
    partial.replace(args.out)
    RecordingInfo.describe(performer).save(args.out.with_suffix(".json"))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB, {decoded} frames) and its .json")


if __name__ == "__main__":
    main()
