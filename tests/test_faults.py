"""Fault injection on the live engine, as a streamer's machine meets it: real processes, loopback only,
bounded in time. The render child is killed or frozen; the engine must keep tracking and stop on request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engine.stream.client import StreamClient
from engine.stream.security import free_loopback_ports

REPO_ROOT = Path(__file__).resolve().parents[1]


def _render_child(engine_pid: int, timeout_s: float = 60.0) -> int:
    """The engine's render process (a multiprocessing spawn child, not its resource tracker)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{engine_pid}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if b"spawn_main" in cmdline:
                    return child
        time.sleep(0.2)
    raise AssertionError("no render process found")


def _start_engine(tmp_path: Path, seconds: float) -> tuple[subprocess.Popen, str, str]:
    params, frame, asset = free_loopback_ports(3)
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "run", "--source", "demo", "--no-window", "--quiet",
         "--duration", str(seconds), "--summary-json", str(tmp_path / "s.json"),
         "--set", f"stream.params_port={params}", "--set", f"stream.frame_port={frame}",
         "--set", f"stream.asset_port={asset}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, f"tcp://127.0.0.1:{params}", f"tcp://127.0.0.1:{frame}"


def test_a_killed_render_process_is_restarted_and_params_never_stop(tmp_path) -> None:
    engine, params_address, frame_address = _start_engine(tmp_path, 40)
    try:
        with StreamClient(params_address, frame_address) as client:
            assert client.wait("frame", 90.0) is not None, "no frame before the fault"
            child = _render_child(engine.pid)
            arrivals: list[float] = []
            last = client.latest("params")
            os.kill(child, signal.SIGKILL)
            killed_at = time.monotonic()
            frames_before = client.received["frame"]
            resumed = None
            while time.monotonic() - killed_at < 15.0 and resumed is None:
                message = client.wait("params", 1.0, newer_than=last)
                if message is not None:
                    arrivals.append(time.monotonic())
                    last = message
                if client.received["frame"] > frames_before + 3 and resumed is None and len(arrivals) > 30:
                    resumed = time.monotonic() - killed_at
            largest_gap = max(np.diff([killed_at, *arrivals]))
            print(
                f"render child killed: largest params gap {largest_gap * 1000:.0f} ms, frames again after {resumed} s"
            )
            assert len(arrivals) > 30 and largest_gap < 1.0  # params never stalled
            assert resumed is not None, "rendering did not resume within 15 s"
            assert _render_child(engine.pid, 5.0) != child
        engine.send_signal(signal.SIGINT)
        _, stderr = engine.communicate(timeout=30)
    finally:
        if engine.poll() is None:
            engine.kill()
    assert engine.returncode == 0, stderr
    assert "render process down" in stderr and "Traceback" not in stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["render"]["restarts"] >= 1 and summary["render"]["state"] == "running"


def test_a_frozen_render_process_does_not_hold_the_engine(tmp_path) -> None:
    engine, params_address, frame_address = _start_engine(tmp_path, 60)
    try:
        with StreamClient(params_address, frame_address) as client:
            assert client.wait("frame", 90.0) is not None
            child = _render_child(engine.pid)
            os.kill(child, signal.SIGSTOP)
            time.sleep(1.0)
            last = client.latest("params")
            assert client.wait("params", 2.0, newer_than=last) is not None  # tracking goes on meanwhile
        asked = time.monotonic()
        engine.send_signal(signal.SIGINT)
        _, stderr = engine.communicate(timeout=30)
        stopped_in = time.monotonic() - asked
    finally:
        if engine.poll() is None:
            engine.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError):
            pass
    assert engine.returncode == 0, stderr
    print(f"render child frozen: engine stopped {stopped_in:.2f} s after SIGINT")
    assert stopped_in < 5.0, stopped_in  # it ignored SIGINT for 200 s before
    assert (tmp_path / "s.json").is_file()
