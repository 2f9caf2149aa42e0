"""Image outputs: PNG with alpha, MP4 through OpenCV, side-by-side sheets, the preview window's guard."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import UserError
from engine.render.context import wants_window
from engine.render.outputs import Mp4Writer, PreviewWindow, flatten, side_by_side, write_png


def _gradient(h: int, w: int, alpha: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    if alpha:
        img = np.concatenate([img, ((x // 8) % 2 * 255)[..., None]], axis=-1)
    return img.astype(np.uint8)


def test_png_round_trip_keeps_alpha_and_orientation(tmp_path):
    from PIL import Image

    img = _gradient(40, 64, alpha=True)
    path = write_png(tmp_path / "sub" / "a.png", img)
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, img)


def test_flatten_composites_straight_alpha():
    img = np.zeros((1, 3, 4), np.uint8)
    img[0, :, :3] = 200
    img[0, :, 3] = [0, 128, 255]
    out = flatten(img, background=(10, 20, 30))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 2], [200, 200, 200])
    np.testing.assert_allclose(out[0, 1], 200 * 128 / 255 + np.array([10, 20, 30]) * 127 / 255, atol=1)


def test_side_by_side_scales_to_one_height():
    left = _gradient(120, 160)
    right = _gradient(60, 60, alpha=True)
    sheet = side_by_side(left, right)
    assert sheet.shape == (120, 160 + 120, 3)
    np.testing.assert_array_equal(sheet[:, :160], left)
    small = side_by_side(left, right, height=60)
    assert small.shape == (60, 80 + 60, 3)


def test_mp4_writer_round_trip(tmp_path):
    import cv2

    path = tmp_path / "clip.mp4"
    frames = [np.roll(_gradient(64, 96), 8 * k, axis=1) for k in range(5)]
    with Mp4Writer(path, fps=10) as writer:
        for frame in frames:
            writer.write(frame)
        with pytest.raises(ValueError, match="size"):
            writer.write(_gradient(32, 32))
    assert writer.frames == 5
    cap = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        read.append(bgr[..., ::-1])
    cap.release()
    assert len(read) == 5 and read[0].shape == (64, 96, 3)
    # Lossy, but the same picture: mean error small, and frame k is closer to input k than to input k+1.
    assert np.abs(read[2].astype(int) - frames[2]).mean() < 12
    assert np.abs(read[2].astype(int) - frames[2]).mean() < np.abs(read[2].astype(int) - frames[3]).mean()


def test_bad_inputs(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(tmp_path / "x.mp4", fps=0)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(UserError, match="cannot write PNG"):
        write_png(tmp_path / "blocker" / "x.png", _gradient(4, 4))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(UserError, match="no display"):
        PreviewWindow()
    assert wants_window("auto") is False and wants_window("egl") is False
    with pytest.raises(UserError, match="no display"):
        wants_window("window")


def test_render_stills_writes_each_expression_with_and_without_detail(face_model, tmp_path):
    from PIL import Image

    from engine.config import RenderConfig
    from engine.identity import Identity
    from engine.render.bench import synthetic_ridge_bases
    from engine.render.stills import key_expression_state, render_stills

    identity = Identity(
        "stills", face_model.model_id, face_model.default_identity_weights(), np.zeros(53, np.float32),
        bases=synthetic_ridge_bases(64),
    )  # fmt: skip
    config = RenderConfig(width=64, height=64, samples=0)
    written = render_stills(face_model, identity, config, tmp_path, ("neutral", "smile"))
    names = sorted(p.name for p in written)
    assert names == sorted(
        [f"{e}_detail_{s}.png" for e in ("neutral", "smile") for s in ("on", "off")]
        + ["neutral_compare.png", "smile_compare.png"]
        + [f"smile_{v}.png" for v in ("displacement", "weights", "normals")]
    )
    smile = np.asarray(Image.open(tmp_path / "smile_detail_off.png"))
    neutral = np.asarray(Image.open(tmp_path / "neutral_detail_off.png"))
    assert smile.shape == (64, 64, 4) and np.abs(smile.astype(int) - neutral).max() > 30
    assert key_expression_state("smile").weights.max() == 1.0
    with pytest.raises(ValueError, match="unknown key expression"):
        key_expression_state("smirk")


def test_render_compare_sheet_puts_each_before_beside_its_after(face_model, tmp_path):
    from PIL import Image

    from engine.config import RenderConfig
    from engine.identity import Identity
    from engine.render.stills import render_compare, render_stills

    identity = Identity("stills", face_model.model_id, face_model.default_identity_weights(), np.zeros(53, np.float32))
    config = RenderConfig(width=64, height=64, samples=0)
    render_stills(face_model, identity, config, tmp_path / "before", ("neutral", "smile"), debug_views=False)
    sheet_path = render_compare(
        face_model, identity, config, tmp_path / "before", tmp_path / "sheet.png", ("neutral", "smile", "brow_raiser"),
        cell=64,
    )  # fmt: skip
    sheet = np.asarray(Image.open(sheet_path))
    header = sheet.shape[0] - 2 * 64  # brow_raiser has no before picture: two rows
    assert sheet.shape[1] == 128 and header > 0
    smile = sheet[header + 64 + 24 :, :, :3].astype(int)  # below the row label
    assert np.abs(smile[:, :64] - smile[:, 64:]).max() <= 2  # same code before and after: the halves match
    with pytest.raises(ValueError, match="holds no"):
        render_compare(face_model, identity, config, tmp_path, tmp_path / "x.png", ("smile",))
