"""Train the detail network (engine/detail/net.py) on synthetic identities or FaceScape TU data.

    nice -n 10 .venv/bin/python tools/train_detail.py --minutes 30            # synthetic (default weights)
    .venv/bin/python tools/train_detail.py --facescape /data/facescape_tu     # real data, if you have it

Trains on random crops of full-resolution maps (so texel scale matches inference at that resolution), with
a masked L1 loss on the displacement and on its finite differences (the shader uses the gradients). Writes
the state dict and ONNX export to `--out` (models/), a loss curve, a contact sheet of synthetic samples, the
held-out evaluation (L1 in mm and correlation per key expression) as JSON, and predicted-vs-true pictures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import DetailConfig  # noqa: E402
from engine.detail.dataset import TrainingSet, facescape_set, synthetic_set  # noqa: E402
from engine.detail.net import DetailUNet, export_onnx, network_inputs, save_network  # noqa: E402
from engine.detail.precompute import precompute_bases  # noqa: E402
from engine.detail.synth import DetailSynth, SkinParams  # noqa: E402
from engine.detail.weights import KEY_EXPRESSION_NAMES  # noqa: E402
from engine.face_model import MODELS_DIR, FaceModel  # noqa: E402
from engine.identity import DEFAULT_IDENTITY_DIR, Identity, save_bundle  # noqa: E402

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "detail"


def sample_batch(
    data: TrainingSet,
    rng: np.random.Generator,
    batch: int,
    crop: int,
    face_texels: list[np.ndarray],
    centres: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (identity, expression, crop) triples → inputs (B, 10, c, c), target (B, 1, c, c) mm, mask.

    Crops are centred on face texels; `centres` (I, 3) cm are the full maps' position centres, so a crop's
    position channels read as they would in the whole map."""
    n = data.texture.shape[1]
    xs, ys, ms = [], [], []
    for _ in range(batch):
        i = int(rng.integers(len(data)))
        k = 0 if rng.uniform() < 0.05 else int(rng.integers(1, data.deform.shape[1]))
        centre = int(rng.choice(face_texels[i]))
        cy, cx = divmod(centre, n)
        y0 = int(np.clip(cy - crop // 2, 0, n - crop))
        x0 = int(np.clip(cx - crop // 2, 0, n - crop))
        win = np.s_[y0 : y0 + crop, x0 : x0 + crop]
        mask = data.mask[i][win]
        x = network_inputs(
            data.texture[i][win],
            data.deform[i, k][win][None].astype(np.float32),
            data.position[i][win].astype(np.float32),
            mask,
            centre=centres[i],
        )
        xs.append(x[0])
        ys.append(data.bases[i, k][win].astype(np.float32)[None])
        ms.append(mask[None].astype(np.float32))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(ms))


def detail_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked L1 on the displacement plus half of it on its horizontal and vertical differences."""
    denom = mask.sum().clamp(min=1.0)
    l1 = ((pred - target).abs() * mask).sum() / denom
    mx = mask[..., :, 1:] * mask[..., :, :-1]
    my = mask[..., 1:, :] * mask[..., :-1, :]
    err = pred - target
    gx = ((err[..., :, 1:] - err[..., :, :-1]).abs() * mx).sum() / mx.sum().clamp(min=1.0)
    gy = ((err[..., 1:, :] - err[..., :-1, :]).abs() * my).sum() / my.sum().clamp(min=1.0)
    return l1 + 0.5 * (gx + gy)


def train(
    data: TrainingSet,
    val: TrainingSet,
    minutes: float,
    width: int = 16,
    crop: int = 128,
    batch: int = 12,
    lr: float = 2e-3,
    seed: int = 0,
    max_steps: int | None = None,
    progress: bool = True,
) -> tuple[DetailUNet, list[dict[str, float]]]:
    """Adam with a cosine schedule over the wall-clock budget; returns the network and the loss history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    crop = min(crop, data.texture.shape[1])
    net = DetailUNet(width=width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    faces = [np.flatnonzero(m) for m in data.mask]
    centres = np.stack([p[m].astype(np.float32).mean(axis=0) for p, m in zip(data.position, data.mask, strict=True)])
    val_faces = [np.flatnonzero(m) for m in val.mask]
    val_centres = np.stack([p[m].astype(np.float32).mean(axis=0) for p, m in zip(val.position, val.mask, strict=True)])
    val_batches = [
        sample_batch(val, np.random.default_rng(1000 + j), batch, crop, val_faces, val_centres) for j in range(4)
    ]
    budget = minutes * 60.0
    start = time.monotonic()
    history: list[dict[str, float]] = []
    running = None
    bar = tqdm(total=max_steps or int(budget), unit="step" if max_steps else "s", disable=not progress)
    step = 0
    while True:
        elapsed = time.monotonic() - start
        if (max_steps is not None and step >= max_steps) or (max_steps is None and elapsed >= budget):
            break
        frac = step / max_steps if max_steps else elapsed / budget
        for group in opt.param_groups:
            group["lr"] = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        net.train()
        x, y, m = sample_batch(data, rng, batch, crop, faces, centres)
        loss = detail_loss(net(x), y, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        step += 1
        if step % 50 == 0 or step == 1:
            net.eval()
            with torch.no_grad():
                v = float(np.mean([detail_loss(net(vx), vy, vm).item() for vx, vy, vm in val_batches]))
            history.append({"step": step, "seconds": elapsed, "train": running, "val": v})
            bar.set_postfix(train=f"{running:.4f}", val=f"{v:.4f}")
        bar.update(1 if max_steps else int(time.monotonic() - start) - bar.n)
    bar.close()
    return net.eval(), history


def predict_set(net: DetailUNet, data: TrainingSet, i: int) -> np.ndarray:
    """(20, N, N) mm predicted bases of identity i at full resolution (masked)."""
    x = network_inputs(
        data.texture[i], data.deform[i].astype(np.float32), data.position[i].astype(np.float32), data.mask[i]
    )
    with torch.inference_mode():
        out = torch.cat([net(torch.from_numpy(x[k : k + 5])) for k in range(0, len(x), 5)])
    return out[:, 0].numpy() * data.mask[i]


def evaluate(net: DetailUNet, data: TrainingSet, progress: bool = True) -> dict[str, object]:
    """Per key expression over held-out identities, on the face:

    l1_mm: mean |pred − true| over all face texels. corr: Pearson r of the dynamic part (F̂_i − F̂_0; the full
    map for neutral). l1_active_mm: mean |pred − true| where the true dynamic part exceeds 0.02 mm, next to
    static_baseline_l1_active_mm, the error there of predicting no dynamic detail (the predicted F̂_0)."""
    shape = (len(data), data.bases.shape[1])
    l1, corr, active, baseline = np.zeros(shape), np.zeros(shape), np.full(shape, np.nan), np.full(shape, np.nan)
    for i in tqdm(range(len(data)), desc="evaluate", disable=not progress):
        pred = predict_set(net, data, i)
        true = data.bases[i].astype(np.float32)
        m = data.mask[i]
        for k in range(len(true)):
            l1[i, k] = np.abs(pred[k] - true[k])[m].mean()
            a = (pred[k] - (pred[0] if k else 0))[m]
            b = (true[k] - (true[0] if k else 0))[m]
            corr[i, k] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
            sel = m & (np.abs(true[k] - true[0]) > 0.02)
            if k and sel.any():
                active[i, k] = np.abs(pred[k] - true[k])[sel].mean()
                baseline[i, k] = np.abs(pred[0] - true[k])[sel].mean()
    names = KEY_EXPRESSION_NAMES[: data.bases.shape[1]]

    def per_name(values: np.ndarray, digits: int) -> dict[str, float | None]:
        means = [None if np.isnan(col).all() else round(float(np.nanmean(col)), digits) for col in values.T]
        return dict(zip(names, means, strict=True))

    true_abs = [np.abs(data.bases[i].astype(np.float32))[:, data.mask[i]].mean() for i in range(len(data))]
    return {
        "identities": len(data),
        "resolution": int(data.texture.shape[1]),
        "l1_mm": per_name(l1, 4),
        "corr": per_name(corr, 3),
        "l1_active_mm": per_name(active, 4),
        "static_baseline_l1_active_mm": per_name(baseline, 4),
        "mean_l1_mm": round(float(l1.mean()), 4),
        "mean_corr_dynamic": round(float(corr[:, 1:].mean()), 3),
        "mean_l1_active_mm": round(float(np.nanmean(active)), 4),
        "mean_static_baseline_l1_active_mm": round(float(np.nanmean(baseline)), 4),
        "true_mean_abs_mm": round(float(np.mean(true_abs)), 4),
    }


def _gray(img: np.ndarray, scale_mm: float) -> np.ndarray:
    return np.clip(128 + img[::-1] / scale_mm * 127, 0, 255).astype(np.uint8)


def save_pictures(net: DetailUNet | None, data: TrainingSet, history: list[dict[str, float]], out: Path) -> None:
    """Loss curve, a synthetic contact sheet, and predicted-vs-true bases for the first identity of `data`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    if history:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([h["seconds"] / 60 for h in history], [h["train"] for h in history], label="train (running)")
        ax.plot([h["seconds"] / 60 for h in history], [h["val"] for h in history], label="held-out identities")
        ax.set(xlabel="minutes", ylabel="loss (L1 + ½ gradient L1, mm)", yscale="log", title="detail network")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "train_loss.png", dpi=100)
        plt.close(fig)
    show = [1, 2, 15, 18]  # smile, mouth_stretch, grin, brow_raiser
    rows = []
    for i in range(min(4, len(data))):
        tex = data.texture[i][::-1]
        tiles = [tex] + [np.repeat(_gray(data.bases[i, k].astype(np.float32), 0.4)[..., None], 3, -1) for k in show]
        rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "synth_samples.png")
    if net is not None:
        pred = predict_set(net, data, 0)
        pick = [0, 1, 2, 3, 13, 15, 17, 18]
        true_row = np.concatenate([_gray(data.bases[0, k].astype(np.float32), 0.4) for k in pick], axis=1)
        pred_row = np.concatenate([_gray(pred[k], 0.4) for k in pick], axis=1)
        Image.fromarray(np.concatenate([true_row, pred_row], axis=0)).save(out / "pred_vs_true.png")


def write_default_identity(directory: Path, model: FaceModel, config: DetailConfig, progress: bool = True) -> Path:
    """The shipped default identity: mean shape (w_id = 0), no calibration offset, a synthetic 1024² skin
    texture of the face tile (seeded), and bases from the current network at `config.resolution`."""
    params = SkinParams(age=0.3, wavelength_mm=3.4, depth_mm=0.2, sharpness=1.6, bulge_mm=0.3, static_mm=0.05,
                        tone=0.3, pore_density=0.04, n_moles=2)  # fmt: skip
    texture = DetailSynth(model, 1024).texture(params, np.random.default_rng(2026))
    w_id = model.default_identity_weights()
    bases = precompute_bases(model, w_id, texture, config, progress)
    identity = Identity(
        name="default",
        model_id=model.model_id,
        identity_weights=w_id,
        neutral_offset=np.zeros(len(model.expression_names), np.float32),
        texture=texture,
        bases=bases,
        source="synthetic default identity (tools/train_detail.py --default-identity-only)",
        model_hash=model.model_hash,
    )
    return save_bundle(identity, directory)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps instead (tests)")
    p.add_argument("--identities", type=int, default=48, help="synthetic training identities")
    p.add_argument("--val-identities", type=int, default=8, help="synthetic held-out identities")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--facescape", type=Path, help="FaceScape TU root: train on it instead (last subjects held out)")
    p.add_argument("--out", type=Path, default=MODELS_DIR, help="where detail_net.pt/.onnx go")
    p.add_argument("--docs", type=Path, default=DOCS_DIR, help="where pictures and eval.json go")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--default-identity", type=Path, default=DEFAULT_IDENTITY_DIR, help="default bundle to rewrite")
    p.add_argument("--default-identity-only", action="store_true", help="only rebuild the default identity bundle")
    p.add_argument("--evaluate-only", action="store_true", help="re-evaluate the weights in --out (synthetic)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    detail_config = DetailConfig(backend="torch", weights=args.out / "detail_net.pt")
    if args.default_identity_only:
        print(f"wrote {write_default_identity(args.default_identity, FaceModel.load(), detail_config, progress)}")
        return 0
    if args.evaluate_only:
        from engine.detail.net import load_network

        net = load_network(args.out / "detail_net.pt")
        val = synthetic_set(FaceModel.load(), args.val_identities, args.resolution, seed=2, progress=progress)
        previous = json.loads((args.docs / "eval.json").read_text()) if (args.docs / "eval.json").is_file() else {}
        report = {**previous, **evaluate(net, val, progress)}
        (args.docs / "eval.json").write_text(json.dumps(report, indent=1))
        print(f"held-out L1 {report['mean_l1_mm']} mm, dynamic r {report['mean_corr_dynamic']}")
        return 0
    if args.facescape is not None:
        full = facescape_set(args.facescape, args.resolution, progress)
        n_val = max(1, len(full) // 8)
        split = len(full) - n_val
        data, val = (TrainingSet(*(getattr(full, f)[s] for f in ("texture", "position", "deform", "bases", "mask")))
                     for s in (slice(0, split), slice(split, None)))  # fmt: skip
        source = f"FaceScape TU {args.facescape}"
    else:
        model = FaceModel.load()
        # Disjoint seeds: held-out identities are never seen in training.
        data = synthetic_set(model, args.identities, args.resolution, seed=1, progress=progress)
        val = synthetic_set(model, args.val_identities, args.resolution, seed=2, progress=progress)
        source = "synthetic (engine/detail/synth.py)"
    net, history = train(data, val, args.minutes, args.width, args.crop, args.batch, max_steps=args.max_steps,
                         progress=progress)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    save_network(net, args.out / "detail_net.pt")
    export_onnx(net, args.out / "detail_net.onnx")
    report = evaluate(net, val, progress)
    report.update(
        source=source,
        train_identities=len(data),
        steps=history[-1]["step"] if history else 0,
        minutes=round(history[-1]["seconds"] / 60, 1) if history else 0.0,
        parameters=sum(p.numel() for p in net.parameters()),
        history=history,
    )
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "eval.json").write_text(json.dumps(report, indent=1))
    save_pictures(net, val, history, args.docs)
    print(f"held-out L1 {report['mean_l1_mm']} mm, dynamic r {report['mean_corr_dynamic']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
