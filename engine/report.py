"""`report`: run the engine on a source and write an HTML page with pictures.

The page shows input | avatar side by side for sampled frames, the blendshape curves (with the true weights
when the source is the demo performer), per-stage timing histograms, and the identity's 20 detail bases as a
contact sheet.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.detail.weights import KEY_EXPRESSION_NAMES
from engine.identity import Identity
from engine.names import ICT_EXPRESSIONS
from engine.pipeline import STAGES, FrameResult

THUMBNAIL = 256


def _pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (imported only when a report is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    import cv2

    rgb = image[..., :3]
    if image.shape[-1] == 4:  # composite RGBA over mid grey so the avatar's silhouette reads
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        rgb = (rgb.astype(np.float32) * alpha + 96.0 * (1.0 - alpha)).astype(np.uint8)
    scale = size / max(rgb.shape[:2])
    return cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)


class FrameSampler:
    """Keeps input/avatar thumbnails of about every `stride`-th frame, at most `limit` (a pipeline consumer of
    rendered frames). The first frame at or past each stride boundary is kept, so frames the renderer skipped
    or capture dropped move a sample later instead of losing it."""

    def __init__(self, stride: int, limit: int | None = None) -> None:
        self.stride = max(1, stride)
        self.limit = limit
        self.pairs: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self._next_index = 0

    def __call__(self, result: FrameResult) -> None:
        index = result.frame.index
        if index < self._next_index or (self.limit is not None and len(self.pairs) >= self.limit):
            return
        self._next_index = index - index % self.stride + self.stride
        avatar = _thumbnail(result.rendered.image) if result.rendered is not None else None
        self.pairs.append((index, _thumbnail(result.frame.image), avatar))


def side_by_side_sheet(pairs: list[tuple[int, np.ndarray, np.ndarray | None]], path: Path, columns: int = 2) -> None:
    """A grid of input | avatar pairs, captioned with frame numbers."""
    plt = _pyplot()
    rows = max(1, -(-len(pairs) // columns))
    fig, axes = plt.subplots(rows, columns * 2, figsize=(columns * 5, rows * 2.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (index, image, avatar) in enumerate(pairs):
        r, c = divmod(k, columns)
        axes[r, 2 * c].imshow(image)
        axes[r, 2 * c].set_title(f"input #{index}", fontsize=8)
        if avatar is not None:
            axes[r, 2 * c + 1].imshow(avatar)
            axes[r, 2 * c + 1].set_title("avatar", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def blendshape_curves(results: list[FrameResult], path: Path, top: int = 12) -> list[str]:
    """The `top` most active channels over time (solid: solved; dashed: true weights when known)."""
    plt = _pyplot()
    frames = np.array([r.frame.index for r in results])
    solved = np.stack([r.state.weights for r in results])
    truth = np.stack([r.frame.true_weights for r in results]) if results[0].frame.true_weights is not None else None
    activity = (truth if truth is not None else solved).max(axis=0)
    channels = np.argsort(-activity)[:top]
    fig, axes = plt.subplots(len(channels), 1, figsize=(11, 1.1 * len(channels)), sharex=True, squeeze=False)
    for ax, j in zip(axes[:, 0], channels, strict=True):
        ax.plot(frames, solved[:, j], lw=1.2, label="solved")
        if truth is not None:
            ax.plot(frames, truth[:, j], lw=1.0, ls="--", color="k", label="true")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(ICT_EXPRESSIONS[j], rotation=0, ha="right", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [ICT_EXPRESSIONS[j] for j in channels]


def timing_histograms(results: list[FrameResult], path: Path) -> None:
    """Histogram per pipeline stage and of capture → publish latency (ms)."""
    plt = _pyplot()
    series = {name: [r.stamps[b] - r.stamps[a] for r in results if a in r.stamps and b in r.stamps]
              for name, a, b in STAGES}  # fmt: skip
    series["capture→publish"] = [r.stamps["params_published"] - r.stamps["captured"] for r in results]
    fig, axes = plt.subplots(2, 4, figsize=(13, 5), squeeze=False)
    for ax, (name, values) in zip(axes.ravel(), series.items(), strict=False):
        ms = np.asarray(values, dtype=np.float64) / 1e6
        ax.hist(ms, bins=30, color="#4a7bb7")
        ax.set_title(f"{name}: p50 {np.median(ms):.2f} ms" if ms.size else name, fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bases_contact_sheet(identity: Identity, path: Path) -> bool:
    """The 20 displacement bases F̂_i (mm, v = 1 on top), one panel each; False when the identity has none."""
    plt = _pyplot()
    if identity.bases is None:
        return False
    maps = identity.bases.maps[..., 0]
    limit = float(np.percentile(np.abs(maps), 99.5)) or 1.0
    fig, axes = plt.subplots(4, 5, figsize=(12, 10), squeeze=False)
    for ax, basis, name in zip(axes.ravel(), maps, KEY_EXPRESSION_NAMES, strict=True):
        image = ax.imshow(basis[::-1], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="mm")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_report(
    out_dir: Path, summary: dict[str, Any], results: list[FrameResult], sampler: FrameSampler, identity: Identity
) -> Path:
    """Write the pictures and `index.html` into `out_dir`; returns the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [f"<h1>scapecast report</h1><p>{html.escape(str(summary.get('source', '')))}</p>"]
    sections.append("<h2>Summary</h2><pre>" + html.escape(json.dumps(summary, indent=2)) + "</pre>")
    if sampler.pairs:
        side_by_side_sheet(sampler.pairs, out_dir / "side_by_side.png")
        sections.append('<h2>Input | avatar</h2><img src="side_by_side.png" alt="input and avatar side by side">')
    if results:
        channels = blendshape_curves(results, out_dir / "blendshapes.png")
        sections.append(
            "<h2>Blendshape curves</h2><p>Most active channels: " + html.escape(", ".join(channels)) + "</p>"
            '<img src="blendshapes.png" alt="blendshape curves">'
        )
        timing_histograms(results, out_dir / "timing.png")
        sections.append('<h2>Timing</h2><img src="timing.png" alt="per-stage timing histograms">')
    if bases_contact_sheet(identity, out_dir / "bases.png"):
        backend = identity.bases.backend if identity.bases else ""
        sections.append(
            f"<h2>Detail bases of identity '{html.escape(identity.name)}' ({html.escape(backend)})</h2>"
            '<img src="bases.png" alt="the 20 displacement bases">'
        )
    page = out_dir / "index.html"
    style = "body{font-family:sans-serif;max-width:1300px;margin:auto}img{max-width:100%}pre{font-size:12px}"
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>scapecast report</title><style>{style}</style>"
        f"</head><body>{''.join(sections)}</body></html>\n"
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return page
