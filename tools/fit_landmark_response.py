"""Measure how MediaPipe's landmarks respond to the face model's blendshapes → models/landmark_response.npz.

Renders the default identity (the demo performer's renderer and camera) with random sparse expressions and
head poses, tracks every render with MediaPipe FaceMesh, brings the landmarks into the model frame using the
TRUE weights for the pose, and fits the affine map weights → landmarks MediaPipe follows (ridge towards the
embedded map). Stores the correction to the embedded map (`engine/solve/response.py`) and reports, on held-out
renders, the solver's weight error with and without it.

Usage: python tools/fit_landmark_response.py [--train 1200] [--test 240] [--ridge 2.0] [--seed 0]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import argument_parser, start  # before any engine import: puts the repository on sys.path
from tqdm import tqdm

from engine.bundles import load_identity
from engine.config import Config
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.names import ICT_EXPRESSIONS
from engine.render.camera import Camera, euler_to_quaternion
from engine.render.renderer import AvatarRenderer
from engine.solve.expression import EmbeddedFace, side_swap, symmetrize_landmarks
from engine.solve.pose import focal_length_px, umeyama
from engine.solve.response import DEFAULT_RESPONSE_PATH, LandmarkResponse, fit_affine_response
from engine.solve.solver import FrameFitter, perspective_corrected, valid_observation
from engine.tracking import FaceTracker
from engine.types import FaceState, Frame, TrackingState

N = len(ICT_EXPRESSIONS)
JAW_OPEN, MOUTH_CLOSE = ICT_EXPRESSIONS.index("jawOpen"), ICT_EXPRESSIONS.index("mouthClose")


def random_samples(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(count, 53) sparse weights (0–4 channels at 0.3–1, often bilateral) and (count, 3) yaw/pitch/roll°."""
    swap = side_swap()
    weights = np.zeros((count, N))
    for row in weights:
        for channel in rng.choice(N, size=rng.choice([0, 1, 1, 2, 2, 3, 3, 4]), replace=False):
            row[channel] = rng.uniform(0.3, 1.0)
            if swap[channel] != channel and rng.uniform() < 0.5:  # faces mostly move both sides together
                row[swap[channel]] = np.clip(row[channel] + rng.normal(0, 0.1), 0.0, 1.0)
        # ICT's mouthClose is a corrective over an open jaw: never alone.
        row[JAW_OPEN] = max(row[JAW_OPEN], row[MOUTH_CLOSE])
    euler = np.column_stack([rng.uniform(-20, 20, count), rng.uniform(-12, 12, count), rng.uniform(-8, 8, count)])
    return weights, euler


def render_and_track(
    config: Config, model: FaceModel, weights: np.ndarray, euler: np.ndarray, size: int, seed: int
) -> list[tuple[np.ndarray, bool] | None]:
    """Render each sample like the demo performer does and track it: y-up observations (or None)."""
    identity = load_identity(config.identity, model, config.detail)
    render_config = config.render.model_copy(
        update={"width": size, "height": size, "samples": 0, "background": (0.0, 0.0, 0.0, 0.0),
                "follow_pose_translation": False}
    )  # fmt: skip
    camera = Camera(size, size, render_config.fov_y_deg, render_config.camera_distance_cm)
    quaternions = euler_to_quaternion(*euler.T.astype(np.float64))
    rng = np.random.default_rng(seed)
    observations: list[tuple[np.ndarray, bool] | None] = []
    renderer = AvatarRenderer(model, identity, render_config)
    with renderer, FaceTracker(config.tracking, static=True) as tracker:
        for i in tqdm(range(len(weights)), desc="render + track", unit="frame"):
            state = FaceState(camera.framed_pose(quaternions[i]), weights[i], TrackingState.TRACKING, 1.0, 0, i)
            rgba = renderer.render(state).image
            alpha = rgba[..., 3:4].astype(np.float32) / 255.0
            wall = rng.uniform(120, 200, size=3).astype(np.float32)
            image = np.clip(rgba[..., :3] * alpha + wall * (1.0 - alpha), 0, 255).astype(np.uint8)
            faces = tracker.process(Frame(np.ascontiguousarray(image), 0, i))
            observations.append(valid_observation(faces[0]) if faces else None)
    return observations


def model_frame_landmarks(
    face: EmbeddedFace, fitter: FrameFitter, observed: np.ndarray, weights: np.ndarray, size: int, fov_y_deg: float
) -> np.ndarray:
    """Observed y-up landmarks → model frame (cm), posed with the true weights and the solver's camera model."""
    model = face.landmarks(weights)
    centre, focal = np.array([0.5 * size, 0.5 * size]), focal_length_px(size, fov_y_deg)
    rigid = fitter.pose_weights_first > 0
    rot, trans, scale = umeyama(model[rigid], observed[rigid])
    corrected = observed
    for _ in range(3):
        corrected = perspective_corrected(observed, model @ rot[2], scale, centre, focal)
        rot, trans, scale = umeyama(model, corrected, fitter.pose_weights_refine)
    return ((corrected - trans) @ rot) / scale


def fit_response(
    face: EmbeddedFace, fitter: FrameFitter, observations: list, weights: np.ndarray, size: int, fov: float,
    ridge: float,
) -> LandmarkResponse:  # fmt: skip
    """Alternate pose (with the current map) and the ridge regression, then symmetrize the correction."""
    prior = np.vstack([face.neutral.reshape(1, -1), face.basis.reshape(-1, N).T])  # (54, 1434)
    current = face
    keep = [i for i, obs in enumerate(observations) if obs is not None]
    for _ in range(3):
        targets = np.stack([
            model_frame_landmarks(current, fitter, observations[i][0], weights[i], size, fov) for i in keep
        ])  # fmt: skip
        rows = fit_affine_response(weights[keep], targets, prior, ridge)
        current = EmbeddedFace(rows[0].reshape(478, 3), np.ascontiguousarray(rows[1:].T.reshape(478, 3, N)))
    neutral_delta = symmetrize_landmarks(current.neutral - face.neutral)
    basis_delta = symmetrize_landmarks(current.basis - face.basis, side_swap())
    return LandmarkResponse(neutral_delta, basis_delta)


def evaluate(
    config: Config, model: FaceModel, embedding: LandmarkEmbedding, identity_weights: np.ndarray,
    response: LandmarkResponse | None, observations: list, weights: np.ndarray, size: int,
) -> dict[str, float]:  # fmt: skip
    """Raw per-frame solver error on held-out renders: MAE over driven (true > 0.1) entries and over all."""
    fitter = FrameFitter(model, embedding, identity_weights, config.solve, response=response)
    solved, truth = [], []
    for obs, w in zip(observations, weights, strict=True):
        if obs is None:
            continue
        fit = fitter.fit(obs[0], has_iris=obs[1], image_size=(size, size))
        solved.append(fit.weights)
        truth.append(w)
    solved_arr, truth_arr = np.array(solved), np.array(truth)
    driven = truth_arr > 0.1
    error = np.abs(solved_arr - truth_arr)
    return {"driven_mae": float(error[driven].mean()), "all_mae": float(error.mean()), "frames": len(solved)}


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--test", type=int, default=240)
    ap.add_argument("--ridge", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=DEFAULT_RESPONSE_PATH)
    run = start(ap)
    args, config, model, embedding, identity = run.args, run.config, run.model, run.embedding, run.identity
    weights, euler = random_samples(args.train + args.test, run.rng)
    observations = render_and_track(config, model, weights, euler, args.size, args.seed)
    tracked = sum(o is not None for o in observations)
    print(f"tracked {tracked}/{len(observations)} renders")
    train, test = slice(0, args.train), slice(args.train, None)
    fitter = FrameFitter(model, embedding, identity.identity_weights, config.solve)
    face = fitter.face
    fov = config.render.fov_y_deg
    response = fit_response(face, fitter, observations[train], weights[train], args.size, fov, args.ridge)
    before = evaluate(config, model, embedding, identity.identity_weights, None, observations[test], weights[test],
                      args.size)  # fmt: skip
    after = evaluate(config, model, embedding, identity.identity_weights, response, observations[test],
                     weights[test], args.size)  # fmt: skip
    response.save(
        args.out, train_frames=np.int32(args.train), ridge=np.float32(args.ridge), identity=np.str_(identity.name),
        heldout_driven_mae_before=np.float32(before["driven_mae"]),
        heldout_driven_mae_after=np.float32(after["driven_mae"]),
        heldout_all_mae_before=np.float32(before["all_mae"]),
        heldout_all_mae_after=np.float32(after["all_mae"]),
    )  # fmt: skip
    print(f"held-out ({after['frames']} renders, raw fits): driven MAE {before['driven_mae']:.3f} → "
          f"{after['driven_mae']:.3f}, all-channel MAE {before['all_mae']:.3f} → {after['all_mae']:.3f}")  # fmt: skip
    print(f"wrote {args.out} in {run.elapsed_s():.0f} s")


if __name__ == "__main__":
    main()
