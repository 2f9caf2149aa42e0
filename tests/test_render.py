"""The avatar renderer, headless: image contract, pose and expression reach the pixels, CPU and GPU paths agree."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.config import ConfigError, RenderConfig, load_config
from engine.identity import DetailBases, Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.camera import Camera, euler_to_quaternion, quaternion_to_matrix
from engine.render.renderer import AvatarRenderer
from engine.types import FaceState, HeadPose

SIZE = 192


def _identity(face_model, bases: np.ndarray | None = None) -> Identity:
    return Identity(
        "test", face_model.model_id, face_model.default_identity_weights(), np.zeros(53, np.float32),
        bases=None if bases is None else DetailBases(bases, "synthetic"),
    )  # fmt: skip


def _ridges(n: int = 64) -> np.ndarray:
    """Ridges along v, a different frequency per key expression (mm, mm per unit UV)."""
    v = (np.arange(n) + 0.5) / n
    maps = np.zeros((20, n, n, 3), np.float32)
    for i in range(20):
        k = 6 + i
        maps[i, :, :, 0] = 0.4 * np.sin(2 * np.pi * k * v)[:, None]
        maps[i, :, :, 2] = (0.4 * 2 * np.pi * k * np.cos(2 * np.pi * k * v))[:, None]
    return maps


@pytest.fixture(scope="module")
def renderer(face_model):
    config = RenderConfig(width=SIZE, height=SIZE, samples=4)
    with AvatarRenderer(face_model, _identity(face_model, _ridges()), config) as r:
        yield r


def _state(**weights: float) -> FaceState:
    w = np.zeros(53)
    for name, value in weights.items():
        w[ICT_EXPRESSIONS.index(name)] = value
    return replace(FaceState.neutral(), weights=w)


def _posed(state: FaceState, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> FaceState:
    q = euler_to_quaternion(np.array(yaw), np.array(pitch), np.array(roll))
    return replace(state, pose=HeadPose(q, np.zeros(3), 1.0))


def _projected_bbox(face_model, camera: Camera, pose: HeadPose) -> tuple[np.ndarray, np.ndarray]:
    vertices = face_model.evaluate(face_model.default_identity_weights(), np.zeros(53))
    mv = camera.model_view(pose)
    cam = vertices @ mv[:3, :3].T + mv[:3, 3]
    px = camera.project(cam)
    return px.min(axis=0), px.max(axis=0)


def test_render_is_rgba_top_row_first_with_transparent_background(face_model, renderer):
    frame = renderer.render(_state())
    img = frame.image
    assert img.shape == (SIZE, SIZE, 4) and img.dtype == np.uint8
    alpha = img[..., 3]
    assert 0.2 < (alpha > 0).mean() < 0.9, "the head fills part of the frame"
    lo, hi = _projected_bbox(face_model, renderer.camera, HeadPose.identity())
    ys, xs = np.nonzero(alpha)
    # Every covered pixel lies within the projected mesh (+1 px of antialiasing): alpha is 0 elsewhere.
    assert xs.min() >= np.floor(lo[0]) - 1 and xs.max() <= np.ceil(hi[0]) + 1
    assert ys.min() >= np.floor(lo[1]) - 1 and ys.max() <= np.ceil(hi[1]) + 1
    # Top row first: the neck reaches the bottom edge, the top corners are empty.
    assert alpha[-1].max() == 255 and alpha[0, 0] == 0 and alpha[0, -1] == 0
    assert frame.state.frame_index == -1 and frame.t_render_done_ns > 0


def test_msaa_edges_have_partial_alpha_and_unpremultiplied_colour(renderer):
    img = renderer.render(_state()).image
    alpha = img[..., 3]
    edge = (alpha > 0) & (alpha < 255)
    assert edge.sum() > SIZE, "antialiased silhouette"
    # Straight alpha: an edge pixel's colour is the skin's, not skin × coverage (which would be dark).
    inside = alpha == 255
    assert img[edge][:, :3].mean() > 0.7 * img[inside][:, :3].mean()


def test_samples_default_to_none_on_software_rasterizers(face_model):
    with AvatarRenderer(face_model, _identity(face_model), RenderConfig(width=32, height=32)) as r:
        software = "llvmpipe" in r.context.info["GL_RENDERER"]
        assert r.samples == (0 if software else 4)
        if software:
            assert np.isin(r.render(_state()).image[..., 3], (0, 255)).all(), "no MSAA: alpha is 0 or 255"


def test_subject_left_is_image_right(renderer):
    """Left/right are the subject's: closing the left eye changes the right half of the (unmirrored) image."""
    neutral = renderer.render(_state()).image.astype(np.int16)
    blink = renderer.render(_state(eyeBlink_L=1.0)).image.astype(np.int16)
    diff = np.abs(blink - neutral)[..., :3].sum(axis=-1)
    assert diff[:, SIZE // 2 :].sum() > 20 * diff[:, : SIZE // 2].sum()


def test_open_jaw_changes_mouth_pixels_only(renderer):
    neutral = renderer.render(_state()).image.astype(np.int16)
    opened = renderer.render(_state(jawOpen=1.0)).image.astype(np.int16)
    diff = np.abs(opened - neutral)[..., :3].max(axis=-1)
    mouth = diff[int(0.62 * SIZE) : int(0.85 * SIZE), int(0.35 * SIZE) : int(0.65 * SIZE)]
    forehead = diff[int(0.05 * SIZE) : int(0.25 * SIZE), int(0.3 * SIZE) : int(0.7 * SIZE)]
    assert (mouth > 40).mean() > 0.2
    assert forehead.max() <= 2
    # The opening is dark inside: the mouth region gets darker on average.
    inner = (slice(int(0.62 * SIZE), int(0.85 * SIZE)), slice(int(0.4 * SIZE), int(0.6 * SIZE)))
    assert opened[inner][..., :3].mean() < neutral[inner][..., :3].mean() - 10


@pytest.mark.parametrize("yaw", [20.0, -20.0])
def test_yaw_moves_the_face_towards_the_subjects_side(renderer, yaw):
    """Positive yaw turns the face to the subject's left, which the camera sees on the image right."""

    def dark_centroid_x(img: np.ndarray) -> float:
        lum = img[..., :3].astype(np.float32).mean(axis=-1)
        ys, xs = np.nonzero((img[..., 3] == 255) & (lum < 70))  # brows, lashes, irises, nostrils
        return float(xs.mean())

    frontal = dark_centroid_x(renderer.render(_state()).image)
    turned = dark_centroid_x(renderer.render(_posed(_state(), yaw=yaw)).image)
    assert np.sign(turned - frontal) == np.sign(yaw)
    assert abs(turned - frontal) > 0.06 * SIZE


@pytest.fixture(scope="module")
def halves_renderer(face_model):
    """A face painted by sides through the UV rasterizer: the subject's left (+x) blue, the right green. The
    border between them is the face's midline, nose bridge to chin."""
    from engine.detail.uv_raster import face_rasterizer

    colors = np.where((face_model.neutral[:, 0] > 0)[:, None], [40.0, 60.0, 230.0], [40.0, 230.0, 60.0])
    texture = np.clip(face_rasterizer(face_model, 256).rasterize(colors), 0, 255).astype(np.uint8)
    identity = replace(_identity(face_model), texture=texture)
    with AvatarRenderer(face_model, identity, RenderConfig(width=SIZE, height=SIZE, samples=0)) as r:
        yield r


def _dark_features_y(img: np.ndarray) -> float:
    """Mean row of the dark features (brows, lashes, irises, nostrils); rows grow downwards."""
    lum = img[..., :3].astype(np.float32).mean(axis=-1)
    ys, _ = np.nonzero((img[..., 3] == 255) & (lum < 70))
    assert len(ys) > 200, "the face's dark features are visible"
    return float(ys.mean())


def _midline_lean(img: np.ndarray) -> float:
    """How far the painted midline leans from vertical, in degrees, positive when its top is to the image left
    (counter-clockwise as seen): the left edge of the blue half, fitted as a line over the middle half of its rows
    (above, the blue half's top edge would count; below, its chin)."""
    rgb = img[..., :3].astype(np.int32)
    blue = (img[..., 3] == 255) & (rgb[..., 2] > 2 * rgb[..., 1]) & (rgb[..., 2] > 2 * rgb[..., 0])
    rows = np.flatnonzero(blue.any(axis=1))
    quarter = (rows[-1] - rows[0]) // 4
    rows = rows[(rows >= rows[0] + quarter) & (rows <= rows[-1] - quarter)]
    assert len(rows) > 0.2 * SIZE, "the painted face is visible"
    edge = np.array([np.flatnonzero(blue[y])[0] for y in rows])
    return float(np.degrees(np.arctan(np.polyfit(rows, edge, 1)[0])))


def _crown_x(img: np.ndarray) -> float:
    """Mean column of the silhouette's top quarter (its rows from the first covered one): the crown of the head."""
    rows = np.flatnonzero((img[..., 3] > 0).any(axis=1))
    top = img[rows[0] : rows[0] + (rows[-1] - rows[0]) // 4, :, 3] > 0
    return float(np.nonzero(top)[1].mean())


@pytest.mark.parametrize(("pitch", "roll"), [(15.0, 0.0), (-15.0, 0.0), (0.0, 15.0), (0.0, -15.0)])
def test_pitch_nods_and_roll_tilts_the_head_their_own_way(renderer, halves_renderer, pitch, roll):
    """The engine's conventions (engine/stream/face_angles.py, tests/test_vmc.py): positive pitch, a rotation about
    +x, takes the face's forward axis +z towards −y — the face turns down; positive roll, about +z (towards the
    camera), takes the crown to −x, the subject's right, on the image left — counter-clockwise as the camera sees
    it. So a nod moves the eyes and brows (in front of the rotation centre) down for positive pitch, up for
    negative, and keeps the midline upright and the crown in place; a roll leans the midline by the roll angle,
    swings the crown to its side and keeps the eyes at their height. A flipped sign or swapped angles fail."""
    frontal = renderer.render(_state()).image
    posed = renderer.render(_posed(_state(), pitch=pitch, roll=roll)).image
    rise = _dark_features_y(posed) - _dark_features_y(frontal)  # > 0: down the image
    crown_shift = _crown_x(posed) - _crown_x(frontal)  # > 0: to the image right
    lean = _midline_lean(halves_renderer.render(_posed(_state(), pitch=pitch, roll=roll)).image)
    lean -= _midline_lean(halves_renderer.render(_state()).image)
    assert abs(lean - roll) < 3.0, f"the midline leans {lean:+.1f}° for roll {roll:+.0f}°, pitch {pitch:+.0f}°"
    if pitch:
        assert np.sign(rise) == np.sign(pitch) and abs(rise) > 0.06 * SIZE, f"eyes moved {rise:+.1f} px down"
        assert abs(crown_shift) < 0.02 * SIZE, f"a nod swung the crown {crown_shift:+.1f} px"
    else:
        assert abs(rise) < 0.03 * SIZE, f"a roll moved the eyes {rise:+.1f} px down"
        assert np.sign(crown_shift) == -np.sign(roll) and abs(crown_shift) > 0.04 * SIZE, f"crown {crown_shift:+.1f}"


def test_detail_changes_shading_not_the_silhouette(renderer):
    state = _state(mouthSmile_L=0.6, mouthSmile_R=0.6)
    with_detail = renderer.render(state).image.astype(np.int16)
    renderer.detail = False
    try:
        without = renderer.render(state).image.astype(np.int16)
    finally:
        renderer.detail = True
    diff = np.abs(with_detail - without)[..., :3].max(axis=-1)
    assert (diff > 3).mean() > 0.05
    assert (with_detail[..., 3] == without[..., 3]).all(), "detail shades; it does not move the silhouette"
    renderer.detail_gain = 0.0
    try:
        zero_gain = renderer.render(state).image.astype(np.int16)
    finally:
        renderer.detail_gain = 1.0
    assert np.abs(zero_gain - without).max() <= 1, "gain 0 blends nothing"


def test_gpu_blendshapes_match_cpu(face_model):
    state = _posed(_state(jawOpen=0.6, mouthSmile_R=0.8, eyeBlink_L=0.5, browInnerUp_L=0.7), yaw=10, pitch=-5)
    images = []
    for gpu in (False, True):
        with AvatarRenderer(face_model, _identity(face_model), RenderConfig(width=128, height=128), gpu) as r:
            assert r.gpu_blendshapes is gpu
            images.append(r.render(state).image.astype(np.int16))
    diff = np.abs(images[0] - images[1])
    assert diff.mean() < 0.2 and (diff > 8).mean() < 0.002


@pytest.mark.parametrize("view", ["displacement", "weights", "normals"])
def test_debug_views(face_model, view):
    config = RenderConfig(width=96, height=96, debug_view=view, samples=0)
    with AvatarRenderer(face_model, _identity(face_model, _ridges()), config) as r:
        smile = r.render(_state(mouthSmile_L=1.0, mouthSmile_R=1.0)).image
        neutral = r.render(_state()).image
    assert (smile[..., 3] > 0).mean() > 0.2
    changed = (np.abs(smile.astype(np.int16) - neutral)[..., :3].max(axis=-1) > 10).mean()
    if view == "weights":
        assert changed > 0.02, "a smile lights up the smile key expression's weight"
    else:
        assert len(np.unique(smile[..., :3].reshape(-1, 3), axis=0)) > 50


def test_uv_render_needs_bases(face_model):
    with AvatarRenderer(face_model, _identity(face_model), RenderConfig(width=32, height=32, samples=0)) as r:
        assert r.detail is False
        with pytest.raises(ValueError, match="no detail bases"):
            r.render_uv(np.zeros(53))


def test_bad_inputs_name_the_problem(face_model, renderer):
    with pytest.raises(ValueError, match="shape"):
        renderer.render(replace(FaceState.neutral(), weights=np.zeros(52)))
    with pytest.raises(ValueError, match="NaN"):
        renderer.render(replace(FaceState.neutral(), weights=np.full(53, np.nan)))
    with pytest.raises(ValueError, match="quaternion"):
        renderer.render(replace(FaceState.neutral(), pose=HeadPose(np.zeros(4), np.zeros(3))))
    bad = _identity(face_model, np.zeros((19, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="detail bases"):
        AvatarRenderer(face_model, bad, RenderConfig(width=32, height=32))
    with pytest.raises(ConfigError, match="render.background"):
        load_config(overrides=["render.background=[0, 0, 0, 0.5]"])


def test_quaternion_conventions():
    q = euler_to_quaternion(np.array(90.0), np.array(0.0), np.array(0.0))
    # Positive yaw: the face's forward axis (+z) turns towards the subject's left (+x).
    np.testing.assert_allclose(quaternion_to_matrix(q) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    q = euler_to_quaternion(np.array(0.0), np.array(90.0), np.array(0.0))
    np.testing.assert_allclose(quaternion_to_matrix(q) @ [0, 0, 1], [0, -1, 0], atol=1e-12)


def test_identity_texture_is_sampled_with_row_zero_at_v_zero(face_model):
    """A texture painted through the UV rasterizer (red above y = 2 cm, green below) lands on the right
    parts of the face: forehead red, chin green."""
    from engine.detail.uv_raster import face_rasterizer

    colors = np.where((face_model.neutral[:, 1] > 2.0)[:, None], [230.0, 20.0, 20.0], [20.0, 230.0, 20.0])
    texture = np.clip(face_rasterizer(face_model, 256).rasterize(colors), 0, 255).astype(np.uint8)
    identity = replace(_identity(face_model), texture=texture)
    with AvatarRenderer(face_model, identity, RenderConfig(width=128, height=128, samples=0)) as r:
        img = r.render(_state()).image.astype(int)
    forehead, chin = img[int(0.18 * 128), 64], img[int(0.8 * 128), 64]
    assert forehead[0] > 2 * forehead[1] and chin[1] > 2 * chin[0]


def test_baked_procedural_albedo_renders_like_the_per_vertex_one(face_model):
    """The baked face-tile texture, used as an identity texture, looks like the untextured render."""
    from engine.render.materials import bake_face_albedo

    texture = bake_face_albedo(face_model, 512)
    assert texture.shape == (512, 512, 3) and texture.dtype == np.uint8
    config = RenderConfig(width=128, height=128, samples=0)
    with AvatarRenderer(face_model, _identity(face_model), config) as r:
        plain = r.render(_state()).image.astype(int)
    with AvatarRenderer(face_model, replace(_identity(face_model), texture=texture), config) as r:
        baked = r.render(_state()).image.astype(int)
    diff = np.abs(plain - baked)[..., :3].max(axis=-1)
    assert np.median(diff[plain[..., 3] > 0]) <= 2 and (diff > 25).mean() < 0.01


def test_back_of_head_takes_the_identity_textures_skin_tone(face_model):
    """The identity texture covers the face tile; the rest of the head gets its median colour, so a blue
    texture gives a blue head (apart from eyes, lashes and mouth)."""
    blue = np.zeros((32, 32, 3), np.uint8)
    blue[...] = (40, 60, 200)
    with AvatarRenderer(
        face_model, replace(_identity(face_model), texture=blue), RenderConfig(width=96, height=96)
    ) as r:
        img = r.render(_posed(_state(), yaw=60.0)).image.astype(int)
    skin = img[img[..., 3] == 255]
    assert (skin[:, 2] > skin[:, 0]).mean() > 0.9


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (35.0, 10.0), (-30.0, -15.0)])
def test_back_face_culling_hides_nothing_visible(face_model, monkeypatch, yaw, pitch):
    """Culled groups must be closed surfaces wound counter-clockwise outside: the image with culling equals the
    one without, but for a few edge pixels — with the mouth wide open (the socket seen from inside) and turned."""
    import engine.render.renderer as renderer_module

    config = RenderConfig(width=256, height=256, samples=0)
    state = _posed(_state(jawOpen=1.0, mouthFunnel=0.4, eyeBlink_L=0.5), yaw=yaw, pitch=pitch)
    with AvatarRenderer(face_model, _identity(face_model), config) as r:
        culled = r.render(state).image.astype(int)
        monkeypatch.setattr(renderer_module, "_BACKFACE_CULLED", frozenset())
        unculled = r.render(state).image.astype(int)
    changed = np.abs(culled - unculled).max(axis=2) > 40
    assert changed.sum() <= 8, f"{changed.sum()} pixels change with back-face culling"


@pytest.mark.parametrize(("samples", "background"), [(4, (0.0, 0.0, 0.0, 0.0)), (0, (0.2, 0.3, 0.4, 1.0))])
def test_gpu_present_pass_matches_the_numpy_readback(face_model, samples, background):
    """GPUs flip and un-premultiply in shaders/present.frag.glsl; software rasterizers in numpy (read()). The
    two must give the same bytes, but for rounding (numpy truncates, the GPU rounds): ≤ 1 level."""
    config = RenderConfig(width=200, height=160, samples=samples, background=background)
    identity = _identity(face_model, _ridges())
    states = [_posed(_state(jawOpen=0.6, mouthSmile_L=0.8), yaw=20.0), _posed(_state(eyeBlink_R=1.0), roll=-15.0)]
    with AvatarRenderer(face_model, identity, config, gpu_present=False) as numpy_path:
        expected = [numpy_path.render(state).image for state in states]
    with AvatarRenderer(face_model, identity, config, gpu_present=True) as gpu_path:
        got = [gpu_path.render(state).image for state in states]
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and have.flags.c_contiguous
        assert np.abs(have.astype(int) - want).max() <= 1
        if samples:
            edge = (want[..., 3] > 0) & (want[..., 3] < 255)
            assert edge.sum() > 50, "antialiased edges exercise the un-premultiply"
