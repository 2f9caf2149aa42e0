"""Fit the response curves' dead zones on clips the shipped prior never trained on → models/solve_curves.npz.

On a face that does not make an expression the solver still reads a little of it (the regression's pull
towards the mean, landmark noise): the held-out training clips read a median false level of 0.01–0.09 per
channel, and the real videos show the same floor (a relaxed mouth read as a faint smile, frown or parted lips).
A dead zone per channel (`engine/solve/curves.py`: out = clip((w − lo) / (1 − lo), 0, 1)) silences it;
VSeeFace's and VTube Studio's per-blendshape minimums do the same by hand.

The tool solves every tenth clip of `tools/make_face_clips.py` (the ones `train_solve_prior.py` holds out) with
the shipped solver as configured (auto performer, filters, curves off), skips each clip's first half second
(the performer estimate forming), and picks each channel's dead zone among percentiles of its false readings
by driven + all-frame error (`pick_dead_zones`). hi stays 1: gains undo the regression's under-reading but
multiply false readings (docs/performer.md, response curves). Gaze is left alone: it comes from the irises,
and its zero is the performer's own straight ahead (the gaze centre).

Two folds (odd and even tens of clips) say what a pick does on clips it was not picked on; the shipped pick
uses all of them. Refit after retraining the prior or the head: the floor is theirs.

Usage: python tools/fit_response_curves.py [--clips out/face_clips] [--dry-run]
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

from train_solve_prior import GROUPS, load_clip, solve_clips  # noqa: E402

from engine.config import Config, load_config  # noqa: E402
from engine.eval_synthetic import FPS  # noqa: E402
from engine.face_model import FaceModel, LandmarkEmbedding  # noqa: E402
from engine.names import ICT_EXPRESSIONS  # noqa: E402
from engine.solve.curves import AT_REST, DEFAULT_CURVES_PATH, DRIVEN, pick_dead_zones  # noqa: E402
from engine.solve.eyes import GAZE_CHANNELS  # noqa: E402
from engine.solve.prior import DISPLACED_HEAD_PATH, PEOPLE_PRIOR_PATH  # noqa: E402

SETTLE_FRAMES = int(FPS) // 2  # each clip's first half second is not scored: the performer estimate is forming
LOWER_FACE = np.array([n.startswith(("jaw", "mouth", "cheek", "nose")) for n in ICT_EXPRESSIONS])


def solve_held_out(paths: list[Path], config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped solver (the people prior and its head; curves off: they apply last, to these filtered weights)
    over each clip from a fresh performer (`train_solve_prior.solve_clips`) → (solved (n, 53), truth (n, 53), the
    clip number of each row), on the frames MediaPipe found a face in, after SETTLE_FRAMES."""
    clips = [load_clip(p) for p in tqdm(paths, desc="load held-out clips", unit="clip")]
    solved = solve_clips(clips, FaceModel.load(), LandmarkEmbedding.load(), config, PEOPLE_PRIOR_PATH,
                         head_path=DISPLACED_HEAD_PATH)  # fmt: skip
    found = np.concatenate([[lm is not None for lm in c[0]] for c in clips])
    settled = np.concatenate([np.arange(len(c[0])) >= SETTLE_FRAMES for c in clips])
    truth = np.concatenate([c[1] for c in clips])
    clip_of = np.concatenate([[int(p.stem.split("_")[1])] * len(c[0]) for p, c in zip(paths, clips, strict=True)])
    keep = found & settled
    return solved[keep], truth[keep], clip_of[keep]


def measures(read: np.ndarray, truth: np.ndarray) -> dict[str, str]:
    """Per channel group: driven-frame / all-frame error; the share of channel-frames at rest (truth < 0.05, as
    the training tool counts false readings) read above 0.2; and the share of frames whose lower face is at rest
    (all < DRIVEN) with any of it read above 0.2."""
    error = np.abs(read - truth)
    out = {}
    for group, channels in GROUPS.items():
        e, t = error[:, channels], truth[:, channels]
        out[group] = f"{e[t > DRIVEN].mean():.4f} / {e.mean():.4f}"
    not_gaze = np.ones(len(ICT_EXPRESSIONS), bool)
    not_gaze[GAZE_CHANNELS] = False
    r, t = read[:, not_gaze], truth[:, not_gaze]
    out["false > 0.2"] = f"{np.mean(r[t < 0.05] > 0.2):.3f}"
    rest = (truth[:, LOWER_FACE] < DRIVEN).all(axis=1)
    out["rest faces > 0.2"] = f"{np.mean((read[rest][:, LOWER_FACE] > 0.2).any(axis=1)):.3f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=Path, default=ROOT / "out" / "face_clips")
    parser.add_argument("--dry-run", action="store_true", help="report only, write nothing to models/")
    args = parser.parse_args()
    paths = [p for p in sorted(args.clips.glob("clip_[0-9][0-9][0-9][0-9][0-9].npz")) if int(p.stem[5:]) % 10 == 0]
    if not paths:
        parser.error(f"no held-out clips (numbers divisible by 10) in {args.clips}: make them with "
                     "tools/make_face_clips.py --every 10")  # fmt: skip
    solved, truth, clip_of = solve_held_out(paths, load_config())
    untouched = np.zeros(len(ICT_EXPRESSIONS), bool)
    untouched[GAZE_CHANNELS] = True
    print(f"{len(paths)} held-out clips, {len(solved)} frames; each half measured with the pick on the other:")
    even = (clip_of // 10) % 2 == 0
    for name, picked_on, measured_on in (("odd tens", even, ~even), ("even tens", ~even, even)):
        curves, _ = pick_dead_zones(solved[picked_on], truth[picked_on], untouched)
        print(f"  {name}, curves off:", measures(solved[measured_on], truth[measured_on]))
        print(f"  {name}, dead zones:", measures(curves.apply(solved[measured_on]), truth[measured_on]))
    curves, quantiles = pick_dead_zones(solved, truth, untouched)
    print("picked on all of them (percentile of the readings at rest → lo):")
    for k, name in enumerate(ICT_EXPRESSIONS):
        if not untouched[k]:
            at_rest = truth[:, k] <= AT_REST
            print(f"  {name:17s} p{quantiles[k]:2.0f} lo {curves.lo[k]:.3f} (median reading at rest "
                  f"{np.median(solved[at_rest, k]):.3f})")  # fmt: skip
    if args.dry_run:
        return
    curves.save(
        DEFAULT_CURVES_PATH,
        fitted_on=np.str_(f"{len(paths)} held-out clips of tools/make_face_clips.py, {len(solved)} frames"),
        kind=np.str_("dead zones"),
    )
    print(f"wrote {DEFAULT_CURVES_PATH}")


if __name__ == "__main__":
    main()
