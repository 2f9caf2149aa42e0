"""Name tables: ICT 53 ↔ ARKit 52 and FaceScape 51 → ARKit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.names import (
    ARKIT_BLENDSHAPES,
    FACESCAPE_EXPRESSIONS,
    ICT_EXPRESSIONS,
    UNSUPPORTED_ARKIT,
    arkit_to_ict,
    facescape_to_arkit_name,
    ict_partner,
    ict_to_arkit,
    ict_to_arkit_name,
    to_vrm_name,
)


def test_ict_names_cover_arkit_except_unsupported() -> None:
    mapped = {ict_to_arkit_name(n) for n in ICT_EXPRESSIONS}
    assert mapped == set(ARKIT_BLENDSHAPES) - set(UNSUPPORTED_ARKIT)
    assert len(ARKIT_BLENDSHAPES) == 52 and len(ICT_EXPRESSIONS) == 53
    assert ict_to_arkit_name("mouthSmile_L") == "mouthSmileLeft"
    assert ict_to_arkit_name("cheekPuff_R") == "cheekPuff"


def test_round_trip_arkit_ict_arkit() -> None:
    rng = np.random.default_rng(3)
    arkit = {name: float(rng.uniform()) for name in ARKIT_BLENDSHAPES if name not in UNSUPPORTED_ARKIT}
    back = ict_to_arkit(arkit_to_ict(arkit))
    assert back.keys() == arkit.keys()
    assert all(abs(back[k] - arkit[k]) < 1e-12 for k in arkit)


def test_merged_channels_average_and_drive_both_sides() -> None:
    weights = np.zeros(53)
    weights[ICT_EXPRESSIONS.index("browInnerUp_L")] = 0.8
    weights[ICT_EXPRESSIONS.index("browInnerUp_R")] = 0.2
    assert ict_to_arkit(weights)["browInnerUp"] == pytest.approx(0.5)
    ict = arkit_to_ict({"cheekPuff": 0.7})
    assert ict[ICT_EXPRESSIONS.index("cheekPuff_L")] == ict[ICT_EXPRESSIONS.index("cheekPuff_R")] == 0.7
    with pytest.raises(KeyError, match="unknown ARKit"):
        arkit_to_ict({"mouthSmileLeftt": 1.0})
    with pytest.raises(ValueError, match="53"):
        ict_to_arkit(np.zeros(52))


def test_arkit_order_matches_mediapipe_goldens(test_data) -> None:
    golden = json.loads((test_data / "mediapipe/golden/blendshapes.json").read_text())
    assert golden["sets"], "the golden file holds at least one set of scores"
    for scores in golden["sets"].values():
        names = [n for n in scores if n != "_neutral"]
        assert names == [n for n in ARKIT_BLENDSHAPES if n not in UNSUPPORTED_ARKIT]


def test_facescape_table_is_complete_and_sided() -> None:
    mapped = [facescape_to_arkit_name(n) for n in FACESCAPE_EXPRESSIONS]
    assert len(FACESCAPE_EXPRESSIONS) == 51 and len(set(mapped)) == 51
    assert set(mapped) == set(ARKIT_BLENDSHAPES) - set(UNSUPPORTED_ARKIT)
    assert facescape_to_arkit_name("EyeBlink_L") == "eyeBlinkLeft"
    assert facescape_to_arkit_name("BrowsU_C") == "browInnerUp"
    assert facescape_to_arkit_name("ChinUpperRaise") == "mouthShrugUpper"
    with pytest.raises(KeyError):
        facescape_to_arkit_name("Wink_X")


def test_vrm_casing() -> None:
    assert to_vrm_name("eyeBlinkLeft") == "EyeBlinkLeft"


def test_every_mirrored_ict_channel_has_its_partner() -> None:
    sided = [n for n in ICT_EXPRESSIONS if ict_partner(n) is not None]
    # 20 left/right pairs, the two sideways moves (jaw, mouth); 9 jaw and mouth channels mirror onto themselves
    assert len(sided) == 44 and ict_partner("jawOpen") is None and ict_partner("mouthLeft") == "mouthRight"
    for name in sided:
        assert ict_partner(name) in ICT_EXPRESSIONS and ict_partner(ict_partner(name)) == name != ict_partner(name)
