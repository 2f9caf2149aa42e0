"""FaceScape bilinear loader on a small synthetic file written in FaceScape's own format."""

from __future__ import annotations

import numpy as np
import pytest

from engine.face_model import ModelFileError
from engine.facescape_model import load_facescape_model
from engine.names import FACESCAPE_EXPRESSIONS, ICT_EXPRESSIONS


def _write_model(path, rng, n_vertices=12, n_id=4, quads=True):
    core = rng.normal(size=(3 * n_vertices, 52, n_id)).astype(np.float32)
    if quads:
        fv = np.array([[1, 2, 3, 4], [3, 4, 5, 6], [7, 8, 9, 10], [9, 10, 11, 12]])
    else:
        fv = np.array([[1, 2, 3], [3, 4, 5], [7, 8, 9], [10, 11, 12]])
    ft = fv.copy()
    ft[1, 0] = 13  # a seam: vertex 3, shared by faces 0 and 1, gets a second uv on face 1
    texcoords = rng.uniform(size=(13, 2)).astype(np.float32)
    np.savez(
        path,
        shape_bm_core=core,
        fv_indices=fv,
        ft_indices=ft,
        texcoords=texcoords,
        lm_list_v16=np.arange(5),
        id_mean=np.full(n_id, 0.25, np.float32),
        id_var=np.ones(n_id, np.float32),
    )
    return core


@pytest.mark.parametrize("quads", [True, False])
def test_mesh_is_residual_bilinear_form(tmp_path, quads) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "facescape_bm_v1.6_847_50_52_id_front.npz"
    core = _write_model(path, rng, quads=quads)
    model = load_facescape_model(path)
    w_id = rng.normal(size=4).astype(np.float32)
    alpha_fs = rng.uniform(size=51)
    # Direct formula on the raw core: (core_res · w_id) · [1, α].
    res = core.copy()
    res[:, 1:, :] -= core[:, :1, :]
    expected = (res @ w_id) @ np.concatenate([[1.0], alpha_fs])
    # Drive the ICT-slot layout: merged channels get the same value on both sides.
    alpha_ict = np.zeros(53)
    for k, name in enumerate(FACESCAPE_EXPRESSIONS):
        from engine.names import facescape_to_arkit_name, ict_to_arkit_name

        for j, ict in enumerate(ICT_EXPRESSIONS):
            if ict_to_arkit_name(ict) == facescape_to_arkit_name(name):
                alpha_ict[j] = alpha_fs[k]
    got = model.evaluate(w_id, alpha_ict)
    assert np.abs(got.reshape(-1) - expected).max() < 1e-3
    topo = model.topology
    assert np.array_equal(topo.render_to_model[topo.render_triangles], topo.triangles)
    assert len(topo.render_to_model) == len(np.unique(topo.triangles)) + 1  # one seam duplicate


def test_default_identity_is_id_mean(tmp_path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "fs.npz"
    core = _write_model(path, rng)
    model = load_facescape_model(path)
    expected = (core[:, 0, :] @ np.full(4, 0.25, np.float32)).reshape(-1, 3)
    assert np.abs(model.neutral - expected).max() < 1e-4
    assert np.abs(model.personalize().neutral - expected).max() < 1e-4


def test_malformed_files_name_the_problem(tmp_path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "fs.npz"
    np.savez(path, shape_bm_core=np.zeros((30, 52, 2)), fv_indices=np.ones((1, 3), int))
    with pytest.raises(ModelFileError, match="ft_indices"):
        load_facescape_model(path)
    np.savez(
        path,
        shape_bm_core=np.zeros((30, 40, 2)),
        fv_indices=np.ones((1, 3), int),
        ft_indices=np.ones((1, 3), int),
        texcoords=np.zeros((1, 2)),
    )
    with pytest.raises(ModelFileError, match="shape_bm_core"):
        load_facescape_model(path)
    _write_model(path, rng)
    data = dict(np.load(path))
    data["fv_indices"] = data["fv_indices"] + 100
    np.savez(path, **data)
    with pytest.raises(ModelFileError, match="inconsistent"):
        load_facescape_model(path)
