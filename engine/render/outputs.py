"""Image outputs: PNG files, MP4 video (OpenCV, mp4v), input | avatar side-by-side sheets, a preview window.

All functions take RGB or RGBA uint8 arrays, top row first (what `AvatarRenderer.render` and the sources
produce). RGBA is composited over a background colour where an opaque picture is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.render.context import display_available


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"{what} must be (H, W, 3|4) uint8, got {image.shape} {image.dtype}")
    return image


def flatten(image: np.ndarray, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """RGBA (straight alpha) → RGB over `background`; RGB passes through. (H, W, 3) uint8."""
    image = _check_image(image)
    if image.shape[2] == 3:
        return image
    alpha = image[..., 3:4].astype(np.float32) * (1.0 / 255.0)
    rgb = image[..., :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def write_png(path: Path | str, image: np.ndarray) -> Path:
    """Write RGB or RGBA uint8 as a PNG (alpha kept); parent folders are created. Returns the path."""
    from PIL import Image

    image = _check_image(image)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
    except OSError as exc:
        raise UserError(f"cannot write PNG {path}: {exc.strerror or exc}") from exc
    return path


def side_by_side(
    left: np.ndarray, right: np.ndarray, height: int | None = None, background: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """Two pictures next to each other at one height (default: the left one's), e.g. input | avatar.

    RGBA inputs are flattened over `background`. Returns (height, W_left' + W_right', 3) uint8.
    """
    import cv2

    left, right = flatten(left, background), flatten(right, background)
    height = left.shape[0] if height is None else height

    def fit(img: np.ndarray) -> np.ndarray:
        if img.shape[0] == height:
            return img
        width = max(1, round(img.shape[1] * height / img.shape[0]))
        shrink = height < img.shape[0]
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    return np.concatenate([fit(left), fit(right)], axis=1)


class Mp4Writer:
    """Frames → an MP4 file (OpenCV VideoWriter, `mp4v` codec). Every frame must have the first one's size.

    Use as a context manager; RGBA frames are flattened over `background`.
    """

    def __init__(self, path: Path | str, fps: float = 30.0, background: tuple[int, int, int] = (0, 0, 0)) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.background = background
        self.frames = 0
        self._writer = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        """Append one RGB/RGBA uint8 frame."""
        import cv2

        rgb = flatten(image, self.background)
        size = (rgb.shape[1], rgb.shape[0])
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self._writer.isOpened():
                raise UserError(f"cannot open {self.path} for MP4 writing (OpenCV VideoWriter, mp4v)")
            self._size = size
        elif size != self._size:
            raise ValueError(f"frame size {size} differs from the video's {self._size}")
        self._writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PreviewWindow:
    """Shows frames in a desktop window (OpenCV HighGUI). `mirror` flips the picture like a selfie view;
    the frames themselves, and left/right in them, are never changed. `show` returns False once the
    window is closed or Esc/q is pressed; `c` sets `calibration_requested` (the engine then calibrates the
    neutral face: `FaceSolver.calibrate_neutral`) until `take_calibration_request` reads it."""

    def __init__(self, title: str = "scapecast", mirror: bool = True) -> None:
        if not display_available():
            raise UserError("no display for a preview window (DISPLAY/WAYLAND_DISPLAY unset); run with --no-window")
        import cv2

        self.title = title
        self.mirror = mirror
        self.calibration_requested = False
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)

    def show(self, image: np.ndarray) -> bool:
        import cv2

        rgb = flatten(image)
        if self.mirror:
            rgb = rgb[:, ::-1]
        cv2.imshow(self.title, np.ascontiguousarray(rgb[..., ::-1]))
        key = cv2.waitKey(1) & 0xFF
        self.calibration_requested |= key == ord("c")
        visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        return visible and key not in (27, ord("q"))

    def take_calibration_request(self) -> bool:
        """Whether `c` was pressed since the last call."""
        requested, self.calibration_requested = self.calibration_requested, False
        return requested

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)

    def __enter__(self) -> PreviewWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
