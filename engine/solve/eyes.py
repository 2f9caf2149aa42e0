"""Eyes: blink from eyelid landmarks, gaze (`eyeLook*`) from the iris centres (design §3.5).

Left/right are the subject's. MediaPipe's canonical mesh numbers the subject's right eye 33 (outer corner) /
133 (inner) with iris centre 468, the subject's left eye 263 / 362 with iris centre 473 (checked on the golden
landmarks: on an unmirrored photo 468 lies on the image's left; indices in `engine.solve.landmark_sets`).
A mirrored image therefore reads as a face with its sides swapped, as it should.

ICT's `eyeLook*` shapes only move the eyelids; the eyeballs turn in the rig. The gaze convention shared with
the renderer (`gaze_angles` / `eye_rotations`): `eyeLookOut_L` = 1 turns the left eye `gaze_horizontal_deg`
towards the subject's left (+x), `eyeLookUp_*` = 1 turns it `gaze_up_deg` up, `eyeLookDown_*` `gaze_down_deg`
down. The solver inverts that from the iris offset relative to the eye corners (normalized by eye width), minus
what MediaPipe's irises read for eyes that look straight ahead (`SolveConfig.gaze_straight_pitch_deg`), both eyes
moved towards their mean (`gaze_yoke`: eyes turn together, MediaPipe's per-eye irises disagree far more), and
pins those channels in the least-squares solve to that read-out, so the lid motion they imply is accounted for.
Where a learned prior reads gaze too (the demo performer's), they are anchored instead (`gaze_anchor`), so the
prior can pull them; the lids alone pulled MediaPipe's gaze away from the truth.

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
from engine.solve.tables import EyeTables, contiguous

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


def mean_pitch_deg(weights: np.ndarray, ranges: GazeRanges = DEFAULT_GAZE_RANGES) -> float:
    """(53,) weights → both eyes' mean pitch (degrees, up): `gaze_angles(weights, ranges)[:, 1].mean()` in
    scalar arithmetic (a per-frame helper: the array version costs tens of µs)."""
    up = float(weights[LOOK_UP[0]]) + float(weights[LOOK_UP[1]])
    down = float(weights[LOOK_DOWN[0]]) + float(weights[LOOK_DOWN[1]])
    return 0.5 * (up * ranges.up_deg - down * ranges.down_deg)


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


class EyeModel:
    """Blink and gaze read from model-frame landmarks (cm), calibrated on one identity's embedded face.

    eyeball_centers: (2, 3) cm (`eyeball_centers`); the embedded iris centre's distance from them is the
    radius that turns iris offsets into angles. The calibration is `tables` (`EyeTables`), which `gaze` and
    `blink` read and the compiled fit reads too. `valid` is False when the embedding's eye landmarks do not
    behave like eyes (width outside 1.5–5 cm, a blink that barely closes the lids, irises not on the
    eyeballs); the solver then keeps its least-squares eye channels.
    """

    def __init__(
        self,
        face: EmbeddedFace,
        eyeball_centers: np.ndarray,
        ranges: GazeRanges = DEFAULT_GAZE_RANGES,
        yoke: float = 1.0,
        straight_deg: tuple[float, float] = (0.0, 0.0),
        vergence_deadzone_deg: float = 90.0,
    ) -> None:
        self.face = face
        self.ranges = ranges
        iris = np.array(IRIS)  # (2 eyes, 5)
        radii = np.linalg.norm(face.neutral[iris].mean(axis=1) - eyeball_centers, axis=1)
        upper = np.array(UPPER_LID)  # (2 eyes, 5)
        # Gaze reference: per eye the outer and inner corner. (Lid points would average more noise away, but
        # they move with blink and eyeWide, which are solved from the same lids: the coupling is unstable.)
        corners = np.array([OUTER_CORNER, INNER_CORNER])  # (2 kinds, 2 eyes)
        # Upper-lid height above the corners along model y, affine in w: gap(w) = gap0 + gap_basis @ w, per eye.
        gap0 = face.neutral[upper, 1].mean(axis=1) - face.neutral[corners, 1].mean(axis=0)  # (2,)
        gap_basis = face.basis[upper, 1, :].mean(axis=1) - face.basis[corners, 1, :].mean(axis=0)  # (2, 53)
        corner0 = face.neutral[corners]  # (2 kinds, 2 eyes, 3)
        width0 = np.linalg.norm(corner0[0] - corner0[1], axis=1)
        blink_gain = np.array([gap_basis[e, BLINK[e]] for e in range(2)]) / width0
        # Flattened (12, …) corners: their motion under the weights is two small matrix-vector products.
        corner_basis_flat = face.basis[corners].reshape(12, -1)  # (12, 53)
        mid0 = corner0.mean(axis=0)  # (2, 3)
        # Angles → the eight channels: [out, in, up, down] × (left, right), one (8, 4) product.
        h, u, d = ranges.horizontal_deg, ranges.up_deg, ranges.down_deg
        angles_to_gaze = np.array(
            [[1 / h, 0, 0, 0], [0, 0, -1 / h, 0], [-1 / h, 0, 0, 0], [0, 0, 1 / h, 0],
             [0, 1 / u, 0, 0], [0, 0, 0, 1 / u], [0, -1 / d, 0, 0], [0, 0, 0, -1 / d]]
        )  # fmt: skip
        self.tables = EyeTables(
            corner_ids=contiguous(corners, np.int64),
            iris_ids=contiguous(iris, np.int64),
            upper_lid_ids=contiguous(upper, np.int64),
            blink_channels=contiguous(BLINK, np.int64),
            gaze_channels=contiguous(GAZE_CHANNELS, np.int64),
            corner0_flat=contiguous(corner0.reshape(-1)),
            corner_basis_flat=contiguous(corner_basis_flat),
            corner_gaze_flat=contiguous(corner_basis_flat[:, GAZE_CHANNELS]),
            angles_to_gaze=contiguous(angles_to_gaze),
            mid0=contiguous(mid0),
            iris_rest=contiguous((face.neutral[iris].mean(axis=1) - mid0)[:, :2]),  # (2, 2) cm
            gap0=contiguous(gap0),
            gap_basis=contiguous(gap_basis),
            width0=contiguous(width0),
            blink_gain=contiguous(blink_gain),
            radius=float(radii.mean()),
            straight_deg=contiguous(np.asarray(straight_deg, dtype=np.float64)),
            yoke=float(yoke),
            vergence_deadzone=float(vergence_deadzone_deg),
        )
        eyes_like = (width0 > 1.5) & (width0 < 5.0) & (blink_gain < -0.05) & (radii > 0.6) & (radii < 2.0)
        self.valid = bool(eyes_like.all())

    def set_straight_pitch(self, pitch_deg: float) -> None:
        """The pitch (degrees, up) the irises read for eyes that look ahead, from the next frame on. Written into
        the tables in place: the compiled fit reads the same array."""
        self.tables.straight_deg[1] = pitch_deg

    def gaze(self, observed_model: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(478, 3) model-frame landmarks (cm), (53,) current weight estimate → (8,) `eyeLook*` weights in
        `GAZE_CHANNELS` order (out L/R, in L/R, up L/R, down L/R).

        The iris (mean of its five points) is read relative to the eye corners' midpoint, minus the corners'
        own motion under the weights: ICT's eyeLook and squint shapes move the corners, and uncorrected gaze
        reads ~20 % low. That motion depends on the gaze being solved, hence a short fixed-point iteration.
        The offset is scaled by the model's eye width over the observed one, so any face size reads the same
        angle.
        """
        t = self.tables
        weights = np.asarray(weights, dtype=np.float64)
        gaze = weights[t.gaze_channels]
        # The model's corners under every channel but gaze, (2 kinds, 2 eyes, 3) flattened.
        corners_static = t.corner0_flat + t.corner_basis_flat @ weights - t.corner_gaze_flat @ gaze
        outer, inner = observed_model[t.corner_ids]  # (2 eyes, 3) each
        observed_width = _row_norm(outer - inner)  # (2,)
        if not observed_width.all():  # collapsed corners: `FaceSolver` counts the frame as no face
            raise ZeroDivisionError("an observed eye has zero width")
        iris = observed_model[t.iris_ids].sum(axis=1) / 5  # (2, 3) the iris centres
        raw = iris - (outer + inner) / 2  # (2, 3) relative to the observed corners' midpoint
        for _ in range(2):
            model_outer, model_inner = (corners_static + t.corner_gaze_flat @ gaze).reshape(2, 2, 3)  # this gaze
            ratio = _row_norm(model_outer - model_inner) / observed_width  # (2,) model width / observed width
            # The iris relative to the model corners' rest midpoint, in model cm, minus its rest offset.
            midpoint = (model_outer + model_inner) / 2
            offsets = ((raw + midpoint - t.mid0) * ratio[:, None])[:, :2] - t.iris_rest  # (2 eyes, 2)
            sines = _clip(offsets.reshape(-1) / t.radius, -1.0, 1.0)
            # (2 eyes, 2) yaw towards +x, pitch towards +y, in degrees → the eight channels.
            angles = np.degrees(np.arcsin(sines)).reshape(2, 2) - t.straight_deg
            together = yoked(angles, weights[t.blink_channels], t.yoke, t.vergence_deadzone)
            gaze = _clip(t.angles_to_gaze @ together.reshape(-1), 0.0, 1.0)
        return gaze

    def blink(self, observed_model: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(478, 3) model-frame landmarks, (53,) solved weights → (2,) blink (left, right) in [0, 1].

        Solves ratio_model(w with blink = b) = ratio_obs for b, every other channel held at `weights`.
        """
        t = self.tables
        outer, inner = observed_model[t.corner_ids]  # (2 eyes, 3) each
        upper_lid = observed_model[t.upper_lid_ids, 1]  # (2 eyes, 5) heights
        gap = upper_lid.sum(axis=1) / upper_lid.shape[1] - (outer[:, 1] + inner[:, 1]) / 2
        ratio_obs = gap / _row_norm(outer - inner)
        others = np.array(weights, dtype=np.float64)
        others[t.blink_channels] = 0.0
        ratio_open = (t.gap0 + t.gap_basis @ others) / t.width0
        return _clip((ratio_obs - ratio_open) / t.blink_gain, 0.0, 1.0)


def with_lid_asymmetry(blinks: np.ndarray, lids: np.ndarray, share: float, deadzone: float = 0.0) -> np.ndarray:
    """(2,) blinks (left, right) as the fit combined them, (2,) the lids' own read-out (`EyeModel.blink`) →
    (2,) blinks whose left–right difference moves `share` of the way to the lids', their mean kept (then clipped
    to [0, 1]).

    The people prior reads the level both eyes share well (MediaPipe's blink floor) but its left–right
    difference poorly on real faces: a wink the lids read 0.72 / 0.29 it read 0.63 / 0.62. The difference of
    the two lid gaps is free of the floor both share."""
    excess = (lids[0] - lids[1]) - (blinks[0] - blinks[1])
    shift = share * math.copysign(max(abs(excess) - deadzone, 0.0), excess) / 2.0
    return _clip(np.array([blinks[0] + shift, blinks[1] - shift]), 0.0, 1.0)


def yoked(angles: np.ndarray, blink: np.ndarray, yoke: float, vergence_deadzone: float = 90.0) -> np.ndarray:
    """(2 eyes, 2) gaze angles, (2,) blink weights → the angles moved `yoke` of the way to both eyes' mean.

    The mean weighs each eye by how open it is (1 − blink, at least 0.05): a closed lid hides the iris, and
    MediaPipe's iris then follows the lid, not the eye. Eyes move up and down together, but they converge:
    of their convergence (each eye turned towards the nose, the mean of the two turns) what exceeds
    `vergence_deadzone` degrees is given back, so crossed eyes read crossed while the per-eye noise of eyes that
    look ahead (within the dead zone) is still averaged away. Divergence is never kept: eyes do not do it."""
    openness = _clip(1.0 - blink, 0.05, 1.0)
    mean = (openness[0] * angles[0] + openness[1] * angles[1]) / (openness[0] + openness[1])
    out = angles + yoke * (mean - angles)
    # The left eye turns in towards −x, the right eye towards +x.
    excess = 0.5 * (angles[1, 0] - angles[0, 0]) - vergence_deadzone
    if excess > 0.0:
        out[0, 0] -= yoke * excess
        out[1, 0] += yoke * excess
    return out


# Two numpy conveniences without their wrappers' per-call cost (several µs each, more than the arithmetic on
# these (2,)–(8,) arrays; the numpy path runs them a few times a frame where numba is not installed).


def _row_norm(v: np.ndarray) -> np.ndarray:
    """`np.linalg.norm(v, axis=-1)`."""
    return np.sqrt(np.add.reduce(v * v, axis=-1))


def _clip(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`np.clip(v, lo, hi)`."""
    return np.minimum(np.maximum(v, lo), hi)
