"""Gaze: the eyeballs turn with the eyeLook channels (ICT's blendshapes only move the lids)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import RenderConfig
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.renderer import AvatarRenderer
from engine.types import FaceState, HeadPose, TrackingState

FRONTAL = HeadPose(np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, -60.0]))


def _state(**weights: float) -> FaceState:
    w = np.zeros(len(ICT_EXPRESSIONS))
    for name, value in weights.items():
        w[ICT_EXPRESSIONS.index(name)] = value
    return FaceState(FRONTAL, w, TrackingState.TRACKING, 1.0, 0, 0)


def _iris_centroids(image: np.ndarray) -> np.ndarray:
    """(2, 2) x, y pixel centroids of the iris in the image-left and image-right eye boxes.

    Iris pixels are the dark *coloured* ones (brown: red well above blue); lashes and lid shadows are grey.
    """
    rgb = image[..., :3].astype(np.float64)
    iris = (rgb.mean(axis=2) < 120) & (rgb[..., 0] - rgb[..., 2] > 20) & (image[..., 3] == 255)
    h, w = iris.shape
    top = int(0.28 * h)
    band = iris[top : int(0.45 * h)]
    out = []
    for offset, half in ((0, band[:, : w // 2]), (w // 2, band[:, w // 2 :])):
        ys, xs = np.nonzero(half)
        assert len(xs) > 20, "no iris found"
        out.append([xs.mean() + offset, ys.mean() + top])
    return np.array(out)


@pytest.fixture(scope="module")
def identity(face_model) -> Identity:
    return Identity("plain", face_model.model_id, np.zeros(face_model.n_identity, np.float32),
                    np.zeros(53, np.float32), model_hash=face_model.model_hash)  # fmt: skip


@pytest.mark.parametrize("gpu", [False, True])
def test_gaze_turns_the_irises(face_model, identity, gpu: bool) -> None:
    config = RenderConfig(width=320, height=320)
    with AvatarRenderer(face_model, identity, config, gpu_blendshapes=gpu) as renderer:
        rest = _iris_centroids(renderer.render(_state()).image)
        # Both eyes look towards the subject's left: image right for a frontal face.
        left = _iris_centroids(renderer.render(_state(eyeLookOut_L=1.0, eyeLookIn_R=1.0)).image)
        up = _iris_centroids(renderer.render(_state(eyeLookUp_L=1.0, eyeLookUp_R=1.0)).image)
        back = _iris_centroids(renderer.render(_state()).image)
    assert np.all(left[:, 0] - rest[:, 0] > 2.0), (rest, left)
    assert np.all(up[:, 1] - rest[:, 1] < -1.0), (rest, up)  # image y grows downwards
    assert np.allclose(back, rest)


def test_cpu_and_gpu_paths_agree_with_gaze(face_model, identity) -> None:
    config = RenderConfig(width=160, height=160)
    state = _state(eyeLookUp_L=0.7, eyeLookOut_R=0.5, jawOpen=0.4)
    images = []
    for gpu in (False, True):
        with AvatarRenderer(face_model, identity, config, gpu_blendshapes=gpu) as renderer:
            images.append(renderer.render(state).image.astype(int))
    assert np.abs(images[0] - images[1]).max() <= 2
