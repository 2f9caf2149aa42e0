"""Fit the camera field-of-view regressor on synthetic performer clips → models/camera_fov.npz.

Reads the clips `tools/make_face_clips.py` rendered and tracked (random ICT identities, cameras of 35–70°,
MediaPipe in tracking mode), takes each clip's mean `LensFeatures` (its landmarks posed on the mean face
through the people prior's lens, `performer.fov_prior_deg`), and fits a ridge regression to the clip's true
field of view (`engine/solve/camera.py`). It also learns from the means of each clip's one-second windows:
at run time the camera is read after a second, and a performer may hold one expression for long, which
shifts the mean (a held smile reads a narrower lens).

Every tenth clip (by number) is held out. On those, each clip's mean and the mean of its most expressive
third (the true weights away from the eyes: a held expression) are read; the ridge penalty is picked by the
two errors' spreads, the errors are printed and drawn (true against read, out/camera_fov.png), and the
shipped regressor is refitted on every clip with that penalty.

Usage: python tools/fit_camera_fov.py [--clips out/face_clips] [--ridges 0.1 0.3 1 3 10] [--dry-run]
The defaults are the shipped model's recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from train_solve_prior import load_clip  # noqa: E402

from engine.config import load_config  # noqa: E402
from engine.face_model import FaceModel, LandmarkEmbedding  # noqa: E402
from engine.names import ICT_EXPRESSIONS  # noqa: E402
from engine.solve.camera import CAMERA_FOV_PATH, FovRegressor, LensFeatures  # noqa: E402
from engine.solve.solver import valid_observation  # noqa: E402

WITHIN_DEG = 8.0  # the performer issue's bar
WINDOW_FRAMES = 30  # one second of the clips' 30 fps
NOT_EYES = np.array([not name.startswith("eye") for name in ICT_EXPRESSIONS])


def clip_features(path: Path, lens: LensFeatures) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(frames, 1404) LensFeatures of the clip's tracked frames, their (frames,) expression (the true weights'
    sum away from the eyes), and the clip's true FOV; None when nothing was tracked."""
    found, weights, size = load_clip(path)
    with np.load(path) as z:
        fov = float(z["fov_y_deg"])
    rows, expression = [], []
    for landmarks, w in zip(found, weights, strict=True):
        observation = valid_observation(landmarks)
        if observation is not None:
            rows.append(lens(observation[0], size))
            expression.append(w[NOT_EYES].sum())
    return (np.array(rows), np.array(expression), fov) if rows else None


def expressive_third(frames: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """The mean of the most expressive third of a clip's frames (a held expression's reading)."""
    return frames[np.argsort(expression)[-max(1, len(frames) // 3) :]].mean(axis=0)


def draw(truth: np.ndarray, read: np.ndarray, path: Path) -> None:
    """True against read FOV of the held-out clips, with the ±8° band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    line = np.array([30.0, 75.0])
    ax.fill_between(line, line - WITHIN_DEG, line + WITHIN_DEG, color="0.9", label=f"±{WITHIN_DEG:g}°")
    ax.plot(line, line, color="0.5", lw=1)
    ax.scatter(truth, read, s=8)
    ax.set_xlabel("true vertical FOV (°)")
    ax.set_ylabel("read from the landmarks (°)")
    ax.set_title(f"held-out clips ({len(truth)})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, default=ROOT / "out" / "face_clips")
    ap.add_argument("--ridges", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0])
    ap.add_argument("--dry-run", action="store_true", help="report only, write nothing to models/")
    args = ap.parse_args()
    config = load_config()
    lens_fov = config.performer.fov_prior_deg
    lens = LensFeatures(FaceModel.load(), LandmarkEmbedding.load(), lens_fov)
    paths = sorted(args.clips.glob("clip_[0-9][0-9][0-9][0-9][0-9].npz"))  # not a generator's .partial.npz
    if not paths:
        sys.exit(f"no clips in {args.clips}: run tools/make_face_clips.py first")
    # Training rows: each clip's mean and its one-second windows' means. Held out: the mean and the expressive third.
    train_x: list[np.ndarray] = []
    train_y: list[float] = []
    test_x: list[np.ndarray] = []
    test_expressive: list[np.ndarray] = []
    test_y: list[float] = []
    all_x: list[np.ndarray] = []
    all_y: list[float] = []
    for path in tqdm(paths, desc="features", unit="clip"):
        read = clip_features(path, lens)
        if read is None:
            continue
        frames, expression, fov = read
        rows = [frames.mean(axis=0)]
        rows += [
            frames[a : a + WINDOW_FRAMES].mean(axis=0) for a in range(0, len(frames) - WINDOW_FRAMES + 1, WINDOW_FRAMES)
        ]
        all_x += rows
        all_y += [fov] * len(rows)
        if int(path.stem.split("_")[1]) % 10 == 0:
            test_x.append(rows[0])
            test_expressive.append(expressive_third(frames, expression))
            test_y.append(fov)
        else:
            train_x += rows
            train_y += [fov] * len(rows)
    x, y = np.array(train_x), np.array(train_y)
    held, held_expressive, held_y = np.array(test_x), np.array(test_expressive), np.array(test_y)
    print(
        f"{len(held_y)} clips held out, {len(y)} training means; "
        f"true FOV {y.min():.1f}–{y.max():.1f}°, lens {lens_fov:g}°"
    )
    best: tuple[float, float, float] | None = None
    for ridge in args.ridges:
        fitted = FovRegressor.fit(x, y, ridge, lens_fov)
        spreads = []
        for label, inputs in (("whole clip", held), ("expressive third", held_expressive)):
            error = fitted.predict(inputs) - held_y
            spreads.append(float(error.std()))
            print(
                f"ridge {ridge:g}, {label}: held out error std {error.std():.2f}°, mean {error.mean():+.2f}°, "
                f"max {np.abs(error).max():.1f}°, within ±{WITHIN_DEG:g}°: {np.mean(np.abs(error) <= WITHIN_DEG):.0%}"
            )
        if best is None or sum(spreads) < best[0]:
            best = (sum(spreads), spreads[0], ridge)
    assert best is not None
    _, std, ridge = best
    chosen = FovRegressor.fit(x, y, ridge, lens_fov)
    picture = ROOT / "out" / "camera_fov.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    draw(held_y, chosen.predict(held), picture)
    print(f"chosen ridge {ridge:g} (held-out std {std:.2f}° on whole clips); picture: {picture}")
    if args.dry_run:
        return
    shipped = FovRegressor.fit(np.array(all_x), np.array(all_y), ridge, lens_fov)
    shipped = FovRegressor(shipped.mean, shipped.weights, shipped.intercept, lens_fov, std)
    shipped.save(CAMERA_FOV_PATH, trained_on=np.str_(f"{len(paths)} synthetic performer clips"), ridge=ridge)
    print(f"wrote {CAMERA_FOV_PATH}")


if __name__ == "__main__":
    main()
