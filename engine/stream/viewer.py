"""The remote renderer's pieces (the `view` command, engine/commands/view.py): where fetched bundles are kept,
loading the announced identity, and where rendered frames go (PNGs, a video file, a window)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from engine.errors import UserError
from engine.identity import DEFAULT_IDENTITY_DIR, load_bundle

log = logging.getLogger(__name__)


def remote_cache_dir(identity_id: str, cache_dir: str | None) -> Path:
    """`cache_dir/<id>`, default `$XDG_CACHE_HOME/scapecast/remote/<id>` (the id made safe as a folder name)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scapecast" / "remote"
    return Path(cache_dir or cache) / (re.sub(r"[^A-Za-z0-9_.-]", "_", identity_id).strip(".") or "_")


class FrameSink:
    """Where rendered frames go: numbered PNGs in a folder, a video file, or a window."""

    def __init__(self, out: str | None, fps: float, size: tuple[int, int]):
        import cv2

        self._cv2 = cv2
        self._dir: Path | None = None
        self._video = None
        self.frames = 0
        if out is None:
            if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
                raise UserError("no display to show a window on: pass --out DIR (PNGs) or --out FILE.mp4")
        elif Path(out).suffix.lower() in (".mp4", ".avi", ".mkv", ".mov"):
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if Path(out).suffix.lower() in (".mp4", ".mov") else "MJPG"))
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            self._video = cv2.VideoWriter(out, fourcc, fps, size)
            if not self._video.isOpened():
                raise UserError(f"cannot open video file {out} for writing")
        else:
            self._dir = Path(out)
            self._dir.mkdir(parents=True, exist_ok=True)

    def write(self, rgba) -> bool:
        """Write one (H, W, 4) uint8 RGBA image; False when the user closed the window."""
        cv2 = self._cv2
        if self._dir is not None:
            cv2.imwrite(str(self._dir / f"frame_{self.frames:06d}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        elif self._video is not None:
            self._video.write(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))
        else:
            cv2.imshow("scapecast view", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))
            if cv2.waitKey(1) in (27, ord("q")):
                return False
        self.frames += 1
        return True

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
        elif self._dir is None:
            self._cv2.destroyAllWindows()


def load_remote_identity(client, identity_message, model, cache_dir: str | None):
    """Fetch the announced bundle (hash-checked, cached) and load it; the shipped default when none is served."""
    header = identity_message.header
    if header["model_id"] and header["model_id"] != model.model_id:
        raise UserError(f"the engine renders face model {header['model_id']!r}; this viewer has {model.model_id!r}")
    if not header["assets"]:
        log.warning("the engine serves no identity bundle: rendering the shipped default identity")
        return load_bundle(DEFAULT_IDENTITY_DIR, model)
    directory = remote_cache_dir(header["id"], cache_dir)
    client.fetch_assets(directory)
    log.info("identity %r fetched into %s", header["id"], directory)
    return load_bundle(directory, model)
