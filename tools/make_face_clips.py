"""Render and track training clips of random synthetic performers → out/face_clips/clip_NNNNN.npz.

Each clip is one random ICT identity (Gaussian coefficients), skin tone, light, wall and camera (vertical
FOV 35–70°, head framed like a webcam) performing `performance("random", …)` (key expressions, mixes,
single channels, winks, one-sided smiles, speech, neutral a third of the time, blinks, head turns to ±35°;
from clip 556 on, also brows and eyes on their own and with the mouth; from clip 3218 on, FACS compounds;
from clip 8400 on, speech visemes and the basic emotions),
degraded like a webcam (noise, blur, JPEG) and tracked by real MediaPipe in tracking mode. Seeds are the
clip numbers, all below `EVAL_SEED_BASE`, so `scapecast eval`'s identities are never among them.

Resumable: existing clips are kept (each is written to a temporary name and renamed), so a stopped run
continues where it stopped. Only the trained model is committed, never these clips.

Usage: python tools/make_face_clips.py [--clips 600] [--seconds 3] [--start 0] [--every 1] [--out out/face_clips]
`--every 10` renders only every tenth clip number of the range (from `--start`): with a `--start` divisible by
10, the clips the training tool holds out, when they are wanted first.
Each file holds: pixels (T, 478, 3) float32 MediaPipe landmarks in pixels (NaN where no face), image_size
(2,), weights (T, 53) true ICT weights, euler_deg (T, 3), offset_cm (T, 2), identity_weights (n_id,),
fov_y_deg, distance_cm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from engine.config import load_config  # noqa: E402
from engine.eval_synthetic import EVAL_SEED_BASE, ClipRenderer, SyntheticFace, performance, track_clip  # noqa: E402
from engine.face_model import FaceModel  # noqa: E402

# The first 556 clips drew brows in a few clips per hundred, and the prior trained on them held every brow at
# rest on real faces; later clips draw this share of their expressions from the upper face (brows, wide and
# squinted eyes). Fixed by clip number, so that a rerun from scratch makes the same clips.
UPPER_FACE_FROM_CLIP, UPPER_FACE_SHARE = 556, 0.4
# From this clip on, also FACS compounds (`eval_synthetic._compound`: broad smiles with the upper lip lifted,
# sneers, pouts, pressed lips, squeezed blinks); the clips before it saw those channels only alone or in pairs.
COMPOUND_FROM_CLIP, COMPOUND_SHARE = 3218, 0.3
# From this clip on, also speech visemes and the basic emotions (`eval_synthetic._speech_or_emotion`: the lips
# pressed, rolled, stretched and shrugged while talking, sadness, fear, disgust, anger, dimples, a sideways mouth).
SPEECH_EMOTION_FROM_CLIP, SPEECH_EMOTION_SHARE = 8400, 0.4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--every", type=int, default=1, help="render only clip numbers start, start + every, …")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "face_clips")
    args = parser.parse_args()
    if args.every < 1:
        parser.error("--every must be at least 1")
    if args.start + args.clips > EVAL_SEED_BASE:
        parser.error(f"clip seeds must stay below {EVAL_SEED_BASE} (the evaluation identities)")
    args.out.mkdir(parents=True, exist_ok=True)
    config = load_config()
    model = FaceModel.load()
    renderer = ClipRenderer(model, config.render)
    wanted = range(args.start, args.start + args.clips, args.every)
    todo = [c for c in wanted if not (args.out / f"clip_{c:05d}.npz").is_file()]
    made = len(wanted) - len(todo)
    for clip in tqdm(todo, desc="render + track clips", unit="clip", initial=made, total=len(wanted)):
        # Webcam-like frame sizes (MediaPipe sees faces of 150–300 px, as from a webcam; smaller renders are cheaper).
        size = [(384, 384), (448, 336), (512, 384), (400, 400)][clip % 4]
        face = SyntheticFace.draw(model, clip, size=size)
        share = UPPER_FACE_SHARE if clip >= UPPER_FACE_FROM_CLIP else 0.0
        compound = COMPOUND_SHARE if clip >= COMPOUND_FROM_CLIP else 0.0
        speech_emotion = SPEECH_EMOTION_SHARE if clip >= SPEECH_EMOTION_FROM_CLIP else 0.0
        perf = performance(
            "random", args.seconds, seed=clip, max_yaw_deg=35.0, upper_face_share=share, compound_share=compound,
            speech_emotion_share=speech_emotion,
        )  # fmt: skip
        frames, found = track_clip(renderer.frames(face, perf, quality_seed=clip), config)
        pixels = np.full((len(found), 478, 3), np.nan, np.float32)
        for i, landmarks in enumerate(found):
            if landmarks is not None and landmarks.pixels.shape == (478, 3):
                pixels[i] = landmarks.pixels
        target = args.out / f"clip_{clip:05d}.npz"
        partial = target.with_suffix(".partial.npz")
        np.savez_compressed(
            partial, pixels=pixels, image_size=np.array(face.size), weights=perf.weights, euler_deg=perf.euler_deg,
            offset_cm=perf.offset_cm, identity_weights=face.identity_weights, fov_y_deg=face.fov_y_deg,
            distance_cm=face.distance_cm,
        )  # fmt: skip
        partial.replace(target)


if __name__ == "__main__":
    main()
