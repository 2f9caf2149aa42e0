"""Where the engine's own files are: trained models, shaders and the default configuration.

An installed wheel carries them as package data in `engine/_data/{models,shaders,configs}` (pyproject.toml maps
the repository's folders there), found through `importlib.resources` so that the engine runs from any directory.
A source checkout and the editable install (`make setup`) have no `engine/_data/`: there they are the
repository's `models/`, `shaders/` and `configs/` folders, which the tools and tests also use. Everything else
imports these three paths.

They must be real directories (ONNX Runtime, OpenCV's video reader and the identity bundles take file names, and
a bundle is a folder), so an `engine` imported from a zip archive is refused with a clear error.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from engine.errors import UserError

_ROOT = Path(__file__).resolve().parents[1]  # the repository root in a source checkout
_PACKAGE = files("engine")
if not isinstance(_PACKAGE, Path):
    raise UserError(
        f"scapecast's package is not a folder on disk ({_PACKAGE}); its models and shaders must be real files: "
        "install the wheel with pip instead of importing it from a zip archive"
    )
_DATA = _PACKAGE / "_data"


def _folder(name: str) -> Path:
    """The wheel's package data folder `name`, else the checkout's; where neither exists, the wheel's (so that a
    missing file is reported where an installed engine looks for it)."""
    installed, checkout = _DATA / name, _ROOT / name
    return checkout if not installed.is_dir() and checkout.is_dir() else installed


MODELS_DIR = _folder("models")
SHADER_DIR = _folder("shaders")
CONFIGS_DIR = _folder("configs")
