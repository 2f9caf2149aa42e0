"""The arrays the compiled kernels read (`engine/solve/compiled.py`), as public typed tables.

Each numpy-side object that precomputes something per identity and configuration publishes it as one of these
tables: `ExpressionSolver.tables` (the very arrays its own methods use), `EyeModel.tables` (which `EyeModel.gaze`
and `.blink` read themselves), `prior.prior_tables(…)` (`LearnedPrior`'s regressor flattened).
`FrameFitter.fit_tables()` puts them together with its pose arrays and settings into a `FitTables`, the one
argument of `compiled.fit_frame`. Both paths therefore start from identical numbers, and the kernels need
nothing of the numpy side but this module.

NamedTuples rather than dataclasses because numba takes a NamedTuple of arrays and scalars (nested ones too) as
an argument: one compiled specialization per combination of field types, so every array here is C-contiguous
and of the dtype its comment names (float64 unless said otherwise), every scalar a Python int, float or bool.

Shapes: L = 478 landmarks, K = 53 channels, R rigid landmarks, F = 1413 prior features, P prior components.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ExpressionTables(NamedTuple):
    """`ExpressionSolver`'s per-identity precomputation (the normal equations' parts)."""

    neutral: np.ndarray  # (L, 3) cm: the embedded neutral face
    basis_flat_t: np.ndarray  # (K, 3L): the embedded expression basis, one row per channel
    gram: np.ndarray  # (9, K²) `coordinate_gram` of the ω-weighted basis
    quadratic_prior: np.ndarray  # (K, K) Λ plus the symmetry pairs
    regularization: np.ndarray  # (K,) λ
    landmark_weights: np.ndarray  # (L,) ω


class EyeTables(NamedTuple):
    """`EyeModel`'s calibration on one identity: what blink and gaze read the landmarks against."""

    corner_ids: np.ndarray  # (2 kinds, 2 eyes) int64: outer, inner corner landmarks
    iris_ids: np.ndarray  # (2 eyes, 5) int64
    upper_lid_ids: np.ndarray  # (2 eyes, 5) int64
    blink_channels: np.ndarray  # (2,) int64: eyeBlink_L, eyeBlink_R
    gaze_channels: np.ndarray  # (8,) int64: `eyes.GAZE_CHANNELS`
    corner0_flat: np.ndarray  # (12,) the neutral corners, (2 kinds, 2 eyes, 3) flattened
    corner_basis_flat: np.ndarray  # (12, K) their motion per channel
    corner_gaze_flat: np.ndarray  # (12, 8) the gaze channels' columns of it
    angles_to_gaze: np.ndarray  # (8, 4) per-eye yaw/pitch (degrees) → the eight gaze channels
    mid0: np.ndarray  # (2, 3) the neutral corners' midpoints
    iris_rest: np.ndarray  # (2, 2) the neutral iris centres' x, y relative to them (cm)
    gap0: np.ndarray  # (2,) upper-lid height above the corners at rest, affine in w:
    gap_basis: np.ndarray  # (2, K) gap(w) = gap0 + gap_basis @ w
    width0: np.ndarray  # (2,) neutral eye widths (cm)
    blink_gain: np.ndarray  # (2,) d(gap / width) / d(blink)
    radius: float  # cm, iris centre to eyeball centre
    # (2,) yaw, pitch (degrees) the irises read when the eyes look straight ahead (`gaze_straight_pitch_deg`)
    straight_deg: np.ndarray
    yoke: float  # share of each eye's gaze angles taken from both eyes' openness-weighted mean (`gaze_yoke`)
    vergence_deadzone: float  # degrees of convergence the yoke removes entirely (`gaze_vergence_deadzone_deg`)


class PriorTables(NamedTuple):
    """`LearnedPrior`'s regressor as the compiled fit evaluates it (`prior.prior_tables`; never read when
    `strength` is 0)."""

    neutral: np.ndarray  # (L, 3) cm: the face its features are posed on and measured from
    mean: np.ndarray  # (F,)
    basis: np.ndarray  # (F, P) float32 (as stored: half the memory traffic of float64, same values)
    scale: np.ndarray  # (P,)
    # The layers flattened (one argument type for any depth: numba compiles once per type): weights (in, out)
    # row-major one after another, float32; biases (out,) one after another; (n_layers, 2) int64 their (in, out).
    layer_weights: np.ndarray
    layer_biases: np.ndarray
    layer_shapes: np.ndarray
    # (Σ in, 2) int64: each layer row's first and past-last nonzero column, the layers' rows one after another.
    # A prior of several members (`prior.merge_members`) has block-diagonal hidden layers: two thirds of a row
    # of three members are zeros, and the kernel skips them.
    layer_row_spans: np.ndarray
    residual_limit: float  # r_limit (cm); 0: no out-of-distribution fade
    strength: float  # μ (cm²); 0: no prior
    channel_mask: np.ndarray  # (K,) the share of μ each channel gets
    focal_ratio: float  # the prior's camera's focal length over the fit's (its features keep their lens)
    displaced: bool  # the features go on with their mesh part minus the performer's neutral (`prior.py`)
    # Its `DisplacedHead` (empty arrays: none): (N_FEATURES + N_DISPLACED, k) weights, (k,) bias, the (k,)
    # channels whose prediction it replaces and (k, 3) how it mixes with the plain reading (a, b, c).
    head_weights: np.ndarray
    head_bias: np.ndarray
    head_channels: np.ndarray
    head_mix: np.ndarray


class FitTables(NamedTuple):
    """Everything per identity and configuration that `compiled.fit_frame` reads (`FrameFitter.fit_tables`)."""

    expression: ExpressionTables
    eyes: EyeTables
    prior: PriorTables
    rigid_ids: np.ndarray  # (R,) int64: the landmarks that place the head first
    pose_weights_refine: np.ndarray  # (L,) the pose weights once the expression explains the rest
    pose_iterations: int
    max_iterations: int
    depth_weight: float
    gaze_anchor: float
    eyes_active: bool
    blink_lid_asymmetry: float  # share of the blinks' left–right difference taken from the lids (`eyes.py`)
    blink_lid_deadzone: float
    jaw_open: int
    mouth_close: int
    mouth_close_slack: float


def contiguous(array: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """`array` as a C-contiguous array of `dtype` (itself when it already is one): the form every table holds."""
    return np.ascontiguousarray(array, dtype=dtype)
