"""`scapecast eval`: how well the avatar does what the face does, measured the way the team measures it.

Three parts, each a section of one JSON and one Markdown report:

- **real**: every video in a folder that has a reference track (`reference/<video>.jsonl`, one JSON object a
  frame: `{"frame": i, "face": bool, "blendshapes": {ARKit name: score}}`) is run through the engine as
  `run` runs it (default config, no enrollment, `--no-render`), and compared frame by frame: per-channel
  Pearson r and mean absolute error on the channels whose reference standard deviation is ≥ 0.08, then the
  means over channels and over videos. The reference is a peer's output (MediaPipe's blendshape model), not
  the truth: agreement, not accuracy.
- **rest**: on the frames where the reference reads every jaw, mouth, cheek and nose channel below 0.1, the
  95th percentile of each of our channels of those groups and the share of frames with any above 0.2.
- **synthetic** (`engine/eval_synthetic.py`): rendered held-out identities with true weights.

Frames are matched by index; frames where either side has no face are left out. The metric functions take
plain arrays so that tests can check them on small made-up tracks.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.app import build_parts
from engine.bundles import load_identity
from engine.config import Config
from engine.errors import UserError
from engine.eval_synthetic import synthetic_markdown, wink_readings, wink_summary
from engine.face_model import FaceModel
from engine.names import ARKIT_BLENDSHAPES
from engine.pipeline import FrameResult, Pipeline
from engine.types import TrackingState

log = logging.getLogger(__name__)

# Channels count when the reference moves at least this much (standard deviation over the video).
MIN_REFERENCE_STD = 0.08
# Rest frames: every channel of these groups below REST_LEVEL in the reference.
REST_GROUPS = ("jaw", "mouth", "cheek", "nose")
REST_LEVEL = 0.1
# A rest frame is a false expression when any of our channels of those groups exceeds this.
REST_FALSE_LEVEL = 0.2
REST_CHANNELS = tuple(
    i for i, name in enumerate(ARKIT_BLENDSHAPES) if name.startswith(REST_GROUPS) and name != "tongueOut"
)
CHANNEL = {name: i for i, name in enumerate(ARKIT_BLENDSHAPES)}
BLINKS = [CHANNEL["eyeBlinkLeft"], CHANNEL["eyeBlinkRight"]]
# A wink in a reference track: one eye at least REFERENCE_WINK_CLOSED, the other at least REFERENCE_WINK_MARGIN
# lower (the peer's winks are soft: d6's reads 0.72 / 0.41, then 0.64 / 0.09).
REFERENCE_WINK_CLOSED, REFERENCE_WINK_MARGIN = 0.6, 0.3
# BENCHMARKS.md's block that `eval --update-benchmarks` rewrites.
EVAL_BEGIN, EVAL_END = "<!-- eval:begin -->", "<!-- eval:end -->"


@dataclass(frozen=True)
class Track:
    """Per-frame ARKit weights of one video. weights: (N, 52) in `ARKIT_BLENDSHAPES` order, NaN where a
    channel is unknown (our `tongueOut`); face: (N,) bool, a face was found in that frame."""

    weights: np.ndarray
    face: np.ndarray

    def __post_init__(self) -> None:
        if self.weights.ndim != 2 or self.weights.shape[1] != len(ARKIT_BLENDSHAPES):
            raise ValueError(f"a track's weights must be (N, {len(ARKIT_BLENDSHAPES)}), got {self.weights.shape}")
        if self.face.shape != (len(self.weights),):
            raise ValueError(f"a track's face flags must be ({len(self.weights)},), got {self.face.shape}")

    def __len__(self) -> int:
        return len(self.weights)

    @staticmethod
    def from_rows(rows: list[dict[str, float] | None]) -> Track:
        """One {ARKit name: weight} per frame (None: no face) → Track; channels a row lacks are NaN."""
        weights = np.full((len(rows), len(ARKIT_BLENDSHAPES)), np.nan)
        for i, row in enumerate(rows):
            for name, value in (row or {}).items():
                if name in CHANNEL:
                    weights[i, CHANNEL[name]] = float(value)
        return Track(weights, np.array([row is not None for row in rows], dtype=bool))


def load_reference(path: Path) -> Track:
    """A reference track file (JSON lines, frame numbers consecutive from 0). UserError names a bad line."""
    rows: list[dict[str, float] | None] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read reference track {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            frame, face, shapes = int(record["frame"]), bool(record["face"]), record.get("blendshapes") or {}
            if not isinstance(shapes, dict):
                raise TypeError("blendshapes is not an object")
            shapes = {str(k): float(v) for k, v in shapes.items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"reference track {path}, line {number}: not a frame record ({exc})") from None
        if frame != len(rows):
            raise UserError(f"reference track {path}, line {number}: frame {frame}, expected {len(rows)}")
        rows.append(shapes if face else None)
    return Track.from_rows(rows)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r, or None when either series is constant."""
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 1e-12 else None


def agreement(ours: Track, reference: Track, min_std: float = MIN_REFERENCE_STD) -> dict[str, Any]:
    """Per-channel Pearson r and mean absolute error of `ours` against `reference` on the frames both have a
    face in, over the channels whose reference standard deviation is ≥ `min_std` (and that both know).

    A channel we hold constant has r 0 (it cannot follow the face), not None. Returns
    {frames, channels: {name: {r, mae, reference_std}}, mean_r, mae} (means None with no channel)."""
    n = min(len(ours), len(reference))
    both = ours.face[:n] & reference.face[:n]
    mine, ref = ours.weights[:n][both], reference.weights[:n][both]
    channels: dict[str, dict[str, float]] = {}
    if len(ref) >= 2:
        for j, name in enumerate(ARKIT_BLENDSHAPES):
            if not (np.isfinite(ref[:, j]).all() and np.isfinite(mine[:, j]).all()):
                continue
            std = float(ref[:, j].std())
            if std < min_std:
                continue
            r = _pearson(mine[:, j], ref[:, j])
            channels[name] = {
                "r": round(0.0 if r is None else r, 4),
                "mae": round(float(np.abs(mine[:, j] - ref[:, j]).mean()), 4),
                "reference_std": round(std, 4),
            }
    mean = (lambda key: round(float(np.mean([c[key] for c in channels.values()])), 4)) if channels else None
    return {
        "frames": int(both.sum()),
        "channels": channels,
        "mean_r": mean("r") if mean else None,
        "mae": mean("mae") if mean else None,
    }


def rest_frames(ours: Track, reference: Track) -> dict[str, Any]:
    """On frames where the reference reads every jaw/mouth/cheek/nose channel below REST_LEVEL: the 95th
    percentile of each of our channels of those groups, the share of frames where any exceeds REST_FALSE_LEVEL,
    and per channel the share of frames where it does (the channels that do, most first: which expression the
    face is taken for). Returns {frames, p95: {name: value}, share_above, above: {name: share}} (None / empty
    without rest frames)."""
    n = min(len(ours), len(reference))
    both = ours.face[:n] & reference.face[:n]
    ids = np.array(REST_CHANNELS)
    ref = reference.weights[:n][:, ids]
    rest = both & np.all(np.nan_to_num(ref, nan=0.0) < REST_LEVEL, axis=1)
    mine = np.nan_to_num(ours.weights[:n][rest][:, ids], nan=0.0)
    if not len(mine):
        return {"frames": 0, "p95": {}, "share_above": None, "above": {}}
    p95 = np.percentile(mine, 95, axis=0)
    over = mine > REST_FALSE_LEVEL
    above = over.mean(axis=0)
    return {
        "frames": int(rest.sum()),
        "p95": {ARKIT_BLENDSHAPES[j]: round(float(v), 4) for j, v in zip(ids, p95, strict=True)},
        "share_above": round(float(over.any(axis=1).mean()), 4),
        "above": {ARKIT_BLENDSHAPES[ids[i]]: round(float(above[i]), 4) for i in np.argsort(-above) if above[i] > 0},
    }


def winks(ours: Track, reference: Track) -> dict[str, Any]:
    """On the frames where the reference reads a wink: our readings of the winking and the open eye
    (`wink_summary`), the reference's means, and the share of frames on which our winking eye reads at least
    0.1 more closed than the open one (the same eye winks)."""
    n = min(len(ours), len(reference))
    both = ours.face[:n] & reference.face[:n]
    theirs, mine = wink_readings(reference.weights[:n][both][:, BLINKS], ours.weights[:n][both][:, BLINKS],
                                 REFERENCE_WINK_CLOSED, margin=REFERENCE_WINK_MARGIN)  # fmt: skip
    out = wink_summary(mine)
    if len(mine):
        out["reference_closed_mean"] = round(float(theirs[:, 0].mean()), 3)
        out["reference_open_mean"] = round(float(theirs[:, 1].mean()), 3)
        out["same_eye_share"] = round(float(np.mean(mine[:, 0] >= mine[:, 1] + 0.1)), 3)
    return out


def solve_video(path: Path, config: Config) -> Track:
    """Our ARKit weights for every frame of a video, solved as `run --no-render` solves it (frame by frame,
    on the video's own clock). Frames in which no face is tracked have face False."""

    config = config.model_copy(deep=True)
    config.stream.enabled = False
    config.stream.vmc_enabled = False
    model = FaceModel.load()
    avatar = load_identity(config.identity, model, config.detail)
    rows: dict[int, dict[str, float] | None] = {}

    def collect(result: FrameResult) -> None:
        state = result.state
        rows[result.frame.index] = state.arkit() if state.tracking == TrackingState.TRACKING else None

    parts = build_parts(config, str(path), model, avatar, render=False)
    parts.on_state.append(collect)
    pipeline = Pipeline(parts, realtime=False, keep=1)
    pipeline.run()
    count = max(rows) + 1 if rows else 0
    return Track.from_rows([rows.get(i) for i in range(count)])


def evaluate_real(folder: Path, config: Config, only: list[str] | None = None) -> dict[str, Any]:
    """The `real` and `rest` parts for every video in `folder` with `reference/<stem>.jsonl` beside it."""
    folder = Path(folder)
    references = sorted((folder / "reference").glob("*.jsonl")) if (folder / "reference").is_dir() else []
    videos = [(v, r) for r in references for v in sorted(folder.glob(r.stem + ".*")) if v.is_file()]
    if only:
        videos = [(v, r) for v, r in videos if v.stem in only or v.name in only]
    if not videos:
        raise UserError(f"no videos with a reference track (reference/<video>.jsonl) in {folder}")
    per_video: dict[str, Any] = {}
    for video, reference_path in videos:
        start = time.perf_counter()
        reference = load_reference(reference_path)
        ours = solve_video(video, config)
        if len(ours) != len(reference):
            log.warning("%s: %d frames solved, the reference has %d", video.name, len(ours), len(reference))
        per_video[video.stem] = {
            "agreement": agreement(ours, reference),
            "rest": rest_frames(ours, reference),
            "winks": winks(ours, reference),
            "frames": len(ours),
            "seconds": round(time.perf_counter() - start, 1),
        }
        a = per_video[video.stem]["agreement"]
        log.info("eval %s: mean r %s, mae %s over %d channels", video.stem, a["mean_r"], a["mae"], len(a["channels"]))
    means = [v["agreement"] for v in per_video.values() if v["agreement"]["mean_r"] is not None]
    rest = [v["rest"] for v in per_video.values() if v["rest"]["frames"]]
    all_rest_frames = sum(r["frames"] for r in rest)
    return {
        "videos": per_video,
        "mean_r": round(float(np.mean([m["mean_r"] for m in means])), 4) if means else None,
        "mae": round(float(np.mean([m["mae"] for m in means])), 4) if means else None,
        "rest_frames": all_rest_frames,
        # Pooled over every video's rest frames (each video's p95 is in its own entry).
        "rest_share_above": round(sum(r["share_above"] * r["frames"] for r in rest) / all_rest_frames, 4)
        if all_rest_frames
        else None,
        "rest_jaw_open_p95_max": max((r["p95"]["jawOpen"] for r in rest), default=None),
        "channel_mean_r": _channel_means(per_video),
        "winks": {name: v["winks"] for name, v in per_video.items() if v["winks"]["frames"]},
    }


# The channel families the accuracy targets name (docs/performer.md), by ARKit name prefix.
TARGET_FAMILIES = {"jawOpen": "jawOpen", "eyeBlink": "eyeBlink", "mouthSmile": "mouthSmile", "eyeLook*": "eyeLook"}


def family_means(channel_mean_r: dict[str, float]) -> dict[str, float | None]:
    """Mean r of each target family over its channels that moved in some video (None: none did)."""
    out: dict[str, float | None] = {}
    for label, prefix in TARGET_FAMILIES.items():
        values = [r for name, r in channel_mean_r.items() if name.startswith(prefix)]
        out[label] = round(float(np.mean(values)), 3) if values else None
    return out


def _channel_means(per_video: dict[str, Any]) -> dict[str, float]:
    """Per-channel r averaged over the videos in which the channel counts."""
    values: dict[str, list[float]] = {}
    for video in per_video.values():
        for name, c in video["agreement"]["channels"].items():
            values.setdefault(name, []).append(c["r"])
    return {name: round(float(np.mean(v)), 3) for name, v in sorted(values.items())}


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = ["# scapecast eval", ""]
    real = report.get("real")
    if real:
        lines += [
            "## Real videos against the reference tracks (MediaPipe's blendshape model: a peer, not truth)",
            "",
            "| video | frames | channels | mean r | mean abs error | rest frames | jawOpen p95 at rest "
            "| rest frames > 0.2 | read above 0.2 there |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, v in real["videos"].items():
            a, r = v["agreement"], v["rest"]
            jaw = r["p95"].get("jawOpen", "–") if r["frames"] else "–"
            share = f"{100 * r['share_above']:.0f} %" if r["frames"] else "–"
            # The three channels most often above the line: what the relaxed face is taken for.
            which = ", ".join(f"{k} {100 * f:.0f} %" for k, f in list(r.get("above", {}).items())[:3]) or "–"
            lines.append(
                f"| {name} | {v['frames']} | {len(a['channels'])} | {a['mean_r']} | {a['mae']} | {r['frames']} "
                f"| {jaw} | {share} | {which} |"
            )
        share = real["rest_share_above"]
        lines += [
            f"| **mean** | | | **{real['mean_r']}** | **{real['mae']}** | {real['rest_frames']} | "
            f"max {real['rest_jaw_open_p95_max']} | {'–' if share is None else f'{100 * share:.0f} %'} | |",
            "",
            "Per-channel r (mean over the videos where the channel moves): "
            + ", ".join(f"{k} {v}" for k, v in real["channel_mean_r"].items()),
            "",
            "The families the targets name (mean of the channels above): "
            + ", ".join(f"{k} {'–' if v is None else v}" for k, v in family_means(real["channel_mean_r"]).items()),
            "",
        ]
        for name, w in real.get("winks", {}).items():
            lines += [
                f"Winks in {name} ({w['frames']} frames where the reference shuts one eye ≥ {REFERENCE_WINK_CLOSED} "
                f"and the other ≥ {REFERENCE_WINK_MARGIN} less; it reads {w['reference_closed_mean']} / "
                f"{w['reference_open_mean']}): we read {w['closed_mean']} / {w['open_mean']}, the same eye more "
                f"closed on {100 * w['same_eye_share']:.0f} %.",
                "",
            ]
    synthetic = report.get("synthetic")
    if synthetic:
        lines += synthetic_markdown(synthetic)
    return "\n".join(lines) + "\n"
