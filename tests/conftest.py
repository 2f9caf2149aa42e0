"""Shared fixtures.

Test data lives in the repository (`tests/data/`, see its README and docs/testing.md), so every clone runs the
tests that read it. Only what is too large to copy (ICT-FaceKit's full OBJ archive) comes from `../shared`;
tests that need it skip cleanly when it is absent (a fresh clone, CI elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """`tests/data/`: MediaPipe's test photos and goldens, its face mesh, samples of ICT's OBJs (all in the repo)."""
    return TEST_DATA


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared`, or skip the test when this checkout has none beside it."""
    if not (SHARED_DIR / "DESIGN.md").is_file():
        pytest.skip("../shared is absent: this test needs the shared data set")
    return SHARED_DIR


@pytest.fixture(scope="session")
def face_model():
    """The shipped ICT face model (loaded once per session)."""
    from engine.face_model import FaceModel

    return FaceModel.load()


@pytest.fixture(scope="session")
def shipped_or_constructed(face_model):
    """The shipped landmark embedding, or one constructed from the model alone where none is shipped."""
    from engine.face_model import LandmarkEmbedding, ModelFileError
    from engine.solve.synthetic import constructed_embedding

    try:
        return LandmarkEmbedding.load()
    except ModelFileError:
        return constructed_embedding(face_model)
