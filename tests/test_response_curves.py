"""Response curves: the mapping, overrides, the file's checks, the dead-zone pick, and which solver uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engine.solve.face_solver as face_solver_module
from engine.config import PerformerConfig, SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding, ModelFileError
from engine.names import ICT_EXPRESSIONS
from engine.solve.curves import (
    DEAD_ZONE_QUANTILES,
    DEFAULT_CURVES_PATH,
    MAX_LO,
    ResponseCurves,
    channel_scores,
    pick_dead_zones,
)
from engine.solve.expression import side_swap
from engine.solve.eyes import GAZE_CHANNELS
from engine.solve.face_solver import FaceSolver
from engine.solve.performer import Performer

N = len(ICT_EXPRESSIONS)
JAW, SMILE, FROWN, FROWN_R = (
    ICT_EXPRESSIONS.index(n) for n in ("jawOpen", "mouthSmile_L", "mouthFrown_L", "mouthFrown_R")
)


def test_a_curve_maps_lo_to_zero_and_hi_to_one_linearly_and_clips() -> None:
    lo, hi = np.zeros(N), np.ones(N)
    lo[JAW], hi[JAW] = 0.1, 0.6
    curves = ResponseCurves(lo, hi)
    w = np.full((4, N), 0.3)
    w[:, JAW] = [0.05, 0.1, 0.35, 0.9]
    out = curves.apply(w)
    assert out[:, JAW] == pytest.approx([0.0, 0.0, 0.5, 1.0])
    assert np.array_equal(out[:, SMILE], w[:, SMILE])  # the identity elsewhere
    assert np.array_equal(ResponseCurves.identity().apply(w), w)
    overridden = curves.with_overrides({"mouthSmile_L": (0.2, 0.7)})
    assert (overridden.lo[SMILE], overridden.hi[SMILE]) == (0.2, 0.7) and overridden.lo[JAW] == 0.1
    assert curves.lo[SMILE] == 0.0  # the original is not changed


def test_curves_round_trip_and_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    lo = np.zeros(N)
    lo[JAW] = 0.05
    ResponseCurves(lo, np.ones(N)).save(tmp_path / "c.npz", kind=np.str_("dead zones"))
    loaded = ResponseCurves.load(tmp_path / "c.npz")
    assert loaded.lo[JAW] == pytest.approx(0.05) and (loaded.hi == 1).all()
    np.savez(tmp_path / "short.npz", lo=np.zeros(5), hi=np.ones(5))
    np.savez(tmp_path / "crossed.npz", lo=np.full(N, 0.5), hi=np.full(N, 0.4))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name in ("short", "crossed", "junk", "missing"):
        with pytest.raises(ModelFileError, match=name):
            ResponseCurves.load(tmp_path / f"{name}.npz")


def _made_up_readings(seed: int = 0, right_share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Frames of a smile and a frown (both sides), each at rest 70 % of the time (the right frown: 1 − right_share),
    else driven 0.2–1, and the jaw, driven 90 % of the time. Driven frames read their truth; at rest the smile
    reads 0, the left frown and the jaw a false 0–0.2, the right frown 0–0.1."""
    rng = np.random.default_rng(seed)
    n = 3000
    truth = np.zeros((n, N))
    for k, share in ((SMILE, 0.3), (FROWN, 0.3), (FROWN_R, right_share), (JAW, 0.9)):
        driven = rng.random(n) < share
        truth[driven, k] = rng.uniform(0.2, 1.0, driven.sum())
    solved = truth.copy()
    for k, floor in ((FROWN, 0.2), (FROWN_R, 0.1), (JAW, 0.2)):
        rest = truth[:, k] == 0
        solved[rest, k] = rng.uniform(0.0, floor, rest.sum())
    return solved, truth


def test_dead_zones_silence_a_false_floor_where_it_pays_and_leave_exact_channels_alone() -> None:
    solved, truth = _made_up_readings()
    untouched = np.zeros(N, bool)
    curves, quantiles = pick_dead_zones(solved, truth, untouched)
    assert (curves.hi == 1).all()
    assert 0.02 < curves.lo[FROWN] < 0.15 and quantiles[FROWN] > 0  # the floor is cut, not all of it
    # Both sides share one level, the mean of each side's own percentile: a symmetric face reads symmetric.
    assert quantiles[FROWN_R] == quantiles[FROWN] and curves.lo[FROWN_R] == curves.lo[FROWN]
    own = [np.percentile(solved[truth[:, k] <= 0.01, k], quantiles[FROWN]) for k in (FROWN, FROWN_R)]
    assert own[0] > own[1] + 0.01 and curves.lo[FROWN] == pytest.approx(np.mean(own))
    assert curves.lo[SMILE] == 0.0 and quantiles[SMILE] == 0  # read exactly at rest: nothing to cut
    # The same floor on a channel seldom at rest: a dead zone would cost its expressions more than it silences.
    assert curves.lo[JAW] == 0.0
    before, after = channel_scores(solved, truth), channel_scores(curves.apply(solved), truth)
    pair = [FROWN, FROWN_R]
    assert after[pair].sum() < before[pair].sum()
    rest = truth[:, FROWN] == 0
    assert curves.apply(solved)[rest, FROWN].mean() < 0.7 * solved[rest, FROWN].mean()  # the floor is much lower
    mirror = side_swap()
    assert (after + after[mirror] <= before + before[mirror] + 1e-12).all()  # no pair scores worse than with none
    # The pick holds on frames it was not picked on.
    fresh, fresh_truth = _made_up_readings(seed=1)
    assert channel_scores(curves.apply(fresh), fresh_truth)[pair].sum() < channel_scores(fresh, fresh_truth)[pair].sum()


def test_two_sides_that_would_pick_apart_pick_one_percentile_together() -> None:
    solved, truth = _made_up_readings(right_share=0.8)  # the right frown seldom rests
    curves, quantiles = pick_dead_zones(solved, truth, np.zeros(N, bool))
    # Each side's own score over the pair's shared levels: alone, the sides would pick different percentiles.
    own_best = []
    for k in (FROWN, FROWN_R):
        scores = []
        for q in DEAD_ZONE_QUANTILES:
            level = np.mean([np.percentile(solved[truth[:, j] <= 0.01, j], q) for j in (FROWN, FROWN_R)]) if q else 0.0
            lo = np.zeros(N)
            lo[[FROWN, FROWN_R]] = level
            scores.append(channel_scores(ResponseCurves(lo, np.ones(N)).apply(solved), truth)[k])
        own_best.append(int(np.argmin(scores)))
    assert own_best[0] != own_best[1]
    assert quantiles[FROWN] == quantiles[FROWN_R] and curves.lo[FROWN] == curves.lo[FROWN_R]


def test_a_channel_left_alone_leaves_its_mirror_partner_alone_too() -> None:
    solved, truth = _made_up_readings()
    untouched = np.zeros(N, bool)
    untouched[FROWN] = True  # one side only
    kept, quantiles = pick_dead_zones(solved, truth, untouched)
    assert kept.lo[FROWN] == kept.lo[FROWN_R] == 0.0 and quantiles[FROWN_R] == 0
    truth[:, FROWN_R] = 0.5  # the right frown never at rest: unmeasured, so both sides stay as read
    unmeasured, _ = pick_dead_zones(solved, truth, np.zeros(N, bool))
    assert unmeasured.lo[FROWN] == unmeasured.lo[FROWN_R] == 0.0
    with pytest.raises(ValueError, match="matching"):
        pick_dead_zones(solved[:0], truth[:0], untouched)
    with pytest.raises(ValueError, match="percentile 0"):
        pick_dead_zones(solved, truth, untouched, quantiles=(25.0, 50.0))


def test_the_shipped_curves_are_dead_zones_that_leave_gaze_alone() -> None:
    curves = ResponseCurves.load(DEFAULT_CURVES_PATH)
    assert (curves.hi == 1).all(), "gains multiply false readings: the shipped curves are dead zones only"
    assert (curves.lo[GAZE_CHANNELS] == 0).all()
    assert (curves.lo >= 0).all() and (curves.lo <= MAX_LO).all() and (curves.lo > 0).sum() > 10
    assert np.array_equal(curves.lo, curves.lo[side_swap()])  # left and right alike


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def embedding() -> LandmarkEmbedding:
    return LandmarkEmbedding.load()


def test_the_solver_uses_the_shipped_curves_only_with_the_people_prior(
    face_model: FaceModel, embedding: LandmarkEmbedding, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lo = np.zeros(N)
    lo[FROWN] = 0.07
    ResponseCurves(lo, np.ones(N)).save(tmp_path / "curves.npz")
    monkeypatch.setattr(face_solver_module, "DEFAULT_CURVES_PATH", tmp_path / "curves.npz")
    cfg = SolveConfig(compiled=False)
    person = FaceSolver(face_model, embedding, Performer.auto(), cfg, PerformerConfig(), estimate_in_background=False)
    assert person.curves.lo[FROWN] == pytest.approx(0.07)
    off = FaceSolver(face_model, embedding, Performer.auto(), cfg.model_copy(update={"response_curves": False}),
                     PerformerConfig(), estimate_in_background=False)  # fmt: skip
    assert (off.curves.lo == 0).all()
    no_prior = FaceSolver(face_model, embedding, Performer.auto(), cfg.model_copy(update={"learned_prior": False}),
                          PerformerConfig(), estimate_in_background=False)  # fmt: skip
    assert (no_prior.curves.lo == 0).all()
    displaced = FaceSolver(face_model, embedding, Performer.auto(), cfg.model_copy(update={"displaced_prior": True}),
                           PerformerConfig(), estimate_in_background=False)  # fmt: skip
    assert (displaced.curves.lo == 0).all()  # fitted on what the plain prior reads, not this one
    demo = Performer(
        "demo", np.zeros(face_model.identity_basis.shape[0], np.float32), np.zeros(N, np.float32), rendered=True
    )
    avatar = FaceSolver(face_model, embedding, demo, cfg)
    assert (avatar.curves.lo == 0).all()  # its own prior reads the demo exactly: the closed loop is untouched
    tuned = FaceSolver(face_model, embedding, Performer.auto(),
                       cfg.model_copy(update={"channel_curves": {"jawOpen": (0.05, 0.8)}}), PerformerConfig(),
                       estimate_in_background=False)  # fmt: skip
    assert (tuned.curves.lo[JAW], tuned.curves.hi[JAW]) == (0.05, 0.8) and tuned.curves.lo[FROWN] == pytest.approx(0.07)
