"""Eyes: blink from eyelid landmarks, gaze (`eyeLook*`) from the iris centres (DESIGN §3.5).

Left/right are the subject's. MediaPipe's canonical mesh numbers the subject's right eye 33 (outer corner) /
133 (inner) with iris centre 468, the subject's left eye 263 / 362 with iris centre 473 (checked on the golden
landmarks: on an unmirrored photo 468 lies on the image's left; indices in `engine.solve.landmark_sets`).
A mirrored image therefore reads as a face with its sides swapped, as it should.

ICT's `eyeLook*` shapes only move the eyelids; the eyeballs turn in the rig. The gaze convention shared with
the renderer (`gaze_angles` / `eye_rotations`): `eyeLookOut_L` = 1 turns the left eye `gaze_horizontal_deg`
towards the subject's left (+x), `eyeLookUp_*` = 1 turns it `gaze_up_deg` up, `eyeLookDown_*` `gaze_down_deg`
down. The solver inverts that from the iris offset relative to the eye corners (normalized by eye width) and
anchors those channels in the least-squares solve (`SolveConfig.gaze_anchor`: a pull towards the iris
read-out instead of towards zero; 0 pins them), so the lid motion they imply is accounted for and the lids can
still correct a noisy iris.

Blink: the upper lid's height above the eye corners (model y, mean of five upper-lid points) over the eye
width is affine in the weights. With every other channel held at its solved value, the blink that makes the
model's ratio equal the observed one is a one-dimensional solve; it replaces the least-squares blink. The
upper lid alone is used because a smile's squint raises the lower lid: with the full lid gap the portrait
photo read blink 0.71 (MediaPipe 0.26); with the upper lid 0.47.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.face_model import FaceModel
from engine.names import ICT_EXPRESSIONS
from engine.solve.expression import EmbeddedFace
from engine.solve.landmark_sets import INNER_CORNER, IRIS, OUTER_CORNER, UPPER_LID

_INDEX = {name: i for i, name in enumerate(ICT_EXPRESSIONS)}
BLINK = (_INDEX["eyeBlink_L"], _INDEX["eyeBlink_R"])
LOOK_OUT = (_INDEX["eyeLookOut_L"], _INDEX["eyeLookOut_R"])
LOOK_IN = (_INDEX["eyeLookIn_L"], _INDEX["eyeLookIn_R"])
LOOK_UP = (_INDEX["eyeLookUp_L"], _INDEX["eyeLookUp_R"])
LOOK_DOWN = (_INDEX["eyeLookDown_L"], _INDEX["eyeLookDown_R"])
GAZE_CHANNELS = np.array(LOOK_OUT + LOOK_IN + LOOK_UP + LOOK_DOWN)
# +x is the subject's left: looking out turns the left eye towards +x and the right eye towards −x.
_OUTWARD_SIGN = (1.0, -1.0)


@dataclass(frozen=True)
class GazeRanges:
    """Degrees of eyeball rotation that a weight of 1 stands for (the renderer and the solver share these)."""

    horizontal_deg: float = 30.0
    up_deg: float = 25.0
    down_deg: float = 25.0


DEFAULT_GAZE_RANGES = GazeRanges()


def gaze_angles(weights: np.ndarray, ranges: GazeRanges = DEFAULT_GAZE_RANGES) -> np.ndarray:
    """(53,) weights → (2, 2) per eye (left, right): yaw towards +x, pitch towards +y, in degrees."""
    out = np.empty((2, 2))
    for eye in range(2):
        horizontal = weights[LOOK_OUT[eye]] - weights[LOOK_IN[eye]]
        out[eye, 0] = _OUTWARD_SIGN[eye] * horizontal * ranges.horizontal_deg
        out[eye, 1] = weights[LOOK_UP[eye]] * ranges.up_deg - weights[LOOK_DOWN[eye]] * ranges.down_deg
    return out


def eye_rotations(weights: np.ndarray, ranges: GazeRanges = DEFAULT_GAZE_RANGES) -> np.ndarray:
    """(53,) weights → (2, 3, 3) model-frame rotations of the (left, right) eyeball about its centre."""
    rotations = np.empty((2, 3, 3))
    for eye, (yaw, pitch) in enumerate(np.radians(gaze_angles(weights, ranges))):
        ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
        # Pitch up moves the iris towards +y: rotation about +x by −pitch.
        rx = np.array([[1, 0, 0], [0, math.cos(pitch), math.sin(pitch)], [0, -math.sin(pitch), math.cos(pitch)]])
        rotations[eye] = ry @ rx
    return rotations


def eyeball_centers(model: FaceModel, identity_weights: np.ndarray | None = None) -> np.ndarray:
    """(2, 3) cm: centroids of the (left, right) eyeball meshes of that identity."""
    w = model.default_identity_weights() if identity_weights is None else identity_weights
    neutral = model.identity_neutral(w)
    regions = ("eyeball_left", "eyeball_right")
    return np.stack([neutral[model.topology.region_vertices(r)].mean(axis=0) for r in regions])


def _row_norm(v: np.ndarray) -> np.ndarray:
    """Euclidean norm along the last axis: what `np.linalg.norm(v, axis=-1)` computes, without its wrapper."""
    return np.sqrt(np.add.reduce(v * v, axis=-1))


class EyeModel:
    """Blink and gaze read from model-frame landmarks (cm), calibrated on one identity's embedded face.

    eyeball_centers: (2, 3) cm (`eyeball_centers`); the embedded iris centre's distance from them is the
    radius that turns iris offsets into angles. `valid` is False when the embedding's eye landmarks do not
    behave like eyes (width outside 1.5–5 cm, a blink that barely closes the lids, irises not on the
    eyeballs); the solver then keeps its least-squares eye channels.
    """

    def __init__(
        self, face: EmbeddedFace, eyeball_centers: np.ndarray, ranges: GazeRanges = DEFAULT_GAZE_RANGES
    ) -> None:
        self.face = face
        self.ranges = ranges
        radii = np.linalg.norm(face.neutral[np.array(IRIS)].mean(axis=1) - eyeball_centers, axis=1)
        self.radius = float(radii.mean())
        up = self._upper = np.array(UPPER_LID)
        self._blink = np.array(BLINK)
        # Upper-lid height above the corners along model y, affine in w: gap(w) = gap0 + gap_basis @ w, per eye.
        corners = np.array([OUTER_CORNER, INNER_CORNER])
        self._gap0 = face.neutral[up, 1].mean(axis=1) - face.neutral[corners, 1].mean(axis=0)  # (2,)
        self._gap_basis = face.basis[up, 1, :].mean(axis=1) - face.basis[corners, 1, :].mean(axis=0)  # (2, 53)
        width0 = self._width(face.neutral)
        self._width0 = width0
        # Gaze reference: per eye the outer and inner corner. (Lid points would average more noise away, but
        # they move with blink and eyeWide, which are solved from the same lids: the coupling is unstable.)
        self._corners = np.array([OUTER_CORNER, INNER_CORNER])  # (2 kinds, 2 eyes)
        self._iris = np.array(IRIS)  # (2, 5)
        self._corner0 = face.neutral[self._corners]  # (2, 2, 3)
        # Flattened (12, …) copies: the per-frame corner motion is two small matrix-vector products.
        self._corner0_flat = self._corner0.reshape(-1)
        self._corner_basis_flat = np.ascontiguousarray(face.basis[self._corners].reshape(12, -1))  # (12, 53)
        self._corner_gaze_flat = np.ascontiguousarray(self._corner_basis_flat[:, GAZE_CHANNELS])  # (12, 8)
        # Angles → the eight channels: [out, in, up, down] × (left, right), one (8, 4) product.
        h, u, d = ranges.horizontal_deg, ranges.up_deg, ranges.down_deg
        self._angles_to_gaze = np.array(
            [[1 / h, 0, 0, 0], [0, 0, -1 / h, 0], [-1 / h, 0, 0, 0], [0, 0, 1 / h, 0],
             [0, 1 / u, 0, 0], [0, 0, 0, 1 / u], [0, -1 / d, 0, 0], [0, 0, 0, -1 / d]]
        )  # fmt: skip
        self._mid0 = self._corner0.mean(axis=0)  # (2, 3)
        self._iris_rest = (face.neutral[self._iris].mean(axis=1) - self._mid0)[:, :2]  # (2, 2) cm
        self._mid0_list = self._mid0.tolist()
        self._iris_rest_list = self._iris_rest.tolist()
        blink_gain = np.array([self._gap_basis[e, BLINK[e]] for e in range(2)]) / width0
        self._blink_gain = blink_gain
        eyes_like = (width0 > 1.5) & (width0 < 5.0) & (blink_gain < -0.05) & (radii > 0.6) & (radii < 2.0)
        self.valid = bool(eyes_like.all())

    @staticmethod
    def _width(points: np.ndarray) -> np.ndarray:
        return np.linalg.norm(points[list(OUTER_CORNER)] - points[list(INNER_CORNER)], axis=1)

    def gaze(self, observed_model: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(478, 3) model-frame landmarks (cm), (53,) current weight estimate → (8,) `eyeLook*` weights in
        `GAZE_CHANNELS` order (out L/R, in L/R, up L/R, down L/R).

        The iris (mean of its five points) is read relative to the eye corners' midpoint, minus the corners'
        own motion under the weights: ICT's eyeLook and squint shapes move the corners, and uncorrected gaze
        reads ~20 % low. That motion depends on the gaze being solved, hence a short fixed-point iteration.
        The offset is scaled by the model's eye width over the observed one, so any face size reads the same
        angle.
        """
        weights = np.asarray(weights, dtype=np.float64)
        gaze = weights[GAZE_CHANNELS]
        # The corners under every channel but gaze (flattened (2 kinds, 2 eyes, 3)).
        corners_static = self._corner0_flat + self._corner_basis_flat @ weights - self._corner_gaze_flat @ gaze
        observed_corners = observed_model[self._corners]
        width = _row_norm(observed_corners[0] - observed_corners[1])
        raw = observed_model[self._iris].sum(axis=1) * 0.2 - (observed_corners[0] + observed_corners[1]) * 0.5
        # The per-eye scalar arithmetic below on Python floats (the same operations in the same order as the
        # (2, 3) array expressions they replace: numpy's per-call cost dwarfs the arithmetic here).
        (raw_lx, raw_ly, _), (raw_rx, raw_ry, _) = raw.tolist()
        width_l, width_r = width.tolist()
        (mid_lx, mid_ly, _), (mid_rx, mid_ry, _) = self._mid0_list
        (rest_lx, rest_ly), (rest_rx, rest_ry) = self._iris_rest_list
        radius = self.radius
        for _ in range(2):
            # Flattened corners: outer (left eye 0:3, right 3:6), inner (left 6:9, right 9:12).
            c = (corners_static + self._corner_gaze_flat @ gaze).tolist()
            dx, dy, dz = c[0] - c[6], c[1] - c[7], c[2] - c[8]
            ratio_l = math.sqrt(dx * dx + dy * dy + dz * dz) / width_l
            dx, dy, dz = c[3] - c[9], c[4] - c[10], c[5] - c[11]
            ratio_r = math.sqrt(dx * dx + dy * dy + dz * dz) / width_r
            offsets = (
                (raw_lx + (c[0] + c[6]) * 0.5 - mid_lx) * ratio_l - rest_lx,
                (raw_ly + (c[1] + c[7]) * 0.5 - mid_ly) * ratio_l - rest_ly,
                (raw_rx + (c[3] + c[9]) * 0.5 - mid_rx) * ratio_r - rest_rx,
                (raw_ry + (c[4] + c[10]) * 0.5 - mid_ry) * ratio_r - rest_ry,
            )
            sines = np.minimum(np.maximum(np.array(offsets) / radius, -1.0), 1.0)
            # (2 eyes, 2) yaw towards +x, pitch towards +y, in degrees → the eight channels.
            gaze = np.minimum(np.maximum(self._angles_to_gaze @ np.degrees(np.arcsin(sines)), 0.0), 1.0)
        return gaze

    def blink(self, observed_model: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(478, 3) model-frame landmarks, (53,) solved weights → (2,) blink (left, right) in [0, 1].

        Solves ratio_model(w with blink = b) = ratio_obs for b, every other channel held at `weights`.
        """
        corners = observed_model[self._corners]
        # The means as sum / count (what ndarray.mean computes, without its wrapper).
        upper = observed_model[self._upper, 1]
        gap = upper.sum(axis=1) / upper.shape[1] - corners[..., 1].sum(axis=0) / 2
        ratio_obs = gap / _row_norm(corners[0] - corners[1])
        others = np.array(weights, dtype=np.float64)
        others[self._blink] = 0.0
        ratio_open = (self._gap0 + self._gap_basis @ others) / self._width0
        return np.minimum(np.maximum((ratio_obs - ratio_open) / self._blink_gain, 0.0), 1.0)
