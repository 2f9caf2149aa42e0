"""`bench`: per-stage and end-to-end benchmarks, as ratios measured in one run, and the BENCHMARKS.md tables.

This machine is shared and noisy, so the comparisons that matter (tracking + solve vs MediaPipe alone) are
measured on the same frames in the same run, interleaved, and quoted as medians.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.app import build_parts, summarize
from engine.bundles import load_identity
from engine.config import Config
from engine.face_model import FaceModel, LandmarkEmbedding
from engine.pipeline import Pipeline, PipelineParts
from engine.render.bench import bench_render
from engine.render.vcam import CHROMA_GREEN, VirtualCamera, camera_frame
from engine.solve.bench import bench_solve
from engine.solve.face_solver import FaceSolver
from engine.solve.performer import Performer
from engine.sources.base import FrameSource
from engine.sources.demo import DemoPerformer
from engine.stream.bench import bench_stream
from engine.stream.ifacialmocap import IFacialMocapSender
from engine.stream.livelink import LiveLinkFaceSender
from engine.stream.security import free_loopback_ports
from engine.stream.vmc import EXPRESSION_SETS, VmcBridge
from engine.tracking import FaceTracker
from engine.types import FaceState, Frame, HeadPose, TrackingState

log = logging.getLogger(__name__)
BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
_BEGIN, _END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def bench_face_model(model: FaceModel, repeats: int = 300) -> dict[str, float]:
    """Mesh evaluation (identity pre-multiplied): face + head vertices, and the whole mesh, ms median."""
    rng = np.random.default_rng(0)
    face = model.personalize(rng.normal(size=model.n_identity).astype(np.float32))
    weights = rng.uniform(size=len(model.expression_names)).astype(np.float32)
    n_face_head = len(model.topology.region_vertices("face", "head"))
    return {
        "eval_face_head_ms": round(_median_ms(lambda: face.evaluate(weights, n_face_head), repeats), 4),
        "eval_full_ms": round(_median_ms(lambda: face.evaluate(weights), repeats), 4),
    }


def demo_frames(config: Config, count: int) -> list[Frame]:
    """`count` consecutive demo-performer frames, rendered once and kept in memory."""

    model = FaceModel.load()
    identity = load_identity(config.identity, model, config.detail)
    performer = DemoPerformer(model, identity, config.render, fps=config.source.fps, size=config.source.demo_size)
    try:
        iterator = iter(performer)
        return [next(iterator) for _ in range(count)]
    finally:
        performer.close()


class _FramesSource(FrameSource):
    """Frames kept in memory, as a file source (every frame in order, no pacing)."""

    description = "frames in memory"

    def __init__(self, frames: list[Frame]) -> None:
        self._frames = iter(frames)

    def read(self) -> Frame | None:
        return next(self._frames, None)


def bench_tracking(config: Config, frames: list[Frame], rounds: int = 3) -> dict[str, Any]:
    """MediaPipe alone vs MediaPipe + solve on the same frames, interleaved rounds, median fps of each.

    `tracking_solve_fps` is the engine's own arrangement (`Pipeline`: track and solve on two threads, every
    frame in order, no render or publish); `serial_fps` solves on the tracking thread, one frame after the
    other — the cost of the solve with no second core to hide it on. The face is solved as `run` solves a
    stranger in front of a webcam: `--performer auto`, the camera read from the face, its estimates fitted
    in the background.
    """

    model = FaceModel.load()
    embedding = LandmarkEmbedding.load()

    def make_solver() -> FaceSolver:
        return FaceSolver(model, embedding, Performer.auto(), config.solve, config.performer)

    def serial(solve: bool) -> float:
        solver = make_solver() if solve else None
        with FaceTracker(config.tracking) as tracker:
            t0 = time.perf_counter_ns()
            for frame in frames:
                faces = tracker.process(frame)
                if solver is not None:
                    solver.solve(faces[0] if faces else None, frame.t_capture_ns, frame.index)
            return len(frames) / ((time.perf_counter_ns() - t0) / 1e9)

    def threaded() -> float:
        parts = PipelineParts(
            source=lambda: _FramesSource(frames),
            tracker=lambda: FaceTracker(config.tracking),
            solver=make_solver,
        )
        pipeline = Pipeline(parts, realtime=False)
        pipeline.run()
        stamps = [r.stamps for r in pipeline.snapshot()]
        if len(stamps) != len(frames):
            raise RuntimeError(f"the pipeline solved {len(stamps)} of {len(frames)} frames")
        return len(frames) / ((stamps[-1]["params_published"] - stamps[0]["track_start"]) / 1e9)

    runs: dict[str, list[float]] = {"mediapipe": [], "threaded": [], "serial": []}
    for _ in range(rounds):
        runs["mediapipe"].append(serial(False))
        runs["threaded"].append(threaded())
        runs["serial"].append(serial(True))
    mp_fps, both_fps, serial_fps = (statistics.median(runs[k]) for k in ("mediapipe", "threaded", "serial"))
    return {
        "frames": len(frames),
        "rounds": rounds,
        "mediapipe_fps": round(mp_fps, 1),
        "tracking_solve_fps": round(both_fps, 1),
        "ratio": round(both_fps / mp_fps, 3),
        "serial_fps": round(serial_fps, 1),
        "serial_ratio": round(serial_fps / mp_fps, 3),
    }


def bench_pipeline(config: Config, frames: int) -> dict[str, Any]:
    """The full pipeline on the demo source (render at the configured size, publish on free ports)."""

    config = config.model_copy(deep=True)
    config.render.backend = "egl"  # measured headless, like CI
    for port_field in ("params_port", "frame_port", "asset_port"):
        setattr(config.stream, port_field, free_loopback_ports(1)[0])
    model = FaceModel.load()
    identity = load_identity(config.identity, model, config.detail)
    pipeline = Pipeline(build_parts(config, "demo", model, identity))
    pipeline.run(max_frames=frames)
    summary = summarize(pipeline)
    keys = ("frames", "fps", "rendered", "render_fps", "latency_ms", "frame_latency_ms", "stages_ms", "tracking_rate")
    return {k: summary[k] for k in keys} | {"closed_loop_mae": summary.get("closed_loop", {}).get("mae")}


def bench_outputs(frames: int = 600) -> dict[str, Any]:
    """What each output to another app costs per frame on the thread that feeds it (ms, median and p99):
    the UDP senders on the solve thread (to a loopback receiver that drains them), the virtual camera's
    hand-over on the render thread, and its frame conversion (512² RGBA → RGB) on its own thread."""
    import socket
    import threading

    rng = np.random.default_rng(0)
    states = [
        FaceState(
            HeadPose(np.array([0.98, 0.1, 0.15, 0.05]), np.array([1.0, -2.0, -60.0])),
            rng.uniform(0, 1, 53),
            TrackingState.TRACKING,
            0.9,
            i,
            i,
        )  # fmt: skip
        for i in range(frames)
    ]
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.2)
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                receiver.recv(65536)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    port = receiver.getsockname()[1]
    senders: dict[str, Any] = {
        "vmc": VmcBridge("127.0.0.1", port),
        "vmc_all_expression_sets": VmcBridge("127.0.0.1", port, expressions=EXPRESSION_SETS),  # type: ignore[arg-type]
        "ifacialmocap": IFacialMocapSender("127.0.0.1", port),
        "livelink": LiveLinkFaceSender("127.0.0.1", port),
    }

    def per_frame(send: Callable[[Any], object], items: list[Any]) -> dict[str, float]:
        times = []
        for item in items:
            t0 = time.perf_counter_ns()
            send(item)
            times.append(time.perf_counter_ns() - t0)
        ms = np.asarray(times) / 1e6
        return {"p50_ms": round(float(np.median(ms)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}

    results: dict[str, Any] = {}
    try:
        for name, sender in senders.items():
            results[name] = per_frame(sender.send, states)
            results[name]["dropped"] = sender.dropped
    finally:
        done.set()
        drainer.join()
        receiver.close()
        for sender in senders.values():
            sender.close()
    image = np.zeros((512, 512, 4), np.uint8)
    image[96:416, 128:384] = (200, 160, 140, 255)
    results["vcam_push"] = _bench_vcam_push(image, frames, per_frame)
    results["vcam_frame_conversion"] = per_frame(
        lambda img: camera_frame(img, (512, 512), CHROMA_GREEN), [image] * min(frames, 200)
    )
    return results


def _bench_vcam_push(image: np.ndarray, frames: int, per_frame: Callable[..., dict[str, float]]) -> Any:
    """`VirtualCamera.push` on the render thread while its sender converts and sends at 30 fps into a backend
    that discards frames (pyvirtualcam's own `register_backend`); "n/a" without the vcam extra."""
    try:
        import pyvirtualcam
    except ImportError:
        return "n/a (pip install 'scapecast[vcam]')"

    class Discard:
        def __init__(self, **kw: Any) -> None:
            pass

        def send(self, frame: np.ndarray) -> None:
            pass

        def close(self) -> None:
            pass

        def device(self) -> str:
            return "bench"

        def native_fourcc(self) -> None:
            return None

    pyvirtualcam.register_backend("scapecast-bench", Discard)
    with VirtualCamera(image.shape[1], image.shape[0], 30.0, backend="scapecast-bench") as camera:
        return per_frame(camera.push, [image] * frames) | {"sent_at_30fps": camera.sent}


def bench_web_serve(quick: bool = False) -> dict[str, Any]:
    """`serve` with 50 pages at 30 Hz (its cost per frame, what the pages miss), and the page's own frame time in
    headless Chromium at 512² where Chromium is installed (SwiftShader: the CPU stands in for a GPU)."""
    from engine.web.bench import bench_page, bench_web  # aiohttp and a browser: only when benchmarking them
    from engine.web.browser import find_chromium

    results: dict[str, Any] = {"serve_50": bench_web(clients=50, hz=30.0, duration_s=3.0 if quick else 10.0)}
    if find_chromium() is not None and not quick:
        results["page"] = bench_page((512,))
    return results


def run_benchmarks(config: Config, quick: bool = False) -> dict[str, Any]:
    """Every benchmark in one run; `quick` shortens each (for smoke tests)."""
    from engine.detail.bench import bench_precompute  # torch: only when benchmarking the precompute

    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("face_model", lambda: bench_face_model(FaceModel.load(), 50 if quick else 300)),
        ("solve", bench_solve),
        ("tracking", lambda: bench_tracking(config, demo_frames(config, 30 if quick else 120), 1 if quick else 7)),
        ("render", lambda: bench_render(size=config.render.width, frames=20 if quick else 100)),
        ("stream", bench_stream),
        ("outputs", lambda: bench_outputs(100 if quick else 600)),
        ("web", lambda: bench_web_serve(quick)),
        ("precompute", lambda: bench_precompute(resolution=128 if quick else config.detail.resolution)),
        ("pipeline", lambda: bench_pipeline(config, 60 if quick else 600)),
    ]
    for name, step in steps:
        log.info("bench: %s", name)
        started = time.monotonic()
        results[name] = step()
        log.info("bench: %s done in %.1f s", name, time.monotonic() - started)
    return results


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def benchmark_tables(results: dict[str, Any]) -> str:
    """Markdown tables of one bench run (what BENCHMARKS.md shows between its markers)."""
    tracking, pipeline, render = results["tracking"], results["pipeline"], results["render"]
    lines = [
        f"Measured {results['date']} on {results['machine']['platform']}, {results['machine']['cpus']} CPUs, "
        f"Python {results['machine']['python']}.",
        "",
        "| what | measured | target |",
        "| --- | --- | --- |",
        f"| face model evaluation, face + head (ms, median) | {results['face_model']['eval_face_head_ms']} | ≤ 1 |",
        f"| regression solve, pose + 53 weights (ms, median) | {_get(results['solve'], 'solve_ms', 'p50')} | ≤ 0.5 |",
        f"| the same, mean: with the 5 Hz samples of the rest, gaze and neutral (ms) | "
        f"{_get(results['solve'], 'solve_ms', 'mean')} | — |",
        f"| MediaPipe FaceMesh alone (fps) | {_get(tracking, 'mediapipe_fps')} | — |",
        f"| tracking + regression, engine's track + solve threads (fps) | {_get(tracking, 'tracking_solve_fps')} | — |",
        f"| tracking + regression / MediaPipe alone | {_get(tracking, 'ratio')} | ≥ 0.85 |",
        f"| the same, solved on the tracking thread / MediaPipe alone | {_get(tracking, 'serial_ratio')} | — |",
        f"| render alone {render.get('size', '')}², detail on (ms per frame, median) | "
        f"{_get(render, 'setups', str(render.get('default')), 'total_p50_ms')} | ≤ 16.7 |",
        f"| full pipeline, demo source: tracked + published (fps) | {_get(pipeline, 'fps')} | ≥ 30 |",
        f"| full pipeline, demo source: avatar frames rendered (fps) | {_get(pipeline, 'render_fps')} | ≥ 30 |",
        f"| capture → publish latency p95 (ms) | {_get(pipeline, 'latency_ms', 'p95')} | ≤ 60 |",
        f"| params publish → receive p99 on loopback, subscriber process (ms) | "
        f"{_get(results['stream'], 'params_latency_ms', 'transport', 'p99')} | ≤ 1 |",
        f"| the same, subscriber thread in the publisher's process (ms) | "
        f"{_get(results['stream'], 'params_latency_same_process_ms', 'transport', 'p99')} | — |",
        f"| basis precompute, 20 × {_get(results['precompute'], 'resolution')}² (s, CPU, "
        f"{_get(results['precompute'], 'backend')}) | {_get(results['precompute'], 'seconds')} | ≤ 30 |",
        f"| closed-loop mean weight error, driven channels | {_get(pipeline, 'closed_loop_mae')} | ≤ 0.05 |",
        *_output_rows(results.get("outputs", {})),
        *_web_rows(results.get("web", {})),
        "",
        "Pipeline stages, p50 (ms): " + ", ".join(f"{k} {v}" for k, v in pipeline["stages_ms"].items()) + ".",
    ]
    return "\n".join(lines)


def _web_rows(web: dict[str, Any]) -> list[str]:
    """Table rows for `serve` (50 pages) and the browser page, where they were measured."""
    rows = []
    if "serve_50" in web:
        rows += [
            f"| serve, 50 browser pages at 30 Hz: engine-side CPU per frame (ms, median) | "
            f"{_get(web, 'serve_50', 'work_cpu_ms', 'p50')} | ≤ 1 |",
            f"| serve, 50 pages: frames a page missed (fraction) | "
            f"{_get(web, 'serve_50', 'page_missed_fraction')} | 0 |",
        ]
    if "page" in web:
        sizes = web["page"].get("sizes", {})
        page_512 = {"sizes": {"512": sizes.get(512, sizes.get("512"))}}  # int keys in Python, strings in JSON
        rows.append(
            f"| browser page 512², detail on, SwiftShader on the CPU (ms per frame) | "
            f"{_get(page_512, 'sizes', '512', 'detail_on', 'frame_ms')} | — |"
        )
    return rows


def _output_rows(outputs: dict[str, Any]) -> list[str]:
    """Table rows for the app outputs: each one's cost per frame on the thread that feeds it."""
    names = {
        "vmc": "VMC send, perfect sync + VRM 0.x presets (solve thread)",
        "vmc_all_expression_sets": "VMC send, all three expression sets (solve thread)",
        "ifacialmocap": "iFacialMocap send (solve thread)",
        "livelink": "Live Link Face send (solve thread)",
        "vcam_push": "virtual camera hand-over (render thread)",
    }
    return [
        f"| {label}, ms per frame p50 / p99 | {_get(outputs, key, 'p50_ms')} / {_get(outputs, key, 'p99_ms')} "
        "| ≤ 0.3 (p50) |"
        for key, label in names.items()
        if key in outputs
    ] + (
        [
            f"| virtual camera frame conversion, 512² RGBA → RGB (its own thread, ms p50) | "
            f"{_get(outputs, 'vcam_frame_conversion', 'p50_ms')} | — |"
        ]  # fmt: skip
        if "vcam_frame_conversion" in outputs
        else []
    )


def _get(mapping: Any, *keys: str) -> Any:
    """The nested value at `keys`, numbers rounded for a table (3 decimals below 10, else 1); n/a if absent."""
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return "n/a"
        mapping = mapping[key]
    if isinstance(mapping, float):
        return round(mapping, 3 if abs(mapping) < 10 else 1)
    return mapping


def refresh_benchmarks_md(results: dict[str, Any], path: Path = BENCHMARKS_MD) -> None:
    """Replace the generated block of BENCHMARKS.md (between its markers) with this run's tables."""
    replace_block(path, _BEGIN, _END, benchmark_tables(results))


def replace_block(path: Path, begin: str, end: str, content: str) -> None:
    """Replace the text between the `begin` and `end` marker lines of `path` (appended when absent),
    written to a temporary file and renamed, so an interrupted run never leaves half a page."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{content}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text)
    temporary.replace(path)
