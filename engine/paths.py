"""Where the engine's own files are: trained models, shaders and the default configuration.

In a source checkout they are the repository's `models/`, `shaders/` and `configs/` folders; an installed
wheel carries them as package data (see pyproject.toml). Everything else imports these three paths.
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]

MODELS_DIR = _ROOT / "models"
SHADER_DIR = _ROOT / "shaders"
CONFIGS_DIR = _ROOT / "configs"
