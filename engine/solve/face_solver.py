"""The stateful per-frame solver of one face track: `FaceSolver` (design §3).

It wraps `FrameFitter` (`solver.py`, the stateless fit of one frame) with the performer estimate
(`performer.py`), the neutral calibration, the One Euro filters and the tracking-state machine:
`tracking` (a face this frame) → `coasting` (no face: hold the last state for `coast_seconds`) → `lost`
(ease to neutral over `ease_seconds`) → `tracking` again as soon as a face returns, no restart needed.
Bad landmarks (NaN/inf, wrong shape, empty image size) count as no face; `solve` never raises on them.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from engine.config import FilterConfig, PerformerConfig, SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.solve.camera import shipped_fov_reading
from engine.solve.curves import DEFAULT_CURVES_PATH, ResponseCurves
from engine.solve.eyes import BLINK, GAZE_CHANNELS, mean_pitch_deg
from engine.solve.filters import OneEuroFilter, continuous_quaternion
from engine.solve.kernels import Kernels
from engine.solve.performer import GazeCentre, Performer, PerformerEstimator, RestOffset
from engine.solve.pose import head_pose_from_fit
from engine.solve.prior import NeutralFeatures
from engine.solve.solver import (
    FrameFit,
    FrameFitter,
    fov_y_deg,
    shipped_prior,
    shipped_response,
    valid_observation,
)
from engine.types import FaceState, HeadPose, Landmarks, TrackingState

log = logging.getLogger(__name__)

N_EXPRESSIONS = len(ICT_EXPRESSIONS)
# Residual (cm RMS over the mesh landmarks) at which confidence has fallen to 1/e.
_RESIDUAL_SCALE_CM = 0.4
# The gaze centre samples frames whose eyes both read less closed than this (a closing lid drags the iris).
_GAZE_CENTRE_MAX_BLINK = 0.4


def channel_groups() -> dict[str, np.ndarray]:
    """ICT channel indices per filter group: blink, eyes (gaze, squint, wide), brows, jaw, mouth (the rest)."""
    groups = {"blink": [], "eyes": [], "brows": [], "jaw": [], "mouth": []}
    for i, name in enumerate(ICT_EXPRESSIONS):
        key = (
            "blink" if name.startswith("eyeBlink") else "eyes" if name.startswith("eye")
            else "brows" if name.startswith("brow") else "jaw" if name.startswith("jaw") else "mouth"
        )  # fmt: skip
        groups[key].append(i)
    return {k: np.array(v) for k, v in groups.items()}


def _state_filter(config: SolveConfig, kernels: Kernels | None = None) -> OneEuroFilter:
    """One filter over the 53 weights (per-group parameters) and the 8 pose numbers (pose parameters); its step
    compiled when `kernels` are given."""
    params = np.empty((3, N_EXPRESSIONS + 8))
    by_group: dict[str, FilterConfig] = {
        "blink": config.filter_blink, "eyes": config.filter_eyes, "brows": config.filter_brows,
        "jaw": config.filter_jaw, "mouth": config.filter_mouth,
    }  # fmt: skip
    groups = channel_groups() | {"pose": np.arange(N_EXPRESSIONS, N_EXPRESSIONS + 8)}
    for group, idx in groups.items():
        f = by_group.get(group, config.filter_pose)
        params[:, idx] = np.array([[f.min_cutoff], [f.beta], [f.d_cutoff]])
    return OneEuroFilter(params[0], params[1], params[2], None if kernels is None else kernels.one_euro_update)


def shipped_curves(config: SolveConfig, with_prior: bool) -> ResponseCurves:
    """The response curves: the shipped dead zones (`models/solve_curves.npz`, fitted on what the plain people
    prior reads: `tools/fit_response_curves.py`) when enabled and `with_prior`, then the config's per-channel
    overrides; else identity curves."""
    curves = ResponseCurves.identity()
    if config.response_curves and with_prior and DEFAULT_CURVES_PATH.is_file():
        curves = ResponseCurves.load(DEFAULT_CURVES_PATH)
    return curves.with_overrides(config.channel_curves) if config.channel_curves else curves


def _presence(landmarks: Landmarks) -> float:
    """The tracker's presence score clamped to [0, 1]; a missing or non-numeric score counts as 1, NaN as 0."""
    try:
        presence = float(landmarks.presence)
    except (AttributeError, TypeError, ValueError):
        return 1.0
    return min(1.0, max(0.0, presence)) if np.isfinite(presence) else 0.0


class FaceSolver:
    """Stateful per-frame solver of one face track (design §3): the performer estimate, calibration, filters,
    tracking states.

    `performer` is who is tracked (`engine/solve/performer.py`): `Performer.auto()` reads any face with the
    people prior and learns a rest offset online (`performer_config`; the identity and camera estimate when
    enabled there); an `Identity` or `Performer.from_identity` is an enrolled profile; a rendered avatar
    (the demo performer) is solved with the prior trained on its own renders. Every performer but a rendered
    avatar learns where its eyes look ahead (`GazeCentre`). The camera is, in order: the
    performer's, `config.camera_fov_y_deg`, the online estimate (when enabled), `performer_config.fov_prior_deg`
    for `auto`, the solver's default (`fov_y_deg`) for a profile."""

    def __init__(
        self,
        model: FaceModel,
        embedding: LandmarkEmbedding,
        performer: Performer | Identity,
        config: SolveConfig,
        performer_config: PerformerConfig | None = None,
        estimate_in_background: bool = True,
    ) -> None:
        self.config = config
        self.performer = performer if isinstance(performer, Performer) else Performer.from_identity(performer)
        self.performer_config = performer_config or PerformerConfig()
        response = shipped_response(config)
        prior = shipped_prior(config, response, people=not self.performer.rendered)
        known_fov = self.performer.fov_y_deg if self.performer.fov_y_deg is not None else config.camera_fov_y_deg

        def make_fitter(identity_weights: np.ndarray | None, fov: float | None) -> FrameFitter:
            return FrameFitter(model, embedding, identity_weights, config, response, prior, camera_fov_y_deg=fov)

        self.estimator: PerformerEstimator | None = None
        self.rest: RestOffset | None = None
        start_fov = known_fov
        pc = self.performer_config
        if self.performer.online and (pc.identity_modes > 0 or (pc.camera != "assumed" and known_fov is None)):
            reading = (
                shipped_fov_reading(model, embedding, pc) if pc.camera == "learned" and known_fov is None else None
            )
            self.estimator = PerformerEstimator(
                model, embedding, config, pc, known_fov, make_fitter, estimate_in_background, reading
            )
            start_fov = self.estimator.fov_y_deg
        if self.performer.online and pc.rest_offset:
            self.rest = RestOffset(pc.rest_offset_cap, pc.rest_offset_time_s)
        if start_fov is None:
            # Unknown camera: auto assumes the prior's centre (what the learned prior was trained with); an
            # enrolled performer keeps the solver's default (`fov_y_deg`), as its calibration was made with it.
            start_fov = pc.fov_prior_deg if self.performer.online else fov_y_deg(config)
        self.fitter = make_fitter(self.performer.identity_weights, start_fov)
        self._initial_fitter = self.fitter
        # Where the eyes look ahead is MediaPipe's habit on this face and where the camera sits: learnt for anyone
        # but a rendered avatar (its gaze is exact), an enrolled profile too, wherever the irises are read.
        self.gaze_centre: GazeCentre | None = None
        if not self.performer.rendered and pc.gaze_centre and self.fitter.eyes_active:
            self.gaze_centre = GazeCentre(pc.gaze_centre_cap_deg, pc.gaze_centre_time_s)
        # Where the camera in use comes from (`status`): given (config or source), assumed, or an estimate's.
        self._initial_camera = "given" if known_fov is not None else "assumed"
        self._camera = self._initial_camera
        self._restarts_seen = 0  # the estimator's restarts this solver has followed
        self._blend_from: FrameFitter | None = None  # the fitter a new estimate fades in from
        self._blend_progress = 1.0
        self._last_clock_ns: int | None = None
        # The shipped curves were fitted on what the plain people prior reads: they apply with it only.
        people = prior is not None and not self.performer.rendered and not config.displaced_prior
        self.curves = shipped_curves(config, people)
        offset = np.asarray(self.performer.neutral_offset, dtype=np.float64)
        self.neutral_offset = self._rest_levels(offset if offset.shape == (N_EXPRESSIONS,) else np.zeros(N_EXPRESSIONS))
        # The per-frame path its fitter chose (`engine/solve/kernels.py`) serves the checks and the filter too.
        self._kernels = self.fitter.kernels
        # 53 weights, then quaternion (4), translation (3) and scale
        self._filter = _state_filter(config, self._kernels)
        if self._kernels is not None:
            self._kernels.load_helpers()
        self._last_quat: np.ndarray | None = None
        self._warm: np.ndarray | None = None
        self._last: FaceState | None = None
        self._last_seen_ns: int | None = None
        self._lost = True
        self.last_fit: FrameFit | None = None
        self._calibration: list[np.ndarray] | None = None  # raw weights collected for a live calibration
        self._calibration_frames = 0
        # A displaced prior (or head) reads the face against the performer's own neutral, picked by the plain prior.
        self.neutral_features: NeutralFeatures | None = None
        # Whether the fit's own prior reading (`FrameFit.prior_reading`) is the scorer's: a head on the plain network.
        self._fit_reads_for_neutral = False
        if prior is not None and prior.reads_displacement:
            # A head rides on the plain people prior: that network itself scores. A displaced one needs it loaded.
            plain = config.model_copy(update={"displaced_prior": False, "displaced_head": False})
            scorer = prior.with_head(None) if not prior.displaced else shipped_prior(plain, response, people=True)
            if scorer is None:
                log.warning("solver: no plain people prior to pick the neutral with; the displacement stays zero")
            else:
                self.neutral_features = NeutralFeatures(scorer)
                self._fit_reads_for_neutral = not prior.displaced

    def calibrate_neutral(self, frames: int) -> None:
        """Start a live neutral calibration: the mean raw weights of the next `frames` tracked frames become the
        rest offset (`calibrate`), replacing the identity's. For a user who has not enrolled — or whose resting
        face reads as an expression (raised brows, a slight smile) — holding a relaxed face for `frames` frames
        makes that face read as neutral. Frames without a face do not count; a new request restarts."""
        if frames < 1:
            raise ValueError(f"calibration needs at least 1 frame, got {frames}")
        self._calibration, self._calibration_frames = [], frames

    @property
    def calibrating(self) -> bool:
        """True while a live neutral calibration is collecting frames."""
        return self._calibration is not None

    def _collect_calibration(self, raw: np.ndarray) -> None:
        assert self._calibration is not None
        self._calibration.append(raw.copy())
        if len(self._calibration) >= self._calibration_frames:
            offset = np.mean(self._calibration, axis=0)
            self.neutral_offset = self._rest_levels(offset)
            self._calibration = None
            strongest = np.argsort(offset)[::-1][:3]
            log.info(
                "solver: neutral calibrated on %d frames (largest rest offsets: %s)", self._calibration_frames,
                ", ".join(f"{ICT_EXPRESSIONS[k]} {offset[k]:.2f}" for k in strongest),
            )  # fmt: skip

    def _rest_levels(self, offset: np.ndarray) -> np.ndarray:
        """A neutral offset as `calibrate` uses it: clipped to [0, 0.95], and without gaze while the gaze centre
        runs (it moves where the eyes look ahead instead, so a look down from there still reads as one)."""
        levels = np.clip(offset, 0.0, 0.95)
        if self.gaze_centre is not None:
            levels[GAZE_CHANNELS] = 0.0
        return levels

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """(53,) raw weights → (53,) with the rest offset removed: (w − o)/(1 − o), clamped to [0, 1]. o is the
        profile's (or live calibration's) offset, raised where the online rest offset is larger."""
        offset = self.neutral_offset if self.rest is None else np.maximum(self.neutral_offset, self.rest.offset)
        return np.minimum(np.maximum((raw - offset) / (1.0 - offset), 0.0), 1.0)

    def status(self) -> dict[str, object]:
        """The performer estimate's state (for the `stats` topic and `eval`): the camera in use (`fov_y_deg`)
        and where it comes from (`camera`: given, assumed, read from the face or fitted to it); with an
        estimator, whether it has converged and on how many keyframes."""
        base: dict[str, object] = {
            "performer": self.performer.name, "fov_y_deg": round(self.fitter.fov_y_deg, 1), "camera": self._camera
        }  # fmt: skip
        if self.gaze_centre is not None:
            base["gaze_centre_deg"] = round(self.gaze_centre.pitch_deg, 1)
        if self.estimator is not None:
            base.update(self.estimator.status())
        return base

    def _fit(self, observed: np.ndarray, has_iris: bool, image_size: tuple[int, int], t_ns: int) -> FrameFit:
        """This frame's fit; while a new performer estimate fades in, the weights blend from the old fitter's."""
        if self.estimator is not None:
            estimate = self.estimator.poll()
            if estimate is not None:
                self._blend_from, self.fitter = self.fitter, estimate.fitter
                if self.estimator.fixed_fov is None:
                    self._camera = "read" if self.performer_config.camera == "learned" else "fitted"
                self._blend_progress = 0.0 if self.performer_config.blend_s > 0 and self.last_fit is not None else 1.0
        previous = None if self._warm is None else self.last_fit
        neutral = None if self.neutral_features is None else self.neutral_features.value
        if self.gaze_centre is not None:
            straight = self.config.gaze_straight_pitch_deg + self.gaze_centre.pitch_deg
            for fitter in (self.fitter, self._blend_from):
                if fitter is not None:
                    fitter.eyes.set_straight_pitch(straight)
        fit = self.fitter.fit(observed, self._warm, has_iris, image_size, previous, neutral)
        if self._blend_progress < 1.0 and self._blend_from is not None:
            dt = 0.0 if self._last_clock_ns is None else max(0.0, (t_ns - self._last_clock_ns) * 1e-9)
            self._blend_progress = min(1.0, self._blend_progress + dt / self.performer_config.blend_s)
            old = self._blend_from.fit(observed, self._warm, has_iris, image_size, previous, neutral)
            a = self._blend_progress
            fit = FrameFit(a * fit.weights + (1.0 - a) * old.weights, fit.rotation, fit.translation_px,
                           fit.scale_px_per_cm, fit.observed_model, fit.residual_cm, fit.prior_reading)  # fmt: skip
            if a >= 1.0:
                self._blend_from = None
        self._last_clock_ns = t_ns
        return fit

    def solve(self, landmarks: Landmarks | None, t_capture_ns: int, frame_index: int) -> FaceState:
        """One frame → FaceState. `landmarks` None or unusable → coasting / lost."""
        obs = valid_observation(landmarks, self._kernels)
        if obs is None:
            return self._no_face(t_capture_ns, frame_index)
        observed, has_iris = obs
        assert landmarks is not None
        image_size = (int(landmarks.image_size[0]), int(landmarks.image_size[1]))
        try:
            fit = self._fit(observed, has_iris, image_size, t_capture_ns)
        except (np.linalg.LinAlgError, ZeroDivisionError):  # degenerate geometry (e.g. collapsed eye corners)
            return self._no_face(t_capture_ns, frame_index)
        # Any NaN or inf makes a sum so (weights and rotation entries are bounded: no finite sum overflows).
        if not (math.isfinite(float(fit.weights.sum()) + float(fit.rotation.sum())) and fit.scale_px_per_cm > 0):
            return self._no_face(t_capture_ns, frame_index)
        self.last_fit = fit
        self._warm = fit.weights
        if self.neutral_features is not None and self.neutral_features.due(t_capture_ns):
            if self._fit_reads_for_neutral and fit.prior_reading is not None:
                self.neutral_features.observe_reading(*fit.prior_reading, t_capture_ns)  # read once, not twice
            else:
                self.neutral_features.observe(
                    self.fitter.prior_features(observed, self.fitter._camera(image_size)), t_capture_ns
                )
        if self._calibration is not None:
            self._collect_calibration(fit.weights)
        if self.estimator is not None:
            self.estimator.observe((observed, has_iris, image_size), fit.weights, fit.rotation, fit.residual_cm,
                                   t_capture_ns)  # fmt: skip
            if self.estimator.restarts != self._restarts_seen:
                self._new_person(fade=True)  # another face took this track (a jump in the fit residual)
        if self.rest is not None:
            self.rest.update(fit.weights, t_capture_ns)
        # Only where gaze is pinned to the irises: a prior that pulls gaze (anchored) would feed the centre back.
        if self.gaze_centre is not None and has_iris and self.fitter.gaze_anchor == 0.0:
            # The pitch the irises read before the centre was taken off.
            read = mean_pitch_deg(fit.weights, self.fitter.eyes.ranges) + self.gaze_centre.pitch_deg
            eyes_open = max(float(fit.weights[BLINK[0]]), float(fit.weights[BLINK[1]])) < _GAZE_CENTRE_MAX_BLINK
            self.gaze_centre.update(read, eyes_open, t_capture_ns)
        cfg = self.config
        pose = head_pose_from_fit(
            fit.rotation, fit.translation_px, fit.scale_px_per_cm, landmarks.image_size, self.fitter.fov_y_deg
        )
        weights = self.calibrate(fit.weights)
        if self._lost:
            self._reset_filters()  # a face after a loss starts fresh instead of sliding from stale values
            self._lost = False
        if cfg.filter_enabled:
            quat = continuous_quaternion(pose.quaternion, self._last_quat)
            state = self._filter(np.concatenate([weights, quat, pose.translation, [pose.scale]]), t_capture_ns)
            weights = state[:N_EXPRESSIONS]
            quat = state[N_EXPRESSIONS : N_EXPRESSIONS + 4]
            quat = quat / math.sqrt(float(quat @ quat))  # = np.linalg.norm (√(q·q)) without its wrapper
            self._last_quat = quat
            pose = HeadPose(quat, state[N_EXPRESSIONS + 4 : N_EXPRESSIONS + 7], float(state[-1]))
        # The curves come last, on the filtered weights: a dead zone cuts the smoothed floor it was fitted on, and
        # a user's min/max acts on what is sent. They also clip to [0, 1].
        weights = self.curves.apply(weights)
        confidence = _presence(landmarks) * float(np.exp(-((fit.residual_cm / _RESIDUAL_SCALE_CM) ** 2)))
        state = FaceState(
            pose, weights, TrackingState.TRACKING, confidence, t_capture_ns, frame_index, landmarks.face_index
        )
        self._last = state
        self._last_seen_ns = t_capture_ns
        return state

    @property
    def _person_known(self) -> bool:
        """Whether anything learnt about the person on this track is held: the online estimate, the rest offset,
        the gaze centre, the neutral of a displaced prior or head."""
        estimator = self.estimator
        estimated = estimator is not None and (estimator.current is not None or estimator.status()["keyframes"] > 0)
        rested = (self.rest is not None and self.rest.samples > 0) or (
            self.gaze_centre is not None and self.gaze_centre.samples > 0
        )
        return estimated or rested or (self.neutral_features is not None and self.neutral_features.value is not None)

    def _new_person(self, fade: bool) -> None:
        """Another person: the rest offset, the gaze centre, the neutral and the fitter restart (the initial fitter
        faded in over `blend_s` while a face is in view, else at once), with the estimator when there is one."""
        if self.estimator is not None:
            self._restarts_seen = self.estimator.restarts
        if self.rest is not None:
            self.rest.reset()
        if self.gaze_centre is not None:
            self.gaze_centre.reset()
        if self.neutral_features is not None:
            self.neutral_features.reset()
        if self.fitter is not self._initial_fitter:
            self._blend_from, self.fitter = (self.fitter if fade else None), self._initial_fitter
            self._blend_progress = 0.0 if fade and self.performer_config.blend_s > 0 else 1.0
        self._camera = self._initial_camera

    def _reset_filters(self) -> None:
        self._filter.reset()
        self._last_quat = None

    def _no_face(self, t_ns: int, frame_index: int) -> FaceState:
        last = self._last
        if last is None or self._last_seen_ns is None:
            return FaceState.neutral(t_ns, frame_index, TrackingState.LOST)
        elapsed = max(0.0, (t_ns - self._last_seen_ns) * 1e-9)
        coast = self.config.coast_seconds
        if elapsed <= coast:
            fade = 1.0 - elapsed / coast if coast > 0 else 0.0
            return FaceState(
                last.pose, last.weights, TrackingState.COASTING, last.confidence * fade, t_ns, frame_index,
                last.face_index,
            )  # fmt: skip
        if elapsed >= self.performer_config.new_person_lost_s and self._person_known:
            # Whoever comes back may be someone else: start from the mean face, no rest offset and no neutral.
            if self.estimator is not None:
                self.estimator.reset(f"no face for {elapsed:.1f} s")
            self._new_person(fade=False)
        ease = self.config.ease_seconds
        progress = min(1.0, (elapsed - coast) / ease) if ease > 0 else 1.0
        keep = 1.0 - progress * progress * (3.0 - 2.0 * progress)  # smoothstep: no velocity jump at either end
        last_quat = last.pose.quaternion if last.pose.quaternion[0] >= 0 else -last.pose.quaternion
        quat = last_quat * keep + np.array([1.0, 0.0, 0.0, 0.0]) * (1.0 - keep)
        pose = HeadPose(quat / np.linalg.norm(quat), last.pose.translation, last.pose.scale)
        self._warm = None
        self._lost = True
        return FaceState(pose, last.weights * keep, TrackingState.LOST, 0.0, t_ns, frame_index, last.face_index)
