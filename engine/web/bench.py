"""serve's cost per frame with many pages, what a slow page does to the others (`bench_web`), and the page's own
frame time in headless Chromium (`bench_page`).

Set-up, all on loopback: a fake engine (a `Publisher` in this process, sending `params` of a talking, blinking
face with a turning head — every channel a little weight, as tracking gives — at `hz`), `serve` (a
`WebServerThread` in this process: what is measured), and the pages in a child process (`python -m
engine.web.bench --child …`, asyncio + aiohttp WebSocket clients; a separate process so that they do not share
serve's CPU time or GIL). A slow page is a raw WebSocket that completes the handshake and then reads 1 KB a second
through a 4 KB receive buffer.

Measured in serve, per forwarded frame (median, p95, p99):

- `work_ms` (wall) and `work_cpu_ms` (the threads' CPU time): preparing the frame (the per-frame maths, JSON +
  floats) plus writing it to every page — what serve spends on a frame, on its two threads;
- `receive_to_written_ms`: ZeroMQ receipt → the last page written (includes the hop from the intake thread to
  the event loop);
- `cpu_ms_per_frame`: the intake and event-loop threads' CPU time over the run / frames (their heartbeats, pings
  and accepts included; ZeroMQ's own receiver thread, which validates each message, is not);

and in the pages: the fraction of frames each missed between its first and last (`page_missed_fraction`), latency
capture → received (one clock: same machine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from engine.config import load_config
from engine.identity import DEFAULT_IDENTITY_DIR
from engine.names import ICT_EXPRESSIONS
from engine.render.camera import euler_to_quaternion
from engine.stream.publisher import Publisher
from engine.stream.security import free_loopback_ports
from engine.types import FaceState, HeadPose, TrackingState
from engine.web.browser import Chromium
from engine.web.server import ServeSettings, WebServerThread


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan}
    a = np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(a, q)), 4) for q in (50, 95, 99)}


# ---- the pages (child process) --------------------------------------------------------------------------------


async def _page(session: Any, url: str, duration_s: float) -> dict[str, Any]:
    import aiohttp

    frames: list[tuple[int, bytes]] = []  # (received ns, message); decoded after the run, not on serve's CPUs
    loop = asyncio.get_running_loop()
    async with session.ws_connect(url, max_msg_size=0) as ws:
        end = loop.time() + duration_s
        while (left := end - loop.time()) > 0:
            try:
                msg = await asyncio.wait_for(ws.receive(), left)
            except TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.BINARY:
                frames.append((time.monotonic_ns(), msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
    latencies, seqs = [], []
    for received, data in frames:
        (n,) = struct.unpack_from("<I", data, 0)
        meta = json.loads(data[4 : 4 + n])
        latencies.append((received - meta["t_capture_ns"]) / 1e6)
        seqs.append(meta["seq"])
    return {"received": len(seqs), "first_seq": seqs[0] if seqs else None, "last_seq": seqs[-1] if seqs else None,
            "latency_ms": _percentiles(latencies)}  # fmt: skip


async def _slow_page(host: str, port: int, path: str, duration_s: float) -> dict[str, Any]:
    """A WebSocket client that completes the handshake, then reads 1 KB a second through a 4 KB receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    status = await reader.readuntil(b"\r\n\r\n")
    read = 0
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        await asyncio.sleep(1.0)
        try:
            read += len(await asyncio.wait_for(reader.read(1024), 0.5))
        except TimeoutError:
            pass
    writer.close()
    return {"handshake": status.split(b"\r\n")[0].decode(), "bytes_read": read}


async def _pages_main(url: str, clients: int, slow: int, duration_s: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    import aiohttp

    parts = urlsplit(url)
    ws_url = f"ws://{parts.netloc}/ws" + (f"?{parts.query}" if parts.query else "")
    path = "/ws" + (f"?{parts.query}" if parts.query else "")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [_page(session, ws_url, duration_s) for _ in range(clients)]
        tasks += [_slow_page(parts.hostname or "127.0.0.1", parts.port or 80, path, duration_s) for _ in range(slow)]
        results = await asyncio.gather(*tasks)
    return {"pages": results[:clients], "slow": results[clients:]}


def _run_pages(url: str, clients: int, slow: int, duration_s: float, ready: Callable[[], None]) -> dict[str, Any]:
    """Run the pages in a child process and return what they measured. The child starts Python and imports what it
    needs (seconds of CPU on a busy 2-core machine, none of it serve's), says so, and opens its pages only after
    `ready()` has returned: the caller starts its measurement window there."""
    import tempfile

    command = [sys.executable, "-m", "engine.web.bench", "--child", url, str(clients), str(slow), str(duration_s)]
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        watchdog = threading.Timer(duration_s + 120, proc.kill)  # a child that hangs is killed, and fails below
        watchdog.start()
        try:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                ready()
                proc.stdin.write("go\n")
                proc.stdin.flush()
            proc.stdin.close()
            out = proc.stdout.read()
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errors.seek(0)
        if proc.returncode != 0 or line.strip() != "ready":
            raise RuntimeError(f"bench pages failed (exit {proc.returncode}): {errors.read()[-2000:]}")
    return json.loads(out)


# ---- the fake engine --------------------------------------------------------------------------------------------


def fake_face(t: float, phase: np.ndarray) -> np.ndarray:
    """(53,) weights of a talking, smiling, blinking, glancing face at time `t` (s) — with the small weight a tracked
    face gives every other channel (≈ 0.02), which lights 3.2 key expressions on average at the default threshold,
    like the demo performer's tracked frames."""

    def bump(*names: str, value: float) -> None:
        for name in names:
            w[ICT_EXPRESSIONS.index(name)] += value

    w = 0.02 + 0.015 * np.sin(0.9 * t + phase)
    bump("jawOpen", value=0.15 * (1 + math.sin(2 * math.pi * 1.5 * t)))  # syllables
    bump("mouthSmile_L", "mouthSmile_R", value=0.175 * (1 + math.sin(0.4 * t)))
    bump("eyeBlink_L", "eyeBlink_R", value=max(0.0, 1 - abs((t % 3.0) - 0.15) / 0.15))  # every 3 s
    bump("eyeLookOut_L", "eyeLookIn_R", value=0.15 * (1 + math.sin(0.5 * t)))
    return np.clip(w, 0.0, 1.0)


def _fake_engine(publisher: Any, hz: float, stop: threading.Event, counter: list[int]) -> None:
    """Publish `fake_face` with a turning head at `hz` until `stop`; `counter[0]`: messages sent."""

    phase = np.random.default_rng(0).uniform(0, 2 * np.pi, 53)
    period = 1.0 / hz
    next_t = time.monotonic()
    i = 0
    while not stop.is_set():
        t = i * period
        weights = fake_face(t, phase)
        quaternion = euler_to_quaternion(np.array(12 * math.sin(0.5 * t)), np.array(6 * math.sin(0.3 * t)),
                                         np.array(3.0))  # fmt: skip
        state = FaceState(HeadPose(quaternion, np.array([0.0, 0.0, -60.0])), weights, TrackingState.TRACKING, 0.9,
                          time.monotonic_ns(), i)  # fmt: skip
        publisher.publish_params(state)
        i += 1
        counter[0] = i
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            stop.wait(delay)


@contextlib.contextmanager
def _fake_engine_served(config: Any, hz: float, counter: list[int]) -> Iterator[tuple[Any, threading.Event]]:
    """A publisher on free loopback ports fed by `_fake_engine` at `hz` (with the shipped identity's assets):
    yields the `ServeSettings` that reach it (any free HTTP port) and the event that stops the fake engine."""
    params_port, frame_port, asset_port = free_loopback_ports(3)
    stream = config.stream.model_copy(update={"params_port": params_port, "frame_port": frame_port,
                                              "asset_port": asset_port})  # fmt: skip
    stop = threading.Event()
    with Publisher(stream, "bench", {"id": "default", "model_id": ""}, DEFAULT_IDENTITY_DIR) as publisher:
        engine = threading.Thread(target=_fake_engine, args=(publisher, hz, stop, counter), daemon=True)
        engine.start()
        settings = ServeSettings(connect=f"tcp://127.0.0.1:{params_port}", assets=f"tcp://127.0.0.1:{asset_port}",
                                 port=0)  # fmt: skip
        try:
            yield settings, stop
        finally:
            stop.set()
            engine.join(timeout=5)


# ---- the benchmark ----------------------------------------------------------------------------------------------


def bench_web(clients: int = 50, hz: float = 30.0, duration_s: float = 10.0, slow_clients: int = 0) -> dict[str, Any]:
    """serve with `clients` pages (and `slow_clients` slow ones) on loopback at `hz`: the numbers above."""

    config = load_config()
    published = [0]
    with _fake_engine_served(config, hz, published) as (settings, stop):
        try:
            with WebServerThread(settings, config.render, config.detail) as server:
                web = server.server
                deadline = time.monotonic() + 60
                while web.received == 0 and time.monotonic() < deadline:  # the engine is live
                    time.sleep(0.05)
                start: dict[str, Any] = {}

                def window_starts() -> None:  # the pages' process is up; they connect next
                    start.update(frames=web.frames, received=web.received, published=published[0],
                                 loop_cpu=server.call(time.thread_time), intake_cpu=web.intake_cpu_s,
                                 process_cpu=time.process_time(), t0=time.monotonic_ns())  # fmt: skip

                pages = _run_pages(server.url, clients, slow_clients, duration_s, window_starts)
                t0, t1 = start["t0"], time.monotonic_ns()
                loop_cpu = server.call(time.thread_time) - start["loop_cpu"]
                intake_cpu = web.intake_cpu_s - start["intake_cpu"]
                process_cpu = time.process_time() - start["process_cpu"]
                frames = web.frames - start["frames"]
                received = web.received - start["received"]
                sent = published[0] - start["published"]
                costs = [c for c in list(web.costs) if t0 <= c.broadcast_start <= t1 and c.clients >= clients]
                slow_stats = server.call(web.stats)
        finally:
            stop.set()
    forwarded = len(costs)
    # Per page, the frames it missed between its first and its last (it connects after serve started forwarding).
    spans = [p["last_seq"] - p["first_seq"] + 1 for p in pages["pages"] if p["received"]]
    missed = sum(spans) - sum(p["received"] for p in pages["pages"] if p["received"])
    return {
        "clients": clients,
        "slow_clients": slow_clients,
        "hz": hz,
        "duration_s": duration_s,
        "published": sent,
        "received": received,
        "frames": frames,
        "frames_with_all_pages": forwarded,
        "work_ms": _percentiles([(c.prepare_ns + c.broadcast_end - c.broadcast_start) / 1e6 for c in costs]),
        "work_cpu_ms": _percentiles([(c.prepare_cpu_ns + c.broadcast_cpu_ns) / 1e6 for c in costs]),
        "prepare_cpu_ms": _percentiles([c.prepare_cpu_ns / 1e6 for c in costs]),
        "broadcast_cpu_ms": _percentiles([c.broadcast_cpu_ns / 1e6 for c in costs]),
        "prepare_ms": _percentiles([c.prepare_ns / 1e6 for c in costs]),
        "broadcast_ms": _percentiles([(c.broadcast_end - c.broadcast_start) / 1e6 for c in costs]),
        "receive_to_written_ms": _percentiles([(c.broadcast_end - c.received) / 1e6 for c in costs]),
        "cpu_ms_per_frame": round(1000 * (loop_cpu + intake_cpu) / max(received, 1), 4),
        "process_cpu_ms_per_frame": round(1000 * process_cpu / max(received, 1), 4),
        "pages_receiving": len(spans),
        "page_missed_fraction": round(missed / max(sum(spans), 1), 4),
        "page_latency_ms_p50": _percentiles([p["latency_ms"]["p50"] for p in pages["pages"]]),
        "page_latency_ms_p99_worst": max((p["latency_ms"]["p99"] for p in pages["pages"]), default=math.nan),
        "slow_pages": [
            {**s, **{k: v for k, v in page.items() if k != "remote"}}
            for s, page in zip(pages["slow"], _slowest(slow_stats["closed_pages"], slow_clients), strict=False)
        ],
    }


def bench_page(sizes: tuple[int, ...] = (512,), rounds: int = 2, hz: float = 30.0) -> dict[str, Any]:
    """The page's frame time in headless Chromium (SwiftShader WebGL2 on this machine's CPU): the fake engine feeds
    serve, the page keeps the last 60 frames it received, then draws each `rounds` times offscreen at every size in
    `sizes`, finished (`scapecast.benchmark`), with the detail blend on and off; plus the live page's own numbers
    (render fps, blendshape time, GPU time where the browser reports it) at its 800 × 800 viewport."""

    config = load_config()
    out: dict[str, Any] = {"sizes": {}}
    with _fake_engine_served(config, hz, [0]) as (settings, stop):
        try:
            with WebServerThread(settings, config.render, config.detail) as server, Chromium() as browser:
                started = time.monotonic()
                page = browser.open(server.url, 800, 800)
                page.wait_for("window.scapecast && scapecast.stats.ready && scapecast.stats.received >= 60", 120)
                out["page_ready_s"] = round(time.monotonic() - started, 2)
                time.sleep(5.0)  # the live page at its own pace
                live = page.evaluate("scapecast.stats")
                out["live"] = {k: live[k] for k in ("renderFps", "receiveHz", "morphMs", "gpuMs", "latencyP50Ms")}
                out["renderer"] = live["renderer"]
                stop.set()  # frames stop arriving: the benchmark has the machine to itself (but for the browser)
                for size in sizes:
                    on = page.evaluate(f"scapecast.benchmark({size}, {size}, {rounds})", timeout_s=600)
                    off = page.evaluate(f"scapecast.benchmark({size}, {size}, {rounds}, {{detail: false}})", 600)
                    out["sizes"][size] = {"detail_on": on, "detail_off": off}
        finally:
            stop.set()
    return out


def page_screenshot(path: str, width: int = 720, height: int = 540, settle_s: float = 6.0) -> dict[str, Any]:
    """A PNG of the live page (overlay included) fed by the fake engine, as docs/renders/web_viewer.png was made."""
    import io

    from PIL import Image

    config = load_config()
    with _fake_engine_served(config, 30.0, [0]) as (settings, stop):
        try:
            with WebServerThread(settings, config.render, config.detail) as server, Chromium() as browser:
                page = browser.open(server.url, width, height)
                page.wait_for("window.scapecast && scapecast.stats.ready && scapecast.stats.rendered > 2", 120)
                time.sleep(settle_s)  # the overlay's rates and the latency settle
                # Not mid-blink: the fake face blinks for 0.3 s every 3 s, and the page draws a frame ~0.15 s after
                # it arrives (more on SwiftShader), so a low weight in the newest frame is not enough. Wait for a
                # blink to end, then past the page's latency: the next blink is 2.7 s away.
                blink = f"scapecast.capture(8, 8).weights[{ICT_EXPRESSIONS.index('eyeBlink_L')}]"
                seen, deadline = False, time.monotonic() + 10
                while time.monotonic() < deadline:
                    weight = page.evaluate(blink)
                    if weight > 0.05:
                        seen = True
                    elif seen:
                        break
                    time.sleep(0.02)
                time.sleep(0.6)
                shot = page.screenshot()
                Image.open(io.BytesIO(shot)).convert("RGB").save(path, optimize=True)
                return page.evaluate("scapecast.stats")
        finally:
            stop.set()


def _slowest(pages: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The `n` pages serve dropped most for (the slow ones), as serve saw them."""
    return sorted(pages, key=lambda p: p["dropped"], reverse=True)[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", nargs=4, metavar=("URL", "CLIENTS", "SLOW", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--slow", type=int, default=0)
    parser.add_argument("--hz", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--page", type=int, nargs="*", metavar="SIZE", help="the page's frame time at these sizes")
    parser.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the live page")
    args = parser.parse_args(argv)
    if args.screenshot:
        stats = page_screenshot(args.screenshot)
        print(json.dumps({k: stats[k] for k in ("renderFps", "receiveHz", "latencyP50Ms", "gpuMs", "renderer")}))
        return 0
    if args.child:
        url, clients, slow, seconds = args.child
        import aiohttp  # noqa: F401  # imported before the parent's window, like everything else the pages use

        print("ready", flush=True)  # the parent starts its window, then says go
        if sys.stdin.readline().strip() != "go":
            return 1
        print(json.dumps(asyncio.run(_pages_main(url, int(clients), int(slow), float(seconds)))))
        return 0
    if args.page is not None:
        print(json.dumps(bench_page(tuple(args.page) or (512,)), indent=1))
        return 0
    print(json.dumps(bench_web(args.clients, args.hz, args.duration, args.slow), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
