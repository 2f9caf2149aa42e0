"""Run statistics: percentiles of timings and closed-loop accuracy of solved vs true weights."""

from __future__ import annotations

import numpy as np

from engine.names import ICT_EXPRESSIONS


def percentiles_ms(durations_ns: list[int] | np.ndarray) -> dict[str, float | None]:
    """{p50, p95, p99} in milliseconds of a list of nanosecond durations (None when empty: JSON null)."""
    values = np.asarray(durations_ns, dtype=np.float64) / 1e6
    if values.size == 0:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def closed_loop_metrics(
    true_weights: np.ndarray, solved_weights: np.ndarray, driven_threshold: float = 0.1
) -> dict[str, object]:
    """Accuracy of solved (N, 53) weights against the true (N, 53) weights that made the frames.

    Driven channels are those whose true weight exceeds `driven_threshold` somewhere in the run; `mae` is the
    mean absolute error over driven channels and all frames, `mae_all` over all 53. Per-channel MAE and Pearson r
    are keyed by ICT name (r is None for a channel constant in either series; so is `mae` with nothing driven).
    """
    truth = np.asarray(true_weights, dtype=np.float64)
    solved = np.asarray(solved_weights, dtype=np.float64)
    if truth.shape != solved.shape or truth.ndim != 2 or truth.shape[1] != len(ICT_EXPRESSIONS):
        raise ValueError(f"expected two (N, 53) arrays, got {truth.shape} and {solved.shape}")
    driven = truth.max(axis=0) > driven_threshold
    errors = np.abs(solved - truth)
    per_channel_mae = errors.mean(axis=0) if len(truth) else np.full(truth.shape[1], np.nan)
    per_channel_r: dict[str, float | None] = {}
    per_channel: dict[str, float] = {}
    for j, name in enumerate(ICT_EXPRESSIONS):
        if not driven[j]:
            continue
        per_channel[name] = round(float(per_channel_mae[j]), 4)
        t, s = truth[:, j], solved[:, j]
        per_channel_r[name] = round(float(np.corrcoef(t, s)[0, 1]), 3) if t.std() > 1e-9 and s.std() > 1e-9 else None
    return {
        "frames": int(len(truth)),
        "driven_channels": int(driven.sum()),
        "mae": round(float(errors[:, driven].mean()), 4) if driven.any() and len(truth) else None,
        "mae_all": round(float(errors.mean()), 4) if len(truth) else None,
        "per_channel_mae": per_channel,
        "per_channel_r": per_channel_r,
    }
