"""Virtual camera: frames as a camera backend receives them, through pyvirtualcam's own `register_backend`
(as its CI tests backends; no v4l2loopback device exists on these machines), and an engine run into it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pyvirtualcam = pytest.importorskip("pyvirtualcam", reason="the vcam extra (make setup installs it)")

from engine.render.vcam import CHROMA_GREEN, VirtualCamera, VirtualCameraError, camera_frame, device_hint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


class RecordingBackend:
    """A pyvirtualcam backend that keeps what it is given: its opening arguments and every frame."""

    opened: list[RecordingBackend] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        if device == "/dev/missing":
            raise RuntimeError(f"device {device} does not exist")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.name = device or "/dev/video-recording"
        self.frames: list[np.ndarray] = []
        self.closed = False
        RecordingBackend.opened.append(self)

    def send(self, frame: np.ndarray) -> None:
        assert frame.ndim == 1 and frame.flags.c_contiguous  # pyvirtualcam's contract with its backends
        self.frames.append(frame.reshape(self.height, self.width, 3).copy())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return self.name

    def native_fourcc(self) -> int:
        return self.fourcc


@pytest.fixture(autouse=True)
def recording_backend() -> Any:
    pyvirtualcam.register_backend("recording", RecordingBackend)
    RecordingBackend.opened.clear()
    yield
    pyvirtualcam.camera.BACKENDS.pop("recording", None)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_frames_arrive_in_order_as_rgb_over_the_background_padded_to_even_sizes() -> None:
    with VirtualCamera(5, 3, fps=60, backend="recording") as camera:
        backend = RecordingBackend.opened[-1]
        assert (backend.width, backend.height) == (6, 4) and camera.size == (6, 4)
        assert backend.fps == 60 and backend.fourcc == pyvirtualcam.util.encode_fourcc("raw ")  # RGB
        wait_for(lambda: len(backend.frames) >= 1)
        assert (backend.frames[0] == CHROMA_GREEN).all()  # before the first render: the background alone
        for i in range(1, 6):
            image = np.zeros((3, 5, 4), np.uint8)
            image[..., 0], image[..., 1], image[..., 2], image[..., 3] = 10 * i, 20 * i, 30 * i, 255
            image[2, 4] = (200, 100, 0, 128)  # half transparent: over green
            camera.push(image)
            wait_for(lambda i=i: any(f[0, 0, 0] == 10 * i for f in backend.frames))
    assert backend.closed
    reds = [int(f[0, 0, 0]) for f in backend.frames if f[0, 0, 0] != CHROMA_GREEN[0]]
    assert reds == sorted(reds) and set(reds) == {10, 20, 30, 40, 50}  # in order; repeats while waiting
    last = backend.frames[-1]
    assert tuple(last[0, 0]) == (50, 100, 150)  # R, G, B in that order
    expected = (np.array([200, 100, 0]) * 128 + np.array(CHROMA_GREEN) * 127 + 127) // 255
    assert tuple(last[2, 4]) == tuple(expected)
    assert (last[:, 5] == CHROMA_GREEN).all() and (last[3, :] == CHROMA_GREEN).all()  # the padding


def test_camera_frame_matches_float_compositing() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)
    frame = camera_frame(image, (10, 8), (12, 200, 33))
    alpha = image[..., 3:4] / 255.0
    reference = image[..., :3] * alpha + np.array([12, 200, 33]) * (1 - alpha)
    assert np.abs(frame[:7, :9].astype(float) - reference).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="larger"):
        camera_frame(image, (8, 8), (0, 0, 0))


def test_the_camera_repeats_the_newest_frame_at_its_own_rate() -> None:
    """One render pushed, the camera keeps sending it (video apps expect a steady camera)."""
    with VirtualCamera(4, 4, fps=100, backend="recording") as camera:
        backend = RecordingBackend.opened[-1]
        camera.push(np.full((4, 4, 3), 77, np.uint8))
        wait_for(lambda: sum((f == 77).all() for f in backend.frames) >= 5)
        assert camera.pushed == 1 and camera.sent >= 5


def test_no_device_or_no_library_is_a_one_line_error_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VirtualCameraError, match="no virtual camera could be opened") as error:
        VirtualCamera(64, 64, 30, device="/dev/missing", backend="recording")
    assert "\n" not in str(error.value) and device_hint() in str(error.value)
    assert "exclusive_caps=1" in device_hint("Linux") and "OBS" in device_hint("Windows")
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # not installed
    with pytest.raises(VirtualCameraError, match=r"pip install 'scapecast\[vcam\]'"):
        VirtualCamera(64, 64, 30)


ENGINE_WITH_RECORDING_CAMERA = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pyvirtualcam

    class Recording:
        def __init__(self, *, width, height, fps, fourcc, device, **kw):
            self.opened = dict(width=width, height=height, fps=fps, fourcc=fourcc)
            self.frames = []
        def send(self, frame):
            self.frames.append(frame.copy())
        def close(self):
            h, w = self.opened["height"], self.opened["width"]
            frames = np.stack(self.frames).reshape(-1, h, w, 3) if self.frames else np.zeros((0, h, w, 3), np.uint8)
            np.save(sys.argv[1], frames)
            json.dump(self.opened, open(sys.argv[1] + ".json", "w"))
        def device(self):
            return "/dev/video-recording"
        def native_fourcc(self):
            return None

    # Registered after v4l2loopback: the engine's own search falls through to it when no device exists.
    pyvirtualcam.register_backend("recording", Recording)
    from engine.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_engine_run_sends_the_avatar_to_the_camera(tmp_path: Path) -> None:
    recorded = tmp_path / "frames.npy"
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_WITH_RECORDING_CAMERA, str(recorded), "run", "--source", "demo",
         "--frames", "45", "--no-window", "--vcam", "--set", "stream.enabled=false", "--set", "render.width=250",
         "--set", "render.height=200", "--summary-json", str(tmp_path / "summary.json")],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    opened = json.loads(Path(str(recorded) + ".json").read_text())
    assert (opened["width"], opened["height"]) == (250, 200) and opened["fps"] == 30.0  # the demo's rate
    frames = np.load(recorded)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rendered"] > 0 and len(frames) >= 10
    avatar = frames[-1]
    green = (avatar == CHROMA_GREEN).all(axis=2)
    assert green[0, 0] and green[-1, -1]  # the render's transparent background, keyed green
    assert 0.05 < 1 - green.mean() < 0.9  # and the avatar's face in front of it
    assert not (frames[-1] == frames[0]).all()  # the first frame (background) differs from a rendered one


def test_vcam_needs_rendering() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "run", "--source", "demo", "--frames", "5", "--vcam",
         "--no-render"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode != 0 and "--no-render" in result.stderr and "Traceback" not in result.stderr
