"""Measure `solve.gaze_straight_pitch_deg`: how far up MediaPipe's irises read eyes that look straight ahead.

On the training renders (`tools/make_face_clips.py`) the eyes look straight in almost every frame, whatever the
head does. Solved as `run` solves them (people prior, filters, yoked gaze), the frames whose true gaze is zero
should read zero gaze on average; the mean reading is MediaPipe's habit (its iris centres sit a little above
the model's), which the solver subtracts. This finds the pitch that zeroes the mean vertical reading, by
secant steps (each step solves every sampled clip once), and prints it for `configs/default.yaml`. The mean
horizontal reading is printed too but not corrected: a mirrored face must read mirrored gaze, so a sideways
mean is the renders' asymmetry (light, pose draws), not MediaPipe's.

Held-out clips (numbers divisible by 10) are not used: `eval` and the prior's held-out checks read them.

Usage: python tools/measure_gaze.py [--clips out/face_clips] [--every 7] [--steps 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "tools"))

from train_solve_prior import load_clip, solve_clips  # noqa: E402

from engine.config import Config, load_config  # noqa: E402
from engine.face_model import FaceModel, LandmarkEmbedding  # noqa: E402
from engine.solve.eyes import GAZE_CHANNELS, GazeRanges, gaze_angles  # noqa: E402
from engine.solve.prior import PEOPLE_PRIOR_PATH  # noqa: E402


def mean_reading_deg(solved: np.ndarray, still: np.ndarray, config: Config) -> np.ndarray:
    """(2,) the mean (yaw towards +x, pitch up) in degrees both eyes read on the `still` frames."""
    ranges = GazeRanges(config.solve.gaze_horizontal_deg, config.solve.gaze_up_deg, config.solve.gaze_down_deg)
    return np.mean([gaze_angles(w, ranges).mean(axis=0) for w in solved[still]], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=Path, default=ROOT / "out" / "face_clips")
    parser.add_argument("--every", type=int, default=7, help="use every n-th training clip")
    parser.add_argument("--steps", type=int, default=4, help="secant steps after the first two readings")
    args = parser.parse_args()
    paths = [p for p in sorted(args.clips.glob("clip_?????.npz")) if int(p.stem.split("_")[1]) % 10][:: args.every]
    if not paths:
        parser.error(f"no training clips in {args.clips} (make them with tools/make_face_clips.py)")
    clips = [load_clip(p) for p in tqdm(paths, desc="load clips", unit="clip")]
    truth = np.concatenate([c[1] for c in clips])
    still = (truth[:, GAZE_CHANNELS] < 0.01).all(axis=1)
    config = load_config()
    model, embedding = FaceModel.load(), LandmarkEmbedding.load()

    def reading(pitch: float) -> float:
        solve = config.solve.model_copy(update={"gaze_straight_pitch_deg": pitch})
        solved = solve_clips(clips, model, embedding, config.model_copy(update={"solve": solve}), PEOPLE_PRIOR_PATH)
        yaw, up = mean_reading_deg(solved, still, config)
        print(f"straight pitch {pitch:+.2f}°: mean reading {up:+.2f}° up, {yaw:+.2f}° towards the subject's left")
        return float(up)

    print(f"{len(clips)} clips, {still.sum()} frames with the eyes looking straight")
    x0, y0 = 0.0, reading(0.0)
    x1 = x0 + y0  # the first guess: subtract what is read
    y1 = reading(x1)
    for _ in range(args.steps):
        slope = (y1 - y0) / (x1 - x0) if abs(x1 - x0) > 1e-6 else -1.0
        slope = min(slope, -0.2)  # a larger offset always lowers the reading
        x0, y0, x1 = x1, y1, x1 - y1 / slope
        y1 = reading(x1)
    print(f"gaze_straight_pitch_deg: {x1:.1f}")


if __name__ == "__main__":
    main()
