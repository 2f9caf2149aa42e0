"""Blendshape name tables: ICT-FaceKit's 53 ↔ ARKit's 52 (wire names) and FaceScape's 51 → ICT/ARKit.

Rules (design §2): ICT `X_L` / `X_R` become ARKit `XLeft` / `XRight` (subject's left and right);
ICT's `browInnerUp_L/R` and `cheekPuff_L/R` both map to ARKit's single `browInnerUp` / `cheekPuff`
(averaged for output, both driven from the one input). ARKit's `tongueOut` has no ICT counterpart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# ICT-FaceKit's expression order (vertex_indices.json "expressions"); the solver's 53 channels.
ICT_EXPRESSIONS: tuple[str, ...] = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R", "jawForward",
    "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R", "mouthFrown_L",
    "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L",
    "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R",
    "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)  # fmt: skip

# ARKit's 52 in MediaPipe's blendshape order (without MediaPipe's `_neutral`).
ARKIT_BLENDSHAPES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip

# ARKit channels the ICT model cannot express: announced as unsupported, never sent as 0.
UNSUPPORTED_ARKIT: tuple[str, ...] = ("tongueOut",)

# ICT names whose two sides collapse into one ARKit channel.
_MERGED = {"browInnerUp_L": "browInnerUp", "browInnerUp_R": "browInnerUp",
           "cheekPuff_L": "cheekPuff", "cheekPuff_R": "cheekPuff"}  # fmt: skip


def ict_to_arkit_name(ict_name: str) -> str:
    """`mouthSmile_L` → `mouthSmileLeft`; `browInnerUp_R` → `browInnerUp`; `jawOpen` → `jawOpen`."""
    if ict_name in _MERGED:
        return _MERGED[ict_name]
    if ict_name.endswith("_L"):
        return ict_name[:-2] + "Left"
    if ict_name.endswith("_R"):
        return ict_name[:-2] + "Right"
    return ict_name


_MIRRORED_UNSIDED = {"jawLeft": "jawRight", "jawRight": "jawLeft", "mouthLeft": "mouthRight", "mouthRight": "mouthLeft"}


def ict_partner(ict_name: str) -> str | None:
    """The channel a mirrored face reads instead: the other side of a left/right pair (`eyeBlink_L` →
    `eyeBlink_R`), the other direction of a sideways move (`jawLeft` → `jawRight`), or None (`jawOpen`)."""
    if ict_name.endswith(("_L", "_R")):
        return ict_name[:-1] + ("R" if ict_name.endswith("L") else "L")
    return _MIRRORED_UNSIDED.get(ict_name)


def arkit_to_ict_names(arkit_name: str) -> tuple[str, ...]:
    """The ICT channels one ARKit channel drives (two for the merged pairs, none for `tongueOut`)."""
    return tuple(n for n in ICT_EXPRESSIONS if ict_to_arkit_name(n) == arkit_name)


def ict_to_arkit(weights: np.ndarray) -> dict[str, float]:
    """(53,) ICT-ordered weights → {ARKit name: weight} for the 51 supported channels (merged pairs averaged)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(ICT_EXPRESSIONS),):
        raise ValueError(f"expected {len(ICT_EXPRESSIONS)} ICT weights, got shape {weights.shape}")
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, value in zip(ICT_EXPRESSIONS, weights, strict=True):
        key = ict_to_arkit_name(name)
        sums[key] = sums.get(key, 0.0) + float(value)
        counts[key] = counts.get(key, 0) + 1
    return {k: sums[k] / counts[k] for k in ARKIT_BLENDSHAPES if k in sums}


def arkit_to_ict(blendshapes: Mapping[str, float]) -> np.ndarray:
    """{ARKit name: weight} → (53,) ICT-ordered weights; a merged channel drives both sides; unknown names raise."""
    out = np.zeros(len(ICT_EXPRESSIONS), dtype=np.float64)
    for key, value in blendshapes.items():
        if key not in ARKIT_BLENDSHAPES:
            raise KeyError(f"unknown ARKit blendshape name {key!r}")
        for ict_name in arkit_to_ict_names(key):
            out[ICT_EXPRESSIONS.index(ict_name)] = float(value)
    return out


def to_vrm_name(arkit_name: str) -> str:
    """ARKit name → VRM "perfect sync" PascalCase (`eyeBlinkLeft` → `EyeBlinkLeft`)."""
    return arkit_name[:1].upper() + arkit_name[1:]


# FaceScape bilinear model v1.6: its 51 blendshapes in file order (slices 1..51 of shape_bm_core).
FACESCAPE_EXPRESSIONS: tuple[str, ...] = (
    "EyeBlink_L", "EyeBlink_R", "EyeSquint_L", "EyeSquint_R", "EyeDown_L", "EyeDown_R", "EyeIn_L", "EyeIn_R",
    "EyeOpen_L", "EyeOpen_R", "EyeOut_L", "EyeOut_R", "EyeUp_L", "EyeUp_R", "BrowsD_L", "BrowsD_R",
    "BrowsU_C", "BrowsU_L", "BrowsU_R", "JawOpen", "LipsTogether", "JawLeft", "JawRight", "JawFwd",
    "LipsUpperUp_L", "LipsUpperUp_R", "LipsLowerDown_L", "LipsLowerDown_R", "LipsUpperClose",
    "LipsLowerClose", "MouthSmile_L", "MouthSmile_R", "MouthDimple_L", "MouthDimple_R", "LipsStretch_L",
    "LipsStretch_R", "MouthFrown_L", "MouthFrown_R", "MouthPress_L", "MouthPress_R", "LipsPucker",
    "LipsFunnel", "MouthLeft", "MouthRight", "ChinLowerRaise", "ChinUpperRaise", "Sneer_L", "Sneer_R",
    "Puff", "CheekSquint_L", "CheekSquint_R",
)  # fmt: skip

# The one FaceScape → ARKit table. `_L`/`_R` suffixes are handled by `facescape_to_arkit_name`.
_FACESCAPE_STEM_TO_ARKIT = {
    "EyeBlink": "eyeBlink", "EyeSquint": "eyeSquint", "EyeDown": "eyeLookDown", "EyeIn": "eyeLookIn",
    "EyeOpen": "eyeWide", "EyeOut": "eyeLookOut", "EyeUp": "eyeLookUp", "BrowsD": "browDown",
    "BrowsU_C": "browInnerUp", "BrowsU": "browOuterUp", "JawOpen": "jawOpen", "LipsTogether": "mouthClose",
    "JawLeft": "jawLeft", "JawRight": "jawRight", "JawFwd": "jawForward", "LipsUpperUp": "mouthUpperUp",
    "LipsLowerDown": "mouthLowerDown", "LipsUpperClose": "mouthRollUpper", "LipsLowerClose": "mouthRollLower",
    "MouthSmile": "mouthSmile", "MouthDimple": "mouthDimple", "LipsStretch": "mouthStretch",
    "MouthFrown": "mouthFrown", "MouthPress": "mouthPress", "LipsPucker": "mouthPucker",
    "LipsFunnel": "mouthFunnel", "MouthLeft": "mouthLeft", "MouthRight": "mouthRight",
    "ChinLowerRaise": "mouthShrugLower", "ChinUpperRaise": "mouthShrugUpper", "Sneer": "noseSneer",
    "Puff": "cheekPuff", "CheekSquint": "cheekSquint",
}  # fmt: skip


def facescape_to_arkit_name(facescape_name: str) -> str:
    """`MouthSmile_L` → `mouthSmileLeft`, `BrowsU_C` → `browInnerUp`, `Puff` → `cheekPuff`."""
    if facescape_name in _FACESCAPE_STEM_TO_ARKIT:
        return _FACESCAPE_STEM_TO_ARKIT[facescape_name]
    stem, _, side = facescape_name.rpartition("_")
    if side not in ("L", "R") or stem not in _FACESCAPE_STEM_TO_ARKIT:
        raise KeyError(f"unknown FaceScape blendshape {facescape_name!r}")
    return _FACESCAPE_STEM_TO_ARKIT[stem] + ("Left" if side == "L" else "Right")


def index_of(names: Sequence[str], name: str) -> int:
    """Index of `name` in `names` with an error that lists what exists."""
    try:
        return list(names).index(name)
    except ValueError:
        raise KeyError(f"unknown blendshape {name!r}; known: {', '.join(names)}") from None
