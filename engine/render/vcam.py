"""The rendered avatar as a system camera for video calls (Zoom, Meet, Teams, OBS), through pyvirtualcam.

    render thread ── push(RGBA) ──▶ newest image ──▶ sender thread: flatten, pad, send at `fps` ──▶ device

pyvirtualcam (the `vcam` extra, GPL-2.0) drives v4l2loopback on Linux and OBS Studio's Virtual Camera on
Windows and macOS. A camera must deliver frames at a steady rate whatever the render manages (a software
renderer may fall below the source's rate), so a thread of its own sends the newest avatar at the camera's
rate, repeating it while no new one has come, and the background alone before the first.

Frames go out as RGB, never mirrored (call apps mirror their own self-view). The avatar's transparent
background is filled with `background` (chroma-key green unless configured: OBS keys it out); the size is
the render size padded to even numbers, because the backends convert RGB to 4:2:0 or 4:2:2 YUV (I420, NV12,
YUYV), which has no odd widths or heights.
"""

from __future__ import annotations

import logging
import platform
import threading
from typing import Any

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

#: Chroma-key green (8-bit RGB), what keying filters expect by default.
CHROMA_GREEN = (0, 177, 64)
INSTALL_HINT = "pip install 'scapecast[vcam]' (pyvirtualcam, GPL-2.0)"


class VirtualCameraError(UserError):
    """No virtual camera can be opened: the extra is not installed, or no device or driver is there."""


def camera_size(width: int, height: int) -> tuple[int, int]:
    """The render size rounded up to what camera drivers take: even width and height (4:2:0 / 4:2:2 YUV)."""
    return width + width % 2, height + height % 2


def device_hint(system: str | None = None) -> str:
    """How to get a virtual camera device on this platform (for the error message)."""
    system = system or platform.system()
    if system == "Linux":
        # exclusive_caps=1: Chrome (and so Meet) lists only devices that announce capture alone.
        return "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=scapecast"
    return "install OBS Studio (28 or newer) and start its Virtual Camera once, then stop it"


def camera_frame(image: np.ndarray, size: tuple[int, int], background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3|4) uint8 render → (height, width, 3) uint8 RGB camera frame: alpha composited over
    `background`, padded with it at the right and bottom to `size` (width, height)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"a camera frame needs an (H, W, 3|4) uint8 image, got {image.shape} {image.dtype}")
    width, height = size
    rows, cols = image.shape[:2]
    if rows > height or cols > width:
        raise ValueError(f"image {cols}×{rows} is larger than the camera's {width}×{height}")
    frame = np.empty((height, width, 3), np.uint8)
    frame[...] = background
    if image.shape[2] == 3:
        frame[:rows, :cols] = image
        return frame
    # Integer compositing (out = (rgb·a + bg·(255 − a) + 127) / 255): exact to rounding, and cheap.
    alpha = image[..., 3:4].astype(np.uint16)
    blended = image[..., :3] * alpha + np.asarray(background, np.uint16) * (255 - alpha) + 127
    frame[:rows, :cols] = (blended // 255).astype(np.uint8)
    return frame


class VirtualCamera:
    """A system camera showing the newest pushed image at `fps`. `push` only hands the image over (the caller's
    thread never waits on the device); `close` stops the sender and releases the device."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        background: tuple[int, int, int] = CHROMA_GREEN,
        device: str | None = None,
        backend: str | None = None,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"virtual camera fps must be positive, got {fps}")
        try:
            import pyvirtualcam
        except ImportError:
            raise VirtualCameraError(f"--vcam needs pyvirtualcam: {INSTALL_HINT}") from None
        self.size = camera_size(width, height)
        self.fps = float(fps)
        self.background = tuple(int(c) for c in background)
        try:
            self._camera: Any = pyvirtualcam.Camera(
                *self.size, self.fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device, backend=backend
            )
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = " / ".join(str(exc).split("\n"))
            raise VirtualCameraError(f"no virtual camera could be opened ({reason}); {device_hint()}") from None
        self.device = str(self._camera.device)
        self.sent = 0  # frames handed to the device, repeats included
        self.pushed = 0  # images pushed by the renderer
        self._frame = camera_frame(np.zeros((1, 1, 4), np.uint8), self.size, self.background)
        self._image: np.ndarray | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._send_loop, name="vcam", daemon=True)
        self._thread.start()
        log.info("virtual camera %s: %d×%d at %.0f fps (%s)", self.device, *self.size, self.fps,
                 self._camera.backend)  # fmt: skip

    def push(self, image: np.ndarray) -> None:
        """Show `image` (H, W, 3|4 uint8, at most the camera's size) from the next frame on."""
        with self._cond:
            self._image = image
            self.pushed += 1

    def _send_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closed:
                        return
                    image, self._image = self._image, None
                if image is not None:
                    self._frame = camera_frame(image, self.size, self.background)
                self._camera.send(self._frame)
                self.sent += 1
                self._camera.sleep_until_next_frame()
        except Exception as exc:  # a device that went away: the engine runs on without this output
            self.error = exc
            log.warning("virtual camera %s stopped: %s", self.device, exc)

    def close(self) -> None:
        """Stop sending and release the device (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._thread.join(timeout=5.0)
        self._camera.close()

    def __enter__(self) -> VirtualCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
