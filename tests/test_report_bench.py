"""The `report` page and the `bench` tables, from real short runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from engine.bench import benchmark_tables, refresh_benchmarks_md

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_report_writes_a_page_with_its_pictures(tmp_path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "report", "--source", "demo", "--frames", "24",
         "--samples", "4", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (out / "index.html").read_text()
    for picture in ("side_by_side.png", "blendshapes.png", "timing.png", "bases.png"):
        assert f'src="{picture}"' in page
        assert (out / picture).stat().st_size > 5000  # a real picture, not an empty canvas
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] >= 24 and "closed_loop" in summary


def test_benchmark_tables_fill_the_marked_block(tmp_path) -> None:
    results = {
        "machine": {"platform": "test-os", "python": "3.11", "cpus": 2},
        "date": "2026-11-28 12:00 UTC",
        "face_model": {"eval_face_head_ms": 0.06},
        "solve": {"solve_ms": {"p50": 0.4}},
        "tracking": {"mediapipe_fps": 200.0, "tracking_solve_fps": 180.0, "ratio": 0.9, "serial_ratio": 0.7},
        "render": {"size": 512, "default": "cpu", "setups": {"cpu": {"total_p50_ms": 20.0}}},
        "stream": {
            "params_latency_ms": {"transport": {"p99": 0.3}},
            "params_latency_same_process_ms": {"transport": {"p99": 0.7}},
        },
        "precompute": {"seconds": 5.0, "resolution": 512, "backend": "onnxruntime"},
        "pipeline": {
            "fps": 31.0,
            "render_fps": 12.0,
            "latency_ms": {"p95": 50.0},
            "closed_loop_mae": 0.04,
            "stages_ms": {"track": 5.0},
        },
    }
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n\n<!-- bench:begin -->\nold numbers\n<!-- bench:end -->\n\nouttro\n")
    refresh_benchmarks_md(results, path)
    text = path.read_text()
    assert "old numbers" not in text and "intro" in text and "outtro" in text
    assert text.count("<!-- bench:begin -->") == 1
    assert re.search(r"tracking \+ regression / MediaPipe alone \| 0\.9 \|", text)
    tables = benchmark_tables(results)
    assert "| full pipeline, demo source: tracked + published (fps) | 31.0 |" in tables
    assert "avatar frames rendered (fps) | 12.0 |" in tables
    assert "| 0.4 | ≤ 0.5 |" in tables and "| 20.0 | ≤ 16.7 |" in tables and "| 0.3 | ≤ 1 |" in tables
    assert "subscriber thread in the publisher's process (ms) | 0.7 | — |" in tables
    assert "n/a" not in tables
