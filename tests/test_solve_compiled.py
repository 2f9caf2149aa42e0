"""The numba-compiled per-frame fit against its numpy reference (engine/solve/compiled.py, design §9).

Every configuration branch of `FrameFitter.fit` (perspective or weak perspective, warm start and previous
pose or none, irises or none, gaze anchored or pinned, learned prior or none, eyes off, more pose iterations)
runs both ways on the same synthetic frames; the box QP is compared on random problems, including pinned
channels, the fallback to the primal active set, and a matrix that is not positive definite.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.config import SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.solve import compiled
from engine.solve.bounded_lsq import solve_box_qp as solve_box_qp_numpy
from engine.solve.bounded_lsq import solve_box_qp_reference
from engine.solve.eyes import eyeball_centers
from engine.solve.face_solver import FaceSolver
from engine.solve.kernels import COMPILED, select_kernels
from engine.solve.pose import euler_to_rotation
from engine.solve.prior import displaced_features
from engine.solve.solver import FrameFitter, shipped_prior, shipped_response, valid_observation
from engine.solve.synthetic import random_box_qp, random_expression, synthetic_landmarks

pytestmark = pytest.mark.skipif(not compiled.AVAILABLE, reason="numba is not installed: the numpy path serves")


@pytest.fixture(scope="module")
def embedding(shipped_or_constructed: LandmarkEmbedding) -> LandmarkEmbedding:
    return shipped_or_constructed


def _frames(fitter: FrameFitter, model: FaceModel, count: int, seed: int) -> list:
    """`count` (observed, has_iris, image_size) frames of a smooth random performance (noise 0.5 mm)."""
    rng = np.random.default_rng(seed)
    centers = eyeball_centers(model)
    start, end = random_expression(rng), random_expression(rng)
    angles = rng.uniform(-25, 25, size=(2, 3))
    frames = []
    for t in np.linspace(0.0, 1.0, count):
        weights = (1 - t) * start + t * end
        rotation = euler_to_rotation(*((1 - t) * angles[0] + t * angles[1]))
        landmarks = synthetic_landmarks(fitter.face, centers, weights, rotation, noise_cm=0.05, rng=rng)
        observed, has_iris = valid_observation(landmarks)
        frames.append((observed, has_iris, landmarks.image_size))
    return frames


def _compare_sequence(fitter: FrameFitter, frames: list, *, camera: bool = True, iris: bool = True) -> float:
    """Fit the frames as a track (warm start and previous pose from the compiled fit) both ways; returns the
    largest weight difference and checks pose, model-frame landmarks and residual along the way."""
    assert fitter.compiled_tables is not None
    previous = None
    worst = 0.0
    for observed, has_iris, size in frames:
        warm = None if previous is None else previous.weights
        image_size = size if camera else None
        fast = fitter.fit(observed, warm, has_iris and iris, image_size, previous)
        slow = fitter.fit_numpy(observed, warm, has_iris and iris, image_size, previous)
        worst = max(worst, float(np.abs(fast.weights - slow.weights).max()))
        np.testing.assert_allclose(fast.rotation, slow.rotation, atol=1e-8)
        np.testing.assert_allclose(fast.translation_px, slow.translation_px, atol=1e-6)
        assert fast.scale_px_per_cm == pytest.approx(slow.scale_px_per_cm, rel=1e-9)
        np.testing.assert_allclose(fast.observed_model, slow.observed_model, atol=1e-7)
        assert fast.residual_cm == pytest.approx(slow.residual_cm, rel=1e-6, abs=1e-9)
        assert np.all(fast.weights >= 0.0) and np.all(fast.weights <= 1.0)
        previous = fast
    return worst


@pytest.mark.parametrize(
    ("overrides", "camera", "iris"),
    [
        ({}, True, True),  # the engine's configuration: response, learned prior, eyes, perspective
        ({}, False, True),  # weak perspective (no image size)
        ({}, True, False),  # no irises: gaze keeps the least-squares channels
        ({"gaze_anchor": 0.0}, True, True),  # gaze pinned to the iris read-out
        ({"gaze_yoke": 0.4, "gaze_straight_pitch_deg": -3.0}, True, True),  # part-yoked, another straight ahead
        ({"gaze_vergence_deadzone_deg": 0.0}, True, True),  # every convergence kept through the yoke
        ({"learned_prior": False, "landmark_response": False}, True, True),
        ({"eyes_enabled": False, "use_depth": False}, True, True),
        ({"pose_iterations": 3, "symmetry_prior": 0.02, "channel_regularization": {"jawOpen": 0.2}}, True, True),
        ({"pose_iterations": 1, "max_iterations": 9}, True, True),
    ],
)
def test_compiled_fit_matches_numpy_reference(
    face_model: FaceModel, embedding: LandmarkEmbedding, overrides: dict, camera: bool, iris: bool
) -> None:
    config = SolveConfig(**overrides)
    response = shipped_response(config)
    fitter = FrameFitter(face_model, embedding, None, config, response, shipped_prior(config, response))
    frames = _frames(fitter, face_model, 12, seed=len(str(overrides)) + 3 * camera + iris)
    assert _compare_sequence(fitter, frames, camera=camera, iris=iris) < 1e-6


def test_compiled_fit_matches_on_other_identities(face_model: FaceModel, embedding: LandmarkEmbedding) -> None:
    rng = np.random.default_rng(5)
    for _ in range(3):
        identity = np.zeros(face_model.n_identity, np.float32)
        identity[:60] = rng.normal(size=60)
        fitter = FrameFitter(face_model, embedding, identity, SolveConfig())
        assert _compare_sequence(fitter, _frames(fitter, face_model, 6, seed=int(rng.integers(1000)))) < 1e-6


@pytest.mark.parametrize("trust", [1.0, 0.5])
def test_prior_runs_in_the_compiled_fit(face_model: FaceModel, embedding: LandmarkEmbedding, trust: float) -> None:
    """The learned prior must pull the compiled fit exactly as it pulls the numpy one. Synthetic frames lie
    outside the prior's training renders (trust 0 there), so its out-of-distribution limit is set to give
    full trust (limit 0: no fade) or half trust (2 − r/limit = 0.5) on the test frame."""
    config = SolveConfig()
    response = shipped_response(config)
    prior = shipped_prior(config, response)
    if prior is None:
        pytest.skip("no shipped solve prior in models/")
    without = FrameFitter(face_model, embedding, None, config, response, None)
    observed, has_iris, size = _frames(without, face_model, 1, seed=11)[0]
    centred = without.prior_features(observed, without._camera(size)) - prior.mean
    z = centred @ prior.basis
    outside = float(np.sqrt(centred @ centred - z @ z))
    limit = 0.0 if trust == 1.0 else outside / (2.0 - trust)
    with_prior = FrameFitter(face_model, embedding, None, config, response, replace(prior, residual_limit=limit))
    assert float(with_prior.prior.predict_with_trust(centred + prior.mean)[1]) == pytest.approx(trust)
    fast = with_prior.fit(observed, None, has_iris, size).weights - without.fit(observed, None, has_iris, size).weights
    slow = (
        with_prior.fit_numpy(observed, None, has_iris, size).weights
        - without.fit_numpy(observed, None, has_iris, size).weights
    )
    assert np.abs(slow).max() > 0.01  # the prior matters on this frame
    np.testing.assert_allclose(fast, slow, atol=1e-6)


def test_lid_asymmetry_runs_in_the_compiled_fit(face_model: FaceModel, embedding: LandmarkEmbedding) -> None:
    """A wink under a fully trusted prior: both paths move the blinks' difference to the lids' alike, and the
    move matters (the dead zone off, so any disagreement between prior and lids counts)."""
    config = SolveConfig(blink_lid_deadzone=0.0)
    response = shipped_response(config)
    prior = shipped_prior(config, response)
    if prior is None:
        pytest.skip("no shipped solve prior in models/")
    trusted = replace(prior, residual_limit=0.0)
    weights = np.zeros(len(ICT_EXPRESSIONS))
    weights[ICT_EXPRESSIONS.index("eyeBlink_L")] = 0.9
    rng = np.random.default_rng(4)
    landmarks = synthetic_landmarks(
        FrameFitter(face_model, embedding, None, config).face, eyeball_centers(face_model), weights,
        euler_to_rotation(10.0, -5.0, 0.0), noise_cm=0.02, rng=rng,
    )  # fmt: skip
    observed, has_iris = valid_observation(landmarks)
    fits = {}
    for share in (0.0, 1.0):
        fitter = FrameFitter(face_model, embedding, None, config.model_copy(update={"blink_lid_asymmetry": share}),
                             response, trusted)  # fmt: skip
        fast = fitter.fit(observed, None, has_iris, landmarks.image_size).weights
        fits[share] = fitter.fit_numpy(observed, None, has_iris, landmarks.image_size).weights
        np.testing.assert_allclose(fast, fits[share], atol=1e-6)
    blinks = [ICT_EXPRESSIONS.index("eyeBlink_L"), ICT_EXPRESSIONS.index("eyeBlink_R")]
    assert np.abs(fits[1.0][blinks] - fits[0.0][blinks]).max() > 0.01


def test_a_displaced_prior_reads_the_neutral_alike_in_both_fits(
    face_model: FaceModel, embedding: LandmarkEmbedding
) -> None:
    """The displaced features (mesh part minus the performer's neutral) are built inside the compiled prior as
    `displaced_features` builds them: same weights with a neutral and without one (zero displacement), and
    the neutral matters."""
    from engine.solve.prior import N_DISPLACED, N_FEATURES, LearnedPrior

    rng = np.random.default_rng(8)
    n_inputs = N_FEATURES + N_DISPLACED
    basis, _ = np.linalg.qr(rng.normal(size=(n_inputs, 12)))
    layers = ((rng.normal(0, 0.5, (12, 16)), rng.normal(0, 0.1, 16)), (rng.normal(0, 0.1, (16, 53)), np.full(53, 0.2)))
    prior = LearnedPrior(np.zeros(n_inputs), basis, np.full(12, 2.0), layers, 300.0, kind="mlp", reference="mean",
                         displaced=True)  # fmt: skip
    results = _fits_without_and_with_a_neutral(FrameFitter(face_model, embedding, None, SolveConfig(), None, prior),
                                               face_model, seed=13, shift_cm=0.05)  # fmt: skip
    assert np.abs(results[0] - results[2]).max() > 0.01


def test_the_span_kernel_sums_exactly_as_the_dense_one() -> None:
    """`_vector_matrix_spans` skips only zeros: bit for bit the dense kernel's sums, on a block-diagonal matrix
    with a zero row, an interior zero and a full row; `nonzero_spans` finds each row's first and past-last."""
    from engine.solve.prior import nonzero_spans

    rng = np.random.default_rng(10)
    matrix = np.zeros((6, 9), np.float32)
    matrix[0, :] = rng.normal(size=9)  # full
    matrix[1, 2:5] = rng.normal(size=3)
    matrix[1, 3] = 0.0  # an interior zero stays inside the span
    matrix[3, 6:9] = rng.normal(size=3)
    matrix[4, 4] = -0.0  # a signed zero is a zero
    matrix[5, 8] = rng.normal()
    spans = nonzero_spans(matrix)
    assert spans.tolist() == [[0, 9], [2, 5], [0, 0], [6, 9], [0, 0], [8, 9]]
    vector = rng.normal(size=6)
    vector[5] = 0.0
    bias = rng.normal(size=9)
    dense = compiled._vector_matrix(vector, matrix, bias.copy())
    np.testing.assert_array_equal(compiled._vector_matrix_spans(vector, matrix, spans, bias.copy()), dense)


def test_a_prior_of_several_members_runs_alike_in_both_fits(
    face_model: FaceModel, embedding: LandmarkEmbedding
) -> None:
    """A prior of merged members (block-diagonal hidden layers, whose zero spans the compiled fit skips) pulls
    the compiled fit exactly as the numpy one, and the pull matters."""
    from engine.solve.prior import N_FEATURES, LearnedPrior, merge_members

    rng = np.random.default_rng(9)
    basis, _ = np.linalg.qr(rng.normal(size=(N_FEATURES, 12)))

    def member() -> list[tuple[np.ndarray, np.ndarray]]:
        shapes = [(12, 16), (16, 16), (16, 53)]
        return [(rng.normal(0, 0.3, shape), rng.normal(0, 0.1, shape[1])) for shape in shapes]

    prior = LearnedPrior(np.zeros(N_FEATURES), basis, np.full(12, 2.0), merge_members([member() for _ in range(3)]),
                         300.0, kind="mlp", reference="mean")  # fmt: skip
    fitter = FrameFitter(face_model, embedding, None, SolveConfig(), None, prior)
    assert fitter.compiled_tables is not None
    spans = fitter.compiled_tables.prior.layer_row_spans
    assert (spans[:, 1] - spans[:, 0] < 48).any()  # the hidden layer's rows span their own member's 16 columns
    frames = _frames(fitter, face_model, 3, seed=21)
    assert _compare_sequence(fitter, frames) < 1e-6
    plain = FrameFitter(face_model, embedding, None, SolveConfig(learned_prior=False), None, None)
    observed, has_iris, size = frames[1]
    with_prior, without = (f.fit_numpy(observed, None, has_iris, size).weights for f in (fitter, plain))
    assert np.abs(with_prior - without).max() > 0.01


def _fits_without_and_with_a_neutral(
    fitter: FrameFitter, face_model: FaceModel, seed: int, shift_cm: float
) -> list[np.ndarray]:
    """Two frames fitted with no neutral, then with the first frame's mesh features shifted by `shift_cm` as
    the neutral: the compiled and numpy weights, checked equal; returns the numpy ones."""
    from engine.solve.prior import N_DISPLACED

    frames = _frames(fitter, face_model, 3, seed=seed)
    neutral = fitter.prior_features(frames[0][0], fitter._camera(frames[0][2]))[:N_DISPLACED] + shift_cm
    results = []
    for given in (None, neutral):
        for observed, has_iris, size in frames[1:]:
            fast = fitter.fit(observed, None, has_iris, size, None, given).weights
            slow = fitter.fit_numpy(observed, None, has_iris, size, None, given).weights
            np.testing.assert_allclose(fast, slow, atol=1e-6)
            results.append(slow)
    return results


@pytest.mark.parametrize("mixed", [False, True])
def test_a_displaced_head_reads_its_channels_alike_in_both_fits(
    face_model: FaceModel, embedding: LandmarkEmbedding, mixed: bool
) -> None:
    """A plain prior with a `DisplacedHead`: the compiled prior reads the displaced features as
    `displaced_features` builds them and replaces the head's channels (alone, or mixed with the plain reading):
    same weights with and without a neutral, and the neutral moves the head's channels."""
    from engine.solve.prior import N_DISPLACED, N_FEATURES, DisplacedHead, LearnedPrior

    rng = np.random.default_rng(9)
    basis, _ = np.linalg.qr(rng.normal(size=(N_FEATURES, 12)))
    layers = ((rng.normal(0, 0.5, (12, 16)), rng.normal(0, 0.1, 16)), (rng.normal(0, 0.1, (16, 53)), np.full(53, 0.2)))
    channels = np.array([ICT_EXPRESSIONS.index("browInnerUp_L"), ICT_EXPRESSIONS.index("jawOpen")])
    head_weights = rng.normal(0, 0.01, (N_FEATURES + N_DISPLACED, 2))
    head_weights[N_FEATURES:] = np.abs(head_weights[N_FEATURES:])  # the displacement leads
    mix = np.array([[0.6, 0.5, -0.02], [0.7, 0.3, 0.01]]) if mixed else None
    head = DisplacedHead(channels, head_weights, np.full(2, 0.5), mix)
    prior = LearnedPrior(np.zeros(N_FEATURES), basis, np.full(12, 2.0), layers, 300.0, kind="mlp",
                         reference="mean").with_head(head)  # fmt: skip
    fitter = FrameFitter(face_model, embedding, None, SolveConfig(), None, prior)
    results = _fits_without_and_with_a_neutral(fitter, face_model, seed=14, shift_cm=0.02)
    assert np.abs(results[0][channels] - results[2][channels]).max() > 0.01
    # On the way the compiled fit hands over the plain network's reading and the features it read, which the
    # head's neutral is scored with: `NeutralFeatures.observe`'s own numpy reading of the frame.
    observed, has_iris, size = _frames(fitter, face_model, 2, seed=15)[1]
    fit = fitter.fit(observed, None, has_iris, size)
    features = fitter.prior_features(observed, fitter._camera(size))
    assert fit.prior_reading is not None and fitter.fit_numpy(observed, None, has_iris, size).prior_reading is None
    network, mesh = fit.prior_reading
    np.testing.assert_allclose(mesh, features[:N_DISPLACED], atol=1e-12)
    np.testing.assert_allclose(network, prior.with_head(None).predict(features), atol=1e-5)
    assert np.abs(network[channels] - fit.weights[channels]).max() > 1e-3  # the reading before the head


@pytest.mark.parametrize("coupled", [False, True])
def test_compiled_box_qp_matches_numpy_and_bvls(coupled: bool) -> None:
    """Coupled problems push the primal-dual phase past its 8 iterations into the primal active set."""
    rng = np.random.default_rng(21 + coupled)
    worst_numpy = worst_bvls = 0.0
    for k in range(40):
        H, b = random_box_qp(rng, 53, coupled)
        lo, hi = np.zeros(53), np.ones(53)
        if k % 3 == 0:
            pin = rng.choice(53, size=8, replace=False)
            lo[pin] = hi[pin] = rng.uniform(0, 1, size=8)
        warm = rng.uniform(0, 1, size=53) if k % 2 else np.zeros(53)
        w, ok = compiled.solve_box_qp(H, b, lo, hi, warm, bool(k % 2), 30)
        assert ok
        assert np.all(w >= lo) and np.all(w <= hi)
        numpy_w = solve_box_qp_numpy(H, b, lo, hi, warm if k % 2 else None, 30).w
        worst_numpy = max(worst_numpy, float(np.abs(w - numpy_w).max()))
        worst_bvls = max(worst_bvls, float(np.abs(w - solve_box_qp_reference(H, b, lo, hi)).max()))
    assert worst_numpy < 1e-8
    assert worst_bvls < 1e-3


def test_compiled_box_qp_reports_an_indefinite_matrix() -> None:
    """The reference raises LinAlgError on a subspace matrix that is not positive definite; the compiled QP
    says so with ok False and `FrameFitter.fit` raises the same error (FaceSolver turns it into a lost frame)."""
    H = np.diag([1.0, -2.0, 3.0])
    b = np.array([0.5, 0.5, 0.5])
    lo, hi = np.zeros(3), np.ones(3)
    _, ok = compiled.solve_box_qp(H, b, lo, hi, np.full(3, 0.5), True, 30)
    assert not ok
    with pytest.raises(np.linalg.LinAlgError):
        solve_box_qp_numpy(H, b, lo, hi, np.full(3, 0.5), 30)


@pytest.mark.parametrize("use_compiled", [True, False])
def test_collapsed_landmarks_give_a_lost_state(
    face_model: FaceModel, embedding: LandmarkEmbedding, use_compiled: bool
) -> None:
    """All landmarks on one point but two (a collapsed detection that passes validation): the fit divides by
    zero (scale 0, eye width 0); no exception may escape either path, and the state is lost."""
    from engine.types import Landmarks, TrackingState

    neutral = np.zeros(len(ICT_EXPRESSIONS))
    identity = Identity("t", face_model.model_id, face_model.default_identity_weights(), neutral)
    solver = FaceSolver(face_model, embedding, identity, SolveConfig(compiled=use_compiled))
    assert (solver.fitter.compiled_tables is not None) == use_compiled
    pixels = np.tile([[320.0, 240.0, 0.0]], (478, 1))
    pixels[0, 0] += 1e-3
    pixels[5, 1] += 1e-3
    state = solver.solve(Landmarks(pixels / 640.0, pixels, (640, 480), 1.0, 0), 0, 0)
    assert state.tracking == TrackingState.LOST
    assert np.isfinite(state.weights).all() and state.confidence == 0.0


def test_disabled_or_unavailable_numba_uses_the_numpy_fit(
    face_model: FaceModel, embedding: LandmarkEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`select_kernels` is the one switch: off in the config or without numba, the fitter and everything a
    `FaceSolver` builds on it (checks, filter) run the numpy reference."""
    assert select_kernels(SolveConfig()) is COMPILED
    assert select_kernels(SolveConfig(compiled=False)) is None
    assert FrameFitter(face_model, embedding, None, SolveConfig(compiled=False)).kernels is None
    monkeypatch.setattr(compiled, "AVAILABLE", False)
    assert select_kernels(SolveConfig()) is None
    fitter = FrameFitter(face_model, embedding, None, SolveConfig())
    assert fitter.kernels is None and fitter.compiled_tables is None
    observed, has_iris, size = _frames(fitter, face_model, 1, seed=2)[0]
    expected = fitter.fit_numpy(observed, None, has_iris, size).weights
    np.testing.assert_array_equal(fitter.fit(observed, None, has_iris, size).weights, expected)
    identity = Identity("t", face_model.model_id, face_model.default_identity_weights(), np.zeros(53))
    solver = FaceSolver(face_model, embedding, identity, SolveConfig())
    assert solver.fitter.kernels is None and solver._filter._update is None


def test_one_specialization_serves_every_configuration(face_model: FaceModel, embedding: LandmarkEmbedding) -> None:
    """The tables' arrays are C-contiguous of fixed dtypes and their scalars plain Python numbers, so the
    compiled fit has one machine-code specialization whatever the identity, prior or settings (a second would
    compile for ~25 s in the middle of a run)."""
    import numba

    config = SolveConfig()
    response = shipped_response(config)
    identity = np.zeros(face_model.n_identity, np.float32)
    identity[:10] = 0.5
    fitters = [
        FrameFitter(face_model, embedding, None, config, response, shipped_prior(config, response)),
        FrameFitter(face_model, embedding, identity, config, response, shipped_prior(config, response, people=True)),
        FrameFitter(face_model, embedding, None, SolveConfig(learned_prior=False, eyes_enabled=False)),
        FrameFitter(face_model, embedding, None, SolveConfig(pose_iterations=3, prior_strength=0.0)),
    ]
    types = {str(numba.typeof(fitter.fit_tables())) for fitter in fitters}
    assert len(types) == 1, types
    (only,) = types
    assert "array(float64, 2d, C)" in only and ", A)" not in only  # C-contiguous throughout


def test_the_numpy_reference_reads_the_tables_the_kernels_read(
    face_model: FaceModel, embedding: LandmarkEmbedding
) -> None:
    """The compiled fit's tables are the numpy objects' own (not copies that could drift from them)."""
    fitter = FrameFitter(face_model, embedding, None, SolveConfig())
    tables = fitter.compiled_tables
    assert tables is not None
    assert tables.eyes is fitter.eyes.tables and tables.expression is fitter.expression.tables
    assert tables.expression.gram is fitter.expression.gram
    assert tables.expression.quadratic_prior is fitter.expression.quadratic_prior


def test_compiled_observation_checks_match_numpy(face_model: FaceModel, embedding: LandmarkEmbedding) -> None:
    """`valid_observation` with the compiled conversion and checks: same landmarks, same rejections."""
    from engine.types import Landmarks

    fitter = FrameFitter(face_model, embedding, None, SolveConfig())
    rng = np.random.default_rng(8)
    landmarks = synthetic_landmarks(fitter.face, eyeball_centers(face_model), random_expression(rng), np.eye(3))
    good = landmarks.pixels.copy()
    cases = {"good": good, "468 without irises": good[:468].copy()}
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = good.copy()
        bad[rng.integers(478), rng.integers(3)] = value
        cases[name] = bad
    flat = good.copy()
    flat[:, 0] = 123.0  # zero width
    cases["zero width"] = flat
    for name, pixels in cases.items():
        lm = Landmarks(pixels / 640.0, pixels, landmarks.image_size, 1.0, 0)
        fast, slow = valid_observation(lm, COMPILED), valid_observation(lm)
        if slow is None:
            assert fast is None, name
            continue
        assert fast is not None, name
        np.testing.assert_array_equal(fast[0], slow[0], err_msg=name)
        assert fast[1] == slow[1], name
    assert valid_observation(Landmarks(good / 640.0, good, landmarks.image_size, 1.0, 0), COMPILED) is not None


def test_compiled_one_euro_step_matches_numpy() -> None:
    """The filter's compiled step against its numpy step: per-channel and scalar parameters, a repeated time
    stamp (output held), a reset (next sample passes through)."""
    from engine.solve.filters import OneEuroFilter

    rng = np.random.default_rng(4)
    for params in ((rng.uniform(0.5, 3, 61), rng.uniform(0, 1, 61), rng.uniform(0.5, 2, 61)), (1.0, 0.3, 1.0)):
        fast, slow = OneEuroFilter(*params, step=COMPILED.one_euro_update), OneEuroFilter(*params)
        assert fast._update is not None and slow._update is None
        t_ns = 0
        signal = np.cumsum(rng.normal(size=(200, 61)), axis=0)
        for k, x in enumerate(signal):
            t_ns += 0 if k == 50 else int(rng.integers(20, 50)) * 1_000_000
            if k == 120:
                fast.reset()
                slow.reset()
            np.testing.assert_allclose(fast(x, t_ns), slow(x, t_ns), rtol=1e-12, atol=1e-12)


def test_people_prior_masked_and_measured_from_the_mean_face_matches(
    face_model: FaceModel, embedding: LandmarkEmbedding
) -> None:
    """The people prior (features from the mean face, whatever identity is fitted; a per-channel share of μ,
    blink included) pulls the compiled fit exactly as the numpy one, on a face that is not the mean."""
    config = SolveConfig()
    response = shipped_response(config)
    prior = shipped_prior(config, response, people=True)
    if prior is None:
        pytest.skip("no shipped people prior in models/")
    rng = np.random.default_rng(9)
    mask = (rng.uniform(size=53) > 0.4).astype(float)
    mask[[ICT_EXPRESSIONS.index("eyeBlink_L")]] = 0.5
    identity = np.zeros(face_model.n_identity, np.float32)
    identity[:40] = rng.normal(size=40)
    fitter = FrameFitter(face_model, embedding, identity, config, response, replace(prior, channel_mask=mask))
    mean_face = FrameFitter(face_model, embedding, None, config, response, prior)
    assert prior.reference == "mean" and np.allclose(fitter.prior_neutral, mean_face.face.neutral)
    assert not np.allclose(fitter.prior_neutral, fitter.face.neutral)
    assert _compare_sequence(fitter, _frames(fitter, face_model, 8, seed=21)) < 1e-6
    # The mask matters: all channels pulled give other weights.
    unmasked = FrameFitter(face_model, embedding, identity, config, response, replace(prior, residual_limit=0.0))
    masked = FrameFitter(face_model, embedding, identity, config, response,
                         replace(prior, residual_limit=0.0, channel_mask=mask))  # fmt: skip
    observed, has_iris, size = _frames(fitter, face_model, 1, seed=4)[0]
    a = unmasked.fit_numpy(observed, None, has_iris, size).weights
    b = masked.fit_numpy(observed, None, has_iris, size).weights
    assert np.abs(a - b).max() > 0.01
    np.testing.assert_allclose(masked.fit(observed, None, has_iris, size).weights, b, atol=1e-6)


def test_the_people_prior_reads_through_its_own_lens_whatever_camera_is_fitted(
    face_model: FaceModel, embedding: LandmarkEmbedding
) -> None:
    """A fitter at an estimated camera (70°) computes the prior's features through the camera the prior was
    trained with, in numpy and compiled alike; without that lens they differ."""
    config = SolveConfig()
    response = shipped_response(config)
    prior = shipped_prior(config, response, people=True)
    if prior is None or prior.camera_fov_y_deg is None:
        pytest.skip("no shipped people prior with a training camera in models/")
    wide = FrameFitter(face_model, embedding, None, config, response, prior, camera_fov_y_deg=70.0)
    at_lens = FrameFitter(face_model, embedding, None, config, response, prior, camera_fov_y_deg=prior.camera_fov_y_deg)
    no_lens = FrameFitter(face_model, embedding, None, config, response, replace(prior, camera_fov_y_deg=None),
                          camera_fov_y_deg=70.0)  # fmt: skip
    frames = _frames(wide, face_model, 8, seed=31)
    observed, _, size = frames[0]
    lens_features = at_lens.prior_features(observed, at_lens._camera(size))
    np.testing.assert_allclose(wide.prior_features(observed, wide._camera(size)), lens_features, atol=1e-9)
    assert np.abs(no_lens.prior_features(observed, no_lens._camera(size)) - lens_features).max() > 1e-3

    def kernel_prediction(fitter: FrameFitter) -> np.ndarray:
        # The compiled prior alone: these exact projections get no trust, so the weights would not show it.
        tables = fitter.compiled_tables
        assert tables is not None
        center, focal = fitter._camera(size)
        return compiled._prior(tables.prior, tables.rigid_ids, observed, True, center, focal, np.zeros(0))[0]

    at_lens_prediction = kernel_prediction(at_lens)
    np.testing.assert_allclose(kernel_prediction(wide), at_lens_prediction, atol=1e-6)
    assert np.abs(kernel_prediction(no_lens) - at_lens_prediction).max() > 1e-3
    # With no neutral yet (the kernel's empty one), a brow head reads a zero displacement.
    read = displaced_features(lens_features, None) if at_lens.prior.reads_displacement else lens_features
    np.testing.assert_allclose(at_lens_prediction, at_lens.prior.predict(read), atol=1e-4)
    assert _compare_sequence(wide, frames) < 1e-6
