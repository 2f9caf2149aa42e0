"""What the avatar looks like where thin or hidden geometry decides it: eyelashes without aliasing stripes, and teeth
that show when the mouth opens. Each test fails on the shading the issue (#18) started from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.config import RenderConfig
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.materials import ShadeClass
from engine.render.renderer import AvatarRenderer
from engine.render.stills import key_expression_state
from engine.types import FaceState

SUPERSAMPLE = 4
# Eye regions against the same render made 4× larger and box-downsampled: the strands cut with a hard
# fract() test scored 19–22 dB at 512² and 1024² (BENCHMARKS.md has the current numbers).
MIN_EYE_PSNR_DB = 28.0


@pytest.fixture(scope="module")
def identity(face_model) -> Identity:
    return Identity("test", face_model.model_id, face_model.default_identity_weights(), np.zeros(53, np.float32))


def _eye_boxes(renderer: AvatarRenderer, state: FaceState) -> list[tuple[slice, slice]]:
    """(rows, cols) around each eye's lashes in the image, from the projected lash vertices (4 px margin)."""
    lashes = renderer.mesh.rest[renderer.mesh.classes == ShadeClass.LASHES, :3]
    mv = renderer.camera.model_view(state.pose)
    px = renderer.camera.project(lashes @ mv[:3, :3].T + mv[:3, 3])
    boxes = []
    for side in (px[:, 0] < np.median(px[:, 0]), px[:, 0] >= np.median(px[:, 0])):
        lo = np.floor(px[side].min(axis=0)).astype(int) - 4
        hi = np.ceil(px[side].max(axis=0)).astype(int) + 4
        boxes.append((slice(lo[1], hi[1]), slice(lo[0], hi[0])))
    return boxes


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("size", [512, 1024])
def test_lashes_render_without_aliasing_stripes(face_model, identity, size):
    """Without MSAA (llvmpipe's default), the eye regions match a 4× supersampled render of the same frame."""
    state = key_expression_state("neutral")
    images = {}
    for s in (size, SUPERSAMPLE * size):
        with AvatarRenderer(face_model, identity, RenderConfig(width=s, height=s, samples=0)) as renderer:
            images[s] = renderer.render(state).image[..., :3].astype(np.float64)
            if s == size:
                boxes = _eye_boxes(renderer, state)
    k = SUPERSAMPLE
    reference = images[k * size].reshape(size, k, size, k, 3).mean(axis=(1, 3))
    for box in boxes:
        assert _psnr(images[size][box], reference[box]) > MIN_EYE_PSNR_DB


def _jaw(value: float) -> FaceState:
    w = np.zeros(53, np.float32)
    w[ICT_EXPRESSIONS.index("jawOpen")] = value
    return replace(FaceState.neutral(), weights=w)


MOUTH_SIZE = 256
# Upper-teeth pixels (of 256²) that must show, lit, in the upper half of an open mouth: ICT's own geometry gives 0.
MIN_UPPER_TEETH_PX = 30


def upper_teeth_pixels(face_model, identity: Identity, state: FaceState) -> int:
    """Pixels of `state` rendered at MOUTH_SIZE² that show a tooth above the mouth opening's middle row, lit
    (luminance > 120 of 255): the classes debug view says what each pixel shows, the shaded render how bright."""
    config = RenderConfig(width=MOUTH_SIZE, height=MOUTH_SIZE, samples=0)
    with AvatarRenderer(face_model, identity, config.model_copy(update={"debug_view": "classes"})) as renderer:
        ids = renderer.render(state).image
    with AvatarRenderer(face_model, identity, config) as renderer:
        shaded = renderer.render(state).image.astype(np.float64)
    classes = np.where(ids[..., 3] > 0, np.round(ids[..., 0] / 255.0 * 10.0), -1).astype(int)
    inside = np.isin(classes, [ShadeClass.MOUTH, ShadeClass.GUMS, ShadeClass.TEETH, ShadeClass.TONGUE])
    rows = np.nonzero(inside)[0]
    middle = (rows.min() + rows.max()) // 2
    luminance = shaded[..., :3] @ np.array([0.299, 0.587, 0.114])
    teeth = (classes == ShadeClass.TEETH) & (luminance > 120.0)
    return int(teeth[:middle].sum())


@pytest.mark.parametrize("name", ["jaw_0.5", "jaw_1.0", "mouth_stretch"])
def test_upper_teeth_show_when_the_mouth_opens(face_model, identity, name):
    state = key_expression_state(name) if name == "mouth_stretch" else _jaw(float(name.split("_")[1]))
    assert upper_teeth_pixels(face_model, identity, state) >= MIN_UPPER_TEETH_PX


def test_closed_lips_hide_the_teeth(face_model, identity):
    assert upper_teeth_pixels(face_model, identity, key_expression_state("neutral")) == 0
