"""The people prior's training tool reads clips into rows as the solver would see them (`tools/train_solve_prior.py`).

Tiny clip files in `make_face_clips.py`'s format, made from the embedded face through a pinhole camera; the
tool's reader must keep training rows before held-out ones, skip lost faces, take every `frame_step`-th frame
of a training clip (all of a held-out one) with the features the solver computes, and build a clip's neutral
from the same frames whatever the step.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import load_config
from engine.names import ICT_EXPRESSIONS
from engine.solve.eyes import eyeball_centers
from engine.solve.pose import euler_to_rotation
from engine.solve.prior import PEOPLE_PRIOR_PATH, LearnedPrior
from engine.solve.solver import FrameFitter, valid_observation
from engine.solve.synthetic import random_expression, synthetic_landmarks

REPO = Path(__file__).resolve().parents[1]
SIZE = (640, 480)


@pytest.fixture(scope="module")
def tool():
    """`tools/train_solve_prior.py` imported as a module (tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("train_solve_prior", REPO / "tools" / "train_solve_prior.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_solve_prior"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fitter(face_model, shipped_or_constructed) -> FrameFitter:
    """The tool's fitter: no identity, no prior, the performer's assumed camera."""
    config = load_config()
    plain = config.solve.model_copy(update={"learned_prior": False})
    return FrameFitter(face_model, shipped_or_constructed, None, plain, camera_fov_y_deg=config.performer.fov_prior_deg)


def _write_clip(
    path: Path, fitter: FrameFitter, face_model, frames: int, seed: int, lost: tuple[int, ...] = ()
) -> None:
    """A clip file as `make_face_clips.py` writes it: landmarks in pixels (NaN where the face was lost)."""
    rng = np.random.default_rng(seed)
    centers = eyeball_centers(face_model)
    weights = np.zeros((frames, len(ICT_EXPRESSIONS)), np.float32)
    pixels = np.full((frames, 478, 3), np.nan, np.float32)
    for i in range(frames):
        weights[i] = random_expression(rng) if i % 3 else 0.0
        rotation = euler_to_rotation(*rng.uniform(-10, 10, 3))
        found = synthetic_landmarks(fitter.face, centers, weights[i], rotation, image_size=SIZE, fov_y_deg=50.0)
        if i not in lost:
            pixels[i] = found.pixels
    np.savez(
        path, pixels=pixels, image_size=np.array(SIZE), weights=weights, euler_deg=np.zeros((frames, 3), np.float32),
        offset_cm=np.zeros((frames, 2), np.float32), identity_weights=np.zeros(100, np.float32), fov_y_deg=50.0,
        distance_cm=50.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def clips(tmp_path_factory, fitter, face_model) -> tuple[list[Path], list[bool]]:
    """Three clip files, the first held out (its number ends in 0), the second with a lost face at frame 4."""
    folder = tmp_path_factory.mktemp("clips")
    paths = [folder / "clip_00010.npz", folder / "clip_00011.npz", folder / "clip_00012.npz"]
    _write_clip(paths[0], fitter, face_model, 7, seed=10)  # held out (its number ends in 0)
    _write_clip(paths[1], fitter, face_model, 9, seed=11, lost=(4,))
    _write_clip(paths[2], fitter, face_model, 8, seed=12)
    return paths, [True, False, False]


def _expected_rows(tool, path: Path, fitter: FrameFitter, step: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The plain features and truths of the frames `read_features` should keep, computed frame by frame."""
    found, weights, size = tool.load_clip(path)
    rows, truths = [], []
    for i in range(0, len(found), step):
        if found[i] is None:
            continue
        observed, _ = valid_observation(found[i])
        rows.append(fitter.prior_features(observed, fitter._camera(size)))
        truths.append(weights[i])
    return rows, truths


@pytest.mark.parametrize("step", [1, 2, 3])
def test_training_clips_give_every_steps_frame_and_held_out_clips_all(tool, fitter, clips, step) -> None:
    paths, held_out = clips
    x, y, is_test, test_clips = tool.read_features(paths, held_out, fitter, None, False, frame_step=step)
    expected_x, expected_y = [], []
    for path in (paths[1], paths[2]):  # training clips first, in their order
        rows, truths = _expected_rows(tool, path, fitter, step)
        expected_x += rows
        expected_y += truths
    n_train = len(expected_x)
    rows, truths = _expected_rows(tool, paths[0], fitter, 1)  # held out: every frame, whatever the step
    expected_x += rows
    expected_y += truths
    assert len(x) == len(expected_x) and is_test.tolist() == [False] * n_train + [True] * len(rows)
    np.testing.assert_allclose(x, np.array(expected_x), rtol=1e-6, atol=1e-6)  # x is float32
    np.testing.assert_array_equal(y, np.array(expected_y))
    assert len(test_clips) == 1 and len(test_clips[0][0]) == 7
    train, held = tool.split(is_test)
    assert train == slice(0, n_train) and held == slice(n_train, len(x))


def test_mirrored_training_clips_double_only_the_training_rows(tool, fitter, clips) -> None:
    paths, held_out = clips
    plain = tool.read_features(paths, held_out, fitter, None, False, frame_step=2)
    mirrored = tool.read_features(paths, held_out, fitter, None, True, frame_step=2)
    assert (~mirrored[2]).sum() == 2 * (~plain[2]).sum() and mirrored[2].sum() == plain[2].sum()
    # Each training clip's mirror image follows it, its sides swapped.
    rows = len(_expected_rows(tool, paths[1], fitter, 2)[0])
    np.testing.assert_array_equal(mirrored[1][rows : 2 * rows], plain[1][:rows][:, tool.SIDE_SWAP])


@pytest.mark.skipif(not PEOPLE_PRIOR_PATH.is_file(), reason="the shipped people prior scores the neutral")
def test_a_clips_neutral_sees_the_same_frames_whatever_the_step(tool, fitter, clips) -> None:
    """Displaced rows (the mesh minus the clip's running neutral) are those of the full read at the kept frames:
    frames skipped as rows still feed the neutral."""
    paths, held_out = clips
    prior = LearnedPrior.load(PEOPLE_PRIOR_PATH)
    every, _, every_test, _ = tool.read_features(paths[1:], held_out[1:], fitter, prior, False, frame_step=1)
    # At 30 fps the neutral samples frames 0 and 6 (5 Hz): a step of 4 skips frame 6 as a row.
    fourth, _, _, _ = tool.read_features(paths[1:], held_out[1:], fitter, prior, False, frame_step=4)
    with np.load(paths[1]) as clip:
        found = ~np.isnan(clip["pixels"]).any(axis=(1, 2))
    frames = np.concatenate([np.flatnonzero(found), np.arange(8)])  # the rows' frame numbers, clip by clip
    assert len(every) == len(frames) and not every_test.any()
    np.testing.assert_array_equal(fourth, every[frames % 4 == 0])
    assert np.abs(every[:, -100:]).max() > 0  # the displacement is not all zero: a neutral was taken


def test_a_frame_step_below_one_is_refused(tool, fitter, clips) -> None:
    paths, held_out = clips
    with pytest.raises(ValueError, match="frame_step"):
        tool.read_features(paths, held_out, fitter, None, False, frame_step=0)
