"""Soak test: run the live engine on the demo for N minutes and watch it like a streamer's machine would.

Starts `run --source demo --no-window` as a child process on free loopback ports, subscribes to its `params`
from this process, and every `--every` seconds samples the resident memory (RSS) and open file descriptors of
the engine and each of its child processes (the render process), and the `params` received, rate and `seq`
gaps. Writes a CSV of the samples, a PNG plot (RSS per process, fds, fps over time) and a JSON summary: RSS
growth after the first minute (as a share of the first-minute level), fd growth, mean fps, params lost.
A benchmark, not a test: BENCHMARKS.md quotes its numbers.

Usage: python tools/soak.py [--minutes 30] [--every 5] [--out out/soak]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from engine.stream.client import StreamClient  # noqa: E402
from engine.stream.security import free_loopback_ports  # noqa: E402


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(set(out))


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "soak")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    params, frame, asset = free_loopback_ports(3)
    command = [
        sys.executable, str(ROOT / "run_engine.py"), "run", "--source", "demo", "--no-window", "--quiet",
        "--duration", str(args.minutes * 60 + 5), "--set", f"stream.params_port={params}",
        "--set", f"stream.frame_port={frame}", "--set", f"stream.asset_port={asset}",
        "--summary-json", str(args.out / "engine_summary.json"),
    ]  # fmt: skip
    engine = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(args.out / "engine.log", "w"))
    rows: list[dict[str, float | int | None]] = []
    start = time.monotonic()
    client = StreamClient(f"tcp://127.0.0.1:{params}", topics=("params",))
    last_count, last_t = 0, start
    try:
        while engine.poll() is None and time.monotonic() - start < args.minutes * 60:
            time.sleep(args.every)
            now = time.monotonic()
            children = _children(engine.pid)
            count = client.received["params"]
            row: dict[str, float | int | None] = {
                "t_s": round(now - start, 1),
                "engine_rss_mib": _rss_mib(engine.pid),
                "engine_fds": _fds(engine.pid),
                "children_rss_mib": round(sum(_rss_mib(c) or 0.0 for c in children), 1),
                "children_fds": sum(_fds(c) or 0 for c in children),
                "params": count,
                "fps": round((count - last_count) / (now - last_t), 2),
                "params_gaps": client.gaps["params"],
            }
            rows.append(row)
            last_count, last_t = count, now
            print(json.dumps(row), flush=True)
    finally:
        client.close()
        if engine.poll() is None:
            engine.send_signal(signal.SIGINT)
            try:
                engine.wait(30)
            except subprocess.TimeoutExpired:
                engine.kill()
    with open(args.out / "samples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["t_s"])
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(rows, args.out / "soak.png")
    print(json.dumps(summary, indent=1))


def summarize(rows: list[dict]) -> dict:
    """RSS and fd growth after the first minute, mean fps after it, params lost."""
    settled = [r for r in rows if r["t_s"] >= 60]
    if len(settled) < 2:
        return {"samples": len(rows), "note": "too short to settle (under two samples after the first minute)"}

    def growth(key: str) -> float:
        first, values = settled[0][key] or 0.0, [r[key] or 0.0 for r in settled]
        return round((max(values) - first) / first, 4) if first else 0.0

    return {
        "minutes": round(rows[-1]["t_s"] / 60, 2),
        "engine_rss_mib_after_1_min": settled[0]["engine_rss_mib"],
        "engine_rss_mib_end": settled[-1]["engine_rss_mib"],
        "engine_rss_growth_after_1_min": growth("engine_rss_mib"),
        "children_rss_mib_end": settled[-1]["children_rss_mib"],
        "children_rss_growth_after_1_min": growth("children_rss_mib"),
        "engine_fds": [min(r["engine_fds"] or 0 for r in settled), max(r["engine_fds"] or 0 for r in settled)],
        "fps_mean_after_1_min": round(sum(r["fps"] for r in settled[1:]) / max(1, len(settled) - 1), 2),
        "params_received": rows[-1]["params"],
        "params_seq_gaps": rows[-1]["params_gaps"],
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(t, [r["engine_rss_mib"] for r in rows], label="engine")
    axes[0].plot(t, [r["children_rss_mib"] for r in rows], label="render process")
    axes[0].set_ylabel("RSS (MiB)")
    axes[0].legend()
    axes[1].plot(t, [r["engine_fds"] for r in rows], label="engine")
    axes[1].plot(t, [r["children_fds"] for r in rows], label="render process")
    axes[1].set_ylabel("open fds")
    axes[1].legend()
    axes[2].plot(t, [r["fps"] for r in rows])
    axes[2].set_ylabel("params fps")
    axes[2].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
