"""Learn the solver's data-driven pieces from renders → models/landmark_response.npz + models/solve_prior.npz.

Renders the default identity (the demo performer's renderer and camera) with random known expressions and head
poses drawn like a performance (key expressions at any intensity and their mixes, random sparse channels,
bilateral pairs, speech-like jaw/lip motion, blinks over everything, neutral faces turned up to ±25°), tracks
every render with MediaPipe FaceMesh, and fits:

1. the landmark response (`engine/solve/response.py`): the affine map weights → landmarks that MediaPipe
   actually follows, as a correction to the embedded map;
2. the learned prior (`engine/solve/prior.py`): a ridge regression from the solver's model-frame landmarks to
   the weights, w_reg, used as the prior μ Σ_k (w_k − w_reg,k)² in the bounded least squares; the ridge
   strength is chosen on a validation split, μ on held-out renders.

It reports held-out raw-fit errors (driven: true weight > 0.1) without / with each piece, and, unless
`--no-demo`, the closed loop on the demo performer's first `--demo-frames` frames (tracked in video mode,
filtered like the pipeline, 30 fps time stamps): the `closed_loop_metrics` of `engine/metrics.py`.
Renders are cached under out/solve_cache/ (keyed by identity files, counts and seed; `--no-cache` re-renders).

Usage: python tools/fit_solve_prior.py [--train 2400] [--test 400] [--sequence 3000] [--seed 0] [--demo-frames 600]
       [--driven-weight 3] [--no-mlp] [--response] [--dry-run] [--no-cache]
"""

from __future__ import annotations

import hashlib

import numpy as np
from _common import ROOT, argument_parser, start  # before any engine import: puts the repository on sys.path
from fit_landmark_response import fit_response, random_samples, render_and_track
from tqdm import tqdm

from engine.config import Config
from engine.detail.weights import KEY_EXPRESSIONS, key_expression_weights
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.identity import Identity
from engine.metrics import closed_loop_metrics
from engine.names import ICT_EXPRESSIONS
from engine.solve.face_solver import FaceSolver
from engine.solve.performer import Performer
from engine.solve.prior import DEFAULT_PRIOR_PATH, fit_mlp_prior, fit_ridge_prior
from engine.solve.response import DEFAULT_RESPONSE_PATH
from engine.solve.solver import FrameFitter, valid_observation
from engine.tracking import FaceTracker
from engine.types import Landmarks

N = len(ICT_EXPRESSIONS)
CACHE_DIR = ROOT / "out" / "solve_cache"
JAW_OPEN, MOUTH_CLOSE = ICT_EXPRESSIONS.index("jawOpen"), ICT_EXPRESSIONS.index("mouthClose")
FUNNEL = ICT_EXPRESSIONS.index("mouthFunnel")
BLINKS = [ICT_EXPRESSIONS.index("eyeBlink_L"), ICT_EXPRESSIONS.index("eyeBlink_R")]


def performance_samples(
    count: int, rng: np.random.Generator, blink_probability: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """(count, 53) weights and (count, 3) yaw/pitch/roll° drawn like a performance (not the demo's script):
    a key expression at a random intensity (0.1× … peak 1), two key expressions mixed, random sparse channels
    (`random_samples`), speech (jaw + some lip rounding), or a neutral face turned further; blinks on a quarter."""
    table = key_expression_weights()
    sparse_w, sparse_e = random_samples(count, rng)
    weights = np.zeros((count, N))
    euler = np.column_stack([rng.uniform(-16, 16, count), rng.uniform(-11, 11, count), rng.uniform(-9, 9, count)])
    kinds = rng.choice(5, size=count, p=[0.35, 0.15, 0.25, 0.1, 0.15])
    for n, kind in enumerate(kinds):
        if kind == 0:
            pattern = table[rng.integers(1, len(KEY_EXPRESSIONS))]
            weights[n] = pattern * rng.uniform(0.1, 1.0 / pattern.max())
        elif kind == 1:
            a, b = table[rng.choice(np.arange(1, len(KEY_EXPRESSIONS)), size=2, replace=False)]
            weights[n] = np.clip(a * rng.uniform(0.2, 1.0) + b * rng.uniform(0.2, 1.0), 0.0, 1.0)
        elif kind == 2:
            weights[n], euler[n] = sparse_w[n], sparse_e[n]
        elif kind == 3:
            weights[n, JAW_OPEN] = rng.uniform(0.0, 0.7)
            if rng.uniform() < 0.4:
                weights[n, FUNNEL] = rng.uniform(0.0, 0.5) * weights[n, JAW_OPEN] / 0.7
        else:
            euler[n] = rng.uniform([-27, -22, -22], [27, 22, 22])
        if rng.uniform() < blink_probability:
            weights[n, BLINKS] = np.maximum(weights[n, BLINKS], rng.uniform(0.0, 1.0))
        weights[n, JAW_OPEN] = max(weights[n, JAW_OPEN], weights[n, MOUTH_CLOSE])
    return weights, euler


def performance_sequence(frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frames, 53) weights and (frames, 3) euler° of a random continuous performance (30 fps): keyframes from
    `performance_samples` (no blinks), each eased in over 6–14 frames (smoothstep) and held 3–12, a neutral
    face between some of them, and blinks (3 frames closing, 5 opening) every 75–135 frames over everything."""
    keys_w, keys_e = performance_samples(frames // 8 + 2, rng, blink_probability=0.0)
    keys_w[rng.uniform(size=len(keys_w)) < 0.25] = 0.0
    weights, euler = [keys_w[0][None]], [keys_e[0][None]]
    for k in range(1, len(keys_w)):
        ease, hold = int(rng.integers(6, 15)), int(rng.integers(3, 13))
        s = np.arange(1, ease + 1) / ease
        s = (s * s * (3 - 2 * s))[:, None]
        weights += [keys_w[k - 1] + s * (keys_w[k] - keys_w[k - 1]), np.repeat(keys_w[k][None], hold, axis=0)]
        euler += [keys_e[k - 1] + s * (keys_e[k] - keys_e[k - 1]), np.repeat(keys_e[k][None], hold, axis=0)]
    w, e = np.concatenate(weights)[:frames], np.concatenate(euler)[:frames]
    start = int(rng.integers(20, 75))
    profile = np.array([0.3, 0.75, 1.0, 0.85, 0.6, 0.35, 0.15, 0.05])
    while start < frames:
        span = slice(start, min(frames, start + len(profile)))
        w[span][:, BLINKS] = np.maximum(w[span][:, BLINKS], profile[: span.stop - span.start, None])
        start += int(rng.integers(75, 136))
    return w, e


def _identity_key(config: Config, *parts: object) -> str:
    """A cache key: the identity bundle's files (names, sizes, mtimes), the renderer's, shaders', face model's and
    demo performer's sources, the parts."""
    h = hashlib.sha1(repr(parts).encode())
    for path in sorted((ROOT / "models").rglob("*")):
        if path.is_file() and ("identity" in str(path) or path.name == "ict_face_model.npz"):
            st = path.stat()
            h.update(f"{path.name}{st.st_size}{st.st_mtime_ns}".encode())
    sources = [*sorted((ROOT / "engine" / "render").glob("*.py")), *sorted((ROOT / "shaders").glob("*"))]
    sources += [ROOT / "engine" / "face_model.py", ROOT / "engine" / "sources" / "demo.py"]
    for source in sources:
        if source.is_file():
            h.update(source.read_bytes())
    h.update(config.identity.name.encode())
    return h.hexdigest()[:16]


def _pack(observations: list[tuple[np.ndarray, bool] | None]) -> tuple[np.ndarray, np.ndarray]:
    points = np.full((len(observations), 478, 3), np.nan)
    iris = np.zeros(len(observations), bool)
    for i, obs in enumerate(observations):
        if obs is not None:
            points[i], iris[i] = obs
    return points, iris


def _unpack(points: np.ndarray, iris: np.ndarray) -> list[tuple[np.ndarray, bool] | None]:
    return [None if np.isnan(p).any() else (p, bool(h)) for p, h in zip(points, iris, strict=True)]


def cached_renders(
    config: Config, model: FaceModel, weights: np.ndarray, euler: np.ndarray, size: int, seed: int, use_cache: bool
) -> list[tuple[np.ndarray, bool] | None]:
    """`render_and_track` (static tracker), cached in out/solve_cache/."""
    key = _identity_key(config, "random", weights.round(6).tobytes(), euler.round(6).tobytes(), size, seed)
    path = CACHE_DIR / f"renders_{key}.npz"
    if use_cache and path.is_file():
        with np.load(path) as z:
            print(f"cached renders: {path}")
            return _unpack(z["points"], z["iris"])
    observations = render_and_track(config, model, weights, euler, size, seed)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, points=_pack(observations)[0], iris=_pack(observations)[1])
    return observations


def sequence_renders(
    config: Config, model: FaceModel, identity: Identity, weights: np.ndarray, euler: np.ndarray, seed: int,
    use_cache: bool,
) -> list[tuple[np.ndarray, bool] | None]:  # fmt: skip
    """A continuous performance rendered exactly like the demo performer's frames (its renderer, wall, drifting
    light; a different wall for `seed`) and tracked in video mode, as the pipeline tracks: y-up observations."""
    from engine.render.camera import euler_to_quaternion
    from engine.sources.demo import DemoPerformer, DemoScript

    src = config.source
    key = _identity_key(config, "sequence", weights.round(6).tobytes(), euler.round(6).tobytes(), seed, src.demo_size)
    path = CACHE_DIR / f"sequence_{key}.npz"
    if use_cache and path.is_file():
        with np.load(path) as z:
            print(f"cached sequence renders: {path}")
            return _unpack(z["points"], z["iris"])
    performer = DemoPerformer(model, identity, config.render, fps=src.fps, seed=seed + 1, size=src.demo_size)
    performer.script = DemoScript(src.fps, weights.astype(np.float32), euler.astype(np.float32), ())
    performer._quaternions = euler_to_quaternion(*euler.T.astype(np.float64))
    observations: list[tuple[np.ndarray, bool] | None] = []
    with performer, FaceTracker(config.tracking, static=False) as tracker:
        for i in tqdm(range(len(weights)), desc="sequence render + track", unit="frame"):
            faces = tracker.process(performer.frame(i))
            observations.append(valid_observation(faces[0]) if faces else None)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    points, iris = _pack(observations)
    np.savez_compressed(path, points=points, iris=iris)
    return observations


def demo_landmarks(
    config: Config, model: FaceModel, identity: Identity, frames: int, use_cache: bool
) -> tuple[list[Landmarks | None], np.ndarray]:
    """The demo performer's first `frames` frames tracked in video mode like the pipeline: landmarks, truth."""
    from engine.sources.demo import DemoPerformer

    src = config.source
    key = _identity_key(config, "demo", frames, src.demo_seed, src.demo_size, src.fps)
    path = CACHE_DIR / f"demo_{key}.npz"
    performer = DemoPerformer(model, identity, config.render, fps=src.fps, seed=src.demo_seed, size=src.demo_size)
    truth = performer.script.weights[np.arange(frames) % len(performer)].astype(np.float64)
    size = (src.demo_size, src.demo_size)
    if use_cache and path.is_file():
        with np.load(path) as z:
            print(f"cached demo landmarks: {path}")
            return _landmarks(z["pixels"], size), truth
    pixels = np.full((frames, 478, 3), np.nan)
    with performer, FaceTracker(config.tracking, static=False) as tracker:
        for i in tqdm(range(frames), desc="demo render + track", unit="frame"):
            faces = tracker.process(performer.frame(i))
            if faces:
                pixels[i] = np.asarray(faces[0].pixels, dtype=np.float64)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, pixels=pixels)
    return _landmarks(pixels, size), truth


def _landmarks(pixels: np.ndarray, size: tuple[int, int]) -> list[Landmarks | None]:
    scale = np.array([size[0], size[1], size[0]], dtype=np.float64)
    return [None if np.isnan(p).any() else Landmarks(p / scale, p, size, 1.0) for p in pixels]


def fit_features(fitter: FrameFitter, observations: list, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw fits of tracked renders: (n, 53) weights, (n, F) prior features, (n,) bool tracked."""
    keep = np.array([o is not None for o in observations])
    weights = np.zeros((len(observations), N))
    feats = []
    for i, obs in enumerate(tqdm(observations, desc="fit", unit="frame", leave=False)):
        if obs is None:
            continue
        fit = fitter.fit(obs[0], has_iris=obs[1], image_size=(size, size))
        weights[i] = fit.weights
        feats.append(fitter.prior_features(obs[0], fitter._camera((size, size))))
    return weights, np.array(feats), keep


def errors(solved: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    error = np.abs(solved - truth)
    driven = truth > 0.1
    return {"driven": float(error[driven].mean()), "all": float(error.mean())}


def closed_loop(
    config: Config, model: FaceModel, embedding: LandmarkEmbedding, identity: Identity,
    landmarks: list[Landmarks | None], truth: np.ndarray, fps: float,
) -> dict:  # fmt: skip
    """FaceSolver (calibration, filters, states) over tracked demo frames → closed_loop_metrics + strict error."""
    # Solved as `run --source demo` solves it: the identity it renders, with this prior (an Identity alone would be
    # taken for an enrolled person and solved with the people prior).
    solver = FaceSolver(model, embedding, Performer.rendered_avatar(identity, None), config.solve)
    solved = np.stack([
        solver.solve(lm, int(i * 1e9 / fps), i).weights for i, lm in enumerate(landmarks)
    ])  # fmt: skip
    metrics = closed_loop_metrics(truth, solved)
    strict = truth > 0.1
    metrics["strict_driven_error"] = round(float(np.abs(solved - truth)[strict].mean()), 4)
    metrics["tracking_rate"] = round(sum(lm is not None for lm in landmarks) / len(landmarks), 4)
    return metrics


def report(name: str, metrics: dict) -> None:
    worst = sorted(metrics["per_channel_mae"].items(), key=lambda kv: -kv[1])[:5]
    print(f"{name}: mae {metrics['mae']:.3f} (driven channels), strict {metrics['strict_driven_error']:.3f}, "
          f"all {metrics['mae_all']:.3f}, tracking {metrics['tracking_rate']:.3f}; worst "
          + ", ".join(f"{k} {v:.3f} (r {metrics['per_channel_r'][k]})" for k, v in worst))  # fmt: skip


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--sequence", type=int, default=3000, help="frames of a continuous performance (video mode)")
    ap.add_argument("--response-ridge", type=float, default=2.0)
    ap.add_argument("--demo-frames", type=int, default=600)
    ap.add_argument("--no-demo", action="store_true", help="skip the closed-loop check on the demo performer")
    ap.add_argument("--no-cache", action="store_true", help="re-render even when out/solve_cache has the renders")
    ap.add_argument(
        "--response", action="store_true",
        help="also fit and ship the landmark response (off: it raised the demo's closed-loop error, docs/solve.md)",
    )  # fmt: skip
    ap.add_argument("--driven-weight", type=float, nargs="+", default=[3.0],
                    help="MLP loss weight of driven entries (true > 0.1); several: one MLP each")  # fmt: skip
    ap.add_argument("--no-mlp", action="store_true", help="ridge regression only (no torch needed)")
    ap.add_argument("--dry-run", action="store_true", help="report only, write nothing to models/")
    run = start(ap)
    args, config, model, embedding, identity = run.args, run.config, run.model, run.embedding, run.identity
    rng = run.rng
    weights, euler = performance_samples(args.train + args.test, rng)
    observations = cached_renders(config, model, weights, euler, args.size, args.seed, not args.no_cache)
    is_test = np.arange(len(weights)) >= args.train
    if args.sequence:
        seq_w, seq_e = performance_sequence(args.sequence, rng)
        observations += sequence_renders(config, model, identity, seq_w, seq_e, args.seed, not args.no_cache)
        weights = np.vstack([weights, seq_w])
        # The sequence's last 15 % is held out (a contiguous stretch: neighbouring frames are near-duplicates).
        is_test = np.concatenate([is_test, np.arange(len(seq_w)) >= int(0.85 * len(seq_w))])
    print(f"tracked {sum(o is not None for o in observations)}/{len(observations)} renders")
    train = [i for i in range(len(observations)) if not is_test[i]]
    size, fov = args.size, config.render.fov_y_deg
    plain = config.solve.model_copy(update={"learned_prior": False})

    # 1. The landmark response.
    response = None
    if args.response:
        base = FrameFitter(model, embedding, identity.identity_weights, plain)
        train_obs = [observations[i] for i in train]
        response = fit_response(base.face, base, train_obs, weights[train], size, fov, args.response_ridge)
    # 2. The prior, on the solver's own features with that response.
    fitter = FrameFitter(model, embedding, identity.identity_weights, plain, response=response)
    raw, feats, keep = fit_features(fitter, observations, size)
    idx = np.flatnonzero(keep)
    tr, te = idx[~is_test[idx]], idx[is_test[idx]]
    feat_of = {j: k for k, j in enumerate(idx)}
    x_tr, x_te = feats[[feat_of[j] for j in tr]], feats[[feat_of[j] for j in te]]
    ridge, ridge_report = fit_ridge_prior(x_tr, weights[tr], rng, with_response=response is not None)
    print(ridge_report)
    candidates = [("ridge", ridge)]
    if not args.no_mlp:
        for driven_weight in args.driven_weight:
            mlp = fit_mlp_prior(x_tr, weights[tr], seed=args.seed, with_response=response is not None,
                                driven_weight=driven_weight)  # fmt: skip
            candidates.append((f"mlp (driven weight {driven_weight:g})", mlp))
    base_fitter = FrameFitter(model, embedding, identity.identity_weights, plain)
    before = errors(fit_features(base_fitter, [observations[j] for j in te], size)[0], weights[te])
    print(f"held-out raw fits ({len(te)} renders): embedded map driven {before['driven']:.3f} all {before['all']:.3f}")
    with_response = errors(raw[te], weights[te])
    if response is not None:
        print(f"  + response: driven {with_response['driven']:.3f} all {with_response['all']:.3f}")
    best = None
    for label, prior in candidates:
        regression = errors(np.clip(prior.predict(x_te), 0, 1), weights[te])
        print(f"  {label} alone (clipped): driven {regression['driven']:.3f} all {regression['all']:.3f}")
        for strength in (3.0, 10.0, 30.0, 100.0, 300.0):
            cfg = config.solve.model_copy(update={"prior_strength": strength})
            f = FrameFitter(model, embedding, identity.identity_weights, cfg, response=response, prior=prior)
            e = errors(fit_features(f, [observations[j] for j in te], size)[0], weights[te])
            print(f"  + {label} prior μ = {strength}: driven {e['driven']:.3f} all {e['all']:.3f}")
            score = e["driven"] + e["all"]
            if best is None or score < best[0]:
                best = (score, prior.with_strength(strength), e, label)
    assert best is not None
    chosen = best[1]
    print(f"chosen: {best[3]} prior, μ = {chosen.strength} (held-out driven + all)")
    if not args.dry_run:
        if response is not None:
            response.save(DEFAULT_RESPONSE_PATH, train_frames=np.int32(len(tr)), ridge=np.float32(args.response_ridge),
                          identity=np.str_(identity.name), heldout_driven_mae_before=np.float32(before["driven"]),
                          heldout_driven_mae_after=np.float32(with_response["driven"]))  # fmt: skip
        elif DEFAULT_RESPONSE_PATH.is_file():
            DEFAULT_RESPONSE_PATH.unlink()
        chosen.save(
            DEFAULT_PRIOR_PATH,
            train_frames=np.int32(len(tr)),
            identity=np.str_(identity.name),
            identity_weights=np.asarray(identity.identity_weights, np.float32),
            heldout_driven=np.float32(best[2]["driven"]),
            heldout_all=np.float32(best[2]["all"]),
        )
        print(f"wrote {DEFAULT_RESPONSE_PATH.name if response is not None else ''} {DEFAULT_PRIOR_PATH.name}")
    if chosen.residual_limit > 0:
        trust = chosen.predict_with_trust(x_te)[1]
        print(f"held-out trust (prior strength factor): mean {trust.mean():.3f}, below 1 on {np.mean(trust < 1):.1%}")
    if not args.no_demo:
        landmarks, truth = demo_landmarks(config, model, identity, args.demo_frames, not args.no_cache)
        demo_obs = [valid_observation(lm) for lm in landmarks]
        pairs = [(o, lm) for o, lm in zip(demo_obs, landmarks, strict=True) if o is not None and lm is not None]
        demo_x = np.array([fitter.prior_features(o[0], fitter._camera(lm.image_size)) for o, lm in pairs])
        trust = chosen.predict_with_trust(demo_x)[1]
        print(f"demo trust: mean {trust.mean():.3f}, min {trust.min():.3f}, below 1 on {np.mean(trust < 1):.1%}")
        if not args.dry_run:
            report("demo closed loop (shipped files)", closed_loop(config, model, embedding, identity, landmarks,
                                                                 truth, config.source.fps))  # fmt: skip
    print(f"done in {run.elapsed_s():.0f} s")


if __name__ == "__main__":
    main()
