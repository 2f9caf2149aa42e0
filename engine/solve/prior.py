"""A learned prior for the expression solve: weights regressed from the model-frame landmarks (DESIGN §3.2).

The bounded least squares explains the landmarks with the embedded blendshape map; where MediaPipe follows a
shape only partly (brow and lid details, cheekPuff, mouthPress) or mixes shapes up, it under-reads or confuses
channels. A regressor from the same model-frame landmarks to the weights, trained on renders with known
weights (`tools/fit_solve_prior.py`), knows those habits; the solver adds it as a prior

    μ Σ_k (w_k − w_reg,k)²

to the bounded least squares (H += μI, b += μ w_reg), which stays the core of the solve and keeps the box.

features x: the 468 mesh landmarks in the model frame minus the identity's embedded neutral (cm, 1404 values)
and the head rotation (9 values: MediaPipe's errors depend on the view). The regressor is

    h = (x − mean) @ project + offset,   then per layer (W, b): h = relu(h) @ W + b   (no layers: linear)

a ridge regression is `project` = its (F, 53) slope and `offset` its intercept; the MLP's `project` is a PCA
whitening (F, P) followed by ReLU layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.face_model import MODELS_DIR, ModelFileError

DEFAULT_PRIOR_PATH = MODELS_DIR / "solve_prior.npz"
N_MESH, N_CHANNELS = 468, 53
N_FEATURES = N_MESH * 3 + 9


@dataclass(frozen=True)
class LearnedPrior:
    """The regressor (see module docstring); `strength` the μ (cm²) it was validated with; `with_response`:
    trained on landmarks posed with the landmark response (then only valid together with it)."""

    mean: np.ndarray
    project: np.ndarray
    offset: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    strength: float = 0.0
    with_response: bool = False
    kind: str = field(default="ridge")

    @staticmethod
    def linear(coef: np.ndarray, strength: float = 0.0, with_response: bool = False) -> LearnedPrior:
        """From a (1 + F, 53) [intercept; slope] matrix."""
        return LearnedPrior(np.zeros(coef.shape[0] - 1), coef[1:], coef[0], (), strength, with_response)

    @staticmethod
    def features(observed_model: np.ndarray, neutral: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(478, 3) model-frame landmarks (cm), (478, 3) embedded neutral, (3, 3) rotation → (F,)."""
        out = np.empty(N_FEATURES)
        out[: N_MESH * 3] = (observed_model[:N_MESH] - neutral[:N_MESH]).reshape(-1)
        out[N_MESH * 3 :] = rotation.reshape(-1)
        return out

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(F,) or (n, F) → (53,) or (n, 53) unclipped weights."""
        h = (features - self.mean) @ self.project + self.offset
        for weight, bias in self.layers:
            h = np.maximum(h, 0.0) @ weight + bias
        return h

    @staticmethod
    def load(path: Path | str = DEFAULT_PRIOR_PATH) -> LearnedPrior:
        """Read `models/solve_prior.npz`; a missing or malformed file is a clear ModelFileError."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"solve prior not found: {path} (make it with tools/fit_solve_prior.py)")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            layers = tuple(
                (arrays[f"w{i}"].astype(np.float64), arrays[f"b{i}"].astype(np.float64))
                for i in range(int(arrays["n_layers"]))
            )
            prior = LearnedPrior(
                arrays["mean"].astype(np.float64),
                np.ascontiguousarray(arrays["project"], dtype=np.float64),
                arrays["offset"].astype(np.float64),
                layers,
                float(arrays["strength"]),
                bool(arrays["with_response"]),
                str(arrays["kind"]),
            )
            width = prior.predict(np.zeros(N_FEATURES)).shape
        except Exception as exc:
            raise ModelFileError(f"solve prior {path} is unreadable: {exc}") from exc
        if prior.mean.shape != (N_FEATURES,) or width != (N_CHANNELS,) or not prior.strength >= 0:
            raise ModelFileError(f"solve prior {path} holds input {prior.mean.shape}, output {width}")
        finite = [prior.project, prior.offset, prior.mean, *(a for layer in layers for a in layer)]
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
            project=self.project.astype(np.float32),
            offset=self.offset.astype(np.float32),
            n_layers=np.int32(len(self.layers)),
            strength=np.float32(self.strength),
            with_response=np.bool_(self.with_response),
            kind=np.str_(self.kind),
            **extras,
        )

    def with_strength(self, strength: float) -> LearnedPrior:
        return LearnedPrior(self.mean, self.project, self.offset, self.layers, strength, self.with_response, self.kind)


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


def fit_mlp_prior(
    features: np.ndarray,
    weights: np.ndarray,
    seed: int = 0,
    components: int = 128,
    hidden: int = 256,
    epochs: int = 150,
    with_response: bool = False,
) -> LearnedPrior:
    """A two-hidden-layer ReLU MLP on the PCA-whitened features (`components` of them), trained with mean
    squared error (AdamW, cosine schedule, a little input noise) on (n, F) → (n, 53). Needs torch (training
    only: the solver evaluates the stored layers with numpy)."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    mean = features.mean(axis=0)
    centred = features - mean
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    project = vt[:components].T * (np.sqrt(len(features)) / np.maximum(sing[:components], 1e-9))
    x = torch.tensor(centred @ project, dtype=torch.float32)
    y = torch.tensor(weights, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(components, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, weights.shape[1]),
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="train MLP prior", unit="epoch", leave=False):
        perm = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = perm[start : start + 64]
            noisy = x[batch] + 0.05 * torch.randn(len(batch), components, generator=generator)
            loss = ((net(noisy) - y[batch]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    params = [
        (m.weight.detach().numpy().T.astype(np.float64), m.bias.detach().numpy().astype(np.float64)) for m in linear
    ]
    # Fold the first linear layer into the projection: h = (x − mean) @ (project W0) + b0.
    first_w, first_b = params[0]
    return LearnedPrior(mean, project @ first_w, first_b, tuple(params[1:]), 0.0, with_response, "mlp")
