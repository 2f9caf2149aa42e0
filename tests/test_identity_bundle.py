"""Identity bundle IO: round trip, orientation, corruption and staleness detection, rebuild, atomic replace."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.identity import (
    DEFAULT_IDENTITY_DIR,
    BundleError,
    DetailBases,
    Identity,
    default_bundle_dir,
    load_bundle,
    save_bundle,
)


def _identity(face_model, seed: int = 0, res: int = 16) -> Identity:
    rng = np.random.default_rng(seed)
    return Identity(
        name="alice",
        model_id=face_model.model_id,
        identity_weights=rng.normal(size=face_model.n_identity).astype(np.float32),
        neutral_offset=rng.uniform(0, 0.2, size=len(face_model.expression_names)).astype(np.float32),
        texture=rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8),
        bases=DetailBases(rng.normal(0, 0.3, size=(20, res, res, 3)).astype(np.float32), backend="torch"),
        source="test",
        model_hash=face_model.model_hash,
    )


def _rewrite_meta(directory: Path, **changes) -> None:
    meta = json.loads((directory / "identity.json").read_text())
    meta.update(changes)
    (directory / "identity.json").write_text(json.dumps(meta))


def test_round_trip_and_orientation(tmp_path, face_model) -> None:
    ident = _identity(face_model)
    out = save_bundle(ident, tmp_path / "alice")
    got = load_bundle(out, face_model)
    np.testing.assert_array_equal(got.identity_weights, ident.identity_weights)
    np.testing.assert_array_equal(got.neutral_offset, ident.neutral_offset)
    np.testing.assert_array_equal(got.texture, ident.texture)
    np.testing.assert_allclose(got.bases.maps, ident.bases.maps, atol=1e-3)  # float16 on disk
    assert got.bases.backend == "torch" and got.bases.resolution == 16 and got.source == "test"
    # The PNG is an upright picture: its top row is the in-memory last row (v = 1).
    png = np.asarray(Image.open(out / "texture.png"))
    np.testing.assert_array_equal(png[0], ident.texture[-1])
    meta = json.loads((out / "identity.json").read_text())
    assert set(meta["files"]) == {"texture.png", "bases.npz"} and meta["schema_version"] == 1
    assert meta["created"].endswith("+00:00")


def test_resave_replaces_atomically(tmp_path, face_model) -> None:
    save_bundle(_identity(face_model, 0), tmp_path / "alice")
    second = replace(_identity(face_model, 1), texture=None)
    save_bundle(second, tmp_path / "alice")
    got = load_bundle(tmp_path / "alice", face_model)
    np.testing.assert_array_equal(got.identity_weights, second.identity_weights)
    assert got.texture is None and not (tmp_path / "alice" / "texture.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice"]  # no temp or old directories left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "alice").stat().st_mode & 0o777 == 0o777 & ~umask


def test_truncated_bases_are_detected(tmp_path, face_model) -> None:
    out = save_bundle(_identity(face_model), tmp_path / "b")
    data = (out / "bases.npz").read_bytes()
    (out / "bases.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="bases.npz fails its checksum"):
        load_bundle(out, face_model)
    # even with a matching checksum a truncated archive is refused by the reader, not with a traceback
    from engine.face_model import file_sha256

    meta = json.loads((out / "identity.json").read_text())
    _rewrite_meta(out, files={**meta["files"], "bases.npz": file_sha256(out / "bases.npz")})
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(out, face_model)
    # the rest of the bundle is still usable to rebuild the bases from
    partial = load_bundle(out, face_model, with_bases=False)
    assert partial.bases is None and partial.texture is not None


def test_edited_texture_fails_checksum(tmp_path, face_model) -> None:
    out = save_bundle(_identity(face_model), tmp_path / "c")
    img = np.asarray(Image.open(out / "texture.png")).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(out / "texture.png")
    with pytest.raises(BundleError, match="texture.png fails its checksum"):
        load_bundle(out, face_model)


def test_stale_model_and_schema(tmp_path, face_model) -> None:
    out = save_bundle(_identity(face_model), tmp_path / "d")
    _rewrite_meta(out, model_hash="0" * 64)
    with pytest.raises(BundleError, match="stale"):
        load_bundle(out, face_model)
    _rewrite_meta(out, model_hash=face_model.model_hash, schema_version=0)
    with pytest.raises(BundleError, match="schema version 0"):
        load_bundle(out, face_model)
    (out / "identity.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(out, face_model)
    with pytest.raises(BundleError, match="enroll"):
        load_bundle(tmp_path / "nobody", face_model)


def test_wrong_shapes_are_refused(tmp_path, face_model) -> None:
    out = save_bundle(_identity(face_model), tmp_path / "e")
    _rewrite_meta(out, identity_weights=[0.0, 1.0])
    with pytest.raises(BundleError, match="w_id"):
        load_bundle(out, face_model)
    bad = replace(_identity(face_model), bases=DetailBases(np.zeros((3, 8, 8, 3), np.float32), "torch"))
    with pytest.raises(BundleError, match="bases must be"):
        save_bundle(bad, tmp_path / "f")


def test_bundle_dirs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_bundle_dir("bob") == tmp_path / "scapecast" / "identities" / "bob"
    assert default_bundle_dir("bob", tmp_path / "x") == tmp_path / "x" / "bob"
    assert default_bundle_dir("default") == DEFAULT_IDENTITY_DIR
    with pytest.raises(BundleError, match="plain name"):
        default_bundle_dir("../etc")


def test_nan_identity_and_a_decompression_bomb_texture_are_refused(tmp_path, face_model) -> None:
    from engine.face_model import file_sha256

    out = save_bundle(_identity(face_model), tmp_path / "h")
    meta = json.loads((out / "identity.json").read_text())
    _rewrite_meta(out, identity_weights=[float("nan")] * face_model.n_identity)
    with pytest.raises(BundleError, match="NaN"):
        load_bundle(out, face_model)
    _rewrite_meta(out, identity_weights=meta["identity_weights"])
    # Small on disk, hundreds of megapixels decoded: refused by our limit, or beyond it by Pillow's own.
    for side, message in ((10_000, "10000×10000 pixels: refused"), (20_000, "decompression bomb")):
        Image.new("1", (side, side)).save(out / "texture.png")
        assert (out / "texture.png").stat().st_size < 200_000
        _rewrite_meta(out, files={**meta["files"], "texture.png": file_sha256(out / "texture.png")})
        with pytest.raises(BundleError, match=message):
            load_bundle(out, face_model)


def test_a_bases_zip_bomb_is_refused_before_it_is_decompressed(tmp_path, face_model) -> None:
    """A small bases.npz whose maps claim 20 × 4096² × 3 values (it expanded to 1.4 GiB on load) is refused
    from its header; its checksum is made to match, as a hostile asset server could."""
    import tracemalloc
    import zipfile

    from engine.face_model import file_sha256

    out = save_bundle(_identity(face_model), tmp_path / "bomb")
    meta = json.loads((out / "identity.json").read_text())
    header = {"descr": "<f2", "fortran_order": False, "shape": (20, 4096, 4096, 3)}
    with zipfile.ZipFile(out / "bases.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("maps.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            zeros = bytes(1 << 24)
            for _ in range(4):  # 64 MiB of the claimed 2 GiB is enough to be a bomb on disk
                member.write(zeros)
        archive.writestr("backend.npy", b"")
    assert (out / "bases.npz").stat().st_size < 1_000_000
    _rewrite_meta(out, files={**meta["files"], "bases.npz": file_sha256(out / "bases.npz")})
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=r"claim \(20, 4096, 4096, 3\).*refused"):
            load_bundle(out, face_model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 1024 * 1024  # nothing of the claimed size was allocated
