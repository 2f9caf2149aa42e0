"""The live engine end to end, as a user runs it: real MediaPipe, solver, moderngl, ZeroMQ on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.stream.security import free_loopback_ports

REPO_ROOT = Path(__file__).resolve().parents[1]


def _port_args() -> list[str]:
    params, frame, asset = free_loopback_ports(3)
    return ["--set", f"stream.params_port={params}", "--set", f"stream.frame_port={frame}",
            "--set", f"stream.asset_port={asset}"]  # fmt: skip


def _engine(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip


def test_demo_run_writes_the_summary_contract(tmp_path) -> None:
    summary_path = tmp_path / "s.json"
    proc = _engine("run", "--source", "demo", "--frames", "45", "--no-window", "--quiet",
                   "--summary-json", str(summary_path), *_port_args())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] >= 45
    for key in ("fps", "latency_ms", "stages_ms", "tracking_rate", "published", "closed_loop"):
        assert key in summary
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["latency_ms"]["p50"] > 0 and summary["fps"] > 0
    assert summary["published"]["params"] == summary["frames"]
    assert 0 < summary["rendered"] <= summary["frames"]
    assert summary["published"]["frame"] == summary["rendered"]
    assert summary["tracking_rate"] >= 0.9
    loop = summary["closed_loop"]
    assert loop["driven_channels"] > 0 and set(loop["per_channel_mae"]) == set(loop["per_channel_r"])
    assert "scapecast:" in proc.stdout and "closed loop" in proc.stdout


def test_video_source_params_jsonl_has_every_frame(tmp_path) -> None:
    from engine.bundles import load_identity
    from engine.config import load_config
    from engine.face_model import FaceModel
    from engine.sources.demo import DemoPerformer

    config = load_config()
    model = FaceModel.load()
    performer = DemoPerformer(model, load_identity(config.identity, model), config.render, size=256)
    video = tmp_path / "demo.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (256, 256))
    frames = iter(performer)
    for _ in range(24):
        writer.write(cv2.cvtColor(next(frames).image, cv2.COLOR_RGB2BGR))
    writer.release()
    performer.close()

    jsonl = tmp_path / "params.jsonl"
    proc = _engine("run", "--source", str(video), "--no-window", "--quiet", "--params-jsonl", str(jsonl),
                   *_port_args())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(24))
    first = records[0]
    assert set(first) >= {"frame", "t_capture_ns", "tracking", "pose", "blendshapes"}
    assert "jawOpen" in first["blendshapes"] and "mouthSmileLeft" in first["blendshapes"]
    assert "tongueOut" not in first["blendshapes"]
    assert sum(r["tracking"]["state"] == "tracking" for r in records) >= 20
    # The file names no camera: `auto` reads it from the face, and the run says which one it used.
    assert "performer auto: camera" in proc.stdout and "(read from the face)" in proc.stdout, proc.stdout
    # A recorded video runs on its own clock: without the avatar render (a faster run) the weights are the same.
    again = tmp_path / "again.jsonl"
    proc = _engine("run", "--source", str(video), "--no-render", "--quiet", "--params-jsonl", str(again),
                   *_port_args())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    repeated = [json.loads(line) for line in again.read_text().splitlines()]
    assert [r["blendshapes"] for r in repeated] == [r["blendshapes"] for r in records]
    assert [r["t_capture_ns"] for r in repeated] == [r["t_capture_ns"] for r in records]


def test_make_run_without_webcam_runs_demo_and_stops_on_sigint(tmp_path) -> None:
    """`make run` with no arguments: no webcam here → the demo, a live status line, clean exit on SIGINT."""
    if any(_port_in_use(p) for p in (5555, 5556, 5557)):
        pytest.skip("default ports 5555-5557 are taken by another engine on this machine")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(["make", "-s", "run"], cwd=REPO_ROOT, stdout=out, stderr=err, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            assert _wait_for(err_path, proc, "[scapecast] demo performer (recorded) | frames", timeout=180), (
                "no live status line within 180 s: " + err_path.read_text()[-2000:]
            )
            time.sleep(2.0)
            # Ctrl-C reaches the engine process (make itself would report the interrupt as its own failure).
            pgrep = subprocess.run(["pgrep", "-g", str(proc.pid), "-f", "run_engine.py"], capture_output=True,
                                   text=True)  # fmt: skip
            engine_pids = pgrep.stdout.split()
            assert engine_pids, "the engine process was not found under make"
            for pid in engine_pids:
                os.kill(int(pid), signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, stderr[-2000:]
    assert "demo performer" in stdout and "frames" in stdout
    assert "Traceback" not in stderr


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(path: Path, proc: subprocess.Popen[bytes], text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if text in path.read_text():
            return True
        time.sleep(0.2)
    return False


def test_a_full_disk_stops_the_params_jsonl_alone(tmp_path) -> None:
    """`--params-jsonl /dev/full`: one warning, the run completes with its summary, nothing half-written."""
    summary_path = tmp_path / "s.json"
    proc = _engine("run", "--source", "demo", "--frames", "20", "--no-render", "--quiet", "--params-jsonl",
                   "/dev/full", "--summary-json", str(summary_path), *_port_args())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("--params-jsonl /dev/full stopped after 0 lines") == 1
    assert json.loads(summary_path.read_text())["frames"] >= 20 and "Traceback" not in proc.stderr


def test_unwritable_outputs_are_refused_before_the_run(tmp_path) -> None:
    for option in ("--summary-json", "--params-jsonl"):
        proc = _engine("run", "--source", "demo", "--frames", "5", "--no-render", "--quiet", option,
                       str(tmp_path / "no" / "such" / "out.json"), *_port_args())  # fmt: skip
        assert proc.returncode != 0 and "cannot write " + option in proc.stderr and "Traceback" not in proc.stderr


def test_params_jsonl_cuts_a_short_write_back_to_whole_lines(tmp_path, monkeypatch) -> None:
    import os as os_module

    from engine.app import ParamsJsonl
    from engine.pipeline import FrameResult
    from engine.types import FaceState, Frame, HeadPose, TrackingState

    path = tmp_path / "p.jsonl"
    out = ParamsJsonl(path)
    state = FaceState(HeadPose.identity(), np.zeros(53), TrackingState.TRACKING, 1.0, 0, 0)
    result = FrameResult(Frame(np.zeros((2, 2, 3), np.uint8), 0, 0), None, state)
    out(result)
    real_write = os_module.write
    monkeypatch.setattr(os_module, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    out(result)  # half a line reaches the disk: it is cut off, and the output stops
    out(result)
    monkeypatch.undo()
    out.close()
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 1 and lines[0].endswith("\n") and json.loads(lines[0])["frame"] == 0


@pytest.mark.parametrize(
    "command", [["keys", "{out}"], ["report", "--source", "demo", "--frames", "5", "--out", "{out}"]]
)
def test_keys_and_report_into_an_unwritable_place_are_one_line(tmp_path, command) -> None:
    """A folder that cannot be made (under a file: what a read-only or missing mount gives too) is a one-line
    error with a non-zero exit, before any work, with no traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = str(blocker / "out")
    result = _engine(*[part.format(out=out) for part in command], timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "scapecast: error: cannot write" in result.stderr
    assert out in result.stderr and "Not a directory" in result.stderr
