"""The performer: who is tracked, apart from the avatar that is rendered.

A `Performer` is what the solver needs to know about the person in front of the camera: the shape of their
face (ICT identity coefficients), how their relaxed face reads (`neutral_offset`), and the camera's vertical
field of view when it is known. It comes from three places:

- `Performer.auto()` (the default, `--performer auto`): nothing known; `PerformerEstimator` estimates it
  online while tracking, no calibration step;
- `Performer.from_identity(bundle)` (`--performer NAME`): a profile `enroll` saved;
- `Performer.told(w_id, fov)`: the truth, for evaluation on synthetic faces.

Online estimation (after Cao et al. 2014 and Bouaziz et al. 2013, without a depth camera):

    every tracked frame ─▶ keyframe bins by head yaw × pitch (the most neutral-looking frame of each kept)
                       ─▶ `FovReading` (`performer.camera: learned`): the running mean the camera is read from
    after `first_estimate_s`, then at doubling intervals ─▶ background thread:
        the camera: known, assumed, read (`engine/solve/camera.py`), or (`camera: fit`) an identity fit per
        candidate field of view, the residual + the FOV prior choosing (parabola between the best candidates)
        ─▶ identity fit on the keyframes at that camera (Gaussian prior, frames weighted by how neutral they
        look; none with `identity_modes: 0`) ─▶ a new `FrameFitter` for that identity and camera
    solve thread ─▶ `poll()` takes the finished estimate; `FaceSolver` fades it in over `blend_s`

Nothing of the estimate runs on the per-frame path but the keyframe bookkeeping (a few µs) and the camera
reading's samples (`camera.SAMPLE_HZ`). A new person —
the face lost for `new_person_lost_s`, or a sustained jump in the fit residual — restarts it.

The rest offset (`RestOffset`) handles what the identity fit cannot tell apart from expression on a real
face: a jaw that hangs a little, pressed, rolled, full or pouting lips, round cheeks, brows that sit low or
high. For those channels only, a slow low percentile of the raw weights (the level the face keeps returning
to) is removed like a calibration, capped, and approached with a time constant of seconds, so a held smile
(not in the set) or a short expression is never calibrated away. A smile raises the cheeks (FACS: AU6 comes
with AU12), so while one is on the cheeks' level is not sampled: round cheeks at rest are calibrated, the
squint of a held smile is not.

The gaze centre (`GazeCentre`) does the same for where the eyes look: MediaPipe's irises sit differently between
the eye corners from one face to the next, so a face looking into the camera can read as looking several
degrees up or down. The median vertical gaze of the last half minute is taken as straight ahead (within a cap),
as VTuber apps' "calibrate" sets it; a look held for less than half of that stays a look.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.config import PerformerConfig, SolveConfig
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.solve.camera import FovReading
from engine.solve.identity_fit import Observation, fit_identity_observed

log = logging.getLogger(__name__)

N = len(ICT_EXPRESSIONS)
_CH = {name: i for i, name in enumerate(ICT_EXPRESSIONS)}
# Channels that a face's shape and its expression explain alike (the rest offset's set). Pucker, funnel and the
# cheeks joined the set when the 2057-clip people prior read them on relaxed real faces (lip fullness, cheeks).
REST_CHANNELS = np.array([_CH[n] for n in (
    "jawOpen", "jawForward", "mouthClose", "mouthPress_L", "mouthPress_R", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R",
    "browOuterUp_L", "browOuterUp_R", "mouthPucker", "mouthFunnel", "cheekSquint_L", "cheekSquint_R",
    "cheekPuff_L", "cheekPuff_R",
)])  # fmt: skip
# Cheek squint's rest level is sampled only while the raw smile reads at most this (`RestOffset`).
_SMILE_HOLDS_CHEEKS = 0.2
_SMILES = np.array([_CH["mouthSmile_L"], _CH["mouthSmile_R"]])
_CHEEK_SLOTS = np.array([k for k, c in enumerate(REST_CHANNELS) if ICT_EXPRESSIONS[c].startswith("cheekSquint")])
# Eye channels move on every face all the time (blinks, gaze): they say nothing of how neutral a frame is.
_NOT_EYES = np.array([i for i, n in enumerate(ICT_EXPRESSIONS) if not n.startswith("eye")])
# Head-pose bins for keyframes (degrees): spreading frames over poses separates shape from camera.
_YAW_EDGES = np.array([-22.0, -9.0, 9.0, 22.0])
_PITCH_EDGES = np.array([-8.0, 8.0])
# A neutral-looking frame: weight exp(−expression / _NEUTRAL_SCALE), expression = Σ non-eye raw weights.
_NEUTRAL_SCALE = 0.8
# Without identity modes, a camera read this close to the one in use is not worth a new fitter.
_SAME_CAMERA_DEG = 1.0


@dataclass(frozen=True)
class Performer:
    """Who is tracked. identity_weights: (n_id,) or None (the model's mean face); neutral_offset: (53,) raw
    weights the relaxed face reads as; fov_y_deg: the camera, when known; online: estimate while tracking."""

    name: str
    identity_weights: np.ndarray | None
    neutral_offset: np.ndarray
    fov_y_deg: float | None = None
    online: bool = False
    # A rendered avatar known exactly (the demo performer): solved with the prior trained on its own renders.
    rendered: bool = False

    @staticmethod
    def auto() -> Performer:
        """Unknown: the mean face until the online estimate has converged."""
        return Performer("auto", None, np.zeros(N, np.float32), None, online=True)

    @staticmethod
    def told(identity_weights: np.ndarray, fov_y_deg: float | None = None, name: str = "told") -> Performer:
        """Known exactly (synthetic evaluation): no identity, camera or rest offset is estimated (the solver
        still learns where the eyes look ahead, MediaPipe's habit on the face, as for every person)."""
        return Performer(name, np.asarray(identity_weights, np.float32), np.zeros(N, np.float32), fov_y_deg)

    @staticmethod
    def rendered_avatar(identity: Identity, fov_y_deg: float | None = None) -> Performer:
        """An identity the engine renders itself (the demo performer): its shape and camera are exact."""
        return Performer(identity.name, identity.identity_weights, np.asarray(identity.neutral_offset, np.float32),
                         fov_y_deg, rendered=True)  # fmt: skip

    @staticmethod
    def from_identity(identity: Identity) -> Performer:
        """An enrolled profile: the bundle's identity and neutral calibration, the camera as configured."""
        return Performer(identity.name, identity.identity_weights, np.asarray(identity.neutral_offset, np.float32))


@dataclass(frozen=True)
class Estimate:
    """One finished online estimate: identity (n_id,) or None (the mean face), the camera, the keyframes' mean
    residual (cm), how many keyframes, and the new fitter built for it (a `FrameFitter`, made off the solve
    thread)."""

    identity_weights: np.ndarray | None
    fov_y_deg: float
    residual_cm: float
    keyframes: int
    fitter: Any
    seconds: float


# The rest offset's statistic: the level the face returns to, below most of what it does.
_REST_PERCENTILE = 20.0


def low_percentile(samples: np.ndarray, q: float) -> np.ndarray:
    """(n, width) → (width,) the `q` percentile of each column, interpolated linearly between order statistics:
    `np.percentile(samples, q, axis=0)` (its reference, tested equal) at a tenth of its cost on the solve thread,
    where it runs at 5 Hz."""
    ordered = np.sort(samples, axis=0)
    position = q / 100.0 * (ordered.shape[0] - 1)
    below = int(position)
    above = min(below + 1, ordered.shape[0] - 1)
    fraction = position - below
    return ordered[below] + fraction * (ordered[above] - ordered[below])


class _SlowLevel:
    """The level a face keeps returning to, the rest offset's and the gaze centre's common machinery: samples of
    `width` values, at most one per 1/`sample_hz` s, kept for the last `window_s`; a statistic of them as the
    target (`_target_of`, recomputed per sample, not per frame: the one costly step); and `level` approaching it
    with `time_constant_s`, so nothing jumps. A gap (no face, no irises) counts as at most `_MAX_STEP_S` of
    approach."""

    _MAX_STEP_S = 1.0

    def __init__(self, width: int, time_constant_s: float, window_s: float, sample_hz: float) -> None:
        self.time_constant_s = time_constant_s
        self._period_ns = int(1e9 / sample_hz)
        self._history = np.zeros((int(window_s * sample_hz), width))
        self.target = np.zeros(width)
        self.level = np.zeros(width)
        self.reset()

    def reset(self) -> None:
        """Forget everything sampled (a new person)."""
        self._count = 0
        self._last_sample_ns: int | None = None
        self._last_update_ns: int | None = None
        self.target = np.zeros_like(self.target)
        self.level = np.zeros_like(self.level)

    @property
    def samples(self) -> int:
        """Samples taken since the last reset."""
        return self._count

    def _target_of(self, samples: np.ndarray) -> np.ndarray:
        """(n, width) samples → (width,) target."""
        raise NotImplementedError

    def _due(self, t_ns: int) -> bool:
        return self._last_sample_ns is None or t_ns - self._last_sample_ns >= self._period_ns

    def _add(self, sample: np.ndarray | float, t_ns: int) -> None:
        self._history[self._count % len(self._history)] = sample
        self._count += 1
        self._last_sample_ns = t_ns
        if self._count >= 3:
            self.target = self._target_of(self._history[: min(self._count, len(self._history))])

    def _approach(self, t_ns: int) -> None:
        if self._last_update_ns is not None and self._count >= 3:
            dt = min(max(0.0, (t_ns - self._last_update_ns) * 1e-9), self._MAX_STEP_S)
            self.level += (1.0 - math.exp(-dt / self.time_constant_s)) * (self.target - self.level)
        self._last_update_ns = t_ns


class RestOffset(_SlowLevel):
    """The slow, capped rest offset of `REST_CHANNELS` (see the module docstring): a low percentile of the last
    `window_s`. `update` per tracked frame with the raw weights and the frame's clock; `offset` (53,) is zero
    outside the set."""

    def __init__(self, cap: float, time_constant_s: float, window_s: float = 10.0, sample_hz: float = 5.0) -> None:
        self.cap = cap
        super().__init__(len(REST_CHANNELS), time_constant_s, window_s, sample_hz)

    def reset(self) -> None:
        super().reset()
        self.offset = np.zeros(N)

    def _target_of(self, samples: np.ndarray) -> np.ndarray:
        return np.minimum(low_percentile(samples, _REST_PERCENTILE), self.cap)

    def update(self, raw: np.ndarray, t_ns: int) -> None:
        if self._due(t_ns):
            sample = raw[REST_CHANNELS]  # a copy
            if raw[_SMILES].max() > _SMILE_HOLDS_CHEEKS:  # a smile's cheek squint is no rest: the level holds
                sample[_CHEEK_SLOTS] = self.target[_CHEEK_SLOTS]
            self._add(sample, t_ns)
        self._approach(t_ns)
        self.offset[REST_CHANNELS] = self.level


class GazeCentre(_SlowLevel):
    """Where this performer's eyes read when they look ahead: the vertical gaze (degrees, up) that the irises
    read most of the time, taken off like a calibration (see the module docstring). `update` per tracked frame
    with the pitch the irises read before this centre was taken off, whether the eyes were open enough to read
    it, and the frame's clock; `pitch_deg` is the centre in use, within ±`cap_deg`.

    The median of the last `window_s`, so a look held for less than half the window stays a look."""

    def __init__(self, cap_deg: float, time_constant_s: float, window_s: float = 30.0, sample_hz: float = 5.0) -> None:
        self.cap_deg = cap_deg
        super().__init__(1, time_constant_s, window_s, sample_hz)

    @property
    def pitch_deg(self) -> float:
        """The centre in use (degrees, up)."""
        return float(self.level[0])

    def _target_of(self, samples: np.ndarray) -> np.ndarray:
        # One column: the sorted middle and a scalar clip cost a fifth of np.median and np.clip.
        median = statistics.median(samples[:, 0].tolist())
        return np.array([min(max(median, -self.cap_deg), self.cap_deg)])

    def update(self, read_pitch_deg: float, eyes_open: bool, t_ns: int) -> None:
        if eyes_open and math.isfinite(read_pitch_deg) and self._due(t_ns):
            self._add(read_pitch_deg, t_ns)
        self._approach(t_ns)


class PerformerEstimator:
    """Online identity and camera estimate for one face track (module docstring). Not thread-safe: call
    `observe`, `poll` and `reset` from the solve thread; the fitting runs on a thread of its own."""

    def __init__(
        self,
        model: FaceModel,
        embedding: LandmarkEmbedding,
        solve_config: SolveConfig,
        config: PerformerConfig,
        fov_y_deg: float | None,
        make_fitter: Any,
        background: bool = True,
        reading: FovReading | None = None,
    ) -> None:
        self.model, self.embedding = model, embedding
        # False fits on the caller's thread, in `observe` (offline use: training data, deterministic tests).
        self.background = background
        self.solve_config, self.config = solve_config, config
        # The camera when it is known (config or source) or assumed (the prior's centre); None: estimated, read
        # from `reading` (`camera: learned`) or fitted (`camera: fit`).
        self.fixed_fov = fov_y_deg
        if fov_y_deg is None and (config.camera == "assumed" or (config.camera == "learned" and reading is None)):
            self.fixed_fov = config.fov_prior_deg
        self.reading = reading if self.fixed_fov is None and config.camera == "learned" else None
        self._make_fitter = make_fitter  # (identity_weights, fov_y_deg) → FrameFitter
        self._bins: dict[tuple[int, int], list[tuple[float, Observation]]] = {}
        self._tracked_s = 0.0
        self._last_t_ns: int | None = None
        self._next_estimate_s = config.first_estimate_s
        self._thread: threading.Thread | None = None
        self._result: Estimate | None = None
        self._generation = 0
        self.restarts = 0  # `reset` calls: the solver restarts the rest of its per-person state with them
        self.current: Estimate | None = None
        self.estimates = 0
        self._residuals: list[float] = []

    @property
    def fov_y_deg(self) -> float:
        """The camera in use: the known one, the latest estimate, or the prior."""
        if self.fixed_fov is not None:
            return self.fixed_fov
        return self.current.fov_y_deg if self.current is not None else self.config.fov_prior_deg

    @property
    def converged(self) -> bool:
        """True once an estimate from a full set of keyframes is in use."""
        return self.current is not None and self.current.keyframes >= self.config.keyframes

    def reset(self, reason: str) -> None:
        """A new person: forget the keyframes and the estimate (a running fit's result is discarded)."""
        log.info("performer: restarting the estimate (%s)", reason)
        self._bins.clear()
        self._tracked_s = 0.0
        self._last_t_ns = None
        self._next_estimate_s = self.config.first_estimate_s
        self._generation += 1
        self.restarts += 1
        self._result = None
        self.current = None
        self._residuals.clear()
        if self.reading is not None:
            self.reading.reset()

    def observe(self, observation: Observation, raw_weights: np.ndarray, rotation: np.ndarray, residual_cm: float,
                t_ns: int) -> None:  # fmt: skip
        """One tracked frame: keep it if it is the most neutral of its pose bin; start a fit when due."""
        if self._last_t_ns is not None:
            self._tracked_s += min(max(0.0, (t_ns - self._last_t_ns) * 1e-9), 0.2)
        self._last_t_ns = t_ns
        self._watch_residual(residual_cm)
        if self.reading is not None:
            observed, _, image_size = observation
            self.reading.observe(observed, image_size, t_ns)
        yaw = math.degrees(math.atan2(rotation[0, 2], rotation[2, 2]))
        pitch = math.degrees(math.asin(max(-1.0, min(1.0, -rotation[1, 2]))))
        key = (int(np.searchsorted(_YAW_EDGES, yaw)), int(np.searchsorted(_PITCH_EDGES, pitch)))
        expression = float(np.abs(raw_weights[_NOT_EYES]).sum())
        entries = self._bins.setdefault(key, [])
        per_bin = max(1, math.ceil(self.config.keyframes / 4))
        if len(entries) < per_bin or expression < entries[-1][0]:
            entries.append((expression, observation))
            entries.sort(key=lambda e: e[0])
            del entries[per_bin:]
        if self._tracked_s >= self._next_estimate_s and self._thread is None:
            self._start_fit()

    def poll(self) -> Estimate | None:
        """The estimate finished since the last call, if any (then it is `current`)."""
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
        result, self._result = self._result, None
        if result is not None:
            self.current = result
            self.estimates += 1
            log.info(
                "performer: estimate %d from %d keyframes in %.2f s: camera %.1f°, residual %.3f cm",
                self.estimates, result.keyframes, result.seconds, result.fov_y_deg, result.residual_cm,
            )  # fmt: skip
        return result

    def status(self) -> dict[str, Any]:
        return {
            "converged": self.converged,
            "keyframes": sum(len(v) for v in self._bins.values()),
            "estimates": self.estimates,
        }

    def _watch_residual(self, residual_cm: float) -> None:
        """A sustained jump in the fit residual (another face took this track) restarts the estimate."""
        self._residuals.append(residual_cm)
        if len(self._residuals) > 90:
            del self._residuals[:30]
        if self.current is None or len(self._residuals) < 30:
            return
        recent = statistics.median(self._residuals[-15:])  # 15 floats: np.median costs 20 µs more a frame
        if recent > max(2.5 * self.current.residual_cm, self.current.residual_cm + 0.25):
            self.reset(f"fit residual {recent:.2f} cm against {self.current.residual_cm:.2f} cm: another face")

    def _keyframes(self) -> tuple[list[Observation], np.ndarray]:
        entries = sorted((e for v in self._bins.values() for e in v), key=lambda e: e[0])[: self.config.keyframes]
        weights = np.exp(-np.array([e[0] for e in entries]) / _NEUTRAL_SCALE)
        return [e[1] for e in entries], weights / weights.max()

    def _start_fit(self) -> None:
        observations, weights = self._keyframes()
        if len(observations) < 3 or (self.reading is not None and self.reading.estimate() is None):
            self._next_estimate_s = self._tracked_s + 0.3
            return
        # Refine at doubling intervals: often while the keyframes still change, rarely once they settle.
        self._next_estimate_s = max(self._next_estimate_s * 2.0, self._tracked_s + 0.5)
        camera = self._camera_for_fit()
        if self.config.identity_modes == 0 and self.current is not None and camera is not None:
            if abs(camera - self.current.fov_y_deg) < _SAME_CAMERA_DEG:
                return  # the same mean face through the same camera: a new fitter (and its fade) would change nothing
        generation = self._generation
        initial = None if self.current is None else self.current.identity_weights
        if not self.background:
            self._fit(observations, weights, initial, camera, generation)
            return
        thread = threading.Thread(
            target=self._fit, args=(observations, weights, initial, camera, generation), name="performer", daemon=True
        )
        self._thread = thread
        thread.start()

    def _camera_for_fit(self) -> float | None:
        """The camera the next fit uses: known or assumed, read (`_start_fit` waits until there is a reading),
        or None: `fit` searches it."""
        return self.fixed_fov if self.reading is None else self.reading.estimate()

    def _fit(self, observations: list[Observation], weights: np.ndarray, initial: np.ndarray | None,
             camera: float | None, generation: int) -> None:  # fmt: skip
        start = time.perf_counter()
        try:
            if self.config.identity_modes == 0 and camera is not None:
                # Only the camera changes: the mean face's fitter at it, scored on the keyframes as it is.
                identity, fov, fitter = None, camera, self._make_fitter(None, camera)
                fits = [fitter.fit(observed, None, has_iris, size) for observed, has_iris, size in observations]
                residual = float(np.average([f.residual_cm for f in fits], weights=weights))
            else:
                identity, fov, residual = self.fit(observations, weights, initial, camera)
                fitter = self._make_fitter(identity, fov)
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:  # degenerate keyframes: try later
            log.debug("performer: estimate failed (%s)", exc)
            return
        if generation == self._generation:
            self._result = Estimate(identity, fov, residual, len(observations), fitter, time.perf_counter() - start)

    def fit(
        self,
        observations: list[Observation],
        weights: np.ndarray,
        initial: np.ndarray | None = None,
        camera: float | None = None,
    ) -> tuple[np.ndarray, float, float]:
        """Identity and camera for these keyframes: (identity_weights, fov_y_deg, residual_cm).

        With the camera given (`camera`, °), one identity fit. Else one per candidate field of view over the
        bounds; each is scored by its weighted residual (as a Gaussian likelihood at the residual's own scale) plus
        the FOV prior, and a parabola through the best candidate and its neighbours refines the choice."""
        cfg = self.config

        def fit_at(fov: float) -> Any:
            return fit_identity_observed(
                self.model, self.embedding, observations, weights, fov, cfg.identity_modes, cfg.identity_prior,
                iterations=3, config=self.solve_config, initial=initial,
            )  # fmt: skip

        if camera is not None:
            result = fit_at(camera)
            return result.identity_weights, camera, result.residual_cm
        candidates = np.linspace(cfg.fov_min_deg, cfg.fov_max_deg, 6)
        fits = [fit_at(float(fov)) for fov in candidates]
        residuals = np.array([f.residual_cm for f in fits])
        # Residuals are ~Gaussian per landmark coordinate: n·log(residual²) is the likelihood's part that moves.
        count = float(weights.sum()) * 468
        cost = count * np.log(residuals**2) + ((candidates - cfg.fov_prior_deg) / cfg.fov_prior_std_deg) ** 2
        best = int(np.argmin(cost))
        fov = float(candidates[best])
        if 0 < best < len(candidates) - 1:
            c0, c1, c2 = cost[best - 1 : best + 2]
            curvature = c0 - 2 * c1 + c2
            if curvature > 0:
                step = candidates[1] - candidates[0]
                fov = float(candidates[best] + 0.5 * step * (c0 - c2) / curvature)
        final = fit_at(fov)
        return final.identity_weights, fov, final.residual_cm
