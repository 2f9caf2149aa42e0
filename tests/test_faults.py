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


def _engine_with_file_limit(tmp_path: Path, soft: int, hard: int, seconds: float) -> tuple[subprocess.Popen, str]:
    import resource

    params, frame, asset = free_loopback_ports(3)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "run", "--source", "demo", "--no-render", "--quiet",
         "--duration", str(seconds), "--summary-json", str(tmp_path / "s.json"),
         "--set", f"stream.params_port={params}", "--set", f"stream.frame_port={frame}",
         "--set", f"stream.asset_port={asset}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
    )  # fmt: skip
    return proc, f"tcp://127.0.0.1:{params}"


def _idle_connections(address: str, count: int, until_refused: bool = False) -> list:
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 512)), hard))
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    connections = []
    for _ in range(count):
        try:
            connection = socket.create_connection((host, int(port)), timeout=2)
        except OSError:  # the listen backlog is full: the engine accepts no more
            if until_refused:
                break
            raise
        connections.append(connection)
    return connections


def _wait_for_params(params: str) -> None:
    with StreamClient(params, topics=("params",)) as first:
        assert first.wait("params", 60.0) is not None  # the engine is up


def _close_and_stop(connections: list, proc: subprocess.Popen) -> str:
    """Close the idle connections, stop the engine with SIGINT; its stderr (it must have exited cleanly)."""
    for connection in connections:
        connection.close()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    return err


def test_eleven_hundred_idle_connections_leave_room_for_a_subscriber(tmp_path) -> None:
    """1100 idle TCP connections (they exhausted a 1024 fd limit, and new subscribers got nothing): the
    engine raises its soft limit to the hard one, so a real subscriber still gets params."""
    proc, params = _engine_with_file_limit(tmp_path, 1024, 4096, 25.0)
    connections: list = []
    try:
        _wait_for_params(params)
        connections = _idle_connections(params, 1100)
        with StreamClient(params, topics=("params",)) as late:
            assert late.wait("params", 10.0) is not None
    finally:
        err = _close_and_stop(connections, proc)
    assert "connections refused" not in err


def test_when_file_descriptors_run_out_the_engine_says_so_and_counts(tmp_path) -> None:
    """A hard limit the engine cannot raise: connections beyond it are refused, and the engine logs and counts
    them (libzmq alone says nothing)."""
    proc, params = _engine_with_file_limit(tmp_path, 200, 200, 25.0)
    connections: list = []
    try:
        _wait_for_params(params)
        connections = _idle_connections(params, 300, until_refused=True)
        time.sleep(2.5)  # the next identity tick reads the monitors
    finally:
        err = _close_and_stop(connections, proc)
    assert "client connections refused so far: out of file descriptors (limit 200)" in err
