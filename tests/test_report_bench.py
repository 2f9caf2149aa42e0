"""The `report` page and the `bench` results and tables, from real short runs: what they say, not only that
files appear."""

from __future__ import annotations

import calendar
import html
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.bench import benchmark_tables, refresh_benchmarks_md
from engine.names import ICT_EXPRESSIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
REPORT_FRAMES = 60  # the demo script holds neutral for 30 frames, then its first key expression eases in


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int32)


def _near(image: np.ndarray, colour: tuple[int, int, int], tolerance: int) -> int:
    """How many pixels are within `tolerance` of `colour` in every channel."""
    return int((np.abs(image - np.array(colour)).max(axis=-1) <= tolerance).sum())


def test_report_writes_a_page_with_its_pictures(tmp_path) -> None:
    """A 60-frame report on the demo performer: the page shows the run's summary and its four pictures, each a
    real picture of the size engine/report.py draws it; the curves pick the channels the script drives, and the
    solved curves follow the true ones."""
    from engine.sources.demo import DemoScript

    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "report", "--source", "demo", "--frames",
         str(REPORT_FRAMES), "--samples", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(out / "index.html") in proc.stdout
    page = (out / "index.html").read_text()
    summary = json.loads((out / "summary.json").read_text())

    # The summary: this run's numbers, the same on the page as in summary.json.
    assert summary["frames"] == REPORT_FRAMES
    assert 1 <= summary["rendered"] <= summary["frames"] and summary["fps"] > 0
    assert all(v >= 0 for v in summary["stages_ms"].values()) and summary["stages_ms"]["track"] > 0
    shown = re.search(r"<h2>Summary</h2><pre>(.*?)</pre>", page, flags=re.S)
    assert shown and json.loads(html.unescape(shown.group(1))) == summary

    # The pictures: each linked from the page, a PNG of the size report.py draws (figsize × dpi), not blank.
    pictures = re.findall(r'<img src="([^"]+)"', page)
    assert pictures == ["side_by_side.png", "blendshapes.png", "timing.png", "bases.png"]
    sizes = {name: Image.open(out / name).size for name in pictures}
    # --samples 4 of 60 frames: the rendered frames whose index is a multiple of 15, two pairs to a 234 px row.
    # Indices run past 60 when capture drops frames on a busy machine (more pairs) and the renderer skips frames
    # (fewer), so the rows are bounded, not fixed: every frame sampled would make 15 or more.
    width, height = sizes["side_by_side.png"]
    assert width == 900 and height % 234 == 0 and 1 <= height // 234 <= 4, sizes["side_by_side.png"]
    assert sizes["blendshapes.png"] == (990, 1188)  # 12 channels
    assert sizes["timing.png"] == (1170, 450)
    assert sizes["bases.png"] == (960, 800)
    side_by_side = _rgb(out / "side_by_side.png")
    assert len(np.unique(side_by_side.reshape(-1, 3), axis=0)) > 5000, "camera frames and renders, not a chart"
    assert _near(_rgb(out / "blendshapes.png"), (31, 119, 180), 30) > 1000, "solved curves drawn (matplotlib C0)"
    assert _near(_rgb(out / "timing.png"), (74, 123, 183), 20) > 2000, "histogram bars drawn"
    bases = _rgb(out / "bases.png")  # RdBu: raised and sunken displacements
    assert (bases[..., 0] > bases[..., 2] + 60).sum() > 1000 and (bases[..., 2] > bases[..., 0] + 60).sum() > 1000

    # The curves: the channels listed first are those the demo script drives in the frames processed — its
    # first key expression and a blink, past frame 30 (more frames when capture dropped some on a busy machine).
    listed = re.search(r"Most active channels: ([^<]*)</p>", page).group(1).split(", ")
    assert len(listed) == len(set(listed)) == 12 and set(listed) <= set(ICT_EXPRESSIONS)
    closed_loop = summary["closed_loop"]
    driven = set(closed_loop["per_channel_mae"])  # true weight above 0.1 somewhere in these frames
    assert closed_loop["frames"] == REPORT_FRAMES and closed_loop["driven_channels"] == len(driven)
    script = DemoScript.build().weights

    def scripted(frames: int, held: int = 1) -> set[str]:
        """Channels the script drives above 0.1 in at least `held` of its first `frames` frames."""
        return {ICT_EXPRESSIONS[j] for j in np.flatnonzero((script[:frames] > 0.1).sum(axis=0) >= held)}

    # Held ones cannot be missed (a blink lasts 7 frames: dropped frames may hide it); none beyond can appear.
    last_index = REPORT_FRAMES + summary["dropped"]["capture"] + 30  # 30: the source may skip frames itself
    assert scripted(REPORT_FRAMES, held=10) <= driven <= scripted(last_index), driven
    assert 0 < len(driven) <= 12 and set(listed[: len(driven)]) == driven, (listed, driven)
    assert all(r is not None and r > 0.5 for r in closed_loop["per_channel_r"].values()), closed_loop["per_channel_r"]
    assert 0 <= closed_loop["mae"] < 0.3


def _numbers(tree: object, path: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON tree with its dotted path (booleans and strings left out)."""
    if isinstance(tree, dict):
        return [n for key, value in tree.items() for n in _numbers(value, f"{path}.{key}" if path else key)]
    if isinstance(tree, list):
        return [n for k, value in enumerate(tree) for n in _numbers(value, f"{path}[{k}]")]
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return [(path, float(tree))]
    return []


def _table_rows(tables: str) -> dict[str, str]:
    """The `| what | measured | target |` rows of benchmark_tables(): what → measured."""
    rows = [line.split(" | ") for line in tables.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].removeprefix("| "): cells[1] for cells in rows[1:]}


def test_bench_quick_measures_every_stage_and_fills_the_tables(tmp_path) -> None:
    """`bench --quick` end to end (about 30 s): the JSON holds the numbers the tables need, each plausible for the
    run it describes, and the tables show exactly them; BENCHMARKS.md is left alone with --no-update."""
    out = tmp_path / "bench.json"
    started = time.time()
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "bench", "--quick", "--json", str(out), "--no-update"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "updated" not in proc.stdout
    results = json.loads(out.read_text())
    assert json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1]) == results

    # Every number is finite and non-negative: times, rates, counts, errors.
    numbers = _numbers(results)
    assert len(numbers) > 30
    assert all(math.isfinite(v) and v >= 0 for _, v in numbers), [n for n in numbers if not n[1] >= 0]

    machine = results["machine"]
    assert machine["cpus"] == len(os.sched_getaffinity(0)) and machine["python"].startswith("3.")
    measured = calendar.timegm(time.strptime(results["date"], "%Y-%m-%d %H:%M UTC"))
    assert started - 120 <= measured <= time.time() + 60, results["date"]

    face_model = results["face_model"]
    assert face_model["eval_face_head_ms"] > 0 and face_model["eval_full_ms"] > 0  # no speed asserted: noisy machine
    solve = results["solve"]["solve_ms"]
    assert 0 < solve["p50"] <= solve["p95"] <= solve["max"]
    tracking = results["tracking"]
    assert tracking["frames"] == 30 and tracking["rounds"] == 1  # --quick
    assert tracking["mediapipe_fps"] > 0 and tracking["tracking_solve_fps"] > 0
    # Ratios of the unrounded rates, rounded to 3 decimals; the rates are rounded to 0.1 fps.
    assert tracking["ratio"] == pytest.approx(tracking["tracking_solve_fps"] / tracking["mediapipe_fps"], abs=0.002)
    assert tracking["serial_ratio"] == pytest.approx(tracking["serial_fps"] / tracking["mediapipe_fps"], abs=0.002)
    render = results["render"]
    default = render["setups"][render["default"]]
    assert render["size"] > 0 and 0 < default["total_min_ms"] <= default["total_p50_ms"]
    latency = results["stream"]["params_latency_ms"]["transport"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    precompute = results["precompute"]
    assert precompute["resolution"] == 128 and precompute["seconds"] > 0  # --quick
    assert precompute["seconds"] == precompute[f"{precompute['backend']}_s"], "the chosen backend's time"
    pipeline = results["pipeline"]
    assert pipeline["frames"] == 60 and 0 < pipeline["rendered"] <= pipeline["frames"]  # --quick
    assert pipeline["fps"] > 0 and pipeline["render_fps"] > 0
    assert 0 < pipeline["latency_ms"]["p50"] <= pipeline["latency_ms"]["p95"] <= pipeline["latency_ms"]["p99"]
    assert pipeline["stages_ms"]["track"] > 0 and 0 <= pipeline["closed_loop_mae"] < 0.3

    # The tables: every row filled, with the JSON's numbers (rounded as bench rounds them).
    tables = benchmark_tables(results)
    assert "n/a" not in tables
    rows = _table_rows(tables)
    expected = {
        "face model evaluation, face + head (ms, median)": face_model["eval_face_head_ms"],
        "MediaPipe FaceMesh alone (fps)": tracking["mediapipe_fps"],
        "tracking + regression / MediaPipe alone": tracking["ratio"],
        "full pipeline, demo source: tracked + published (fps)": pipeline["fps"],
        "capture → publish latency p95 (ms)": pipeline["latency_ms"]["p95"],
        f"render alone {render['size']}², detail on (ms per frame, median)": default["total_p50_ms"],
    }
    for what, value in expected.items():
        assert float(rows[what]) == pytest.approx(value, rel=0.01, abs=0.002), what
    assert f"Measured {results['date']}" in tables and f"{machine['cpus']} CPUs" in tables

    # BENCHMARKS.md's own layout takes the tables between its markers and keeps the prose around them.
    copy = tmp_path / "BENCHMARKS.md"
    original = (REPO_ROOT / "BENCHMARKS.md").read_text()
    copy.write_text(original)
    refresh_benchmarks_md(results, copy)
    refreshed = copy.read_text()
    assert tables in refreshed
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    assert refreshed.split(begin)[0] == original.split(begin)[0]
    assert refreshed.split(end)[1] == original.split(end)[1]


def test_benchmark_tables_fill_the_marked_block(tmp_path) -> None:
    results = {
        "machine": {"platform": "test-os", "python": "3.11", "cpus": 2},
        "date": "2026-11-28 12:00 UTC",
        "face_model": {"eval_face_head_ms": 0.06},
        "solve": {"solve_ms": {"p50": 0.4, "mean": 0.45}},
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
    assert (
        "| 0.4 | ≤ 0.5 |" in tables
        and "neutral (ms) | 0.45 | — |" in tables
        and "| 20.0 | ≤ 16.7 |" in tables
        and "| 0.3 | ≤ 1 |" in tables
    )
    assert "subscriber thread in the publisher's process (ms) | 0.7 | — |" in tables
    assert "n/a" not in tables


def test_frame_sampler_moves_a_sample_past_skipped_frames_and_keeps_its_count() -> None:
    """Rendered frames arrive with gaps (the renderer skipped some, capture dropped some): each stride still
    gives one sample (the first frame at or past its boundary), and never more than asked for."""
    from types import SimpleNamespace

    from engine.report import FrameSampler

    sampler = FrameSampler(stride=10, limit=4)
    image = np.zeros((8, 8, 3), np.uint8)
    for index in [1, 2, 13, 14, 19, 21, 35, 36, 52, 60, 71, 90]:  # no multiple of 10 but 60 and 90
        frame = SimpleNamespace(index=index, image=image)
        sampler(SimpleNamespace(frame=frame, rendered=None))
    assert [index for index, _, _ in sampler.pairs] == [1, 13, 21, 35]
