"""What the avatar looks like where thin or hidden geometry decides it: eyelashes without aliasing stripes, and teeth
that show when the mouth opens. Each test fails on the shading the issue (#18) started from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.config import RenderConfig
from engine.detail.weights import KEY_EXPRESSION_NAMES
from engine.identity import DEFAULT_IDENTITY_DIR, Identity, load_bundle
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


@pytest.fixture(scope="module")
def default_identity(face_model) -> Identity:
    """The shipped default identity (the demo performer's avatar): its own shape, texture and detail bases."""
    return load_bundle(DEFAULT_IDENTITY_DIR, face_model)


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


def eye_psnr(face_model, identity: Identity, size: int, names: tuple[str, ...]) -> dict[str, float]:
    """The lower eye-region PSNR (dB, of the two eyes) of each key expression in `names` rendered at size² without
    MSAA (llvmpipe's default) against the same frame rendered 4× larger and box-downsampled. One renderer per size
    serves every expression (building one costs more than a frame)."""
    k = SUPERSAMPLE
    psnr = {}
    with (
        AvatarRenderer(face_model, identity, RenderConfig(width=size, height=size, samples=0)) as renderer,
        AvatarRenderer(face_model, identity, RenderConfig(width=k * size, height=k * size, samples=0)) as reference,
    ):
        for name in names:
            state = key_expression_state(name)
            image = renderer.render(state).image[..., :3].astype(np.float64)
            big = reference.render(state).image[..., :3].astype(np.float64)
            truth = big.reshape(size, k, size, k, 3).mean(axis=(1, 3))
            psnr[name] = min(_psnr(image[box], truth[box]) for box in _eye_boxes(renderer, state))
    return psnr


@pytest.fixture(scope="module")
def default_eye_psnr_512(face_model, default_identity) -> dict[str, float]:
    return eye_psnr(face_model, default_identity, 512, KEY_EXPRESSION_NAMES)


@pytest.mark.parametrize("name", KEY_EXPRESSION_NAMES)
def test_lashes_render_without_aliasing_stripes(default_eye_psnr_512, name):
    """Every key expression of the shipped default identity at 512²: closed, raised, squinting and lowered lids
    move the lashes across the eye, and each pose must stay as smooth as the supersampled render."""
    psnr = default_eye_psnr_512[name]
    print(f"{name}: eye PSNR {psnr:.2f} dB")
    assert psnr > MIN_EYE_PSNR_DB, f"{name}: eye PSNR {psnr:.2f} dB"


@pytest.mark.parametrize("which", ["mean face", "default identity"])
def test_lashes_render_without_aliasing_stripes_at_1024(face_model, identity, default_identity, which):
    """Neutral at 1024² (the reference is a 4096² render, so one expression): the untextured mean face and the
    shipped default identity."""
    chosen = identity if which == "mean face" else default_identity
    psnr = eye_psnr(face_model, chosen, 1024, ("neutral",))["neutral"]
    print(f"{which} 1024²: eye PSNR {psnr:.2f} dB")
    assert psnr > MIN_EYE_PSNR_DB


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
    if not len(rows):
        return 0  # the lips are closed: no mouth interior shows at all
    middle = (rows.min() + rows.max()) // 2
    luminance = shaded[..., :3] @ np.array([0.299, 0.587, 0.114])
    teeth = (classes == ShadeClass.TEETH) & (luminance > 120.0)
    return int(teeth[:middle].sum())


@pytest.mark.parametrize("name", ["jaw_0.5", "jaw_1.0", "mouth_stretch"])
def test_upper_teeth_show_when_the_mouth_opens(face_model, identity, name):
    state = key_expression_state(name) if name == "mouth_stretch" else _jaw(float(name.split("_")[1]))
    assert upper_teeth_pixels(face_model, identity, state) >= MIN_UPPER_TEETH_PX


# The key expressions whose jawOpen weight (as key_expression_state renders them, peak 1) is at least 0.5.
OPEN_MOUTH_EXPRESSIONS = tuple(
    name
    for name, state in ((n, key_expression_state(n)) for n in KEY_EXPRESSION_NAMES)
    if state.weights[ICT_EXPRESSIONS.index("jawOpen")] >= 0.5
)


@pytest.mark.parametrize("name", OPEN_MOUTH_EXPRESSIONS)
def test_upper_teeth_show_on_the_default_identity(face_model, default_identity, name):
    """The demo performer's avatar, not only the mean face: its own shape decides how far the upper lip hangs
    over the teeth."""
    pixels = upper_teeth_pixels(face_model, default_identity, key_expression_state(name))
    print(f"{name}: {pixels} upper-teeth px")
    assert pixels >= MIN_UPPER_TEETH_PX, f"{name}: {pixels} upper-teeth px"


def test_an_open_mouth_key_expression_exists():
    assert OPEN_MOUTH_EXPRESSIONS, "no key expression opens the jaw to 0.5: the teeth test above checks nothing"


@pytest.mark.parametrize("which", ["mean", "default"])
def test_closed_lips_hide_the_teeth(face_model, identity, default_identity, which):
    """The lowered upper teeth stay behind closed lips, on each face's own shape."""
    face = identity if which == "mean" else default_identity
    assert upper_teeth_pixels(face_model, face, key_expression_state("neutral")) == 0
