"""Train the solver's learned prior on many synthetic performers → models/solve_prior_people.npz.

Reads the clips `tools/make_face_clips.py` rendered and tracked (random ICT identities, skin tones, lights,
cameras at 35–70°, webcam degradations, MediaPipe in tracking mode) and fits the MLP of
`engine/solve/prior.py` from the solver's prior features to the true weights (`--members` networks from
consecutive seeds, averaged and stored as one: `prior.merge_members`). The features are computed as
the solver computes them at run time for `--performer auto`: posed on the mean face's rigid landmarks with
the camera the solver assumes (`performer.fov_prior_deg`, not the clip's true one), so the regressor learns
to read any face through that same lens. Every tenth clip (by number) is held out; on those the tool
reports the prior alone and the whole solver (filters, eyes, box) with and without it, per channel group,
and picks the strength μ from `--strengths` by the held-out driven + all-channel error. The whole solver is
measured without response curves; refit those on the new prior afterwards (`tools/fit_response_curves.py`).

`--displaced` trains the network that also reads each frame's mesh features minus the performer's neutral
(`solve.displaced_prior`) → models/solve_prior_people_displaced.npz. Each clip's neutral is built frame by
frame as the solver builds it (`prior.NeutralFeatures`, scored by the shipped plain people prior), from the
frames before the one it is used on.

`--head` fits, from the same displaced features, a linear head for every channel but gaze that reads it from the
face's displacement (`prior.DisplacedHead`, `solve.displaced_head`), keeps the channels where it reads better
than the shipped plain prior on every held-out measure (driven and all-frame error, false readings, r), reports
both in the whole solver → models/solve_head_displaced.npz. A mirrored pair (left/right; jaw or mouth
left/right) is kept only together.
`--head-mix` adds a third form to that choice: the head mixed with the plain network's reading
(`prior.fit_head_mix`, a · head + b · plain + c, fitted on the held-out frames: for the rule, each half of them
read with the mix fitted on the other; for the head written, on all of them). A form is kept where it is at
least as good as the plain network on every measure; where both are, the mix only if it is also at least as
good as the head alone on every measure, else the simpler head alone. The shipped head is made so.

Usage: python tools/train_solve_prior.py [--clips out/face_clips] [--epochs 30] [--members 3]
       [--strengths 30 100 300 1000] [--dropout 0.2] [--input-noise 0.2] [--identity-augment 1.0]
       [--displaced | --head [--head-mix]] [--mirror] [--frame-step 1] [--dry-run]
The defaults are the shipped model's recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from engine.config import load_config  # noqa: E402
from engine.eval_synthetic import FPS as CLIP_FPS  # noqa: E402
from engine.face_model import FaceModel, LandmarkEmbedding  # noqa: E402
from engine.names import ICT_EXPRESSIONS, ict_partner  # noqa: E402
from engine.solve.expression import mirror_image_landmarks, side_swap  # noqa: E402
from engine.solve.face_solver import FaceSolver  # noqa: E402
from engine.solve.performer import Performer  # noqa: E402
from engine.solve.prior import (  # noqa: E402
    DISPLACED_HEAD_PATH,
    DISPLACED_PRIOR_PATH,
    LOSSES,
    N_DISPLACED,
    PEOPLE_PRIOR_PATH,
    DisplacedHead,
    LearnedPrior,
    NeutralFeatures,
    displaced_features,
    fit_displaced_head,
    fit_head_mix,
    fit_mlp_prior,
)
from engine.solve.solver import FrameFitter, valid_observation  # noqa: E402
from engine.types import Landmarks  # noqa: E402

SIDE_SWAP = side_swap()
# A channel is left to the landmarks alone where their held-out r beats the regression's by this much while
# their mean error is at most this much worse.
MASK_R_MARGIN, MASK_MAE_MARGIN = 0.1, 0.03
GROUPS = {
    "brows": [i for i, n in enumerate(ICT_EXPRESSIONS) if n.startswith("brow")],
    "eyes": [i for i, n in enumerate(ICT_EXPRESSIONS) if n.startswith("eye")],
    "jaw": [i for i, n in enumerate(ICT_EXPRESSIONS) if n.startswith("jaw")],
    "mouth": [i for i, n in enumerate(ICT_EXPRESSIONS) if n.startswith(("mouth", "cheek", "nose"))],
}


def load_clip(path: Path) -> tuple[list[Landmarks | None], np.ndarray, tuple[int, int]]:
    with np.load(path) as z:
        pixels, weights = z["pixels"].astype(np.float64), z["weights"].astype(np.float64)
        size = (int(z["image_size"][0]), int(z["image_size"][1]))
    scale = np.array([size[0], size[1], size[0]])
    found = [None if np.isnan(p).any() else Landmarks(p / scale, p, size, 1.0) for p in pixels]
    return found, weights, size


def identity_feature_basis(model: FaceModel, embedding: LandmarkEmbedding, scale: float, modes: int = 60) -> np.ndarray:
    """(F, modes): how each identity mode (at `scale` × its prior std) moves the prior's features — the mesh
    landmarks' model-frame offsets; the rotation entries do not move."""
    moved = embedding.apply(model.identity_basis[:modes].astype(np.float64))
    moved = moved * (np.asarray(model.identity_prior_std[:modes], np.float64) * scale)[:, None, None]
    still, no_turn = np.zeros_like(moved[0]), np.zeros((3, 3))
    return np.stack([LearnedPrior.features(m, still, no_turn) for m in moved], axis=1)


def group_errors(solved: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Driven (truth > 0.1) and all-entry mean abs error, and the driven error per channel group."""
    error = np.abs(solved - truth)
    driven = truth > 0.1
    out = {"driven": float(error[driven].mean()), "all": float(error.mean())}
    for name, ids in GROUPS.items():
        mask = driven[:, ids]
        out[name] = float(error[:, ids][mask].mean()) if mask.any() else float("nan")
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r, or None where either series is constant."""
    if a.std() < 1e-9 or b.std() < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _channel_measures(read: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One channel's (n,) readings against its (n,) truth: driven error (truth > 0.1), all-frame error, the
    share of truly-zero frames (< 0.05) read above 0.2, and r (0 where undefined)."""
    error, driven = np.abs(read - truth), truth > 0.1
    false = np.mean(read[truth < 0.05] > 0.2)
    return np.array([error[driven].mean(), error.mean(), false, _pearson(read, truth) or 0.0])


def solve_clips(clips: list, model: FaceModel, embedding: LandmarkEmbedding, config, prior_path: Path | None,
                head_path: Path | None = None) -> np.ndarray:  # fmt: skip
    """Run the whole solver (auto performer, filters; response curves off: they are fitted on what this reads)
    over clips with this prior and this displaced head (None: none); (frames, 53) solved weights."""
    import engine.solve.solver as solver_module

    displaced = prior_path is not None and LearnedPrior.load(prior_path).displaced
    solve = config.solve.model_copy(
        update={"learned_prior": prior_path is not None, "prior_strength": None, "displaced_prior": displaced,
                "displaced_head": head_path is not None, "response_curves": False, "channel_curves": {}}
    )  # fmt: skip
    saved = solver_module.PEOPLE_PRIOR_PATH, solver_module.DISPLACED_PRIOR_PATH, solver_module.DISPLACED_HEAD_PATH
    if displaced:  # the plain shipped prior stays: it picks the neutral
        solver_module.DISPLACED_PRIOR_PATH = prior_path
    else:
        solver_module.PEOPLE_PRIOR_PATH = prior_path or saved[0]
    solver_module.DISPLACED_HEAD_PATH = head_path or saved[2]
    try:
        rows = []
        for found, _, _ in clips:
            solver = FaceSolver(
                model, embedding, Performer.auto(), solve, config.performer, estimate_in_background=False
            )
            rows += [solver.solve(lm, int(i * 1e9 / CLIP_FPS), i).weights for i, lm in enumerate(found)]
    finally:
        solver_module.PEOPLE_PRIOR_PATH, solver_module.DISPLACED_PRIOR_PATH, solver_module.DISPLACED_HEAD_PATH = saved
    return np.array(rows)


# The head's candidate channels: all but gaze (which comes from the irises). It keeps those where it reads better
# than the plain network on every held-out measure: where a face's shape and an expression look alike in one
# frame (high brows and raised ones, full lips and parted or pursed ones, deep-set eyes and closing ones).
HEAD_CANDIDATES = [n for n in ICT_EXPRESSIONS if not n.startswith("eyeLook")]


def _cross_fitted_mix(head: DisplacedHead, head_read: np.ndarray, plain_read: np.ndarray, truth: np.ndarray,
                      driven_weight: float) -> np.ndarray:  # fmt: skip
    """(n, k) the head's channels mixed with the plain network (`prior.fit_head_mix`) on held-out frames, each half
    of them (in clip order) read with the mix fitted on the other half: the plain network's readings of its own
    training frames are better than it reads anyone else, so the mix is fitted, and judged, on frames it never
    trained on. head_read: (n, k) `head.predict`; plain_read: (n, 53) `plain.predict`, both unclipped."""
    halves = np.arange(len(truth)) < len(truth) // 2
    mixed = np.empty_like(head_read)
    for fit, held in ((halves, ~halves), (~halves, halves)):
        trial = fit_head_mix(head, head_read[fit], plain_read[fit], truth[fit], driven_weight)
        mixed[held] = trial.blend(head_read[held], plain_read[held][:, head.channels])
    return mixed


def read_features(
    paths: list[Path], held_out: list[bool], fitter: FrameFitter, neutral_prior: LearnedPrior | None, mirror: bool,
    frame_step: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:  # fmt: skip
    """Every tracked frame's prior features (displaced from the clip's running neutral with `neutral_prior`) and
    true weights → (x (n, F) float32, y (n, 53), is_test (n,), the held-out clips). With `mirror`, a training
    clip is also read as its mirror image (another face, its sides swapped), with its own neutral. `frame_step`:
    of a training clip, only frames 0, step, 2·step, … become rows (its neutral still sees every frame it
    samples); held-out clips keep every frame, so the held-out measures do not depend on it.

    The training clips' rows come first and the held-out ones last, so both are slices of x, not copies, and x is
    filled in place: a million frames of 2817 displaced features are 11 GB in float32 (the machine has 24 GB)."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be at least 1, got {frame_step}")
    order = sorted(range(len(paths)), key=lambda i: held_out[i])  # stable: training clips, then held out
    counts = []
    for i in order:
        with np.load(paths[i]) as clip:
            frames = len(clip["weights"])
        step = 1 if held_out[i] else frame_step
        counts.append(-(-frames // step) * (2 if mirror and not held_out[i] else 1))
    x: np.ndarray | None = None
    y = np.empty((sum(counts), len(ICT_EXPRESSIONS)))
    is_test = np.zeros(sum(counts), dtype=bool)
    n = 0
    test_clips = []
    for i in tqdm(order, desc="features", unit="clip"):
        test = held_out[i]
        found, weights, size = load_clip(paths[i])
        camera = fitter._camera(size)
        streams = [False, True] if mirror and not test else [False]
        step = 1 if test else frame_step
        for mirrored in streams:
            neutral = None if neutral_prior is None else NeutralFeatures(neutral_prior)  # each clip: a new person
            for frame, (landmarks, truth) in enumerate(zip(found, weights, strict=True)):
                t_ns = int(frame * 1e9 / CLIP_FPS)
                kept = frame % step == 0
                if not kept and (neutral is None or not neutral.due(t_ns)):
                    continue  # neither a row nor a sample of the neutral: not worth its features
                obs = valid_observation(landmarks)
                if obs is None:
                    continue
                observed = mirror_image_landmarks(obs[0], size[0]) if mirrored else obs[0]
                row = fitter.prior_features(observed, camera)
                if neutral is not None:
                    # The neutral of the frames before this one, as the solver has it when it fits this frame.
                    plain_row, row = row, displaced_features(row, neutral.value)
                    neutral.observe(plain_row, t_ns)
                if not kept:
                    continue
                if x is None:
                    x = np.empty((len(y), len(row)), np.float32)  # pages never written are never resident
                x[n], y[n], is_test[n] = row, truth[SIDE_SWAP] if mirrored else truth, test
                n += 1
        if test:
            test_clips.append((found, weights, size))
    if x is None:
        sys.exit("no tracked frame in the clips: every frame lost its face")
    return x[:n], y[:n], is_test[:n], test_clips


def split(is_test: np.ndarray) -> tuple[slice, slice]:
    """The training rows and the held-out rows of `read_features`' arrays (training first), as slices."""
    n_train = int((~is_test).sum())
    if is_test[:n_train].any():
        raise ValueError("held-out rows must come after the training rows")
    return slice(0, n_train), slice(n_train, len(is_test))


def train_head(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, is_test: np.ndarray, test_clips: list,
               config, model: FaceModel, embedding: LandmarkEmbedding) -> None:  # fmt: skip
    """`--head`: fit the head for every candidate channel on the training frames' displaced features, keep the
    channels where it (or, with `--head-mix`, its mix with the plain network) reads better than the shipped plain
    prior on every held-out measure, compare the two in the whole solver, and write the head (unless
    `--dry-run`)."""
    candidates = np.array([ICT_EXPRESSIONS.index(name) for name in args.head_channels])
    train, held = split(is_test)
    fitted = fit_displaced_head(x[train], y[train], candidates, args.head_driven_weight)
    plain = LearnedPrior.load(PEOPLE_PRIOR_PATH)
    held_out, truth = x[held], y[held]
    plain_read = plain.predict(held_out[:, : plain.n_inputs])
    alone = fitted.predict(held_out)
    forms = {"plain": np.clip(plain_read[:, candidates], 0, 1), "head": np.clip(alone, 0, 1)}
    if args.head_mix:  # the head's reading mixed with the plain network's is a third form
        forms["mixed"] = np.clip(_cross_fitted_mix(fitted, alone, plain_read, truth, args.head_driven_weight), 0, 1)
    print("held out, per form: driven error / all-frame error / false readings above 0.2 / r")
    scores = {form: np.array([_channel_measures(read[:, j], truth[:, k]) for j, k in enumerate(candidates)])
              for form, read in forms.items()}  # fmt: skip
    # A form of the head qualifies where every measure is at least as good as the plain network's (lower errors
    # and false readings, higher r). The same test picks between the two head forms: the mix (three more numbers,
    # fitted on held-out frames) is taken only where it is at least as good as the head alone on every measure,
    # else the simpler head alone. A mirrored pair (`names.ict_partner`) decides together, both sides passing:
    # one side read each way would read a mirrored face differently.
    names = [ICT_EXPRESSIONS[k] for k in candidates]

    def at_least_as_good(form: str, other: str, sides: list[int]) -> bool:
        return bool((scores[form][sides, :3] <= scores[other][sides, :3]).all()
                    and (scores[form][sides, 3] >= scores[other][sides, 3]).all())  # fmt: skip

    chosen = []
    for j, name in enumerate(names):
        sides = [j] + ([names.index(ict_partner(name))] if ict_partner(name) in names else [])
        qualified = [form for form in forms if form != "plain" and at_least_as_good(form, "plain", sides)]
        if len(qualified) == 2:
            qualified = ["mixed" if at_least_as_good("mixed", "head", sides) else "head"]
        chosen.append(qualified[0] if qualified else "plain")
        print(f"  {name:16s} " + "   ".join(f"{form} " + " / ".join(f"{v:.3f}" for v in scores[form][j])
                                           for form in forms) + f"   → {chosen[-1]}")  # fmt: skip
    keep = [j for j, form in enumerate(chosen) if form != "plain"]
    head = DisplacedHead(fitted.channels[keep], fitted.weights[:, keep], fitted.bias[keep])
    print("the head reads:", ", ".join(names[j] for j in keep) or "nothing")
    if args.head_mix:  # the mixed channels' rows, now fitted on all the held-out frames; the rest read the head alone
        mixed = fit_head_mix(head, head.predict(held_out), plain_read, truth, args.head_driven_weight)
        is_mixed = np.array([chosen[j] == "mixed" for j in keep], dtype=bool)
        head = dataclasses.replace(mixed, mix=np.where(is_mixed[:, None], mixed.mix, np.array([1.0, 0.0, 0.0])))
        for name, (a, b, c) in zip((names[j] for j in keep), head.mix, strict=True):
            print(f"  {name:16s} {a:.3f} · head + {b:.3f} · plain {c:+.3f}")
    candidate = ROOT / "out" / "solve_head_candidate.npz"
    head.save(candidate)
    clip_truth = np.concatenate([w for _, w, _ in test_clips])
    for label, head_path in (("without the head", None), ("with the head", candidate)):
        solved = solve_clips(test_clips, model, embedding, config, PEOPLE_PRIOR_PATH, head_path=head_path)
        print(f"solver {label}:", {k: round(v, 4) for k, v in group_errors(solved, clip_truth).items()})
    if not args.dry_run:
        head.save(
            DISPLACED_HEAD_PATH,
            trained_on=np.str_(f"{(~is_test).sum()} frames of synthetic performer clips (tools/make_face_clips.py)"),
            driven_weight=np.float32(args.head_driven_weight),
        )  # fmt: skip
        print(f"wrote {DISPLACED_HEAD_PATH}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, default=ROOT / "out" / "face_clips")
    ap.add_argument("--epochs", type=int, default=30)  # 60 measured no better held out (0.239 against 0.236)
    ap.add_argument("--components", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    # Samples with a driven channel weigh this much more in the loss: 8 measured better held out than 3 (driven
    # + all-channel error 0.362 against 0.370), the regression under-reading less of what it is unsure of.
    ap.add_argument("--driven-weight", type=float, default=8.0)
    ap.add_argument("--strengths", type=float, nargs="+", default=[30.0, 100.0, 300.0, 1000.0])
    # Regularizers against memorizing the rendered identities (the MLP reached a driven error of 0.03 on its
    # training clips and 0.32 held out): dropout, input noise, and shifts along the embedded identity basis.
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--input-noise", type=float, default=0.2, help="std of the noise on the whitened input")
    ap.add_argument(
        "--identity-augment", type=float, default=1.0,
        help="shift every training sample along the embedded identity basis by this many prior std (0: off)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--loss", choices=LOSSES, default="mse",
        help="the network's training loss: mse (the conditional mean) or l1 (the conditional median)",
    )  # fmt: skip
    ap.add_argument("--members", type=int, default=3, help="networks from seeds seed, seed+1, … averaged as one")
    ap.add_argument("--displaced", action="store_true", help="also read the displacement from the neutral")
    ap.add_argument("--head", action="store_true", help="fit the displaced head, not a network")
    ap.add_argument(
        "--head-channels", nargs="+", default=HEAD_CANDIDATES, choices=ICT_EXPRESSIONS, metavar="CHANNEL",
        help="the head's candidate channels (it keeps those it reads better held out)",
    )  # fmt: skip
    # The head's driven-frame weight (per channel, the frames that drive it): at 3 the brows, jaw open, pucker
    # and blinks all read better than the plain network on every held-out measure; with the frames where any head
    # channel was driven weighing alike, pucker's driven error was worse.
    ap.add_argument("--head-driven-weight", type=float, default=3.0)
    ap.add_argument(
        "--head-mix", action="store_true",
        help="mix the head's readings with the plain network's where two folds say so (the shipped head)",
    )  # fmt: skip
    ap.add_argument(
        "--mirror", action="store_true", help="also train on each training clip's mirror image (its sides swapped)"
    )
    # Frames of one clip follow each other at 30 fps and teach nearly the same thing: on 1073 training clips, every
    # second frame read the held-out clips as well as all of them (fifteenth session, docs/performer.md).
    ap.add_argument(
        "--frame-step", type=int, default=1, help="train on every Nth frame of a training clip (held-out: all)"
    )
    ap.add_argument("--dry-run", action="store_true", help="report only, write nothing to models/")
    args = ap.parse_args()
    if args.frame_step < 1:
        ap.error("--frame-step must be at least 1")
    started = time.monotonic()
    config = load_config()
    model = FaceModel.load()
    embedding = LandmarkEmbedding.load()
    paths = sorted(args.clips.glob("clip_[0-9][0-9][0-9][0-9][0-9].npz"))  # not a generator's .partial.npz
    if not paths:
        sys.exit(f"no clips in {args.clips}: run tools/make_face_clips.py first")
    held_out = [int(p.stem.split("_")[1]) % 10 == 0 for p in paths]
    if args.displaced and args.head:
        ap.error("--displaced and --head train different things: pick one")
    plain = config.solve.model_copy(update={"learned_prior": False})
    fitter = FrameFitter(model, embedding, None, plain, camera_fov_y_deg=config.performer.fov_prior_deg)
    neutral_prior = LearnedPrior.load(PEOPLE_PRIOR_PATH) if args.displaced or args.head else None
    x, y, is_test, test_clips = read_features(paths, held_out, fitter, neutral_prior, args.mirror, args.frame_step)
    print(f"{len(paths)} clips, {len(x)} tracked frames ({is_test.sum()} held out, {sum(held_out)} clips)")
    if args.head:
        train_head(args, x, y, is_test, test_clips, config, model, embedding)
        return
    augment = identity_feature_basis(model, embedding, args.identity_augment) if args.identity_augment else None
    if augment is not None and args.displaced:  # a neutral moves with its face: the displacement does not
        augment = np.vstack([augment, np.zeros((N_DISPLACED, augment.shape[1]))])
    train, held = split(is_test)
    prior = fit_mlp_prior(
        x[train], y[train], seed=args.seed, components=args.components, hidden=args.hidden,
        epochs=args.epochs, driven_weight=args.driven_weight, batch=256, dropout=args.dropout,
        input_noise=args.input_noise, augment_basis=augment, members=args.members, loss=args.loss,
    )  # fmt: skip
    # Features were measured from the mean face (the fitter above has no identity): the solver must do the same.
    prior = dataclasses.replace(prior, reference="mean", displaced=args.displaced)
    alone, trust = prior.predict_with_trust(x[held])
    print("prior alone, held out:", {k: round(v, 4) for k, v in group_errors(np.clip(alone, 0, 1), y[held]).items()},
          f"trust mean {trust.mean():.3f}")  # fmt: skip

    truth = np.concatenate([w for _, w, _ in test_clips])
    plain_solved = solve_clips(test_clips, model, embedding, config, None)
    print("solver without prior:", {k: round(v, 4) for k, v in group_errors(plain_solved, truth).items()})
    candidate = ROOT / "out" / "solve_prior_candidate.npz"
    # Which channels the regression reads better than the landmarks alone: per-channel r on held-out clips,
    # the prior at full pull against none. Gaze comes from the irises, which the regression does not see.
    prior.with_strength(1e4).save(candidate)
    strong = solve_clips(test_clips, model, embedding, config, candidate)
    # The landmarks alone keep a channel only where they follow it clearly better and do not pay for it in
    # false readings (mean error): a channel the fit saturates on faces unlike the model must not be let through.
    mask = np.ones(len(ICT_EXPRESSIONS))
    for k, name in enumerate(ICT_EXPRESSIONS):
        r_plain, r_prior = _pearson(plain_solved[:, k], truth[:, k]), _pearson(strong[:, k], truth[:, k])
        mae_plain, mae_prior = (float(np.abs(x[:, k] - truth[:, k]).mean()) for x in (plain_solved, strong))
        better = r_plain is not None and (r_prior is None or r_plain > r_prior + MASK_R_MARGIN)
        if name.startswith("eyeLook") or (better and mae_plain < mae_prior + MASK_MAE_MARGIN):
            mask[k] = 0.0
        print(
            f"  {name:17s} r landmarks {r_plain or 0:.2f} regression {r_prior or 0:.2f}; "
            f"mae {mae_plain:.3f} / {mae_prior:.3f} → {'regression' if mask[k] else 'landmarks'}"
        )
    print("regression kept for:", ", ".join(n for n, m in zip(ICT_EXPRESSIONS, mask, strict=True) if m) or "none")
    print("landmarks alone for:", ", ".join(n for n, m in zip(ICT_EXPRESSIONS, mask, strict=True) if not m))
    prior = prior.with_mask(mask)
    best = None
    for strength in args.strengths:
        prior.with_strength(strength).save(candidate)
        solved = solve_clips(test_clips, model, embedding, config, candidate)
        errors = group_errors(solved, truth)
        print(f"solver with prior μ={strength:g}:", {k: round(v, 4) for k, v in errors.items()})
        score = errors["driven"] + errors["all"]
        if best is None or score < best[0]:
            best = (score, strength)
    assert best is not None
    print(f"chosen μ = {best[1]:g} ({time.monotonic() - started:.0f} s)")
    if args.dry_run:
        return
    target = DISPLACED_PRIOR_PATH if args.displaced else PEOPLE_PRIOR_PATH
    prior.with_strength(best[1]).save(
        target,
        trained_on=np.str_(f"{len(paths)} synthetic performer clips (tools/make_face_clips.py)"),
        camera_fov_y_deg=np.float32(config.performer.fov_prior_deg),
        members=np.int64(args.members),
        seed=np.int64(args.seed),
        loss=np.str_(args.loss),
    )  # fmt: skip
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
