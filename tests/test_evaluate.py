"""`scapecast eval`'s metrics on small made-up tracks (the full evaluation is a benchmark, not a test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import UserError
from engine.eval_synthetic import clip_errors, performance, wink_readings, wink_summary
from engine.evaluate import (
    CHANNEL,
    REST_CHANNELS,
    Track,
    agreement,
    family_means,
    load_reference,
    markdown,
    rest_frames,
    winks,
)
from engine.names import ARKIT_BLENDSHAPES, ICT_EXPRESSIONS


def _track(n: int, values: dict[str, np.ndarray], face: np.ndarray | None = None) -> Track:
    weights = np.zeros((n, len(ARKIT_BLENDSHAPES)))
    for name, series in values.items():
        weights[:, CHANNEL[name]] = series
    return Track(weights, np.ones(n, bool) if face is None else face)


def test_agreement_counts_moving_channels_only() -> None:
    t = np.linspace(0, 4 * np.pi, 200)
    jaw = 0.4 + 0.3 * np.sin(t)
    reference = _track(200, {"jawOpen": jaw, "mouthSmileLeft": 0.05 + 0.01 * np.sin(t)})  # smile: std < 0.08
    ours = _track(200, {"jawOpen": 0.5 * jaw + 0.1, "mouthSmileLeft": 0.9 * np.ones(200)})
    result = agreement(ours, reference)
    assert set(result["channels"]) == {"jawOpen"}
    assert result["channels"]["jawOpen"]["r"] == pytest.approx(1.0)
    expected_mae = float(np.abs(0.5 * jaw + 0.1 - jaw).mean())
    assert result["mae"] == pytest.approx(expected_mae, abs=1e-4) and result["mean_r"] == pytest.approx(1.0)


def test_agreement_constant_output_scores_zero_and_faceless_frames_are_left_out() -> None:
    t = np.linspace(0, 6, 100)
    reference = _track(100, {"eyeBlinkLeft": (np.sin(t) > 0.5).astype(float)})
    face = np.ones(100, bool)
    face[:10] = False
    ours = _track(100, {"eyeBlinkLeft": np.full(100, 0.2)}, face)
    result = agreement(ours, reference)
    assert result["frames"] == 90
    assert result["channels"]["eyeBlinkLeft"]["r"] == 0.0  # a constant cannot follow the face
    # An anti-correlated channel is negative, not dropped.
    ours = _track(100, {"eyeBlinkLeft": 1.0 - reference.weights[:, CHANNEL["eyeBlinkLeft"]]})
    assert agreement(ours, reference)["mean_r"] == pytest.approx(-1.0)


def test_rest_frames_percentiles_and_false_expression_share() -> None:
    n = 100
    jaw_ref = np.where(np.arange(n) < 60, 0.02, 0.6)  # 60 rest frames, then an open mouth
    reference = _track(n, {"jawOpen": jaw_ref})
    ours_jaw = np.where(np.arange(n) < 60, 0.05, 0.7)
    ours_jaw[:6] = 0.5  # 6 of the 60 rest frames read a false jaw
    ours = _track(n, {"jawOpen": ours_jaw})
    result = rest_frames(ours, reference)
    assert result["frames"] == 60
    assert result["share_above"] == pytest.approx(0.1)
    assert result["p95"]["jawOpen"] == pytest.approx(np.percentile(ours_jaw[:60], 95))
    assert result["above"] == {"jawOpen": pytest.approx(0.1)}  # which channel the relaxed face is taken for
    assert set(result["p95"]) == {ARKIT_BLENDSHAPES[j] for j in REST_CHANNELS}
    assert "eyeBlinkLeft" not in result["p95"] and "tongueOut" not in result["p95"]
    # No rest frame at all: reported as such, not as zeros.
    none = rest_frames(ours, _track(n, {"jawOpen": np.full(n, 0.5)}))
    assert none["share_above"] is None and none["above"] == {}


def test_reference_tracks_load_and_bad_lines_are_named(tmp_path) -> None:
    good = tmp_path / "v.jsonl"
    good.write_text(
        json.dumps({"frame": 0, "face": True, "blendshapes": {"jawOpen": 0.3, "_neutral": 0.1}}) + "\n"
        + json.dumps({"frame": 1, "face": False, "blendshapes": {}}) + "\n"
    )  # fmt: skip
    track = load_reference(good)
    assert len(track) == 2 and track.face.tolist() == [True, False]
    assert track.weights[0, CHANNEL["jawOpen"]] == 0.3 and np.isnan(track.weights[0, CHANNEL["mouthClose"]])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"frame": 0, "face": True, "blendshapes": {}}) + "\n{not json\n")
    with pytest.raises(UserError, match="line 2"):
        load_reference(bad)
    skipped = tmp_path / "skip.jsonl"
    skipped.write_text(json.dumps({"frame": 3, "face": True, "blendshapes": {}}) + "\n")
    with pytest.raises(UserError, match="frame 3, expected 0"):
        load_reference(skipped)


def test_synthetic_clip_errors_by_window_after_the_face_appears() -> None:
    truth = np.zeros((300, 53))
    truth[:, 26] = 0.5  # one driven channel throughout
    solved = truth.copy()
    solved[:15, 26] = 0.0  # wrong for the first half second
    solved[:, 0] = 0.1  # a small false reading everywhere
    valid = np.ones(300, bool)
    errors = clip_errors(truth, solved, valid)
    assert errors["0-0.5s"]["driven"] == pytest.approx(0.5) and errors["0.5-1s"]["driven"] == pytest.approx(0.0)
    assert errors["3-10s"]["all"] == pytest.approx(0.1 / 53, abs=1e-4)  # rounded to 4 places
    # Channel 26 is jawOpen: the jaw group has the driven error; no brow is driven, so the false browDown_L
    # reading (channel 0) counts in "all" but not in a group.
    assert errors["0-0.5s"]["jaw"] == pytest.approx(0.5) and errors["3-10s"]["jaw"] == pytest.approx(0.0)
    assert errors["3-10s"]["brows"] is None and errors["3-10s"]["mouth"] is None
    valid[:] = False
    assert clip_errors(truth, solved, valid) == {}


def test_training_performances_draw_facs_compounds_only_when_asked() -> None:
    """Compounds move an action's channels together (a laugh lifts the upper lip with the smile), and a
    performance without them draws exactly what it drew before they existed (old clips stay reproducible)."""
    c = {name: i for i, name in enumerate(ICT_EXPRESSIONS)}
    smile, lip, cheek = c["mouthSmile_L"], c["mouthUpperUp_L"], c["cheekSquint_L"]

    def together(share: float) -> int:
        frames = 0
        for seed in range(20):
            w = performance("random", 3.0, seed, upper_face_share=0.4, compound_share=share).weights
            frames += int(np.sum((w[:, smile] > 0.3) & (w[:, lip] > 0.2) & (w[:, cheek] > 0.05)))
        return frames

    assert together(0.0) == 0 and together(1.0) > 100
    plain = performance("random", 3.0, 7, upper_face_share=0.4).weights
    # What this performance drew before compounds existed (measured with the code of commit 0f460f1): a draw
    # taken even when compound_share is 0 would shift every later draw and change these.
    frame = np.arange(len(plain))[:, None]
    assert plain.sum() == pytest.approx(32.656597, abs=1e-4)
    assert (plain * frame).sum() == pytest.approx(1710.47156, abs=1e-3)
    assert not np.array_equal(plain, performance("random", 3.0, 7, 30.0, 0.4, 0.3).weights)


def test_training_performances_draw_speech_and_emotions_only_when_asked() -> None:
    """Speech visemes move the lips with the jaw (a spread vowel stretches the lips over a parted jaw) and the
    emotions move brows and mouth together (sadness: inner brows up, corners down), far more often than the
    compounds and the upper-face draws do together by chance; without the share, a
    performance draws exactly what it drew before (the compounds test pins those draws)."""
    c = {name: i for i, name in enumerate(ICT_EXPRESSIONS)}

    def frames(share: float) -> tuple[int, int]:
        spread = sad = 0
        for seed in range(20):
            w = performance("random", 3.0, seed, 30.0, 0.4, 0.3, speech_emotion_share=share).weights
            spread += int(np.sum((w[:, c["mouthStretch_L"]] > 0.2) & (w[:, c["jawOpen"]] > 0.05)))
            sad += int(np.sum((w[:, c["browInnerUp_L"]] > 0.2) & (w[:, c["mouthFrown_L"]] > 0.2)))
        return spread, sad

    (spread_before, sad_before), (spread, sad) = frames(0.0), frames(1.0)
    assert spread > spread_before + 50 and sad > sad_before + 40
    compound = performance("random", 3.0, 7, 30.0, 0.4, 0.3).weights
    assert np.array_equal(compound, performance("random", 3.0, 7, 30.0, 0.4, 0.3, 0.0).weights)
    assert not np.array_equal(compound, performance("random", 3.0, 7, 30.0, 0.4, 0.3, 0.4).weights)


def test_wink_readings_take_the_winking_eye_from_the_truth() -> None:
    truth = np.array([[0.9, 0.0], [0.0, 0.8], [0.9, 0.9], [0.75, 0.15], [0.1, 0.0]])  # L wink, R wink, blink, …
    ours = np.array([[0.8, 0.1], [0.3, 0.6], [1.0, 1.0], [0.9, 0.5], [0.0, 0.0]])
    theirs, mine = wink_readings(truth, ours, closed=0.7, open_at_most=0.1)
    np.testing.assert_allclose(theirs, [[0.9, 0.0], [0.8, 0.0]])  # both eyes shut, or the other half open: no wink
    np.testing.assert_allclose(mine, [[0.8, 0.1], [0.6, 0.3]])  # (winking eye, open eye), whichever side winks
    summary = wink_summary(mine)
    assert summary["frames"] == 2 and summary["closed_mean"] == pytest.approx(0.7)
    assert summary["closed_share_at_least"] == 0.5 and summary["open_share_at_most"] == 0.5
    assert wink_summary(np.zeros((0, 2))) == {"frames": 0}


def test_reference_winks_are_soft_and_ours_must_shut_the_same_eye() -> None:
    n = 6
    reference = _track(n, {"eyeBlinkLeft": np.array([0.72, 0.64, 0.0, 0.9, 0.6, 0.0]),
                           "eyeBlinkRight": np.array([0.41, 0.09, 0.0, 0.9, 0.0, 0.7])})  # fmt: skip
    ours = _track(n, {"eyeBlinkLeft": np.array([0.77, 0.2, 0.0, 1.0, 0.1, 0.1]),
                      "eyeBlinkRight": np.array([0.35, 0.2, 0.0, 1.0, 0.5, 0.8])})  # fmt: skip
    result = winks(ours, reference)
    # Frames 0, 1 (left), 4 (left) and 5 (right) wink in the reference; 2 is open, 3 a blink.
    assert result["frames"] == 4
    assert result["reference_closed_mean"] == pytest.approx(np.mean([0.72, 0.64, 0.6, 0.7]), abs=1e-3)
    assert result["same_eye_share"] == pytest.approx(0.5)  # frames 0 and 5; 1 reads both alike, 4 the wrong eye


def test_markdown_report_shows_the_means() -> None:
    per_video = {
        "a": {"agreement": {"channels": {"jawOpen": {"r": 0.8}}, "mean_r": 0.8, "mae": 0.1},
              "rest": {"frames": 0, "p95": {}, "share_above": None}, "frames": 10},
        "b": {"agreement": {"channels": {"jawOpen": {"r": 0.8}}, "mean_r": 0.8, "mae": 0.1}, "frames": 10,
              "rest": {"frames": 10, "p95": {"jawOpen": 0.1}, "share_above": 0.4,
                       "above": {"mouthFrownLeft": 0.3, "mouthPucker": 0.2, "jawOpen": 0.1, "mouthClose": 0.1}}},
    }  # fmt: skip
    text = markdown({"real": {"videos": per_video, "mean_r": 0.8, "mae": 0.1, "rest_frames": 0,
                              "rest_share_above": None, "rest_jaw_open_p95_max": None,
                              "channel_mean_r": {"jawOpen": 0.8}}})  # fmt: skip
    assert "| a | 10 | 1 | 0.8 | 0.1 |" in text and "**0.8**" in text and "jawOpen 0.8" in text
    assert "eyeLook* –" in text  # no gaze channel moved
    # What a relaxed face is taken for: the three channels most often above the line, most first.
    assert "| 40 % | mouthFrownLeft 30 %, mouthPucker 20 %, jawOpen 10 % |" in text and "mouthClose 10" not in text


def test_target_families_average_their_moving_channels() -> None:
    means = {"eyeLookInLeft": 0.9, "eyeLookOutRight": 0.5, "eyeBlinkLeft": 0.8, "jawOpen": 0.7, "jawLeft": 0.1,
             "mouthSmileRight": 0.6, "mouthSmileLeft": 0.4}  # fmt: skip
    assert family_means(means) == {"jawOpen": 0.7, "eyeBlink": 0.8, "mouthSmile": 0.5, "eyeLook*": 0.7}


def test_benchmarks_block_is_replaced_in_place(tmp_path) -> None:
    from engine.bench import replace_block
    from engine.evaluate import EVAL_BEGIN, EVAL_END

    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# B\n\nintro\n\n{EVAL_BEGIN}\nold numbers\n{EVAL_END}\n\n## after\nkept\n")
    replace_block(page, EVAL_BEGIN, EVAL_END, "| new | 1 |")
    text = page.read_text()
    assert "old numbers" not in text and "| new | 1 |" in text and text.endswith("## after\nkept\n")
    assert text.index("intro") < text.index("| new | 1 |") < text.index("## after")
    replace_block(page, "<!-- x:begin -->", "<!-- x:end -->", "appended")  # no markers yet: appended
    assert page.read_text().rstrip().endswith("appended\n<!-- x:end -->")
    assert not list(tmp_path.glob(".*partial"))
