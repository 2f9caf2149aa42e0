"""Synthetic detail generator (strain → grooves), the FaceScape TU reader, and the training loop, on small data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.detail.dataset import FACESCAPE_DISPLACEMENT_MM, TrainingSet, facescape_set, read_obj
from engine.detail.synth import DetailSynth, SkinParams
from engine.detail.uv_raster import FACE_MATERIAL
from engine.detail.weights import KEY_EXPRESSION_NAMES
from engine.errors import UserError
from engine.face_model import FaceModel, FaceTopology

REPO = Path(__file__).resolve().parents[1]


def _grid(n: int, size_cm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A flat n×n vertex grid in the z = 0 plane: vertices (cm), UVs, triangles."""
    ys, xs = np.mgrid[0:n, 0:n] / (n - 1)
    uv = np.stack([xs.ravel(), ys.ravel()], axis=1)
    verts = np.concatenate([uv * size_cm, np.zeros((n * n, 1))], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return verts.astype(np.float32), uv.astype(np.float32), tris.astype(np.int32)


def _flat_model(squeeze_x: float) -> FaceModel:
    """A 20 cm square patch whose every blendshape shortens it along x by `squeeze_x` per unit weight."""
    verts, uv, tris = _grid(24, 20.0)
    topo = FaceTopology(
        triangles=tris, render_to_model=np.arange(len(verts), dtype=np.int32), render_uv=uv, render_triangles=tris,
        triangle_material=np.zeros(len(tris), np.uint8), material_names=(FACE_MATERIAL,),
        vertex_region=np.zeros(len(verts), np.uint8), region_names=("face",),
    )  # fmt: skip
    delta = np.zeros((53, len(verts), 3), np.float32)
    delta[:, :, 0] = -squeeze_x * (verts[:, 0] - 10.0)
    return FaceModel("flat", "0" * 64, verts, np.zeros((2, len(verts), 3), np.float32), delta,
                     tuple(f"e{k}" for k in range(53)), topo, np.arange(4))  # fmt: skip


def test_strain_of_a_known_deformation() -> None:
    """Shortening a flat patch by 20 % along x reads as compression 0.2 along u, none along v."""
    model = _flat_model(0.2)
    synth = DetailSynth(model, 64)
    deformed = model.neutral + model.expression_basis[0]
    comp, tensor = synth.compression(model.neutral, deformed[None])
    np.testing.assert_allclose(comp[0], 0.2, atol=1e-4)
    np.testing.assert_allclose(tensor[0], np.broadcast_to([0.2, 0.0, 0.0], tensor[0].shape), atol=1e-4)
    stretched = model.neutral - model.expression_basis[0]  # lengthening is not compression
    assert synth.compression(model.neutral, stretched[None])[0].max() < 1e-4


def test_grooves_run_across_the_compression() -> None:
    model = _flat_model(0.2)
    synth = DetailSynth(model, 128)
    params = SkinParams(0.5, 4.0, 0.3, 2.0, 0.2, 0.05, 0.5, 0.05, 0)
    sample = synth.generate(np.zeros(2, np.float32), params, np.random.default_rng(0))
    dyn = sample.bases[1] - sample.bases[0]
    inner = dyn[16:-16, 16:-16]
    along_u = np.abs(np.diff(inner, axis=1)).mean()
    along_v = np.abs(np.diff(inner, axis=0)).mean()
    assert along_u > 3 * along_v  # ridges are lines of constant u: the profile changes along u
    assert -params.depth_mm - 1e-3 <= inner.min() and inner.max() <= params.bulge_mm + 1e-3
    spectrum = np.abs(np.fft.rfft(inner - inner.mean(axis=1, keepdims=True), axis=1)).mean(axis=0)
    mm_per_texel = 200.0 / 128
    # the grooves keep the identity's wavelength, measured in mm on the rest surface
    peak_wavelength = inner.shape[1] / (1 + np.argmax(spectrum[1:])) * mm_per_texel
    assert abs(peak_wavelength - params.wavelength_mm) < 0.25 * params.wavelength_mm


def test_ict_samples(face_model) -> None:
    synth = DetailSynth(face_model, 128)
    a = synth.sample(np.random.default_rng(3))
    b = synth.sample(np.random.default_rng(3))
    np.testing.assert_array_equal(a.bases, b.bases)  # seeded
    assert a.texture.shape == (128, 128, 3) and a.deform.shape == (20, 128, 128, 3) and a.bases.shape == (20, 128, 128)
    assert not a.deform[0].any() and np.all(a.bases[:, ~a.mask] == 0)
    motion = np.linalg.norm(a.deform[1:], axis=-1)
    dyn = np.abs(a.bases[1:] - a.bases[0])
    for i in range(19):
        moved = motion[i] >= np.quantile(motion[i][a.mask], 0.8)
        still = a.mask & (motion[i] <= np.quantile(motion[i][a.mask], 0.3))
        assert dyn[i][moved].mean() > 3 * dyn[i][still].mean() + 1e-6, KEY_EXPRESSION_NAMES[i + 1]


def _write_obj(path: Path, verts_mm: np.ndarray, uv: np.ndarray, n: int) -> None:
    idx = np.arange(n * n).reshape(n, n) + 1
    lines = [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in verts_mm] + [f"vt {u:.5f} {v:.5f}" for u, v in uv]
    for y in range(n - 1):
        for x in range(n - 1):
            q = [idx[y, x], idx[y, x + 1], idx[y + 1, x + 1], idx[y + 1, x]]
            lines.append("f " + " ".join(f"{k}/{k}" for k in q))  # quads, as TU OBJs have
    path.write_text("\n".join(lines) + "\n")


def _facescape_folder(root: Path, subjects: int = 2, n: int = 6, size: int = 32) -> None:
    verts, uv, _ = _grid(n, 10.0)
    for s in range(subjects):
        (root / f"{s + 1}" / "models_reg").mkdir(parents=True)
        (root / f"{s + 1}" / "dpmap").mkdir()
        for k, name in enumerate(KEY_EXPRESSION_NAMES):
            stem = f"{k + 1}_{name}"
            moved = verts * 10.0 + np.array([0.0, 0.0, 2.0 * k])  # mm; expression k lifts the patch 2k mm
            _write_obj(root / f"{s + 1}" / "models_reg" / f"{stem}.obj", moved, uv, n)
            Image.fromarray(np.full((size, size, 3), 40 * s + 10, np.uint8)).save(
                root / f"{s + 1}" / "models_reg" / f"{stem}.jpg"
            )
            raw = np.full((size, size), 32768 + 1000 * k, np.uint16)
            Image.fromarray(raw).save(root / f"{s + 1}" / "dpmap" / f"{stem}.png")


def test_facescape_reader(tmp_path) -> None:
    _facescape_folder(tmp_path)
    data = facescape_set(tmp_path, 16, progress=False)
    assert len(data) == 2 and data.bases.shape == (2, 20, 16, 16) and data.mask.all()
    for k in (0, 5, 19):
        np.testing.assert_allclose(data.bases[0, k], 1000 * k / 32768 * FACESCAPE_DISPLACEMENT_MM, atol=2e-3)
    np.testing.assert_allclose(data.deform[1, 7][..., 2], 1.4, atol=1e-2)  # 14 mm = 1.4 cm, along z
    assert np.all(data.texture[1] == 50)
    verts, topo = read_obj(tmp_path / "1" / "models_reg" / "1_neutral.obj")
    assert len(verts) == 36 and len(topo.triangles) == 50


def test_facescape_reader_names_bad_input(tmp_path) -> None:
    with pytest.raises(UserError, match="no FaceScape TU subjects"):
        facescape_set(tmp_path, 16, progress=False)
    _facescape_folder(tmp_path, subjects=1)
    (tmp_path / "1" / "dpmap" / "7_jaw_forward.png").unlink()
    with pytest.raises(UserError, match="dpmap/7_jaw_forward.png"):
        facescape_set(tmp_path, 16, progress=False)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "1" / "dpmap" / "7_jaw_forward.png")
    with pytest.raises(UserError, match="not 16-bit"):
        facescape_set(tmp_path, 16, progress=False)


@pytest.fixture
def one_torch_thread():
    """Tiny convolutions on a shared 2-core machine: a second OpenMP thread spins against other jobs (45 s vs
    5 s measured under load 8), so this test runs single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_loop_runs_on_facescape_format(tmp_path, one_torch_thread) -> None:
    spec = importlib.util.spec_from_file_location("train_detail", REPO / "tools" / "train_detail.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _facescape_folder(tmp_path / "fs", subjects=2)
    data = facescape_set(tmp_path / "fs", 32, progress=False)
    one = TrainingSet(*(getattr(data, f)[:1] for f in ("texture", "position", "deform", "bases", "mask")))
    net, history = tool.train(one, one, minutes=1.0, width=4, crop=32, batch=4, max_steps=60, progress=False)
    assert history and all(np.isfinite(h["val"]) for h in history)
    assert history[-1]["val"] < history[0]["val"]  # it learns the per-expression constant offsets
    report = tool.evaluate(net, one, progress=False)
    assert set(report["l1_mm"]) == set(KEY_EXPRESSION_NAMES)
