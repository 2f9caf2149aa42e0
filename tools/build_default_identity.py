"""Build the shipped default identity (`models/default_identity/`) by enrolling a license-clean photo.

The photo is MediaPipe's `business-person.png` test image (Apache-2.0, google-ai-edge/mediapipe; copied in
`../shared/testdata/mediapipe/images/`): frontal, relaxed, lips closed — so the UV albedo carries no teeth and
no hair across the forehead. The neutral calibration is stored as zero: the default identity drives whoever
runs the engine without enrolling, whose resting face has nothing to do with the photo's.

`--keep-identity-weights` re-textures the bundle without re-fitting its shape: the solve prior
(`models/solve_prior.npz`) and the demo performer's script were made on that geometry.

Usage: python tools/build_default_identity.py [--shared ../shared] [--photo NAME] [--resolution 512]
       [--keep-identity-weights]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from engine.config import load_config  # noqa: E402
from engine.enroll import enroll  # noqa: E402
from engine.face_model import FaceModel  # noqa: E402
from engine.identity import DEFAULT_IDENTITY_DIR, load_bundle  # noqa: E402
from engine.sources.files import ImageSource  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--photo", default="business-person.png")
    ap.add_argument("--resolution", type=int, default=512, help="detail basis resolution")
    ap.add_argument(
        "--keep-identity-weights",
        action="store_true",
        help="keep the shipped bundle's identity weights; only the texture and bases are rebuilt",
    )
    args = ap.parse_args()
    kept = load_bundle(DEFAULT_IDENTITY_DIR, FaceModel.load()).identity_weights if args.keep_identity_weights else None
    photo = args.shared / "testdata" / "mediapipe" / "images" / args.photo
    config = load_config(overrides=[f"detail.resolution={args.resolution}"])
    with ImageSource(photo) as images:
        frames = list(images)
    source = f"MediaPipe test image {args.photo} (Apache-2.0)"
    identity = enroll(
        "default", frames, source, config, DEFAULT_IDENTITY_DIR, static=True, calibrate=False, identity_weights=kept
    )
    print(f"wrote {DEFAULT_IDENTITY_DIR} from {photo} (bases by {identity.bases.backend if identity.bases else '-'})")


if __name__ == "__main__":
    main()
