"""The once-per-identity basis run: backends agree, gradients are right, and the shipped network's bases are
distinct per key expression and sit where the skin moves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import DetailConfig
from engine.detail.backends import OnnxRuntimeBackend, TorchBackend
from engine.detail.net import DEFAULT_WEIGHTS, DetailUNet, export_onnx, save_network
from engine.detail.precompute import detail_inputs, precompute_bases, uv_gradients
from engine.detail.uv_raster import face_rasterizer
from engine.detail.weights import KEY_EXPRESSION_NAMES, key_expression_weights
from engine.errors import UserError


@pytest.fixture(scope="module")
def random_net(tmp_path_factory):
    """A seeded, untrained network with its ONNX export (independent of the shipped weights)."""
    torch.manual_seed(7)
    net = DetailUNet(width=8)
    with torch.no_grad():
        net.head.weight.mul_(30.0)  # untrained outputs are ~1e-3 mm; make them span the tanh range
        net.head.bias.zero_()
    folder = tmp_path_factory.mktemp("net")
    save_network(net, folder / "net.pt")
    export_onnx(net, folder / "net.onnx")
    return folder / "net.pt"


def test_onnxruntime_matches_torch(random_net, face_model) -> None:
    rng = np.random.default_rng(0)
    w_id = rng.normal(size=face_model.n_identity).astype(np.float32)
    texture = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    runs = {}
    for backend in ("torch", "onnxruntime"):
        cfg = DetailConfig(backend=backend, resolution=64, weights=random_net)
        runs[backend] = precompute_bases(face_model, w_id, texture, cfg, progress=False)
        assert runs[backend].backend == backend and runs[backend].maps.shape == (20, 64, 64, 3)
    ref, ort = runs["torch"].maps[..., 0], runs["onnxruntime"].maps[..., 0]
    assert ref.std() > 1e-2  # a real signal, not zeros agreeing with zeros
    assert np.abs(ref - ort).max() <= 1e-3


def test_backends_run_batches_identically(random_net, face_model) -> None:
    """Chunked CPU execution gives the same result as one image at a time."""
    x, _ = detail_inputs(face_model, face_model.default_identity_weights(), None, 32)
    torch_backend = TorchBackend(random_net)
    all_at_once = torch_backend.run(x)
    one_by_one = np.concatenate([torch_backend.run(x[k : k + 1]) for k in range(len(x))])
    np.testing.assert_allclose(all_at_once, one_by_one, atol=1e-5)
    ort = OnnxRuntimeBackend(random_net.with_suffix(".onnx"))
    assert np.abs(ort.run(x[:3]) - all_at_once[:3]).max() <= 1e-3


def test_uv_gradients_central_differences() -> None:
    n = 64
    ys, xs = np.mgrid[0:n, 0:n]
    u, v = (xs + 0.5) / n, (ys + 0.5) / n
    f = np.sin(2 * np.pi * u) * v  # mm
    g = uv_gradients(f[None])[0]
    inner = np.s_[2:-2, 2:-2]
    np.testing.assert_allclose(g[..., 0][inner], (2 * np.pi * np.cos(2 * np.pi * u) * v)[inner], atol=0.02)
    np.testing.assert_allclose(g[..., 1][inner], np.sin(2 * np.pi * u)[inner], atol=1e-6)


def test_inputs_are_checked(face_model) -> None:
    with pytest.raises(UserError, match="multiple of 16"):
        precompute_bases(face_model, face_model.default_identity_weights(), None, DetailConfig(resolution=100))
    with pytest.raises(UserError, match="uint8"):
        detail_inputs(face_model, face_model.default_identity_weights(), np.zeros((8, 8, 3), np.float32), 32)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="shipped network weights models/detail_net.pt absent")
def test_shipped_bases_are_distinct_and_local(face_model) -> None:
    """One synthetic-free identity (mean shape, plain skin): the 20 bases differ from each other and their
    dynamic part concentrates where the key expression moves the skin."""
    n = 256
    cfg = DetailConfig(backend="onnxruntime", resolution=n)
    bases = precompute_bases(face_model, face_model.default_identity_weights(), None, cfg, progress=False)
    raster = face_rasterizer(face_model, n)
    mask = raster.covered
    dyn = bases.maps[1:, ..., 0] - bases.maps[0, ..., 0]
    flat = dyn[:, mask]
    corr = np.corrcoef(flat)
    pairs = corr[np.triu_indices(19, 1)]
    assert np.median(pairs) < 0.6, np.median(pairs)
    offsets = np.einsum("ij,jvc->ivc", key_expression_weights()[1:], face_model.expression_basis)
    motion = np.linalg.norm(raster.rasterize(offsets), axis=-1)  # (19, N, N) cm
    for i in range(19):
        m = motion[i][mask]
        moved, still = m >= np.quantile(m, 0.8), m <= 0.05 * m.max()
        energy = np.abs(flat[i])
        assert energy[moved].mean() > 2.0 * energy[still].mean(), KEY_EXPRESSION_NAMES[i + 1]


def test_border_fade(face_model) -> None:
    from engine.detail.precompute import border_fade

    covered = face_rasterizer(face_model, 128).covered
    fade = border_fade(covered)
    assert np.all(fade[~covered] == 0) and fade.max() == 1.0
    from scipy import ndimage

    deep = ndimage.distance_transform_edt(covered) > 4
    assert np.all(fade[deep] == 1.0) and 0 < fade[covered & ~deep].min() < 1


def test_bench_reports_every_cpu_backend(face_model) -> None:
    from engine.detail.bench import bench_precompute

    result = bench_precompute(64, face_model)
    assert result["backend"] in ("onnxruntime", "torch", "tensorrt")
    for name in ("onnxruntime", "torch"):
        assert result[f"{name}_s"] > 0 and result[f"{name}_device"] in ("cpu", "cuda")
    assert result["seconds"] == result[f"{result['backend']}_s"]


def test_corrupt_bases_are_rebuilt_with_the_callers_detail_config(tmp_path, random_net, face_model) -> None:
    """A truncated bases.npz is refused with its name; `load_identity` recomputes it from the bundle's w_id and
    texture with the caller's detail settings (backend, resolution, network) and saves it; with
    `identity.rebuild: false` it refuses instead, naming the switch."""
    from engine.bundles import load_identity
    from engine.config import IdentityConfig
    from engine.errors import UserError
    from engine.identity import BundleError, Identity, load_bundle, save_bundle

    cfg = DetailConfig(backend="onnxruntime", resolution=64, weights=random_net)
    rng = np.random.default_rng(4)
    w_id = rng.normal(0, 0.5, face_model.n_identity).astype(np.float32)
    texture = rng.integers(60, 220, (64, 64, 3), dtype=np.uint8)
    bases = precompute_bases(face_model, w_id, texture, cfg, progress=False)
    ident = Identity("bo", face_model.model_id, w_id, np.zeros(53, np.float32), texture, bases, "test",
                     face_model.model_hash)  # fmt: skip
    out = save_bundle(ident, tmp_path / "bo")
    data = (out / "bases.npz").read_bytes()
    (out / "bases.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="bases.npz"):
        load_bundle(out, face_model)
    with pytest.raises(UserError, match=r"identity.rebuild: true"):
        load_identity(IdentityConfig(name="bo", cache_dir=tmp_path, rebuild=False), face_model, cfg)
    got = load_identity(IdentityConfig(name="bo", cache_dir=tmp_path), face_model, cfg)
    assert got.bases.maps.shape[1] == 64  # the caller's resolution (the default config would give 512)
    np.testing.assert_allclose(got.bases.maps, bases.maps, atol=1e-5)
    again = load_bundle(out, face_model)  # the rebuilt bundle is valid on disk
    np.testing.assert_allclose(again.bases.maps, bases.maps, atol=2e-2)
    assert again.texture.tobytes() == texture.tobytes()


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="shipped network weights models/detail_net.pt absent")
def test_assembly_on_the_device_matches_the_numpy_path(face_model):
    """The GPU path (torch rasterizes, assembles, fades and differentiates where the network runs) against the
    numpy reference path, run here with torch on the CPU: the same bases to float32 precision."""
    config = DetailConfig(backend="torch", resolution=64)
    backend = TorchBackend(DEFAULT_WEIGHTS, "cpu")
    assert not backend.assembles_on_device  # on the CPU the chunked numpy path stays the default
    rng = np.random.default_rng(4)
    w_id = rng.normal(0, 1, face_model.n_identity).astype(np.float32)
    texture = rng.integers(60, 220, (128, 128, 3), dtype=np.uint8)
    args = (face_model, w_id, texture, config)
    host = precompute_bases(*args, progress=False, backend=backend, assemble_on_device=False)
    device = precompute_bases(*args, progress=False, backend=backend, assemble_on_device=True)
    assert np.abs(host.maps[..., 0]).max() > 1e-3, "a real network output, not zeros"
    scale = np.abs(host.maps).reshape(-1, 3).max(axis=0)
    np.testing.assert_allclose(device.maps, host.maps, rtol=0, atol=1e-5 * scale.max())
