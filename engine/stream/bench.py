"""Streaming benchmarks on loopback: `params` publish → receive latency and 512² JPEG frame throughput (design §9)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from multiprocessing.connection import Connection

import numpy as np

from engine.config import StreamConfig
from engine.stream.client import StreamClient, decode_frame
from engine.stream.publisher import Publisher
from engine.types import FaceState, HeadPose, RenderedFrame, TrackingState


def _percentiles_ms(values_ns: list[int]) -> dict[str, float]:
    a = np.asarray(values_ns, dtype=np.float64) / 1e6
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _test_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 4) uint8: smooth shading plus mild noise, so JPEG sizes resemble a rendered face."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    shade = 0.5 + 0.5 * np.cos(6 * xx) * np.sin(5 * yy)
    rgb = np.stack([200 * shade, 150 * shade, 120 * shade], -1) + rng.normal(0, 4, (size, size, 3))
    return np.concatenate([np.clip(rgb, 0, 255), np.full((size, size, 1), 255)], -1).astype(np.uint8)


def _receive_params(client: StreamClient, seconds: float) -> dict:
    """`params` latencies seen by `client` for `seconds`: transport (receiver thread's receive time −
    t_publish_ns) and to_app (when `wait()` hands the message over − t_publish_ns), both on CLOCK_MONOTONIC,
    which is one clock for every process of the machine."""
    transport, to_app = [], []
    previous = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = client.wait("params", 1.0, newer_than=previous)
        if message is None:
            break
        now = time.monotonic_ns()
        transport.append(message.t_receive_ns - message.header["t_publish_ns"])
        to_app.append(now - message.header["t_publish_ns"])
        previous = message
    if not transport:
        return {"samples": 0}
    return {
        "transport": _percentiles_ms(transport),
        "to_app": _percentiles_ms(to_app),
        "samples": len(transport),
        "gaps": int(client.gaps["params"]),
    }


def _subscriber_process(address: str, seconds: float, conn: Connection) -> None:
    """Child process: a remote renderer's view of `params` (its own interpreter, no GIL shared with the
    publisher). Sends `_receive_params`' result back through `conn`, once `params` have started arriving."""
    with StreamClient(address) as client:
        if client.wait("params", 10.0) is None:
            conn.send({"samples": 0, "error": "no params arrived within 10 s"})
            return
        conn.send(_receive_params(client, seconds))


def _params_in_subscriber_process(address: str, seconds: float) -> dict:
    """Run `_subscriber_process` in a spawned process while the caller publishes; its result or an error."""
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe(duplex=False)
    process = context.Process(target=_subscriber_process, args=(address, seconds, child_conn), daemon=True)
    try:
        process.start()
    except OSError as exc:
        return {"samples": 0, "error": f"cannot start a subscriber process: {exc}"}
    child_conn.close()
    try:
        if parent_conn.poll(seconds + 30.0):
            return parent_conn.recv()
        return {"samples": 0, "error": "the subscriber process did not report"}
    except EOFError:
        return {"samples": 0, "error": f"the subscriber process died (exit code {process.exitcode})"}
    finally:
        process.join(5.0)
        if process.is_alive():
            process.kill()


def bench_stream(params_seconds: float = 2.0, params_hz: float = 500.0, frames: int = 120, size: int = 512) -> dict:
    """Measure the stream on loopback with the real Publisher and StreamClient.

    Returns {"params_latency_ms": {...}, "params_latency_same_process_ms": {...}, "jpeg_<size>": {...}}.
    `params_latency_ms` is measured by a subscriber in its own process — a remote renderer or VTuber app, the
    arrangement design §9's target is about; `params_latency_same_process_ms` by a StreamClient in the
    publisher's own process, where its threads share the GIL with the publishing thread. Each holds
    {"transport": {p50, p99, max}, "to_app": {...}, "samples", "gaps", "rate_hz"} (`_receive_params`).
    jpeg: publish fps (encode + send), receive fps, decode fps, mean bytes.
    """
    rng = np.random.default_rng(0)
    state = FaceState(HeadPose.identity(), rng.uniform(0, 1, 53), TrackingState.TRACKING, 1.0, 0, 0)
    config = StreamConfig(params_port=0, frame_port=0, asset_port=0, frame_codec="jpeg", send_hwm=1000)
    result: dict = {}
    with Publisher(config, "bench") as pub:
        stop = threading.Event()

        def publish_paced() -> None:
            period_ns, t0, n = int(1e9 / params_hz), time.monotonic_ns(), 0
            while not stop.is_set():
                pub.publish_params(state)
                n += 1
                time.sleep(max(0.0, (t0 + n * period_ns - time.monotonic_ns()) / 1e9))

        thread = threading.Thread(target=publish_paced)
        thread.start()
        try:
            result["params_latency_ms"] = _params_in_subscriber_process(pub.endpoints["params"], params_seconds)
        finally:
            stop.set()
            thread.join()
        result["params_latency_ms"]["rate_hz"] = params_hz
        with StreamClient(pub.endpoints["params"], pub.endpoints["frame"]) as client:
            time.sleep(0.3)
            stop.clear()
            thread = threading.Thread(target=publish_paced)
            thread.start()
            try:
                result["params_latency_same_process_ms"] = _receive_params(client, params_seconds) | {
                    "rate_hz": params_hz
                }
            finally:
                stop.set()
                thread.join()

            frame = RenderedFrame(_test_image(size, rng), state, 0)
            received_before = client.received["frame"]
            t0 = time.perf_counter()
            for _ in range(frames):
                pub.publish_frame(frame)
            publish_s = time.perf_counter() - t0
            last = client.wait("frame", 2.0)
            wait_until = time.monotonic() + 2.0
            while client.received["frame"] - received_before < frames and time.monotonic() < wait_until:
                time.sleep(0.005)
            receive_s = time.perf_counter() - t0
            received = client.received["frame"] - received_before
            t1 = time.perf_counter()
            for _ in range(20):
                decode_frame(last)  # type: ignore[arg-type]
            decode_s = (time.perf_counter() - t1) / 20
            result[f"jpeg_{size}"] = {
                "publish_fps": frames / publish_s,
                "receive_fps": received / receive_s,
                "received": received,
                "sent": frames,
                "decode_fps": 1.0 / decode_s,
                "mean_bytes": len(last.payload),  # type: ignore[union-attr, arg-type]
            }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(bench_stream(), indent=2))
