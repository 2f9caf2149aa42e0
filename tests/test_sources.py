"""Capture sources: files in order, clear one-line errors for bad input, webcam indices that do not exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import UserError
from engine.sources.files import ImageSource, VideoFileSource, read_image_rgb
from engine.sources.select import check_source_spec, parse_webcam_spec
from engine.sources.webcam import WebcamSource

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write_video(path, frames: list[np.ndarray], fps: float = 25.0) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_source_reads_every_frame_in_order(tmp_path) -> None:
    # Each frame's brightness encodes its index, so order survives lossy encoding.
    frames = [np.full((64, 96, 3), 10 + 20 * k, np.uint8) for k in range(9)]
    path = tmp_path / "clip.mp4"
    _write_video(path, frames)
    with VideoFileSource(path) as source:
        got = list(source)
    assert [f.index for f in got] == list(range(9))
    levels = [int(f.image.mean()) for f in got]
    assert levels == sorted(levels) and abs(levels[0] - 10) <= 6 and abs(levels[-1] - 170) <= 6
    assert got[0].image.shape == (64, 96, 3) and got[0].image.dtype == np.uint8
    assert all(a.t_capture_ns <= b.t_capture_ns for a, b in zip(got, got[1:], strict=False))


def test_video_frames_carry_the_video_clock_across_loops(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, [np.full((64, 96, 3), 10 + 20 * k, np.uint8) for k in range(5)], fps=25.0)
    with VideoFileSource(path, loop=True) as source:
        got = [source.read() for _ in range(12)]
    media_ms = [f.t_media_ns / 1e6 for f in got]
    assert media_ms == pytest.approx([40.0 * k for k in range(12)], abs=1.0)  # the 2nd and 3rd pass continue
    assert got[3].clock_ns(media=True) == got[3].t_media_ns and got[3].clock_ns(media=False) == got[3].t_capture_ns


def test_image_folder_plays_on_a_nominal_clock(tmp_path) -> None:
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"{k}.png"), np.full((40, 40, 3), 50 * k, np.uint8))
    with ImageSource(tmp_path) as source:
        got = list(source)
    assert [f.t_media_ns for f in got] == [round(k * 1e9 / source.fps) for k in range(3)] and source.fps > 0


def test_video_source_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="video not found"):
        VideoFileSource(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(UserError, match="cannot (open|read) video"):
        VideoFileSource(junk)


def test_image_folder_sorted_and_rgb(tmp_path) -> None:
    for name, colour in (("b.png", (0, 0, 255)), ("a.png", (255, 0, 0))):  # BGR on disk
        cv2.imwrite(str(tmp_path / name), np.full((20, 30, 3), colour, np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    with ImageSource(tmp_path) as source:
        frames = list(source)
    assert len(frames) == 2
    assert frames[0].image[0, 0].tolist() == [0, 0, 255]  # a.png: BGR blue → RGB blue
    assert frames[1].image[0, 0].tolist() == [255, 0, 0]


def test_unreadable_images_name_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="broken.png"):
        read_image_rgb(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageSource(empty)
    with pytest.raises(UserError, match="image not found"):
        ImageSource(tmp_path / "nope.jpg")


def test_rgba_and_grey_images(tmp_path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 200  # red in BGRA
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel composites to black
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    image = read_image_rgb(tmp_path / "a.png")
    assert image.shape == (4, 4, 3) and image[1, 1].tolist() == [200, 0, 0] and image[0, 0].tolist() == [0, 0, 0]
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 4), 77, np.uint8))
    assert read_image_rgb(tmp_path / "g.png")[0, 0].tolist() == [77, 77, 77]


def test_webcam_that_does_not_exist() -> None:
    with pytest.raises(UserError, match="no webcam at index 97"):
        WebcamSource(97)


def test_source_specs() -> None:
    assert parse_webcam_spec("webcam") == 0
    assert parse_webcam_spec("webcam:3") == 3
    assert parse_webcam_spec("demo") is None
    with pytest.raises(UserError, match="webcam:N"):
        parse_webcam_spec("webcam:first")
    with pytest.raises(UserError, match="source not found"):
        check_source_spec("/no/such/video.mp4")
    check_source_spec("auto")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--source", "/no/such/clip.mp4"], "source not found"),
        (["run", "--source", "webcam:97", "--no-window"], "no webcam at index 97"),
        (["run", "--set", "render.widht=3"], "unknown key 'render.widht'"),
        (["enroll", "--image", "/no/such/photo.jpg"], "image not found"),
        (["run", "--source", "demo", "--performer", "nobody", "--no-render"], "no performer profile named 'nobody'"),
        (["run", "--source", "demo", "--avatar", "nobody", "--no-render"], "no identity named 'nobody'"),
        (["eval", "--videos", "/no/such/folder"], "no video folder /no/such/folder"),
        (["run", "--source", "demo", "--frames", "0"], "--frames must be at least 1, got 0"),
        (["run", "--source", "demo", "--frames", "-5"], "--frames must be at least 1, got -5"),
        (["run", "--source", "demo", "--duration", "nan"], "--duration must be a positive number of seconds"),
        (["run", "--source", "demo", "--duration", "0"], "--duration must be a positive number of seconds"),
        (["eval", "--no-real", "--out", "/no/such/dir/r.json"], "cannot write --out /no/such/dir/r.json"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("scapecast: error")]) == 1


def test_a_truncated_video_says_frames_are_missing(tmp_path, caplog) -> None:
    # AVI declares its frame count up front, so a cut file still says how long it was meant to be.
    rng = np.random.default_rng(2)
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (128, 96))
    for _ in range(40):
        writer.write(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    writer.release()
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with caplog.at_level("WARNING"), VideoFileSource(cut) as source:
        got = list(source)
    assert 0 < len(got) < 40 and source.frame_count == 40
    assert source.ended_early == source.frame_count - len(got) > 0
    assert sum("truncated or damaged" in r.message for r in caplog.records) == 1
    with caplog.at_level("WARNING"), VideoFileSource(path) as whole:  # a complete file: no word
        assert len(list(whole)) == 40 and whole.ended_early == 0
