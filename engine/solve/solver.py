"""The per-frame regression of one frame: landmarks → head pose + 53 weights (design §3).

`FrameFitter` is the stateless fit of one frame for one identity and camera (pose ↔ expression alternation,
eyes); `valid_observation` turns tracker output into its input or refuses it. The stateful solver of a face
track (performer estimate, calibration, filters, tracking states) is `face_solver.FaceSolver`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from engine.config import SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.names import ICT_EXPRESSIONS
from engine.solve.expression import EmbeddedFace, ExpressionSolver, depth_metric
from engine.solve.eyes import GAZE_CHANNELS, EyeModel, GazeRanges, eyeball_centers, with_lid_asymmetry
from engine.solve.kernels import Kernels, select_kernels
from engine.solve.landmark_sets import FACE_OVAL, N_MESH_LANDMARKS
from engine.solve.pose import (
    focal_length_px,
    pixels_to_observed,
    umeyama,
    umeyama_from_source,
    umeyama_source,
)
from engine.solve.prior import (
    DEFAULT_PRIOR_PATH,
    DISPLACED_HEAD_PATH,
    DISPLACED_PRIOR_PATH,
    PEOPLE_PRIOR_PATH,
    DisplacedHead,
    LearnedPrior,
    displaced_features,
    prior_tables,
)
from engine.solve.response import DEFAULT_RESPONSE_PATH, LandmarkResponse
from engine.solve.tables import FitTables, contiguous
from engine.types import Landmarks

log = logging.getLogger(__name__)

N_EXPRESSIONS = len(ICT_EXPRESSIONS)
# The vertical field of view assumed when neither the config nor the source names one (photos and videos of
# unknown lenses; the value the real-photo checks are calibrated at).
DEFAULT_FOV_Y_DEG = 25.0
JAW_OPEN = ICT_EXPRESSIONS.index("jawOpen")
MOUTH_CLOSE = ICT_EXPRESSIONS.index("mouthClose")
# A mouthClose this far above jawOpen is re-solved with the cap; below it (landmark noise) it is just clipped.
MOUTH_CLOSE_SLACK = 0.05
BLINK_CHANNELS = np.array([ICT_EXPRESSIONS.index("eyeBlink_L"), ICT_EXPRESSIONS.index("eyeBlink_R")])
_NO_NEUTRAL = np.zeros(0)  # the compiled fit's neutral before there is one: the displacement is zero
# Landmarks that move less than this in every expression anchor the first pose estimate.
_RIGID_MOTION_CM = 0.15
# Non-rigid landmarks still count a little once the expression explains them (stabilizes roll/pitch).
_NONRIGID_POSE_WEIGHT = 0.1


def fov_y_deg(config: SolveConfig) -> float:
    """The camera's vertical field of view the solver assumes: the configured one, else DEFAULT_FOV_Y_DEG."""
    return DEFAULT_FOV_Y_DEG if config.camera_fov_y_deg is None else config.camera_fov_y_deg


def perspective_corrected(
    observed: np.ndarray, depth_cm: np.ndarray, scale_px_per_cm: float, center: np.ndarray, focal_px: float
) -> np.ndarray:
    """Undo the pinhole camera's depth-dependent magnification: (478, 3) → (478, 3) weak-perspective landmarks.

    A landmark `depth_cm` in front of the head origin (model point rotated into the camera frame, towards the
    camera positive) sits at distance D − depth with D = f/s the head's distance, so its image offset from the
    principal point is magnified by D/(D − depth). Scaling offsets (and MediaPipe's z, scaled like x) by
    κ = 1 − depth/D makes the projection exactly orthographic with scale s, which the similarity fit models
    (POSIT's correction, DeMenthon & Davis 1995). At 60 cm a nose 10 cm in front of the head origin is 20 %
    magnified: without this, ±25° turns read several degrees off and the lids and brows read as expressions.
    """
    kappa = 1.0 - depth_cm * (scale_px_per_cm / focal_px)
    # center + (xy − center)·κ and z·κ (= (z − 0)·κ + 0): the same arithmetic in three whole-array operations.
    center3 = np.array([center[0], center[1], 0.0])
    out = observed - center3
    out *= kappa[:, None]
    out += center3
    return out


def rigid_weights(face: EmbeddedFace) -> np.ndarray:
    """(478,) 1 for landmarks that no expression moves more than 1.5 mm (nose bridge, temples, outer
    forehead), 0 elsewhere and on the irises. Falls back to the 40 least-moving mesh landmarks."""
    motion = face.motion()[:N_MESH_LANDMARKS]
    rigid = motion < _RIGID_MOTION_CM
    if rigid.sum() < 40:
        rigid = np.zeros(N_MESH_LANDMARKS, bool)
        rigid[np.argsort(motion)[:40]] = True
    weights = np.zeros(len(face.neutral))
    weights[:N_MESH_LANDMARKS] = rigid
    return weights


@dataclass(frozen=True)
class FrameFit:
    """One frame's raw fit. weights: (53,) before calibration; rotation (3, 3), translation_px (3,) and
    scale_px_per_cm map model cm into the observed y-up pixel frame (perspective-corrected when the fit had an
    image size: then the head is f/scale cm away); observed_model: (478, 3) the landmarks in the model frame
    (cm); residual_cm: RMS distance over the 468 mesh landmarks after the fit. prior_reading: for a prior with a
    displaced head, what the compiled fit read on the way: the prior's own network (53,) before the head (the plain
    one unless `prior.displaced`) and the plain features' mesh part (N_DISPLACED,), so the head's neutral is scored
    without reading the frame twice (`NeutralFeatures.observe_reading`); None from the numpy fit, and without a
    head, a prior, or prior strength."""

    weights: np.ndarray
    rotation: np.ndarray
    translation_px: np.ndarray
    scale_px_per_cm: float
    observed_model: np.ndarray
    residual_cm: float
    prior_reading: tuple[np.ndarray, np.ndarray] | None = None


def posed_features(
    observed: np.ndarray,
    neutral: np.ndarray,
    rigid_ids: np.ndarray,
    source: tuple[np.ndarray, np.ndarray, np.ndarray, float],
    camera: tuple[np.ndarray, float] | None,
) -> np.ndarray:
    """`LearnedPrior.features` of observed (478, 3) y-up landmarks posed on `neutral`'s `rigid_ids` landmarks
    (`source`: their `umeyama_source`): weak perspective, then one perspective correction for `camera`
    (centre (2,), focal length px; None: none)."""
    rot, trans, scale = umeyama_from_source(source, observed[rigid_ids])
    corrected = observed
    if camera is not None:
        corrected = perspective_corrected(observed, neutral @ rot[2], scale, *camera)
        rot, trans, scale = umeyama_from_source(source, corrected[rigid_ids])
    return LearnedPrior.features(((corrected - trans) @ rot) / scale, neutral, rot)


class FrameFitter:
    """Pose ↔ expression alternation for one identity (no state between frames but the caller's warm start)."""

    def __init__(
        self,
        model: FaceModel,
        embedding: LandmarkEmbedding,
        identity_weights: np.ndarray | None,
        config: SolveConfig,
        response: LandmarkResponse | None = None,
        prior: LearnedPrior | None = None,
        camera_fov_y_deg: float | None = None,
    ) -> None:
        self.config = config
        # The camera this fitter corrects perspective for: given (a performer estimate), else the config's.
        self.fov_y_deg = float(camera_fov_y_deg) if camera_fov_y_deg is not None else fov_y_deg(config)
        self.identity_weights = identity_weights
        self.face = EmbeddedFace.build(model, embedding, identity_weights, response=response)
        self.prior = prior
        strength = None if prior is None else config.prior_strength
        self.prior_strength = 0.0 if prior is None else prior.strength if strength is None else strength
        lam = np.full(N_EXPRESSIONS, config.regularization)
        for name, value in config.channel_regularization.items():
            lam[ICT_EXPRESSIONS.index(name)] = value
        landmark_weights = np.zeros(len(self.face.neutral))
        landmark_weights[:N_MESH_LANDMARKS] = 1.0  # irises carry gaze, which no blendshape explains
        landmark_weights[list(FACE_OVAL)] = config.oval_weight
        self.expression = ExpressionSolver(self.face, landmark_weights, lam, config.symmetry_prior)
        self.pose_weights_first = rigid_weights(self.face)
        self.rigid_ids = np.flatnonzero(self.pose_weights_first)
        # The face the prior's features are posed on and measured from: this identity's neutral for a prior
        # trained on one identity, the model's mean face for one trained on many (`LearnedPrior.reference`).
        self.prior_neutral = self.face.neutral
        if prior is not None and prior.reference == "mean" and identity_weights is not None:
            self.prior_neutral = EmbeddedFace.build(model, embedding, None, response=response).neutral
        # The prior's pose always aligns the same source (that neutral's rigid landmarks): its half done once.
        self._neutral_rigid_source = umeyama_source(self.prior_neutral[self.rigid_ids])
        # Its features keep the camera they were trained with (`LearnedPrior.camera_fov_y_deg`) when this fitter's
        # is another (a performer estimate's): the focal length's ratio of the two.
        prior_fov = self.fov_y_deg if prior is None or prior.camera_fov_y_deg is None else prior.camera_fov_y_deg
        self.prior_focal_ratio = math.tan(math.radians(self.fov_y_deg) / 2) / math.tan(math.radians(prior_fov) / 2)
        self.pose_weights_refine = np.maximum(self.pose_weights_first, _NONRIGID_POSE_WEIGHT)
        self.pose_weights_refine[N_MESH_LANDMARKS:] = 0.0
        ranges = GazeRanges(config.gaze_horizontal_deg, config.gaze_up_deg, config.gaze_down_deg)
        self.eyes = EyeModel(
            self.face,
            eyeball_centers(model, identity_weights),
            ranges,
            config.gaze_yoke,
            (0.0, config.gaze_straight_pitch_deg),
            config.gaze_vergence_deadzone_deg,
        )
        self.eyes_active = config.eyes_enabled and self.eyes.valid
        # Gaze is pinned to the iris read-out, unless a learned prior reads it (one trained on renders of a known
        # identity with its gaze, the demo performer's): then anchored, so the prior can pull it. The lids alone
        # pulled MediaPipe's gaze away from the truth (docs/solve.md §3).
        prior_reads_gaze = (
            self.prior is not None and self.prior_strength > 0 and self.prior.mask[GAZE_CHANNELS].max() > 0
        )
        self.gaze_anchor = float(config.gaze_anchor) if prior_reads_gaze else 0.0
        self.depth_weight = config.depth_weight if config.use_depth else 0.0
        # The per-frame path (`engine/solve/kernels.py`): the compiled kernels and their tables, or None (numpy).
        self.kernels = select_kernels(config)
        self.compiled_tables = self.fit_tables() if self.kernels is not None else None
        if self.kernels is not None and not self.kernels.fit_loaded():
            # Compile (the first run on a machine, ~30 s on 2 cores) or load the cached machine code (~1 s) now,
            # not on the first frame.
            log.info("solver: loading the compiled per-frame fit (the first run on a machine compiles it, ~30 s)")
            start = time.perf_counter()
            self.fit(self.face.neutral * 10.0 + np.array([320.0, 240.0, 0.0]), image_size=(640, 480))
            log.info("solver: compiled fit ready in %.1f s", time.perf_counter() - start)

    def fit_tables(self) -> FitTables:
        """The compiled fit's input for this fitter (`engine/solve/tables.py`): its parts' public tables, its pose
        arrays and settings; the numbers `fit_numpy` reads, so both paths start from the same ones."""
        config = self.config
        return FitTables(
            expression=self.expression.tables,
            eyes=self.eyes.tables,
            prior=prior_tables(self.prior, self.prior_strength, self.prior_neutral, self.prior_focal_ratio),
            rigid_ids=contiguous(self.rigid_ids, np.int64),
            pose_weights_refine=contiguous(self.pose_weights_refine),
            pose_iterations=int(config.pose_iterations),
            max_iterations=int(config.max_iterations),
            depth_weight=float(self.depth_weight),
            gaze_anchor=self.gaze_anchor,
            eyes_active=bool(self.eyes_active),
            blink_lid_asymmetry=float(config.blink_lid_asymmetry),
            blink_lid_deadzone=float(config.blink_lid_deadzone),
            jaw_open=JAW_OPEN,
            mouth_close=MOUTH_CLOSE,
            mouth_close_slack=MOUTH_CLOSE_SLACK,
        )

    def prior_features(self, observed: np.ndarray, camera: tuple[np.ndarray, float] | None) -> np.ndarray:
        """The learned prior's input (`LearnedPrior.features`) for observed (478, 3) y-up landmarks; `camera` is
        this fitter's (centre, focal length), read through the prior's own lens (`prior_focal_ratio`).

        Posed on the rigid landmarks with the neutral face only (weak perspective, then one perspective
        correction), so it depends on nothing but the observation: not on the warm start, and not on the
        expression solve that the prior feeds (the regression, fitted on exactly these features, would
        otherwise see poses it was not trained on)."""
        if camera is not None:
            camera = (camera[0], camera[1] * self.prior_focal_ratio)
        return posed_features(observed, self.prior_neutral, self.rigid_ids, self._neutral_rigid_source, camera)

    def _camera(self, image_size: tuple[int, int]) -> tuple[np.ndarray, float]:
        """Principal point (2,) in the y-up pixel frame and focal length in pixels."""
        width, height = image_size
        return np.array([0.5 * width, 0.5 * height]), focal_length_px(height, self.fov_y_deg)

    def fit(
        self,
        observed: np.ndarray,
        warm_start: np.ndarray | None = None,
        has_iris: bool = True,
        image_size: tuple[int, int] | None = None,
        previous: FrameFit | None = None,
        neutral: np.ndarray | None = None,
    ) -> FrameFit:
        """observed: (478, 3) landmarks in the y-up pixel frame (`pixels_to_observed`); warm_start: (53,).

        `image_size` (width, height) turns on the perspective correction for a pinhole camera of vertical
        field of view `camera_fov_y_deg` centred on the image; None fits weak perspective only. `previous`,
        last frame's fit, seeds that correction (else a first weak-perspective pose does). `neutral`: the
        performer's neutral features for a displaced prior or head (`prior.NeutralFeatures`; None: none yet).

        Runs the compiled fit (`engine/solve/compiled.py`) when `engine/solve/kernels.py` chose it for this
        fitter, else `fit_numpy`, the reference it reproduces. Raises np.linalg.LinAlgError on a degenerate frame.
        """
        if self.kernels is None or self.compiled_tables is None:
            return self.fit_numpy(observed, warm_start, has_iris, image_size, previous, neutral)
        center, focal = (np.zeros(2), 1.0) if image_size is None else self._camera(image_size)
        weights, rot, trans, scale, observed_model, residual, ok, network, posed_mesh = self.kernels.fit_frame(
            self.compiled_tables,
            np.ascontiguousarray(observed, dtype=np.float64),
            np.zeros(N_EXPRESSIONS) if warm_start is None else np.ascontiguousarray(warm_start, dtype=np.float64),
            warm_start is not None,
            has_iris,
            image_size is not None,
            center,
            focal,
            previous is not None,
            np.eye(3) if previous is None else np.ascontiguousarray(previous.rotation, dtype=np.float64),
            1.0 if previous is None else float(previous.scale_px_per_cm),
            _NO_NEUTRAL if neutral is None else np.ascontiguousarray(neutral, dtype=np.float64),
        )
        if not ok:
            raise np.linalg.LinAlgError("expression solve: subspace matrix not positive definite")
        reading = (network, posed_mesh) if network.shape[0] else None
        return FrameFit(weights, rot, trans, scale, observed_model, residual, reading)

    def fit_numpy(
        self,
        observed: np.ndarray,
        warm_start: np.ndarray | None = None,
        has_iris: bool = True,
        image_size: tuple[int, int] | None = None,
        previous: FrameFit | None = None,
        neutral: np.ndarray | None = None,
    ) -> FrameFit:
        """`fit` in numpy: the reference for the compiled path, and the path where numba is unavailable."""
        w = np.zeros(N_EXPRESSIONS) if warm_start is None else np.asarray(warm_start, dtype=np.float64)
        lo = np.zeros(N_EXPRESSIONS)
        hi = np.ones(N_EXPRESSIONS)
        camera = None if image_size is None else self._camera(image_size)
        target, trust = None, 0.0
        if self.prior is not None and self.prior_strength > 0:
            features = self.prior_features(observed, camera)
            if self.prior.reads_displacement:
                features = displaced_features(features, neutral)
            prediction, trust_array = self.prior.predict_with_trust(features)
            trust = float(trust_array)
            target = (prediction, self.prior_strength * trust * self.prior.mask) if trust > 0 else None
        # First the landmarks no expression moves much place the head (with last frame's expression), then all
        # of them once this frame's expression explains the rest.
        rigid = self.rigid_ids
        model = self.face.landmarks(w)
        model_rigid = model[rigid]
        corrected = observed
        if camera is not None:
            if previous is None:
                rot, _, scale = umeyama(model_rigid, observed[rigid])
            else:
                rot, scale = previous.rotation, previous.scale_px_per_cm
            corrected = perspective_corrected(observed, model @ rot[2], scale, *camera)
        rot, trans, scale = umeyama(model_rigid, corrected[rigid])
        for iteration in range(self.config.pose_iterations):
            observed_model = ((corrected - trans) @ rot) / scale  # Rᵀ(y − t)/s, row-wise
            metric = depth_metric(rot, self.depth_weight)
            lo[:] = 0.0
            hi[:] = 1.0
            anchor = None
            if self.eyes_active and has_iris:
                # Tracking: the first pass keeps last frame's gaze (it only steers the pose refinement).
                last_pass = iteration + 1 == self.config.pose_iterations
                gaze = self.eyes.gaze(observed_model, w) if last_pass or warm_start is None else w[GAZE_CHANNELS]
                if self.gaze_anchor > 0:
                    anchor = (GAZE_CHANNELS, gaze, self.gaze_anchor)
                else:
                    lo[GAZE_CHANNELS] = hi[GAZE_CHANNELS] = gaze
            iterations = self.config.max_iterations
            w = self.expression.solve(observed_model, metric, lo, hi, w, iterations, anchor, target).w
            if w[MOUTH_CLOSE] > w[JAW_OPEN] + MOUTH_CLOSE_SLACK:
                # ICT's mouthClose is a corrective for lips sealed over an open jaw; alone it drives the lower
                # lip through the upper one, so it may never exceed jawOpen.
                hi[MOUTH_CLOSE] = w[JAW_OPEN]
                w = self.expression.solve(observed_model, metric, lo, hi, w, iterations, anchor, target).w
            w[MOUTH_CLOSE] = min(w[MOUTH_CLOSE], w[JAW_OPEN])  # noise-level excess: clipped, not re-solved
            if iteration + 1 == self.config.pose_iterations:
                break
            model = self.face.landmarks(w)
            if camera is not None:
                corrected = perspective_corrected(observed, model @ rot[2], scale, *camera)
            rot, trans, scale = umeyama(model, corrected, self.pose_weights_refine)
        if self.eyes_active:
            # The lid read-out replaces the least-squares blink, except as far as the learned prior is trusted:
            # it has learned MediaPipe's blink floor (lids that stop 4–6 px apart), the lid geometry has not.
            blink = self.eyes.blink(observed_model, w)
            blink_trust = trust * (1.0 if self.prior is None else self.prior.mask[BLINK_CHANNELS])
            w[BLINK_CHANNELS] = blink_trust * w[BLINK_CHANNELS] + (1.0 - blink_trust) * blink
            w[BLINK_CHANNELS] = with_lid_asymmetry(
                w[BLINK_CHANNELS], blink, self.config.blink_lid_asymmetry, self.config.blink_lid_deadzone
            )
        diff = observed_model[:N_MESH_LANDMARKS] - self.face.landmarks(w)[:N_MESH_LANDMARKS]
        residual = math.sqrt(float(np.einsum("ij,ij->i", diff, diff).sum()) / N_MESH_LANDMARKS)
        return FrameFit(w, rot, trans, scale, observed_model, residual)


def shipped_response(config: SolveConfig) -> LandmarkResponse | None:
    """MediaPipe's measured response (tools/fit_landmark_response.py), when shipped and enabled; else None."""
    return LandmarkResponse.load() if config.landmark_response and DEFAULT_RESPONSE_PATH.is_file() else None


def shipped_prior(config: SolveConfig, response: LandmarkResponse | None, people: bool = False) -> LearnedPrior | None:
    """The learned prior, when shipped, enabled and trained with the same landmark map (with or without the
    response) as the solver uses; else None. `people`: the one trained on many synthetic identities
    (`tools/train_solve_prior.py`, for anyone in front of a camera); else the one trained on renders of the
    default identity (`tools/fit_solve_prior.py`, for the demo performer, which is that identity rendered);
    with `people` and `solve.displaced_prior`, the people prior that reads the performer's displacement from
    their neutral too; with `people` and `solve.displaced_head` (the plain people prior only), that prior with
    the channels a face's shape confuses read from the displacement (`DisplacedHead`,
    `models/solve_head_displaced.npz`)."""
    path = DEFAULT_PRIOR_PATH if not people else DISPLACED_PRIOR_PATH if config.displaced_prior else PEOPLE_PRIOR_PATH
    if not (config.learned_prior and path.is_file()):
        return None
    prior = LearnedPrior.load(path)
    if prior.with_response != (response is not None):
        return None
    if people and not prior.displaced and config.displaced_head and DISPLACED_HEAD_PATH.is_file():
        prior = prior.with_head(DisplacedHead.load(DISPLACED_HEAD_PATH))
    return prior


def valid_observation(landmarks: Landmarks | None, kernels: Kernels | None = None) -> tuple[np.ndarray, bool] | None:
    """(478, 3) y-up pixel-frame landmarks and whether irises are present, or None for anything unusable:
    None, a wrong shape (468 without irises is accepted), non-finite values, an empty image.

    `kernels` (`FrameFitter.kernels`): the conversion and the numeric checks of 478 landmarks in one compiled
    call (`observed_from_pixels`); this function's numpy code is its reference."""
    if landmarks is None:
        return None
    try:
        pixels = np.asarray(landmarks.pixels, dtype=np.float64)
        width, height = (int(v) for v in landmarks.image_size)
    except (AttributeError, TypeError, ValueError):
        return None
    if pixels.ndim != 2 or pixels.shape[1] != 3 or pixels.shape[0] not in (N_MESH_LANDMARKS, 478):
        return None
    if width <= 0 or height <= 0:
        return None
    if kernels is not None and pixels.shape[0] == 478:
        observed, usable = kernels.observed_from_pixels(np.ascontiguousarray(pixels), float(height))
        return (observed, True) if usable else None
    if not math.isfinite(float(pixels.sum())):  # any NaN/inf makes the sum so
        return None
    has_iris = pixels.shape[0] == 478
    if not has_iris:
        # Without irises, stand-in points at the mesh centroid keep shapes fixed; they carry zero weight.
        pixels = np.vstack([pixels, np.repeat(pixels.mean(axis=0, keepdims=True), 10, axis=0)])
    observed = pixels_to_observed(pixels, height)
    # Per-column extremes (a strided 1-D reduction is several times faster than np.ptp(axis=0) on (478, 2)).
    x, y = observed[:, 0], observed[:, 1]
    if min(x.max() - x.min(), y.max() - y.min()) <= 0:
        return None
    return observed, has_iris
