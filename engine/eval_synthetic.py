"""Synthetic performers with known truth: random ICT identities rendered through random cameras and lights,
tracked by real MediaPipe. The `synthetic` part of `scapecast eval`, and the clips `tools/make_face_clips.py`
renders to train on.

A `SyntheticFace` is one person in front of one camera: identity coefficients drawn from the model's
Gaussian prior, a skin tone, a vertical field of view of 35–70° with the head at a distance that frames it
like a webcam, a light rig and a wall. `performance(kind, …)` scripts what it does; `render_clip` renders the
frames and `track_clip` runs MediaPipe in tracking mode over them (so its temporal behaviour is the real one).

Seeds: identities for evaluation come from `EVAL_SEED_BASE` upwards, training clips from below it, so no
evaluated face was ever trained on; neither is the default identity.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engine.bundles import load_identity
from engine.config import Config, RenderConfig
from engine.detail.weights import KEY_EXPRESSIONS, key_expression_weights
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.render.camera import euler_to_quaternion
from engine.render.materials import bake_face_albedo
from engine.render.renderer import AvatarRenderer, Lighting
from engine.solve.face_solver import FaceSolver
from engine.solve.performer import Performer
from engine.tracking import FaceTracker
from engine.types import FaceState, Frame, HeadPose, Landmarks, TrackingState

log = logging.getLogger(__name__)

N = len(ICT_EXPRESSIONS)
EVAL_SEED_BASE = 1_000_000  # evaluation identities: seeds ≥ this; training clips: below
FPS = 30.0
_CH = {name: i for i, name in enumerate(ICT_EXPRESSIONS)}


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class SyntheticFace:
    """One performer in front of one camera. identity_weights: (n_id,); skin_tone: (3,) albedo multiplier;
    fov_y_deg: the camera's vertical field of view; distance_cm: head to camera; size: (width, height) px."""

    seed: int
    identity_weights: np.ndarray
    skin_tone: np.ndarray
    fov_y_deg: float
    distance_cm: float
    size: tuple[int, int]
    key_direction: np.ndarray
    key_gain: float
    wall: np.ndarray

    @staticmethod
    def draw(
        model: FaceModel, seed: int, fov_y_deg: float | None = None, size: tuple[int, int] = (512, 512)
    ) -> SyntheticFace:
        """A random face for `seed` (identity from the model's prior; `fov_y_deg` None: uniform 35–70°)."""
        rng = np.random.default_rng(seed)
        w_id = (rng.standard_normal(model.n_identity) * model.identity_prior_std).astype(np.float32)
        fov = float(rng.uniform(35.0, 70.0)) if fov_y_deg is None else float(fov_y_deg)
        # The head fills ~45–60 % of the frame's height, as a webcam frames it: a 22 cm head at that share.
        share = rng.uniform(0.42, 0.6)
        distance = 22.0 / (share * 2.0 * math.tan(math.radians(fov) / 2.0))
        # Skin from pale to dark brown (albedo multipliers on the renderer's skin), slightly varied in hue.
        darkness = rng.uniform(0.0, 1.0)
        tone = np.array([1.0, 0.93, 0.88]) * (1.0 - 0.72 * darkness) + rng.normal(0, 0.03, 3)
        azimuth, elevation = rng.uniform(-60, 60), rng.uniform(-10, 50)
        direction = np.array([
            math.sin(math.radians(azimuth)) * math.cos(math.radians(elevation)), math.sin(math.radians(elevation)),
            math.cos(math.radians(azimuth)) * math.cos(math.radians(elevation)),
        ])  # fmt: skip
        return SyntheticFace(
            seed, w_id, np.clip(tone, 0.2, 1.1).astype(np.float32), fov, float(distance), size,
            direction.astype(np.float32), float(rng.uniform(0.7, 1.25)), rng.uniform(40, 220, 3).astype(np.float32),
        )  # fmt: skip

    def identity(self, model: FaceModel, base_albedo: np.ndarray) -> Identity:
        """The identity the renderer draws: this face's shape, the baked skin albedo in this face's tone."""
        texture = np.clip(base_albedo.astype(np.float32) * self.skin_tone, 0, 255).astype(np.uint8)
        return Identity(f"synthetic-{self.seed}", model.model_id, self.identity_weights, np.zeros(N, np.float32),
                        texture=texture)  # fmt: skip

    def lighting(self) -> Lighting:
        light = Lighting()
        light.key_direction = self.key_direction
        light.key_color = light.key_color * np.float32(self.key_gain)
        return light


@dataclass(frozen=True)
class Performance:
    """What a performer does, per frame at FPS: weights (T, 53) in [0, 1], euler_deg (T, 3) yaw/pitch/roll,
    offset_cm (T, 2) the head's sideways/vertical offset from the optical axis."""

    kind: str
    weights: np.ndarray
    euler_deg: np.ndarray
    offset_cm: np.ndarray

    def __len__(self) -> int:
        return len(self.weights)


def _pattern(rng: np.random.Generator, table: np.ndarray) -> np.ndarray:
    """One expression a face makes: a key expression, a mix, a single channel, an asymmetric one or speech."""
    w = np.zeros(N)
    kind = rng.choice(
        ["key", "mix", "single", "wink", "half_smile", "speech", "sparse"], p=[0.25, 0.15, 0.15, 0.1, 0.1, 0.15, 0.1]
    )
    if kind == "key":
        row = table[rng.integers(1, len(KEY_EXPRESSIONS))]
        w = row * rng.uniform(0.3, 1.0 / max(row.max(), 1e-6))
    elif kind == "mix":
        a, b = rng.choice(np.arange(1, len(KEY_EXPRESSIONS)), 2, replace=False)
        w = table[a] * rng.uniform(0.3, 1.0) + table[b] * rng.uniform(0.3, 1.0)
    elif kind == "single":
        name = ICT_EXPRESSIONS[rng.integers(N)]
        w[_CH[name]] = rng.uniform(0.3, 1.0)
        if name.endswith(("_L", "_R")) and rng.uniform() < 0.6:
            other = name[:-1] + ("R" if name.endswith("L") else "L")
            w[_CH[other]] = np.clip(w[_CH[name]] + rng.normal(0, 0.1), 0, 1)
    elif kind == "wink":
        side = rng.choice(["L", "R"])
        w[_CH[f"eyeBlink_{side}"]] = rng.uniform(0.8, 1.0)
        w[_CH[f"eyeSquint_{side}"]] = rng.uniform(0.0, 0.4)
        w[_CH[f"cheekSquint_{side}"]] = rng.uniform(0.0, 0.4)
    elif kind == "half_smile":
        side = rng.choice(["L", "R"])
        w[_CH[f"mouthSmile_{side}"]] = rng.uniform(0.4, 1.0)
        w[_CH[f"mouthDimple_{side}"]] = rng.uniform(0.0, 0.3)
    elif kind == "speech":
        w[_CH["jawOpen"]] = rng.uniform(0.1, 0.6)
        w[_CH["mouthFunnel"]] = rng.uniform(0, 0.6) * (rng.uniform() < 0.3)
        w[_CH["mouthPucker"]] = rng.uniform(0, 0.6) * (rng.uniform() < 0.2)
        w[_CH["mouthClose"]] = min(w[_CH["jawOpen"]], rng.uniform(0, 0.3)) * (rng.uniform() < 0.3)
    else:
        for channel in rng.choice(N, size=rng.integers(2, 5), replace=False):
            w[channel] = rng.uniform(0.2, 1.0)
    w = np.clip(w, 0.0, 1.0)
    w[_CH["mouthClose"]] = min(w[_CH["mouthClose"]], w[_CH["jawOpen"]])  # ICT's corrective: never alone
    return w


_BROW_UP = ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R")
_BROW_DOWN = ("browDown_L", "browDown_R")


def _upper_face(rng: np.random.Generator, table: np.ndarray) -> np.ndarray:
    """An upper-face expression (brows raised, lowered, one brow, inner brows; wide or squinted eyes), with a
    lower-face expression over it half the time, so that the brows are seen moving on their own and together
    with the mouth (the first training clips drew brows rarely: a few clips in a hundred)."""
    w = np.zeros(N)
    kind = rng.choice(
        ["raise", "inner", "one_brow", "lower", "surprise", "squint"], p=[0.25, 0.15, 0.15, 0.2, 0.15, 0.1]
    )
    level = rng.uniform(0.3, 1.0)
    if kind == "raise":
        w[[_CH[n] for n in _BROW_UP]] = np.clip(level + rng.normal(0, 0.1, 4), 0, 1)
    elif kind == "inner":
        w[[_CH["browInnerUp_L"], _CH["browInnerUp_R"]]] = level
        w[[_CH[n] for n in _BROW_DOWN]] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.4)  # worry: inner up, outer down
    elif kind == "one_brow":
        side = rng.choice(["L", "R"])
        w[[_CH[f"browInnerUp_{side}"], _CH[f"browOuterUp_{side}"]]] = level
    elif kind == "lower":
        w[[_CH[n] for n in _BROW_DOWN]] = np.clip(level + rng.normal(0, 0.1, 2), 0, 1)
        w[[_CH["eyeSquint_L"], _CH["eyeSquint_R"]]] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.5)
    elif kind == "surprise":
        w[[_CH[n] for n in _BROW_UP]] = level
        w[[_CH["eyeWide_L"], _CH["eyeWide_R"]]] = rng.uniform(0.3, 1.0)
        w[_CH["jawOpen"]] = rng.uniform(0.0, 0.5)
    else:
        w[[_CH["eyeSquint_L"], _CH["eyeSquint_R"]]] = level
        w[[_CH["cheekSquint_L"], _CH["cheekSquint_R"]]] = rng.uniform(0.0, 0.5)
    if rng.uniform() < 0.5:
        lower = _pattern(rng, table)
        lower[[i for i, name in enumerate(ICT_EXPRESSIONS) if name.startswith(("brow", "eyeWide", "eyeSquint"))]] = 0
        w = np.maximum(w, lower)
    w[_CH["mouthClose"]] = min(w[_CH["mouthClose"]], w[_CH["jawOpen"]])
    return np.clip(w, 0.0, 1.0)


def _sides(*names: str) -> list[int]:
    """Both sides' channel indices of ICT names given without their _L/_R suffix."""
    return [_CH[f"{name}_{side}"] for name in names for side in ("L", "R")]


def _compound(rng: np.random.Generator) -> np.ndarray:
    """A FACS compound a face makes that the key table lacks, the channels of one action moving together: a
    broad smile or laugh (cheeks and lower lids raised, upper lip lifted off the teeth, lips parted: AU 6 + 12 +
    10 + 25/26), a smile while talking, a sneer (AU 9 + 10), a pout or chin raise (AU 15 + 17), lips pressed
    (AU 24), speech with the lips drawn back, or a blink that raises the lower lids (the orbicularis closes
    both lids). The first training clips saw these channels only on their own or in random pairs, and a
    regressor trained on them read a real laugh's lifted upper lip as smile alone."""
    w = np.zeros(N)
    kind = rng.choice(
        ["broad_smile", "talking_smile", "sneer", "pout", "press", "drawn_speech", "squeezed_blink"],
        p=[0.3, 0.15, 0.1, 0.15, 0.1, 0.1, 0.1],
    )
    level = rng.uniform(0.4, 1.0)
    if kind in ("broad_smile", "talking_smile"):
        w[_sides("mouthSmile")] = np.clip(level + rng.normal(0, 0.08, 2), 0, 1)
        w[_sides("cheekSquint")] = rng.uniform(0.0, 0.8) * level
        w[_sides("eyeSquint")] = rng.uniform(0.0, 0.6) * level
        if kind == "broad_smile":
            w[_sides("mouthUpperUp")] = rng.uniform(0.0, 0.9) * (rng.uniform() < 0.7)
            w[_sides("mouthLowerDown")] = rng.uniform(0.0, 0.6) * (rng.uniform() < 0.5)
            w[_CH["jawOpen"]] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.5)
        else:
            w[_CH["jawOpen"]] = rng.uniform(0.05, 0.4)
            w[_sides("mouthUpperUp")] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.5)
    elif kind == "sneer":
        side = rng.choice(["L", "R", "both"])
        sides = ("L", "R") if side == "both" else (side,)
        for s in sides:
            w[_CH[f"noseSneer_{s}"]] = level
            w[_CH[f"mouthUpperUp_{s}"]] = rng.uniform(0.3, 1.0)
            w[_CH[f"browDown_{s}"]] = rng.uniform(0.0, 0.6) * (rng.uniform() < 0.5)
    elif kind == "pout":
        w[_sides("mouthFrown")] = rng.uniform(0.0, 0.8)
        w[_CH["mouthShrugLower"]] = level
        w[_CH["mouthShrugUpper"]] = rng.uniform(0.0, 0.6) * (rng.uniform() < 0.5)
        w[_CH["mouthPucker"]] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.3)
    elif kind == "press":
        w[_sides("mouthPress")] = np.clip(level + rng.normal(0, 0.08, 2), 0, 1)
        w[_CH["mouthRollLower"]] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.4)
        w[_CH["mouthShrugLower"]] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.4)
    elif kind == "drawn_speech":
        w[_CH["jawOpen"]] = rng.uniform(0.05, 0.5)
        w[_sides("mouthStretch")] = rng.uniform(0.0, 0.7)
        w[_sides("mouthUpperUp")] = rng.uniform(0.0, 0.7)
        w[_sides("mouthLowerDown")] = rng.uniform(0.0, 0.7)
    else:
        w[_sides("eyeBlink")] = rng.uniform(0.6, 1.0)
        w[_sides("eyeSquint")] = rng.uniform(0.2, 0.8)
        w[_sides("cheekSquint")] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.5)
    w[_CH["mouthClose"]] = min(w[_CH["mouthClose"]], w[_CH["jawOpen"]])
    return np.clip(w, 0.0, 1.0)


def _viseme(rng: np.random.Generator) -> np.ndarray:
    """One mouth shape of running speech (a viseme), the lips moving with the jaw as they do when talking: an
    open vowel (jaw drop with the lower lip pulled further down, AU 26 + 16), a spread vowel (lips stretched,
    AU 20 + 25), a rounded vowel (AU 18 + 22), a lip closure of m/b/p (AU 24, the chin raised or the lips
    rolled in), f/v (the lower lip under the upper teeth, AU 28 + 10) or a mid vowel. The key table's speech
    moved the jaw with funnel or pucker only, and talking faces read stretch, press, roll and shrug badly."""
    w = np.zeros(N)
    kind = rng.choice(
        ["open", "spread", "round", "closure", "labiodental", "mid"], p=[0.25, 0.2, 0.15, 0.15, 0.1, 0.15]
    )
    if kind == "open":
        w[_CH["jawOpen"]] = rng.uniform(0.25, 0.7)
        w[_sides("mouthLowerDown")] = rng.uniform(0.1, 0.6)
        w[_sides("mouthUpperUp")] = rng.uniform(0.0, 0.3) * (rng.uniform() < 0.4)
    elif kind == "spread":
        w[_CH["jawOpen"]] = rng.uniform(0.05, 0.3)
        w[_sides("mouthStretch")] = rng.uniform(0.2, 0.7)
        w[_sides("mouthSmile")] = rng.uniform(0.0, 0.3) * (rng.uniform() < 0.5)
        w[_sides("mouthLowerDown")] = rng.uniform(0.0, 0.4)
        w[_sides("mouthUpperUp")] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.5)
    elif kind == "round":
        w[_CH["jawOpen"]] = rng.uniform(0.05, 0.35)
        w[_CH["mouthFunnel"]] = rng.uniform(0.2, 0.8)
        w[_CH["mouthPucker"]] = rng.uniform(0.1, 0.7)
    elif kind == "closure":
        w[_sides("mouthPress")] = rng.uniform(0.2, 0.7)
        w[_CH["mouthShrugLower"]] = rng.uniform(0.0, 0.6) * (rng.uniform() < 0.5)
        w[[_CH["mouthRollLower"], _CH["mouthRollUpper"]]] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.4)
    elif kind == "labiodental":
        w[_CH["mouthRollLower"]] = rng.uniform(0.3, 0.9)
        w[_sides("mouthUpperUp")] = rng.uniform(0.0, 0.4)
        w[_CH["jawOpen"]] = rng.uniform(0.0, 0.2)
    else:
        w[_CH["jawOpen"]] = rng.uniform(0.1, 0.4)
        w[_sides("mouthLowerDown")] = rng.uniform(0.0, 0.4)
        w[_CH["mouthShrugUpper"]] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.3)
    sided = [i for i, name in enumerate(ICT_EXPRESSIONS) if name.endswith(("_L", "_R")) and w[i] > 0]
    w[sided] += rng.normal(0, 0.06, len(sided))  # speech is rarely exactly symmetric
    return w


def _speech_or_emotion(rng: np.random.Generator) -> np.ndarray:
    """A speech viseme (`_viseme`) or a face the basic emotions make, whole, as FACS describes them: sadness
    (inner brows up, corners down, chin raised: AU 1 + 4 + 15 + 17), fear (brows up and drawn together, eyes
    wide, lips stretched: AU 1 + 2 + 4 + 5 + 20), disgust (AU 9 + 10 + 15 + 17), anger (brows down, lids
    tightened, lips pressed: AU 4 + 5/7 + 24), contempt (a one-sided smile with its dimple: AU R12 + R14), a
    dimpler (AU 14, often with pressed lips) or the lips pulled to one side (a thinking mouth). The clips before
    these saw the sideways mouth and the dimple only alone, and read a real face's closed lips drawn to one side
    as a pucker."""
    kind = rng.choice(
        ["viseme", "sadness", "fear", "disgust", "anger", "contempt", "dimpler", "sideways"],
        p=[0.45, 0.1, 0.07, 0.08, 0.08, 0.07, 0.07, 0.08],
    )
    if kind == "viseme":
        return np.clip(_viseme(rng), 0.0, 1.0)
    w = np.zeros(N)
    level = rng.uniform(0.3, 1.0)
    if kind == "sadness":
        w[_sides("browInnerUp")] = level
        w[_sides("browDown")] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.5)
        w[_sides("mouthFrown")] = rng.uniform(0.2, 0.8)
        w[_CH["mouthShrugLower"]] = rng.uniform(0.0, 0.6) * (rng.uniform() < 0.5)
    elif kind == "fear":
        w[_sides("browInnerUp")] = level
        w[_sides("browOuterUp")] = rng.uniform(0.2, 0.8)
        w[_sides("browDown")] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.5)
        w[_sides("eyeWide")] = rng.uniform(0.3, 1.0)
        w[_sides("mouthStretch")] = rng.uniform(0.2, 0.7)
        w[_CH["jawOpen"]] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.5)
    elif kind == "disgust":
        w[_sides("noseSneer")] = level
        w[_sides("mouthUpperUp")] = rng.uniform(0.2, 0.7)
        w[_sides("mouthFrown")] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.5)
        w[_CH["mouthShrugLower"]] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.5)
        w[_sides("browDown")] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.5)
    elif kind == "anger":
        w[_sides("browDown")] = level
        eyes = "eyeWide" if rng.uniform() < 0.4 else "eyeSquint"
        w[_sides(eyes)] = rng.uniform(0.0, 0.6)
        w[_sides("mouthPress")] = rng.uniform(0.0, 0.7) * (rng.uniform() < 0.6)
    elif kind == "contempt":
        side = rng.choice(["L", "R"])
        w[_CH[f"mouthSmile_{side}"]] = rng.uniform(0.1, 0.5)
        w[_CH[f"mouthDimple_{side}"]] = level
    elif kind == "dimpler":
        w[_sides("mouthDimple")] = np.clip(level + rng.normal(0, 0.08, 2), 0, 1)
        w[_sides("mouthPress")] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.5)
        w[_sides("mouthSmile")] = rng.uniform(0.0, 0.3) * (rng.uniform() < 0.5)
    else:
        side = rng.choice(["Left", "Right"])
        w[_CH[f"mouth{side}"]] = level
        w[_CH[f"jaw{side}"]] = rng.uniform(0.0, 0.3) * (rng.uniform() < 0.3)
        w[_sides("mouthPress")] = rng.uniform(0.0, 0.5) * (rng.uniform() < 0.4)
        w[_CH["mouthShrugLower"]] = rng.uniform(0.0, 0.4) * (rng.uniform() < 0.3)
    return np.clip(w, 0.0, 1.0)


def performance(
    kind: str,
    seconds: float,
    seed: int,
    max_yaw_deg: float = 30.0,
    upper_face_share: float = 0.0,
    compound_share: float = 0.0,
    speech_emotion_share: float = 0.0,
) -> Performance:
    """A scripted performance at FPS.

    `neutral_start`: 1.5 s relaxed, then expressions; `expressive_start`: a broad expression from the first
    frame; `smile_hold`: a smile held throughout with speech and blinks over it; `random`: expressions from
    the first frame on, neutral about a third of the time (training clips), and with `upper_face_share` that
    share of its expressions drawn from the upper face (`_upper_face`), with `compound_share` that share from
    FACS compounds (`_compound`), with `speech_emotion_share` that share from speech visemes and
    the basic emotions (`_speech_or_emotion`). Head turns up to `max_yaw_deg`,
    blinks every 2–5 s."""
    rng = np.random.default_rng(seed)
    table = key_expression_weights()
    n = int(round(seconds * FPS))
    keys: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
    t = 0.0
    pose_limit = np.array([max_yaw_deg, 0.6 * max_yaw_deg, 0.45 * max_yaw_deg])

    def pose() -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(-1, 1, 3) * pose_limit * rng.uniform(0.2, 1.0), rng.normal(0, 2.0, 2)

    smile = np.zeros(N)
    smile[[_CH["mouthSmile_L"], _CH["mouthSmile_R"]]] = rng.uniform(0.5, 0.8)
    smile[[_CH["cheekSquint_L"], _CH["cheekSquint_R"]]] = rng.uniform(0.0, 0.3)
    if kind == "neutral_start":
        euler, offset = pose()
        keys += [(0.0, np.zeros(N), euler * 0.3, offset), (1.5, np.zeros(N), euler * 0.3, offset)]
        t = 1.5
    elif kind == "expressive_start":
        w = table[rng.integers(1, len(KEY_EXPRESSIONS))]
        w = np.clip(w * rng.uniform(0.7, 1.0 / max(w.max(), 1e-6)), 0, 1)
        euler, offset = pose()
        keys += [(0.0, w, euler, offset), (1.5, w, euler, offset)]
        t = 1.5
    elif kind not in ("smile_hold", "random"):
        raise ValueError(f"unknown performance kind {kind!r}")
    while t < seconds + 1.0:
        # Training clips change expression quickly (more distinct expressions per rendered second).
        hold = rng.uniform(0.25, 0.6) if kind == "random" else rng.uniform(0.4, 1.2)
        if kind == "random" and rng.uniform() < 0.33:
            w = np.zeros(N)
        elif speech_emotion_share > 0 and rng.uniform() < speech_emotion_share:
            w = _speech_or_emotion(rng)
        elif compound_share > 0 and rng.uniform() < compound_share:
            w = _compound(rng)
        elif upper_face_share > 0 and rng.uniform() < upper_face_share:
            w = _upper_face(rng, table)
        else:
            w = _pattern(rng, table)
        if kind == "smile_hold":
            w = np.maximum(smile, np.where(np.arange(N) == _CH["jawOpen"], w, 0.0))
        euler, offset = pose()
        ease = min(rng.uniform(0.1, 0.4), 0.6 * hold)
        keys += [(t + ease, w, euler, offset), (t + hold, w, euler, offset)]
        t += hold
    if kind == "smile_hold":
        keys.insert(0, (0.0, smile, keys[0][2], keys[0][3]))
    times = np.array([k[0] for k in keys])
    frame_t = np.arange(n) / FPS
    seg = np.clip(np.searchsorted(times, frame_t, side="right") - 1, 0, len(keys) - 2)
    s = _smoothstep((frame_t - times[seg]) / np.maximum(times[seg + 1] - times[seg], 1e-9))[:, None]

    def interpolate(column: int) -> np.ndarray:
        values = np.stack([k[column] for k in keys])
        return values[seg] + s * (values[seg + 1] - values[seg])

    weights = interpolate(1)
    blink = np.zeros(n)
    start = rng.uniform(0.5, 2.5)
    while start < seconds:
        rel = frame_t - start
        blink = np.maximum(blink, np.where(rel < 0.1, _smoothstep(rel / 0.1), _smoothstep(1 - (rel - 0.1) / 0.15)))
        start += rng.uniform(2.0, 5.0)
    for name in ("eyeBlink_L", "eyeBlink_R"):
        weights[:, _CH[name]] = np.maximum(weights[:, _CH[name]], blink)
    return Performance(kind, np.clip(weights, 0, 1).astype(np.float32), interpolate(2).astype(np.float32),
                       interpolate(3).astype(np.float32))  # fmt: skip


class ClipRenderer:
    """Renders performances of synthetic faces (one GL context reused; a renderer per identity)."""

    def __init__(self, model: FaceModel, render_config: RenderConfig) -> None:
        self.model = model
        self.render_config = render_config
        self._albedo = bake_face_albedo(model, 512)

    def frames(self, face: SyntheticFace, perf: Performance, quality_seed: int | None = None) -> Iterator[Frame]:
        """The performance's frames, RGB, with true weights and pose; camera-like degradations (noise,
        blur, JPEG) when `quality_seed` is given."""
        width, height = face.size
        config = self.render_config.model_copy(update={
            "width": width, "height": height, "samples": 0, "background": (0.0, 0.0, 0.0, 0.0), "debug_view": "none",
            "follow_pose_translation": True, "backend": "egl", "fov_y_deg": face.fov_y_deg,
            "camera_distance_cm": face.distance_cm,
        })  # fmt: skip
        rng = np.random.default_rng(quality_seed)
        quaternions = euler_to_quaternion(*perf.euler_deg.T.astype(np.float64))
        wall = _wall(width, height, face.wall)
        with AvatarRenderer(self.model, face.identity(self.model, self._albedo), config) as renderer:
            renderer.detail = False
            renderer.lighting = face.lighting()
            for i in range(len(perf)):
                translation = np.array([perf.offset_cm[i, 0], perf.offset_cm[i, 1], -face.distance_cm])
                pose = HeadPose(quaternions[i], translation, 1.0)
                state = FaceState(pose, perf.weights[i].astype(np.float64), TrackingState.TRACKING, 1.0, 0, i)
                rgba = renderer.render(state).image
                alpha = rgba[..., 3:4].astype(np.float32) * (1.0 / 255.0)
                image = rgba[..., :3] * alpha + wall * (1.0 - alpha)
                if quality_seed is not None:
                    image = _degrade(image, rng)
                rgb = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
                yield Frame(rgb, 0, i, perf.weights[i].copy(), pose, t_media_ns=round(i * 1e9 / FPS))


def _wall(width: int, height: int, colour: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(height - 1, 1)
    shade = (1.08 - 0.2 * y) * (1.0 - 0.1 * ((x - 0.5) ** 2 + (y - 0.5) ** 2))
    return (colour[None, None, :] * shade[..., None]).astype(np.float32)


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Webcam-like: sensor noise, a little defocus, JPEG compression (each at a random strength)."""
    image = image + rng.normal(0, rng.uniform(0.5, 4.0), image.shape).astype(np.float32)
    if rng.uniform() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    quality = int(rng.uniform(45, 95))
    ok, encoded = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).astype(np.float32) if ok else image


def track_clip(frames: Iterator[Frame], config: Config) -> tuple[list[Frame], list[Landmarks | None]]:
    """MediaPipe in tracking mode over a clip: the frames (images dropped) and face 0's landmarks or None."""

    kept: list[Frame] = []
    found: list[Landmarks | None] = []
    with FaceTracker(config.tracking, static=False) as tracker:
        for frame in frames:
            faces = tracker.process(frame)
            found.append(faces[0] if faces else None)
            kept.append(Frame(np.zeros((0, 0, 3), np.uint8), frame.t_capture_ns, frame.index, frame.true_weights,
                              frame.true_pose, frame.t_media_ns))  # fmt: skip
    return kept, found


# -- the eval part --------------------------------------------------------------------------------------------

KINDS = ("neutral_start", "expressive_start", "smile_hold")
WINDOWS_S = ((0.0, 0.5), (0.5, 1.0), (1.0, 3.0), (3.0, 10.0))
FOVS = (35.0, 50.0, 70.0)
DRIVEN = 0.1  # a channel is driven in a clip where its truth exceeds this somewhere
# Channel groups the learned regression is reported on (issue #13: better than the geometric fit on each).
GROUPS = {
    "brows": ("brow",),
    "eyes": ("eye",),
    "jaw": ("jaw",),
    "mouth": ("mouth", "cheek", "nose"),
}
GROUP_CHANNELS = {g: np.array([i for i, n in enumerate(ICT_EXPRESSIONS) if n.startswith(p)]) for g, p in GROUPS.items()}
BLINKS = np.array([_CH["eyeBlink_L"], _CH["eyeBlink_R"]])
# The wink bar (issue: learned regression): the winking eye reads at least WINK_CLOSED, the other at most WINK_OPEN.
# A true wink here: one eye's truth at least WINK_CLOSED, the other's at most 0.1.
WINK_CLOSED, WINK_OPEN, WINK_TRUE_OPEN = 0.7, 0.2, 0.1


def wink_readings(blinks: np.ndarray, ours: np.ndarray, closed: float, open_at_most: float | None = None,
                  margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(T, 2) blinks (left, right) a wink is read from (the truth, or a reference track), (T, 2) ours →
    (W, 2) their and (W, 2) our (winking eye, open eye) readings on the frames where one eye is at least
    `closed` and the other at most `open_at_most` (None: no limit) and at least `margin` below it."""
    blinks, ours = np.nan_to_num(np.asarray(blinks, float)), np.asarray(ours, float)
    winking = np.argmax(blinks, axis=1)
    rows = np.arange(len(blinks))
    shut, other = blinks[rows, winking], blinks[rows, 1 - winking]
    frames = (shut >= closed) & (other <= shut - margin)
    if open_at_most is not None:
        frames &= other <= open_at_most
    pick = rows[frames], winking[frames]
    return (np.stack([blinks[pick], blinks[pick[0], 1 - pick[1]]], axis=1),
            np.stack([ours[pick], ours[pick[0], 1 - pick[1]]], axis=1))  # fmt: skip


def wink_summary(ours: np.ndarray) -> dict[str, Any]:
    """(W, 2) our (winking eye, open eye) readings → frames, means and the shares meeting the wink bar."""
    if not len(ours):
        return {"frames": 0}
    return {
        "frames": len(ours),
        "closed_mean": round(float(ours[:, 0].mean()), 3),
        "closed_share_at_least": round(float(np.mean(ours[:, 0] >= WINK_CLOSED)), 3),
        "open_mean": round(float(ours[:, 1].mean()), 3),
        "open_share_at_most": round(float(np.mean(ours[:, 1] <= WINK_OPEN)), 3),
    }


def clip_errors(truth: np.ndarray, solved: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Per time window after the face appears: mean |w − w_true| on the clip's driven channels and on all."""
    driven = truth.max(axis=0) > DRIVEN
    out: dict[str, Any] = {}
    for lo, hi in WINDOWS_S:
        rows = valid.copy()
        rows[: int(lo * FPS)] = False
        rows[int(hi * FPS) :] = False
        if not rows.any():
            continue
        err = np.abs(solved[rows] - truth[rows])
        out[f"{lo:g}-{hi:g}s"] = {
            "driven": round(float(err[:, driven].mean()), 4) if driven.any() else None,
            "all": round(float(err.mean()), 4),
        }
        # Per channel group: the error on that group's driven channels (None where the clip drives none).
        for group, ids in GROUP_CHANNELS.items():
            ids = ids[driven[ids]]
            out[f"{lo:g}-{hi:g}s"][group] = round(float(err[:, ids].mean()), 4) if len(ids) else None
    return out


def solve_clip(found: list[Landmarks | None], frames: list[Frame], solver: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """Solve a tracked clip frame by frame on its own clock: (T, 53) weights, (T,) valid, solver status."""
    solved = np.zeros((len(found), N))
    valid = np.zeros(len(found), bool)
    for i, (landmarks, frame) in enumerate(zip(found, frames, strict=True)):
        state = solver.solve(landmarks, frame.clock_ns(media=True), i)
        solved[i] = state.weights
        valid[i] = state.tracking == TrackingState.TRACKING
    status = solver.status() if hasattr(solver, "status") else {}
    return solved, valid, status


def evaluate_synthetic(
    config: Config, identities: int = 3, seconds: float = 10.0, spread_identities: int = 20
) -> dict[str, Any]:
    """Held-out identities × cameras at 35/50/70° × the three scripted kinds, solved with the online
    performer estimate (`auto`) and with the true identity and camera: errors per window after the face
    appears, the FOV estimates; then one script (`neutral_start`, 50°) on `spread_identities` identities,
    solved with `auto`: how much the weights differ between identities doing the same thing."""

    model = FaceModel.load()
    embedding = LandmarkEmbedding.load()
    clip_renderer = ClipRenderer(model, config.render)
    # The engine before the performer was its own thing: everyone solved as the default avatar (its shape, the
    # prior trained on its renders, the solver's default camera for files) — kept as the baseline.

    default = load_identity(config.identity.model_copy(update={"name": "default"}), model, config.detail)
    avatar = Performer.rendered_avatar(default, None)
    rows: list[dict[str, Any]] = []
    spread: dict[str, list[np.ndarray]] = {}
    winks: list[np.ndarray] = []  # `auto`'s (winking eye, open eye) readings on the scripts' one-eyed winks
    start = time.perf_counter()
    for k in range(identities):
        for fov in FOVS:
            seed = EVAL_SEED_BASE + 1000 * k + int(fov)
            face = SyntheticFace.draw(model, seed, fov_y_deg=fov)
            for kind_index, kind in enumerate(KINDS):
                perf = performance(kind, seconds, seed=EVAL_SEED_BASE + kind_index)  # one script per kind
                frames, found = track_clip(clip_renderer.frames(face, perf, quality_seed=seed), config)
                truth = perf.weights.astype(np.float64)
                tracked = round(float(np.mean([f is not None for f in found])), 3)
                entry: dict[str, Any] = {"identity": k, "fov_y_deg": fov, "kind": kind, "tracked": tracked}
                for label, performer in (
                    ("auto", Performer.auto()),
                    ("told", Performer.told(face.identity_weights, face.fov_y_deg)),
                    ("avatar", avatar),
                    ("geometric", Performer.auto()),
                ):
                    solve = config.solve
                    if label == "geometric":  # the plain geometric fit: `auto` without the learned prior
                        solve = solve.model_copy(update={"learned_prior": False})
                    # Estimates taken on the frame they are due (not when a thread finishes): repeatable numbers.
                    solver = FaceSolver(
                        model, embedding, performer, solve, config.performer, estimate_in_background=False
                    )
                    solved, valid, status = solve_clip(found, frames, solver)
                    entry[label] = clip_errors(truth, solved, valid)
                    if label == "auto":
                        entry["fov_estimate"] = status.get("fov_y_deg")
                        winks.append(wink_readings(truth[valid][:, BLINKS], solved[valid][:, BLINKS], WINK_CLOSED,
                                                   WINK_TRUE_OPEN)[1])  # fmt: skip
                        if fov == 50.0 and kind == "neutral_start":
                            spread.setdefault(kind, []).append(solved)
                rows.append(entry)
                log.info("synthetic %d/%d %s fov %g: auto %s told %s avatar %s (%.0f s)", k + 1, identities, kind,
                         fov, entry["auto"].get("3-10s"), entry["told"].get("3-10s"), entry["avatar"].get("3-10s"),
                         time.perf_counter() - start)  # fmt: skip
    for k in range(identities, spread_identities):
        seed = EVAL_SEED_BASE + 1000 * k + 50
        face = SyntheticFace.draw(model, seed, fov_y_deg=50.0)
        perf = performance("neutral_start", seconds, seed=EVAL_SEED_BASE + KINDS.index("neutral_start"))
        frames, found = track_clip(clip_renderer.frames(face, perf, quality_seed=seed), config)
        solver = FaceSolver(
            model, embedding, Performer.auto(), config.solve, config.performer, estimate_in_background=False
        )
        spread["neutral_start"].append(solve_clip(found, frames, solver)[0])
        log.info("synthetic spread: identity %d/%d (%.0f s)", k + 1, spread_identities, time.perf_counter() - start)
    summary = _synthetic_summary(rows, spread)
    summary["auto_winks"] = wink_summary(np.concatenate(winks) if winks else np.zeros((0, 2)))
    return {"clips": rows, "summary": summary}


def _synthetic_summary(rows: list[dict[str, Any]], spread: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for label in ("auto", "told", "avatar", "geometric"):
        last = f"{WINDOWS_S[-1][0]:g}-{WINDOWS_S[-1][1]:g}s"
        for group in GROUPS:
            values = [r[label][last][group] for r in rows if r[label].get(last, {}).get(group) is not None]
            summary[f"{label}_{group}_{last}"] = round(float(np.mean(values)), 4) if values else None
        for window in (f"{lo:g}-{hi:g}s" for lo, hi in WINDOWS_S):
            values = [
                r[label][window]["driven"]
                for r in rows
                if window in r[label] and r[label][window]["driven"] is not None
            ]
            summary[f"{label}_driven_{window}"] = round(float(np.mean(values)), 4) if values else None
            values = [r[label][window]["all"] for r in rows if window in r[label]]
            summary[f"{label}_all_{window}"] = round(float(np.mean(values)), 4) if values else None
    errors = {}
    for fov in FOVS:
        estimates = [r["fov_estimate"] for r in rows if r["fov_y_deg"] == fov and r.get("fov_estimate") is not None]
        errors[f"{fov:g}"] = round(float(np.max(np.abs(np.array(estimates) - fov))), 2) if estimates else None
    summary["fov_max_error_deg"] = errors
    differences = []
    for solved in spread.values():
        for a in range(len(solved)):
            for b in range(a + 1, len(solved)):
                differences.append(float(np.abs(solved[a][30:] - solved[b][30:]).mean()))
    summary["between_identities_mean_difference"] = round(float(np.mean(differences)), 4) if differences else None
    summary["spread_identities"] = sum(len(v) for v in spread.values())
    return summary


def synthetic_markdown(synthetic: dict[str, Any]) -> list[str]:
    """The synthetic part as Markdown lines."""
    s = synthetic["summary"]
    lines = [
        "## Synthetic held-out identities (rendered, tracked by MediaPipe; truth known)",
        "",
        "| solved with | " + " | ".join(f"{lo:g}–{hi:g} s" for lo, hi in WINDOWS_S) + " |",
        "| --- |" + " --- |" * len(WINDOWS_S),
    ]
    for label, text in (
        ("auto", "`auto` (the default)"),
        ("told", "the true identity and camera"),
        ("avatar", "before: as the default avatar"),
        ("geometric", "`auto` without the learned prior (the geometric fit)"),
    ):
        if f"{label}_driven_{WINDOWS_S[0][0]:g}-{WINDOWS_S[0][1]:g}s" not in s:
            continue  # a report from before that row existed
        cells = [f"{s[f'{label}_driven_{lo:g}-{hi:g}s']} / {s[f'{label}_all_{lo:g}-{hi:g}s']}" for lo, hi in WINDOWS_S]
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: mean |w − w_true| on driven channels / on all 53, over the frames in that window after the face "
        "appears.",
    ]
    last = f"{WINDOWS_S[-1][0]:g}-{WINDOWS_S[-1][1]:g}s"
    if f"auto_brows_{last}" in s:
        lines += [
            "",
            f"Per channel group, driven channels, {last.replace('-', '–').replace('s', ' s')} after the face appears:",
            "",
            "| solved with | " + " | ".join(GROUPS) + " |",
            "| --- |" + " --- |" * len(GROUPS),
        ]
        for label in ("auto", "told", "geometric"):
            lines.append(f"| {label} | " + " | ".join(str(s[f"{label}_{g}_{last}"]) for g in GROUPS) + " |")
    lines += [
        "",
        "Camera the solver used at the end of each clip (`auto`: read from the face with `performer.camera: "
        "learned`, the default), largest error per true FOV (°): "
        + ", ".join(f"{k}°: {v}" for k, v in s["fov_max_error_deg"].items()),
        "",
        f"Same script on {s['spread_identities']} different identities (50° camera), mean weight difference "
        f"between two of them: {s['between_identities_mean_difference']}",
        "",
    ]
    winks = s.get("auto_winks")
    if winks and winks["frames"]:
        lines += [
            f"One-eyed winks (`auto`, {winks['frames']} frames whose truth shuts one eye ≥ {WINK_CLOSED} with the "
            f"other ≤ {WINK_TRUE_OPEN}): the winking eye reads {winks['closed_mean']} "
            f"(≥ {WINK_CLOSED} on {100 * winks['closed_share_at_least']:.0f} %), the open one {winks['open_mean']} "
            f"(≤ {WINK_OPEN} on {100 * winks['open_share_at_most']:.0f} %).",
            "",
        ]
    return lines
