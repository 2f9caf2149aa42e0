"""The learned prior (engine/solve/prior.py): file contract, the ridge fit, and its role in the bounded solve."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.config import SolveConfig
from engine.face_model import FaceModel, ModelFileError
from engine.names import ICT_EXPRESSIONS
from engine.solve.eyes import eyeball_centers
from engine.solve.pose import euler_to_rotation
from engine.solve.prior import (
    DEFAULT_PRIOR_PATH,
    N_DISPLACED,
    N_FEATURES,
    DisplacedHead,
    LearnedPrior,
    NeutralFeatures,
    displaced_features,
    fit_displaced_head,
    fit_head_mix,
    fit_mlp_prior,
    fit_ridge_prior,
    merge_members,
)
from engine.solve.solver import FrameFitter, shipped_prior, valid_observation
from engine.solve.synthetic import constructed_embedding, synthetic_landmarks

N = len(ICT_EXPRESSIONS)
SMILE = ICT_EXPRESSIONS.index("mouthSmile_L")
BROW = ICT_EXPRESSIONS.index("browInnerUp_L")


def test_ridge_fit_recovers_a_linear_map_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(0)
    true = np.vstack([rng.uniform(0, 0.2, (1, N)), rng.normal(0, 0.05, (N_FEATURES, N))])
    x = rng.normal(0, 1, (2500, N_FEATURES))
    y = x @ true[1:] + true[0] + rng.normal(0, 0.01, (2500, N))
    prior, report = fit_ridge_prior(x, y, rng, alphas=(1e-4, 1.0, 100.0))
    assert "α = 0.0001" in report  # the least shrinkage wins on noise-free linear data
    test = rng.normal(0, 1, (50, N_FEATURES))
    assert np.abs(prior.predict(test) - (test @ true[1:] + true[0])).mean() < 0.05
    path = tmp_path / "prior.npz"
    prior.with_strength(0.25).save(path, note=np.str_("test"))
    loaded = LearnedPrior.load(path)
    assert loaded.strength == pytest.approx(0.25) and loaded.with_response is False
    np.testing.assert_allclose(loaded.predict(test), prior.predict(test), atol=1e-4)


def test_mlp_prior_layers_evaluate_like_the_trained_network() -> None:
    """A small MLP fit on a nonlinear target beats the mean, and its numpy evaluation is the stored network."""
    rng = np.random.default_rng(1)
    mixing = rng.normal(0, 1, (4, N_FEATURES))  # features on a 4-dimensional subspace, like landmarks
    z = rng.normal(0, 1, (400, 4))
    y = np.clip(np.tile(z[:, :1], (1, N)), 0, 1)  # a clipped (nonlinear) function of one latent
    prior = fit_mlp_prior(z @ mixing + rng.normal(0, 0.01, (400, N_FEATURES)), y, components=8, hidden=16, epochs=40)
    assert prior.kind == "mlp" and len(prior.layers) == 3
    z_test = rng.normal(0, 1, (100, 4))
    test = z_test @ mixing
    truth = np.clip(np.tile(z_test[:, :1], (1, N)), 0, 1)
    assert np.abs(prior.predict(test) - truth).mean() < 0.5 * np.abs(truth - y.mean()).mean()
    # Trust: full on faces like the training ones, none far outside their subspace.
    _, trust = prior.predict_with_trust(test + rng.normal(0, 0.01, test.shape))
    assert trust.mean() > 0.95
    _, trust_far = prior.predict_with_trust(test[0] + rng.normal(0, 0.1, N_FEATURES))
    assert trust_far == 0.0


def test_mlp_prior_l1_loss_reads_the_median_and_mse_the_mean() -> None:
    """A channel that is 0 on 70 % of the samples and 1 on the rest, whatever the features: the squared error's
    best reading is the mean (0.3), the absolute error's the median (0)."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (600, N_FEATURES))
    y = (rng.uniform(size=(600, N)) < 0.3).astype(float)
    test = rng.normal(0, 1, (100, N_FEATURES))
    read = {
        loss: float(np.mean(fit_mlp_prior(x, y, components=4, hidden=8, epochs=30, loss=loss).predict(test)))
        for loss in ("mse", "l1")
    }
    assert read["mse"] == pytest.approx(0.3, abs=0.1)
    assert read["l1"] < 0.1
    with pytest.raises(ValueError, match="loss"):
        fit_mlp_prior(x, y, components=4, hidden=8, epochs=1, loss="huber")


def test_merged_members_read_the_mean_of_the_networks() -> None:
    """Networks of different widths on one input, merged, are one network whose output is their mean."""
    rng = np.random.default_rng(3)

    def network(hidden: int) -> list[tuple[np.ndarray, np.ndarray]]:
        shapes = [(8, hidden), (hidden, hidden), (hidden, N)]
        return [(rng.normal(0, 1, shape), rng.normal(0, 1, shape[1])) for shape in shapes]

    def prior(layers: tuple | list) -> LearnedPrior:
        return LearnedPrior(np.zeros(N_FEATURES), rng_basis, np.ones(8), tuple(layers), kind="mlp")

    rng_basis = np.linalg.qr(rng.normal(0, 1, (N_FEATURES, 8)))[0]
    members = [network(16), network(16), network(12)]
    merged = merge_members(members)
    assert merged[1][0].shape == (44, 44) and merged[2][0].shape == (44, N)
    x = rng.normal(0, 1, (30, N_FEATURES))
    expected = np.mean([prior(layers).predict(x) for layers in members], axis=0)
    np.testing.assert_allclose(prior(merged).predict(x), expected, atol=1e-9)


def test_merging_one_member_keeps_it_and_a_one_layer_merge_averages() -> None:
    """One member merges into itself unchanged; one-layer members merge into their mean layer; none is refused."""
    rng = np.random.default_rng(5)
    single = [(rng.normal(0, 1, (4, 3)), rng.normal(0, 1, 3)), (rng.normal(0, 1, (3, 2)), rng.normal(0, 1, 2))]
    for (weight, bias), (kept_weight, kept_bias) in zip(single, merge_members([single]), strict=True):
        np.testing.assert_array_equal(weight, kept_weight)
        np.testing.assert_array_equal(bias, kept_bias)
    linear = [[(rng.normal(0, 1, (4, 2)), rng.normal(0, 1, 2))] for _ in range(3)]
    ((weight, bias),) = merge_members(linear)
    np.testing.assert_allclose(weight, np.mean([m[0][0] for m in linear], axis=0))
    np.testing.assert_allclose(bias, np.mean([m[0][1] for m in linear], axis=0))
    with pytest.raises(ValueError, match="no members"):
        merge_members([])


def test_an_mlp_prior_of_two_members_is_the_mean_of_the_two_seeds() -> None:
    """`members=2` trains the networks of seeds 0 and 1 exactly as two single fits would, and stores their mean
    (without `augment_basis`: with it, the principal directions depend on the seed, and the members share seed 0's)."""
    rng = np.random.default_rng(4)
    mixing = rng.normal(0, 1, (3, N_FEATURES))
    z = rng.normal(0, 1, (200, 3))
    x, y = z @ mixing, np.clip(np.tile(z[:, :1], (1, N)), 0, 1)
    kwargs = {"components": 6, "hidden": 8, "epochs": 3}
    singles = [fit_mlp_prior(x, y, seed=seed, **kwargs) for seed in (0, 1)]
    pair = fit_mlp_prior(x, y, members=2, **kwargs)
    test = rng.normal(0, 1, (20, 3)) @ mixing
    expected = 0.5 * (singles[0].predict(test) + singles[1].predict(test))
    np.testing.assert_allclose(pair.predict(test), expected, atol=1e-6)
    assert np.abs(singles[0].predict(test) - singles[1].predict(test)).max() > 1e-3  # the seeds differ


def test_identity_augmentation_teaches_the_mlp_to_ignore_a_face_shape_direction() -> None:
    """Training faces that differ only a little along a shape direction leave the network free to read it as
    expression; shifted along it during training (`augment_basis`), the fitted prior ignores it."""
    rng = np.random.default_rng(2)
    mixing = rng.normal(0, 1, (3, N_FEATURES))
    shape = rng.normal(0, 1, N_FEATURES)
    shape -= mixing.T @ np.linalg.lstsq(mixing.T, shape, rcond=None)[0]  # outside the expression subspace
    shape *= 1.0 / np.linalg.norm(shape)
    z = rng.normal(0, 1, (600, 3))
    y = np.clip(np.tile(z[:, :1], (1, N)), 0, 1)
    # In training, the shape coordinate happens to go with the expression (a few rendered identities).
    x = z @ mixing + np.outer(0.5 * z[:, 0] + rng.normal(0, 0.05, 600), shape)
    kwargs = {"components": 8, "hidden": 16, "epochs": 40, "dropout": 0.1, "input_noise": 0.1}
    plain = fit_mlp_prior(x, y, **kwargs)
    augmented = fit_mlp_prior(x, y, augment_basis=3.0 * shape[:, None], **kwargs)
    z_test = rng.normal(0, 1, (200, 3))
    test = z_test @ mixing
    moved = test + 2.0 * shape  # the same expressions on another face shape
    change = [np.abs(p.predict(moved) - p.predict(test)).mean() for p in (plain, augmented)]
    assert change[1] < 0.5 * change[0]


def test_malformed_prior_files_are_refused(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        LearnedPrior.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    LearnedPrior.linear(np.zeros((3, N))).save(bad)
    with pytest.raises(ModelFileError, match="unreadable|holds"):
        LearnedPrior.load(bad)


def test_the_prior_pulls_the_bounded_solve_and_mu_zero_is_the_plain_solve(face_model: FaceModel) -> None:
    """A prior that always says "smile 0.9, browInnerUp 0.6" on a neutral face: strong μ reads it (within the box),
    μ = 0 reads the plain least squares."""
    embedding = constructed_embedding(face_model, seed=1)
    coef = np.zeros((1 + N_FEATURES, N))
    coef[0, SMILE], coef[0, BROW] = 0.9, 1.6  # 1.6 is outside the box: the solve keeps w ≤ 1
    prior = LearnedPrior.linear(coef, 0.0, with_response=False)
    plain = FrameFitter(face_model, embedding, None, SolveConfig(landmark_response=False))
    landmarks = synthetic_landmarks(plain.face, eyeball_centers(face_model), np.zeros(N), euler_to_rotation(5, 0, 0))
    observed, has_iris = valid_observation(landmarks)  # type: ignore[misc]
    base = plain.fit(observed, has_iris=has_iris, image_size=landmarks.image_size).weights
    results = {}
    for mu in (0.0, 1000.0):
        config = SolveConfig(landmark_response=False, prior_strength=mu)
        fitter = FrameFitter(face_model, embedding, None, config, prior=prior)
        results[mu] = fitter.fit(observed, has_iris=has_iris, image_size=landmarks.image_size).weights
    np.testing.assert_allclose(results[0.0], base, atol=1e-9)
    assert base[SMILE] < 0.05
    assert results[1000.0][SMILE] == pytest.approx(0.9, abs=0.05)
    assert results[1000.0][BROW] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.skipif(not DEFAULT_PRIOR_PATH.is_file(), reason="no shipped solve prior")
def test_shipped_prior_loads_and_is_used_only_with_the_map_it_was_trained_on() -> None:
    prior = LearnedPrior.load()
    assert prior.predict(np.zeros(N_FEATURES)).shape == (N,) and prior.strength > 0
    with_response = SolveConfig(landmark_response=True)
    assert (shipped_prior(with_response, object()) is not None) == prior.with_response  # type: ignore[arg-type]
    assert (shipped_prior(with_response, None) is not None) == (not prior.with_response)
    assert shipped_prior(SolveConfig(learned_prior=False), None) is None


@pytest.mark.skipif(not DEFAULT_PRIOR_PATH.is_file(), reason="no shipped solve prior")
def test_shipped_prior_was_trained_on_the_current_default_identity(face_model: FaceModel) -> None:
    """The prior knows the identity it was rendered with: a rebuilt default identity needs
    `python tools/fit_solve_prior.py` (a few minutes) before this passes again."""
    from engine.bundles import load_identity
    from engine.config import load_config

    identity = load_identity(load_config().identity, face_model)
    with np.load(DEFAULT_PRIOR_PATH) as z:
        assert str(z["identity"]) == identity.name
        trained_on = z["identity_weights"]
    np.testing.assert_allclose(trained_on, np.asarray(identity.identity_weights, np.float32), atol=1e-5)


def _random_mlp(n_inputs: int, rng: np.random.Generator, displaced: bool = False) -> LearnedPrior:
    """A small random network on an orthonormal basis: a stand-in regressor for contract tests."""
    basis, _ = np.linalg.qr(rng.normal(size=(n_inputs, 6)))
    layers = ((rng.normal(0, 0.5, (6, 8)), rng.normal(0, 0.1, 8)), (rng.normal(0, 0.5, (8, N)), np.full(N, 0.2)))
    return LearnedPrior(np.zeros(n_inputs), basis, np.ones(6), layers, 10.0, kind="mlp", displaced=displaced)


def test_displaced_features_are_the_mesh_part_minus_the_neutral() -> None:
    rng = np.random.default_rng(3)
    plain = rng.normal(size=(2, N_FEATURES))
    neutral = rng.normal(size=N_DISPLACED)
    out = displaced_features(plain, neutral)
    assert out.shape == (2, N_FEATURES + N_DISPLACED)
    np.testing.assert_array_equal(out[:, :N_FEATURES], plain)
    np.testing.assert_allclose(out[:, N_FEATURES:], plain[:, :N_DISPLACED] - neutral)
    assert not displaced_features(plain[0], None)[N_FEATURES:].any()  # no neutral yet: no displacement


def test_the_neutral_is_the_frames_read_most_neutral_sampled_at_five_hertz() -> None:
    """The score is the scorer's strongest non-eye weight; frames closer than 0.2 s to the last sample are
    skipped; the neutral is the mean of the `keep` best; a new person forgets it."""
    rng = np.random.default_rng(4)
    scorer = _random_mlp(N_FEATURES, rng)
    neutral = NeutralFeatures(scorer, keep=3, sample_hz=5.0)
    frames = [rng.normal(0, 1, N_FEATURES) for _ in range(12)]
    for i, frame in enumerate(frames):
        neutral.observe(frame, int(i * 0.1e9))  # 10 Hz in: every other frame is sampled
    sampled = frames[::2]
    eyes = np.array([n.startswith("eye") for n in ICT_EXPRESSIONS])
    scores = [np.clip(scorer.predict(f), 0, 1)[~eyes].max() for f in sampled]
    best = np.argsort(scores)[:3]
    assert neutral.value is not None
    np.testing.assert_allclose(neutral.value, np.mean([sampled[k][:N_DISPLACED] for k in best], axis=0))
    assert not neutral.due(int(10.5 * 0.1e9)) and neutral.due(int(12 * 0.1e9))
    neutral.reset()
    assert neutral.value is None and neutral.due(0)
    with pytest.raises(ValueError, match="plain"):
        NeutralFeatures(_random_mlp(N_FEATURES + N_DISPLACED, rng, displaced=True))


def test_a_displaced_prior_round_trips_and_a_wrong_width_is_refused(tmp_path) -> None:
    rng = np.random.default_rng(5)
    prior = _random_mlp(N_FEATURES + N_DISPLACED, rng, displaced=True)
    path = tmp_path / "displaced.npz"
    prior.save(path)
    loaded = LearnedPrior.load(path)
    assert loaded.displaced and loaded.n_inputs == N_FEATURES + N_DISPLACED
    x = rng.normal(size=N_FEATURES + N_DISPLACED)
    np.testing.assert_allclose(loaded.predict(x), prior.predict(x), atol=1e-4)
    # A plain-width network flagged displaced (or the reverse) does not load.
    plain = _random_mlp(N_FEATURES, rng, displaced=False)
    from dataclasses import replace

    replace(plain, displaced=True).save(path)
    with pytest.raises(ModelFileError, match="solve prior"):
        LearnedPrior.load(path)


def _random_head(rng: np.random.Generator, channels: np.ndarray | None = None) -> DisplacedHead:
    if channels is None:
        channels = np.array([ICT_EXPRESSIONS.index("browInnerUp_L"), ICT_EXPRESSIONS.index("jawOpen")])
    k = len(channels)
    return DisplacedHead(channels, rng.normal(size=(N_FEATURES + N_DISPLACED, k)), rng.normal(size=k))


def test_a_displaced_head_replaces_its_channels_of_the_prior() -> None:
    rng = np.random.default_rng(6)
    head = _random_head(rng)
    features = displaced_features(rng.normal(size=(3, N_FEATURES)), rng.normal(size=N_DISPLACED))
    np.testing.assert_allclose(head.predict(features), features @ head.weights + head.bias)
    prior = _random_mlp(N_FEATURES, rng)
    with_head = prior.with_head(head).predict(features)
    np.testing.assert_allclose(with_head[:, head.channels], head.predict(features))
    others = np.setdiff1d(np.arange(N), head.channels)
    np.testing.assert_allclose(with_head[:, others], prior.predict(features[:, :N_FEATURES])[:, others])
    assert prior.with_head(head).reads_displacement and not prior.reads_displacement
    with pytest.raises(ValueError, match="plain"):
        NeutralFeatures(prior.with_head(head))


def test_a_fitted_head_recovers_a_linear_truth(tmp_path) -> None:
    """`fit_displaced_head` on weights that are a linear function of some displaced features finds that function
    (the standardization folded back), and the file round-trips; a malformed one is refused by name."""
    rng = np.random.default_rng(7)
    n = 3000
    plain = rng.normal(size=(n, N_FEATURES))
    features = np.hstack([plain, plain[:, :N_DISPLACED] - rng.normal(size=(n, N_DISPLACED))])  # many neutrals
    slope = np.zeros((N_FEATURES + N_DISPLACED, 2))
    used = rng.choice(N_FEATURES + N_DISPLACED, size=20, replace=False)
    slope[used] = rng.normal(0, 0.3, (20, 2))
    channels = np.array([ICT_EXPRESSIONS.index("browInnerUp_L"), ICT_EXPRESSIONS.index("jawOpen")])
    truth = DisplacedHead(channels, slope, np.array([0.4, 0.2]))
    weights = np.zeros((n, N))
    weights[:, channels] = truth.predict(features)
    fitted = fit_displaced_head(features, weights, channels, driven_weight=2.0, ridge=1e-3)
    probe = displaced_features(rng.normal(size=(5, N_FEATURES)), rng.normal(size=N_DISPLACED))
    np.testing.assert_allclose(fitted.predict(probe), truth.predict(probe), atol=0.02)
    path = tmp_path / "head.npz"
    fitted.save(path)
    loaded = DisplacedHead.load(path)
    np.testing.assert_array_equal(loaded.channels, channels)
    np.testing.assert_allclose(loaded.predict(probe), fitted.predict(probe), atol=1e-3)
    names = np.array(["browInnerUp_L", "jawOpen"])
    np.savez(path, channels=names, weights=loaded.weights[:-1], bias=loaded.bias)
    with pytest.raises(ModelFileError, match="displaced head"):
        DisplacedHead.load(path)
    np.savez(path, channels=np.array(["browInnerUp_L", "noSuchChannel"]), weights=loaded.weights, bias=loaded.bias)
    with pytest.raises(ModelFileError, match="unreadable"):
        DisplacedHead.load(path)


def test_a_mixed_head_blends_with_the_plain_reading_and_the_mix_is_recovered(tmp_path) -> None:
    """`fit_head_mix` finds a · head + b · plain + c where the truth is that, one row shared by a left/right pair
    (a mirrored face reads mirrored); the prior applies it, the file round-trips it, a wrong shape is refused."""
    rng = np.random.default_rng(8)
    channels = np.array([ICT_EXPRESSIONS.index(n) for n in ("eyeBlink_L", "eyeBlink_R", "jawOpen")])
    head = _random_head(rng, channels)
    n = 4000
    head_readings, plain_readings = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, N))
    rows = np.array([[0.6, 0.4, -0.02], [0.6, 0.4, -0.02], [0.8, 0.2, 0.01]])
    truth = np.zeros((n, N))
    truth[:, channels] = rows[:, 0] * head_readings + rows[:, 1] * plain_readings[:, channels] + rows[:, 2]
    truth[:, channels[1]] += rng.normal(0, 0.05, n)  # one side noisier: the pair still shares its row
    mixed = fit_head_mix(head, head_readings, plain_readings, truth)
    np.testing.assert_allclose(mixed.mix[0], mixed.mix[1])
    np.testing.assert_allclose(mixed.mix, rows, atol=0.01)
    features = displaced_features(rng.normal(size=(3, N_FEATURES)), rng.normal(size=N_DISPLACED))
    prior = _random_mlp(N_FEATURES, rng)
    plain = prior.predict(features[:, :N_FEATURES])
    expected = rows[:, 0] * head.predict(features) + rows[:, 1] * plain[:, channels] + rows[:, 2]
    with_mix = prior.with_head(replace(mixed, mix=rows)).predict(features)
    np.testing.assert_allclose(with_mix[:, channels], expected)
    np.testing.assert_allclose(head.blend(head_readings, plain_readings[:, channels]), head_readings)  # no mix
    path = tmp_path / "head.npz"
    mixed.save(path)
    np.testing.assert_allclose(DisplacedHead.load(path).mix, mixed.mix, atol=1e-6)
    head.save(path)
    assert DisplacedHead.load(path).mix is None  # a head file from before the mix reads alone
    np.savez(path, channels=np.array([ICT_EXPRESSIONS[k] for k in channels]), weights=head.weights, bias=head.bias,
             mix=rows[:2])  # fmt: skip
    with pytest.raises(ModelFileError, match="mix"):
        DisplacedHead.load(path)
