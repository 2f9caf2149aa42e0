"""Output files: checked before a run starts (one line, not a traceback after minutes of work) and written
atomically (a reader never sees half a file)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from engine.errors import UserError


def check_output_path(path: Path, option: str) -> None:
    """Fail before the run, with one line, on an output that cannot be written (no folder, read-only)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"cannot write {option} {path}: it is a folder")
    if not folder.is_dir():
        raise UserError(f"cannot write {option} {path}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"cannot write {option} {path}: permission denied")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it over: a reader never sees half a file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_text(text)
        temporary.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
