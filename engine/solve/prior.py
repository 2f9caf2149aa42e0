"""A learned prior for the expression solve: weights regressed from the model-frame landmarks (design §3.2).

The bounded least squares explains the landmarks with the embedded blendshape map; where MediaPipe follows a
shape only partly (brow and lid details, cheekPuff, mouthPress) or mixes shapes up, it under-reads or confuses
channels. A regressor from the same model-frame landmarks to the weights, trained on renders with known
weights (`tools/fit_solve_prior.py`), knows those habits; the solver adds it as a prior

    μ Σ_k (w_k − w_reg,k)²

to the bounded least squares (H += μI, b += μ w_reg), which stays the core of the solve and keeps the box.

features x: the 468 mesh landmarks in the model frame minus the identity's embedded neutral (cm, 1404 values)
and the head rotation (9 values: MediaPipe's errors depend on the view). The regressor is

    z = (x − mean) @ basis,  h = z · scale,  then per layer (W, b): h = act(h) @ W + b

with act the identity before the first layer and ReLU before the others. The MLP's basis is the training
features' leading principal directions (orthonormal, F × P) and scale whitens them; a ridge regression is one
layer on its (F, 53) slope.

Out of distribution. A regressor only knows the faces it was trained on (one identity, rendered); a face far
from them (another person's shape, a real camera) must not be overruled by it. For the MLP, the part of
x − mean outside the principal subspace, r = ‖(x − mean) − basis zᵀ‖, measures that: the prior's strength is
μ · clip(2 − r / r_limit, 0, 1), r_limit the 99.5th percentile of r over the training renders: full inside
the training cloud, fading to zero at twice its edge.

Displaced (`LearnedPrior.displaced`, the displaced dynamic expression regression of Cao et al. 2014): the
features also hold their mesh part minus the performer's own neutral features, so the network sees how this
face moved away from its rest, not only where its landmarks lie. The neutral is the mean of the frames a plain
prior reads most neutral so far (`NeutralFeatures`); before there is one, the displacement is zero.

Displaced head (`DisplacedHead`, `solve.displaced_head`): a linear read-out of a few channels (brows, blinks,
jaw open, lips) from the displaced features, the displacement of every mesh landmark from that neutral
included. It replaces the plain network's reading of those channels: a network that sees one frame cannot tell
high brows from raised ones, or full lips from parted ones (docs/performer.md, "the head"), a displacement can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.face_model import MODELS_DIR, ModelFileError, read_npz
from engine.names import ICT_EXPRESSIONS as _CHANNEL_NAMES
from engine.names import ict_partner
from engine.solve.tables import PriorTables, contiguous

DEFAULT_PRIOR_PATH = MODELS_DIR / "solve_prior.npz"  # trained on renders of the default identity (the demo)
PEOPLE_PRIOR_PATH = MODELS_DIR / "solve_prior_people.npz"  # trained on many synthetic identities (anyone)
# The same, reading the performer's displacement from their neutral too (`solve.displaced_prior`).
DISPLACED_PRIOR_PATH = MODELS_DIR / "solve_prior_people_displaced.npz"
# Channels read from the performer's displacement (`solve.displaced_head`; tools/train_solve_prior.py --head).
DISPLACED_HEAD_PATH = MODELS_DIR / "solve_head_displaced.npz"
N_MESH, N_CHANNELS = 468, 53
N_FEATURES = N_MESH * 3 + 9
N_DISPLACED = N_MESH * 3  # the displaced features' extra part: the mesh part minus the neutral's
LOSSES = ("mse", "l1")  # the training losses `fit_mlp_prior` knows


@dataclass(frozen=True)
class DisplacedHead:
    """A linear read-out of `channels` (k,) from the `displaced_features` (plain features, then the mesh part's
    displacement from the performer's neutral): `weights` (N_FEATURES + N_DISPLACED, k), `bias` (k,); and how
    its reading mixes with the plain network's: `mix` (k, 3) rows (a, b, c), the channel = a · head + b · plain
    + c (`fit_head_mix`; None: the head's reading alone)."""

    channels: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    mix: np.ndarray | None = None

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(…, N_FEATURES + N_DISPLACED) `displaced_features` → (…, k) unclipped weights of `channels`."""
        return features @ self.weights + self.bias

    def blend(self, head: np.ndarray, plain: np.ndarray) -> np.ndarray:
        """(…, k) head readings and the plain network's readings of the same channels → (…, k) the channels."""
        if self.mix is None:
            return head
        return self.mix[:, 0] * head + self.mix[:, 1] * plain + self.mix[:, 2]

    def mix_rows(self) -> np.ndarray:
        """(k, 3) the mix rows (a, b, c) `blend` applies; (1, 0, 0), the head alone, where it has no mix."""
        if self.mix is not None:
            return self.mix
        return np.tile(np.array([1.0, 0.0, 0.0]), (len(self.channels), 1))

    @staticmethod
    def load(path: Path | str = DISPLACED_HEAD_PATH) -> DisplacedHead:
        """Read a head file; a missing or malformed one is a clear ModelFileError."""
        path = Path(path)
        arrays = read_npz(path, "displaced head", "tools/train_solve_prior.py --head")
        try:
            channels = np.array([_CHANNEL_NAMES.index(str(name)) for name in arrays["channels"]], dtype=np.int64)
            mix = arrays["mix"].astype(np.float64) if "mix" in arrays else None  # heads before the mix: alone
            head = DisplacedHead(
                channels, np.ascontiguousarray(arrays["weights"], dtype=np.float64), arrays["bias"].astype(np.float64),
                mix,
            )  # fmt: skip
        except Exception as exc:
            raise ModelFileError(f"displaced head {path} is unreadable: {exc}") from exc
        k = len(head.channels)
        if head.weights.shape != (N_FEATURES + N_DISPLACED, k) or head.bias.shape != (k,) or len(set(channels)) != k:
            raise ModelFileError(f"displaced head {path} holds weights {head.weights.shape} for {k} channels")
        if mix is not None and mix.shape != (k, 3):
            raise ModelFileError(f"displaced head {path} holds a mix of shape {mix.shape} for {k} channels")
        if not all(np.isfinite(a).all() for a in (head.weights, head.bias, np.zeros(0) if mix is None else mix)):
            raise ModelFileError(f"displaced head {path} holds non-finite values")
        return head

    def save(self, path: Path | str, **metadata: object) -> None:
        """Write the head (channels by name) and metadata arrays for the record."""
        np.savez_compressed(
            path,
            channels=np.array([_CHANNEL_NAMES[k] for k in self.channels]),
            weights=self.weights.astype(np.float32),
            bias=self.bias.astype(np.float32),
            **({} if self.mix is None else {"mix": self.mix.astype(np.float32)}),
            **{key: np.asarray(value) for key, value in metadata.items()},
        )


@dataclass(frozen=True)
class LearnedPrior:
    """The regressor (see module docstring); `strength` the μ (cm²) it was validated with; `with_response`:
    trained on landmarks posed with the landmark response (then only valid together with it)."""

    mean: np.ndarray
    basis: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    strength: float = 0.0
    with_response: bool = False
    kind: str = field(default="ridge")
    residual_limit: float = 0.0  # r_limit (cm); 0: no out-of-distribution fade
    # (53,) in [0, 1]: the share of μ each channel gets. 0 where the regression reads a channel worse than the
    # geometric fit on held-out faces (gaze, which comes from the irises it does not see; subtle brows): there
    # the landmarks alone decide. None: every channel 1.
    channel_mask: np.ndarray | None = None
    # The neutral the features are measured from: "identity" (the solver's identity: a prior trained on renders
    # of one identity) or "mean" (the model's mean face: a prior trained on many, usable for anyone).
    reference: str = "identity"
    # The vertical field of view (°) the features were computed with in training (a prior trained on many
    # cameras read through one assumed lens); None: the solver's own camera. The solver keeps computing them
    # with it whatever camera it fits, so the regression sees what it was trained on.
    camera_fov_y_deg: float | None = None
    # True: the input is `displaced_features` (N_FEATURES + N_DISPLACED values), not the plain features.
    displaced: bool = False
    # Channels read from the performer's displacement instead (not part of the prior's file: `with_head`).
    head: DisplacedHead | None = None

    @property
    def n_inputs(self) -> int:
        """The width of the features this prior's network reads."""
        return N_FEATURES + (N_DISPLACED if self.displaced else 0)

    @property
    def reads_displacement(self) -> bool:
        """Whether it reads `displaced_features` (its network, or its head), so needs the performer's neutral."""
        return self.displaced or self.head is not None

    @property
    def mask(self) -> np.ndarray:
        """(53,) the per-channel share of μ."""
        return np.ones(N_CHANNELS) if self.channel_mask is None else self.channel_mask

    @staticmethod
    def linear(coef: np.ndarray, strength: float = 0.0, with_response: bool = False) -> LearnedPrior:
        """From a (1 + F, 53) [intercept; slope] matrix."""
        n_out = coef.shape[1]
        layers = ((np.eye(n_out), coef[0]),)
        return LearnedPrior(np.zeros(coef.shape[0] - 1), coef[1:], np.ones(n_out), layers, strength, with_response)

    @staticmethod
    def features(observed_model: np.ndarray, neutral: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(478, 3) model-frame landmarks (cm), (478, 3) embedded neutral, (3, 3) rotation → (F,)."""
        out = np.empty(N_FEATURES)
        out[: N_MESH * 3] = (observed_model[:N_MESH] - neutral[:N_MESH]).reshape(-1)
        out[N_MESH * 3 :] = rotation.reshape(-1)
        return out

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(F,) or (n, F) → (53,) or (n, 53) unclipped weights."""
        return self.predict_with_trust(features)[0]

    def predict_with_trust(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F,) or (n, F) → weights (53,) or (n, 53), and trust () or (n,) in [0, 1]: the factor on μ
        (1 inside the training distribution, see the module docstring). F: `displaced_features` when the prior
        `reads_displacement`, else the plain features."""
        centred = (features[..., : self.n_inputs] if self.head is not None else features) - self.mean
        z = centred @ self.basis
        h = z * self.scale
        for i, (weight, bias) in enumerate(self.layers):
            h = (np.maximum(h, 0.0) if i else h) @ weight + bias
        if self.head is not None:
            h[..., self.head.channels] = self.head.blend(self.head.predict(features), h[..., self.head.channels])
        if self.residual_limit <= 0:
            return h, np.ones(np.shape(features)[:-1])
        outside = np.sqrt(np.maximum((centred * centred).sum(axis=-1) - (z * z).sum(axis=-1), 0.0))
        return h, np.minimum(np.maximum(2.0 - outside / self.residual_limit, 0.0), 1.0)  # np.clip, minus its wrapper

    @staticmethod
    def load(path: Path | str = DEFAULT_PRIOR_PATH) -> LearnedPrior:
        """Read `models/solve_prior.npz`; a missing or malformed file is a clear ModelFileError."""
        path = Path(path)
        arrays = read_npz(path, "solve prior", "tools/fit_solve_prior.py")
        try:
            layers = tuple(
                (np.ascontiguousarray(arrays[f"w{i}"], dtype=np.float64), arrays[f"b{i}"].astype(np.float64))
                for i in range(int(arrays["n_layers"]))
            )
            prior = LearnedPrior(
                arrays["mean"].astype(np.float64),
                np.ascontiguousarray(arrays["basis"], dtype=np.float64),
                arrays["scale"].astype(np.float64),
                layers,
                float(arrays["strength"]),
                bool(arrays["with_response"]),
                str(arrays["kind"]),
                float(arrays["residual_limit"]),
                arrays["channel_mask"].astype(np.float64) if "channel_mask" in arrays else None,
                str(arrays["reference"]) if "reference" in arrays else "identity",
                float(arrays["camera_fov_y_deg"]) if "camera_fov_y_deg" in arrays else None,
                bool(arrays["displaced"]) if "displaced" in arrays else False,
            )
            width = prior.predict(np.zeros(prior.n_inputs)).shape
        except Exception as exc:
            raise ModelFileError(f"solve prior {path} is unreadable: {exc}") from exc
        if prior.mean.shape != (prior.n_inputs,) or width != (N_CHANNELS,) or not prior.strength >= 0:
            raise ModelFileError(f"solve prior {path} holds input {prior.mean.shape}, output {width}")
        if prior.reference not in ("identity", "mean"):
            raise ModelFileError(f"solve prior {path} names an unknown reference face {prior.reference!r}")
        if prior.camera_fov_y_deg is not None and not 1.0 < prior.camera_fov_y_deg < 120.0:
            raise ModelFileError(f"solve prior {path} names a camera of {prior.camera_fov_y_deg}°")
        if prior.mask.shape != (N_CHANNELS,) or not ((prior.mask >= 0) & (prior.mask <= 1)).all():
            raise ModelFileError(f"solve prior {path} holds a channel mask outside [0, 1] or of the wrong shape")
        finite = [prior.basis, prior.scale, prior.mean, *(a for layer in layers for a in layer)]
        if not all(np.isfinite(a).all() for a in finite):
            raise ModelFileError(f"solve prior {path} holds non-finite values")
        return prior

    def save(self, path: Path | str, **metadata: object) -> None:
        """Write the regressor (float32), strength, flags and metadata arrays for the record."""
        extras = {key: np.asarray(value) for key, value in metadata.items()}
        for i, (weight, bias) in enumerate(self.layers):
            extras[f"w{i}"], extras[f"b{i}"] = weight.astype(np.float32), bias.astype(np.float32)
        np.savez_compressed(
            path,
            mean=self.mean.astype(np.float32),
            basis=self.basis.astype(np.float32),
            scale=self.scale.astype(np.float32),
            residual_limit=np.float32(self.residual_limit),
            n_layers=np.int32(len(self.layers)),
            strength=np.float32(self.strength),
            with_response=np.bool_(self.with_response),
            kind=np.str_(self.kind),
            channel_mask=self.mask.astype(np.float32),
            reference=np.str_(self.reference),
            **({} if self.camera_fov_y_deg is None else {"camera_fov_y_deg": np.float32(self.camera_fov_y_deg)}),
            displaced=np.bool_(self.displaced),
            **extras,
        )

    def with_strength(self, strength: float) -> LearnedPrior:
        return replace(self, strength=strength)

    def with_mask(self, mask: np.ndarray) -> LearnedPrior:
        return replace(self, channel_mask=np.asarray(mask, dtype=np.float64))

    def with_head(self, head: DisplacedHead | None) -> LearnedPrior:
        """This prior with some channels read by `head` from the performer's displacement (None: none)."""
        return replace(self, head=head)


def displaced_features(features: np.ndarray, neutral: np.ndarray | None) -> np.ndarray:
    """(…, N_FEATURES) plain features and the performer's (N_DISPLACED,) neutral mesh features (None: none
    yet) → (…, N_FEATURES + N_DISPLACED): the plain ones, then their mesh part minus the neutral's."""
    mesh = features[..., :N_DISPLACED]
    displacement = np.zeros_like(mesh) if neutral is None else mesh - neutral
    return np.concatenate([features, displacement], axis=-1)


class NeutralFeatures:
    """The performer's neutral mesh features, for a displaced prior: the mean of the `keep` sampled frames that
    `scorer` (a plain prior) reads most neutral so far: the lowest strongest non-eye weight. (On held-out
    training clips that score told neutral frames from expressive ones with an AUC of 0.76, the sum of the
    weights 0.73: the sum adds up many small readings.) Frames are sampled at most `sample_hz` a second;
    `tools/train_solve_prior.py --displaced` builds its training neutrals the same way, so the network sees at
    run time what it was trained on."""

    def __init__(self, scorer: LearnedPrior, keep: int = 8, sample_hz: float = 5.0) -> None:
        if scorer.reads_displacement:
            raise ValueError("the neutral's scorer must read plain features")
        self.scorer, self.keep, self.period_ns = scorer, keep, int(1e9 / sample_hz)
        self._scored = ~np.array([name.startswith("eye") for name in _CHANNEL_NAMES])
        self.reset()

    def reset(self) -> None:
        """A new person: no neutral until the next sample."""
        self._frames: list[tuple[float, np.ndarray]] = []
        self._last_ns: int | None = None
        self.value: np.ndarray | None = None

    def due(self, t_ns: int) -> bool:
        """Whether a frame at `t_ns` would be sampled (callers skip computing features otherwise)."""
        return self._last_ns is None or t_ns - self._last_ns >= self.period_ns or t_ns < self._last_ns

    def observe(self, features: np.ndarray, t_ns: int) -> None:
        """One frame's plain (N_FEATURES,) features, if due: score it, keep it if among the most neutral."""
        if self.due(t_ns):
            self.observe_reading(self.scorer.predict(features), features[:N_DISPLACED], t_ns)

    def observe_reading(self, reading: np.ndarray, mesh_features: np.ndarray, t_ns: int) -> None:
        """`observe` for a frame the scorer has already read: its (53,) unclipped `reading` of the frame, whose plain
        features' mesh part is `mesh_features` (N_DISPLACED,). The compiled fit hands both over
        (`FrameFit.prior_reading`) when its prior's network is this scorer."""
        if not self.due(t_ns):
            return
        self._last_ns = t_ns
        score = float(np.clip(reading, 0.0, 1.0)[self._scored].max())
        self._frames.append((score, np.array(mesh_features, dtype=np.float64)))
        self._frames.sort(key=lambda entry: entry[0])
        del self._frames[self.keep :]
        self.value = np.mean([f for _, f in self._frames], axis=0)


def prior_tables(
    prior: LearnedPrior | None, strength: float, neutral: np.ndarray, focal_ratio: float = 1.0
) -> PriorTables:
    """The compiled fit's view of `prior` at μ = `strength`, its features measured from `neutral` (478, 3) and
    corrected for perspective with the fit's focal length times `focal_ratio` (the prior's own camera).

    Without a prior, or at strength 0, placeholder arrays of the right types (the fit never reads them)."""
    if prior is not None and strength > 0:
        mean, basis, scale, layers = prior.mean, prior.basis, prior.scale, prior.layers
        limit = prior.residual_limit
    else:
        mean, basis, scale = np.zeros(N_FEATURES), np.zeros((N_FEATURES, 1)), np.ones(1)
        layers = ((np.zeros((1, N_CHANNELS)), np.zeros(N_CHANNELS)),)
        limit, strength = 0.0, 0.0
    head = prior.head if prior is not None and strength > 0 else None
    return PriorTables(
        neutral=contiguous(neutral),
        mean=contiguous(mean),
        basis=contiguous(basis, np.float32),
        scale=contiguous(scale),
        layer_weights=np.concatenate([np.ravel(weight) for weight, _ in layers]).astype(np.float32),
        layer_biases=np.concatenate([np.ravel(bias) for _, bias in layers]).astype(np.float64),
        layer_shapes=np.array([np.shape(weight) for weight, _ in layers], dtype=np.int64),
        layer_row_spans=np.concatenate([nonzero_spans(np.asarray(weight, np.float32)) for weight, _ in layers]),
        residual_limit=float(limit),
        strength=float(strength),
        channel_mask=contiguous(np.ones(N_CHANNELS) if prior is None else prior.mask),
        focal_ratio=float(focal_ratio),
        displaced=bool(prior is not None and strength > 0 and prior.displaced),
        head_weights=contiguous(np.zeros((0, 0)) if head is None else head.weights),
        head_bias=contiguous(np.zeros(0) if head is None else head.bias),
        head_channels=contiguous(np.zeros(0) if head is None else head.channels, np.int64),
        head_mix=contiguous(np.zeros((0, 3)) if head is None else head.mix_rows()),
    )


def nonzero_spans(matrix: np.ndarray) -> np.ndarray:
    """(n, m) → (n, 2) int64: each row's first nonzero column and one past its last ((0, 0) for a zero row)."""
    nonzero = matrix != 0
    any_nonzero = nonzero.any(axis=1)
    first = np.where(any_nonzero, nonzero.argmax(axis=1), 0)
    last = np.where(any_nonzero, matrix.shape[1] - nonzero[:, ::-1].argmax(axis=1), 0)
    return np.stack([first, last], axis=1).astype(np.int64)


def fit_ridge_prior(
    features: np.ndarray,
    weights: np.ndarray,
    rng: np.random.Generator,
    alphas: tuple[float, ...] | None = None,
    with_response: bool = False,
) -> tuple[LearnedPrior, str]:
    """Ridge regression (n, F) → (n, 53), its strength α chosen on a random 20 % validation split (mean abs error
    of the clipped prediction), then refitted on everything. Returns the prior (strength 0: the caller sets μ)
    and a one-line report."""
    alphas = alphas or (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    n = len(features)
    order = rng.permutation(n)
    val, fit = order[: n // 5], order[n // 5 :]

    def solve(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
        mx, my = x.mean(axis=0), y.mean(axis=0)
        xc = x - mx
        gram = xc.T @ xc
        gram.flat[:: gram.shape[0] + 1] += alpha * len(x)
        slope = np.linalg.solve(gram, xc.T @ (y - my))
        return np.vstack([my - mx @ slope, slope])

    scores = []
    for alpha in alphas:
        coef = solve(features[fit], weights[fit], alpha)
        pred = np.clip(features[val] @ coef[1:] + coef[0], 0.0, 1.0)
        scores.append(float(np.abs(pred - weights[val]).mean()))
    best = alphas[int(np.argmin(scores))]
    coef = solve(features, weights, best)
    text = "ridge α (validation MAE): " + ", ".join(f"{a:g} ({s:.4f})" for a, s in zip(alphas, scores, strict=True))
    return LearnedPrior.linear(coef, 0.0, with_response), text + f" → α = {best:g}"


def fit_head_mix(
    head: DisplacedHead, head_readings: np.ndarray, plain_readings: np.ndarray, truth: np.ndarray,
    driven_weight: float = 3.0,
) -> DisplacedHead:  # fmt: skip
    """`head` with its mix: per channel, a · head + b · plain + c by least squares against the truth, the frames
    that drive the channel (> 0.1) weighing `driven_weight`. head_readings: (n, k) `head.predict`, unclipped;
    plain_readings, truth: (n, 53). Fitted on frames the plain network never trained on (its readings of its
    own training frames are better than it reads anyone else). A mirrored pair (`names.ict_partner`: `_L`/`_R`,
    jaw or mouth left/right) shares one row, fitted on both sides' frames, so that a mirrored face reads
    mirrored."""
    names = [_CHANNEL_NAMES[k] for k in head.channels]
    mix = np.zeros((len(names), 3))
    for j, name in enumerate(names):
        partner = ict_partner(name)
        sides = [j] + ([names.index(partner)] if partner in names else [])
        design = np.concatenate(
            [
                np.stack([head_readings[:, i], plain_readings[:, head.channels[i]], np.ones(len(truth))], 1)
                for i in sides
            ]
        )
        target = np.concatenate([truth[:, head.channels[i]] for i in sides])
        root = np.sqrt(np.where(target > 0.1, driven_weight, 1.0))
        mix[j] = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)[0]
    return replace(head, mix=mix)


def fit_displaced_head(
    features: np.ndarray, weights: np.ndarray, channels: np.ndarray, driven_weight: float = 3.0, ridge: float = 1.0
) -> DisplacedHead:
    """A `DisplacedHead` for `channels` from (n, N_FEATURES + N_DISPLACED) `displaced_features` and (n, 53) true
    weights: per channel, a ridge regression on standardized inputs (penalty `ridge` per unit variance) in which
    the frames that drive that channel (> 0.1) weigh `driven_weight` (a least-squares fit alone under-reads what
    is rare), the standardization folded into the weights. Accumulated in blocks of frames (the features of a
    quarter of a million frames are 5 GB in float64): the unweighted sums once, each channel's driven frames on
    top."""
    channels = np.asarray(channels, dtype=np.int64)
    y = weights[:, channels].astype(np.float64)
    driven = y > 0.1
    blocks = [slice(i, i + 20_000) for i in range(0, len(features), 20_000)]
    n_inputs = features.shape[1]
    mean = sum(features[b].astype(np.float64).sum(axis=0) for b in blocks) / len(features)
    std = np.sqrt(sum(((features[b].astype(np.float64) - mean) ** 2).sum(axis=0) for b in blocks) / len(features))
    std += 1e-6
    gram = np.zeros((n_inputs, n_inputs))  # Σ x xᵀ over all frames, then each channel's driven frames
    driven_gram = np.zeros((len(channels), n_inputs, n_inputs))
    sums, driven_sums = np.zeros(n_inputs), np.zeros((len(channels), n_inputs))
    moments, driven_moments = np.zeros((n_inputs, len(channels))), np.zeros((len(channels), n_inputs))
    for b in blocks:
        x = (features[b].astype(np.float64) - mean) / std
        gram += x.T @ x
        sums += x.sum(axis=0)
        moments += x.T @ y[b]
        for j in range(len(channels)):
            rows = x[driven[b, j]]
            driven_gram[j] += rows.T @ rows
            driven_sums[j] += rows.sum(axis=0)
            driven_moments[j] += rows.T @ y[b][driven[b, j], j]
    slope, bias = np.zeros((n_inputs, len(channels))), np.zeros(len(channels))
    extra = driven_weight - 1.0
    for j in range(len(channels)):
        total = len(features) + extra * driven[:, j].sum()  # Σ w
        x_sum = sums + extra * driven_sums[j]  # Σ w x
        y_sum = y[:, j].sum() + extra * y[driven[:, j], j].sum()  # Σ w y
        centred = gram + extra * driven_gram[j] - np.outer(x_sum, x_sum) / total
        centred.flat[:: n_inputs + 1] += ridge
        moment = moments[:, j] + extra * driven_moments[j] - x_sum * y_sum / total
        standardized = np.linalg.solve(centred, moment)
        slope[:, j] = standardized / std
        bias[j] = y_sum / total - (x_sum / total) @ standardized - mean @ slope[:, j]
    return DisplacedHead(channels, slope, bias)


def fit_mlp_prior(
    features: np.ndarray,
    weights: np.ndarray,
    seed: int = 0,
    components: int = 128,
    hidden: int = 256,
    epochs: int = 150,
    with_response: bool = False,
    driven_weight: float = 1.0,
    batch: int = 64,
    augment_basis: np.ndarray | None = None,
    dropout: float = 0.0,
    input_noise: float = 0.05,
    members: int = 1,
    loss: str = "mse",
) -> LearnedPrior:
    """A two-hidden-layer ReLU MLP on the PCA-whitened features (`components` of them; `members` × `hidden` units
    wide once merged), trained with mean squared error (`loss` "mse") or mean absolute error ("l1": the network
    then reads the conditional median, which is what the eval's mean absolute errors reward) (AdamW, cosine
    schedule, a little input noise) on (n, F) → (n, 53). Needs torch (training only: the solver evaluates the
    stored layers with numpy). `driven_weight` multiplies the error of entries whose true weight exceeds 0.1 (more
    than 1 trades false positives for less under-reading).

    `augment_basis` (F, m): feature-space directions along which every training sample is shifted by a fresh
    N(0, 1) combination in every epoch — the embedded identity basis (scaled by the modes' prior std), so the
    network sees each expression on many more face shapes than were rendered and must read expression from
    what identity cannot explain (without it, a few hundred rendered identities are memorized).

    `dropout` after each hidden layer and `input_noise` (std in whitened units) regularize training only: the
    stored layers are evaluated as they are.

    `members` > 1: that many networks, trained from seeds `seed`, `seed + 1`, … on the same whitened inputs, and
    their mean stored as one network (`merge_members`): the solver runs it unchanged. Networks from different
    seeds agree on faces like their training renders and disagree on faces unlike them (real ones); the mean
    keeps what they agree on."""
    import torch

    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    mean = features.mean(axis=0)
    rng = np.random.default_rng(seed)
    # Principal directions from the (F, F) scatter matrix, accumulated in chunks: the same as an SVD of the
    # samples, without holding an (n, F) factor (or a centred copy) for a million frames.
    chunks = [slice(start, start + 20000) for start in range(0, len(features), 20000)]
    scatter = np.zeros((features.shape[1], features.shape[1]))
    for rows in chunks:
        chunk = features[rows] - mean
        if augment_basis is not None:
            # The principal directions must span the augmented cloud, or the shifted samples leave the subspace.
            chunk = chunk + rng.standard_normal((len(chunk), augment_basis.shape[1])) @ augment_basis.T
        scatter += chunk.T @ chunk
    eigenvalues, vectors = np.linalg.eigh(scatter)
    order = np.argsort(eigenvalues)[::-1]
    sing = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    vt = vectors[:, order].T
    basis = vt[:components].T
    scale = np.sqrt(len(features)) / np.maximum(sing[:components], 1e-9)
    z = np.empty((len(features), components), np.result_type(features, basis))
    outside = np.empty(len(features))
    for rows in chunks:
        chunk = features[rows] - mean
        z[rows] = chunk @ basis
        outside[rows] = np.sqrt(np.maximum((chunk * chunk).sum(axis=1) - (z[rows] * z[rows]).sum(axis=1), 0.0))
    x = torch.tensor(z * scale, dtype=torch.float32)
    y = torch.tensor(weights, dtype=torch.float32)
    shift = None if augment_basis is None else torch.tensor((augment_basis.T @ basis) * scale, dtype=torch.float32)
    trained = [
        _train_mlp(x, y, shift, seed + i, hidden, epochs, driven_weight, batch, dropout, input_noise, loss)
        for i in range(members)
    ]
    limit = float(np.percentile(outside, 99.5))
    return LearnedPrior(mean, basis, scale, merge_members(trained), 0.0, with_response, "mlp", limit)


def _train_mlp(
    x: Any, y: Any, shift: Any, seed: int, hidden: int, epochs: int, driven_weight: float, batch: int,
    dropout: float, input_noise: float, loss: str = "mse",
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """One network of `fit_mlp_prior` on whitened torch inputs x (n, P) and weights y (n, 53) → its layers."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    components = x.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Linear(components, hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, y.shape[1]),
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc=f"train MLP prior (seed {seed})", unit="epoch", leave=False):
        perm = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            rows = perm[start : start + batch]
            noisy = x[rows] + input_noise * torch.randn(len(rows), components, generator=generator)
            if shift is not None:
                noisy = noisy + torch.randn(len(rows), len(shift), generator=generator) @ shift
            target = y[rows]
            error = net(noisy) - target
            error = error * error if loss == "mse" else error.abs()
            objective = (error * (1.0 + (driven_weight - 1.0) * (target > 0.1))).mean()
            opt.zero_grad()
            objective.backward()
            opt.step()
        sched.step()
    net.eval()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    return [
        (m.weight.detach().numpy().T.astype(np.float64), m.bias.detach().numpy().astype(np.float64)) for m in linear
    ]


def merge_members(
    members: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The layers (W, b) of networks reading the same input (ReLU between layers, as `LearnedPrior` runs them) →
    one network's layers whose output is their mean: their first layers side by side, their hidden layers
    block-diagonal (each member's units see only its own), their last layers stacked and divided by the count."""
    if not members:
        raise ValueError("no members to merge")
    if len({len(layers) for layers in members}) != 1:
        raise ValueError("members must have the same number of layers")
    count, depth = len(members), len(members[0])
    merged = []
    for layer in range(depth):
        weights = [layers[layer][0] for layers in members]
        biases = [layers[layer][1] for layers in members]
        if layer == depth - 1:
            weight = np.vstack(weights) / count if depth > 1 else sum(weights) / count
            merged.append((weight, sum(biases) / count))
        elif layer == 0:
            merged.append((np.hstack(weights), np.concatenate(biases)))
        else:
            weight = np.zeros((sum(w.shape[0] for w in weights), sum(w.shape[1] for w in weights)))
            row = col = 0
            for w in weights:
                weight[row : row + w.shape[0], col : col + w.shape[1]] = w
                row, col = row + w.shape[0], col + w.shape[1]
            merged.append((weight, np.concatenate(biases)))
    return tuple(merged)
