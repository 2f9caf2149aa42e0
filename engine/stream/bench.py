"""Streaming benchmarks on loopback: `params` publish → receive latency and 512² JPEG frame throughput (DESIGN §9)."""

from __future__ import annotations

import threading
import time

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


def bench_stream(params_seconds: float = 2.0, params_hz: float = 500.0, frames: int = 120, size: int = 512) -> dict:
    """Measure the stream on loopback with the real Publisher and StreamClient.

    Returns {"params_latency_ms": {"transport": {p50, p99, max}, "to_app": {...}, "samples"}, "jpeg_512": {...}}:
    transport = client receiver thread's receive time − t_publish_ns; to_app = when `wait()` hands the message to
    the caller − t_publish_ns. jpeg_512: publish fps (encode + send), receive fps, decode fps, mean bytes.
    """
    rng = np.random.default_rng(0)
    state = FaceState(HeadPose.identity(), rng.uniform(0, 1, 53), TrackingState.TRACKING, 1.0, 0, 0)
    config = StreamConfig(params_port=0, frame_port=0, asset_port=0, frame_codec="jpeg", send_hwm=1000)
    result: dict = {}
    with Publisher(config, "bench") as pub:
        with StreamClient(pub.endpoints["params"], pub.endpoints["frame"]) as client:
            time.sleep(0.3)
            stop = threading.Event()

            def publish_paced() -> None:
                period_ns, t0, n = int(1e9 / params_hz), time.monotonic_ns(), 0
                while not stop.is_set():
                    pub.publish_params(state)
                    n += 1
                    time.sleep(max(0.0, (t0 + n * period_ns - time.monotonic_ns()) / 1e9))

            thread = threading.Thread(target=publish_paced)
            thread.start()
            transport, to_app = [], []
            previous = None
            deadline = time.monotonic() + params_seconds
            while time.monotonic() < deadline:
                message = client.wait("params", 1.0, newer_than=previous)
                if message is None:
                    break
                now = time.monotonic_ns()
                transport.append(message.t_receive_ns - message.header["t_publish_ns"])
                to_app.append(now - message.header["t_publish_ns"])
                previous = message
            stop.set()
            thread.join()
            result["params_latency_ms"] = {
                "transport": _percentiles_ms(transport),
                "to_app": _percentiles_ms(to_app),
                "samples": len(transport),
                "rate_hz": params_hz,
                "gaps": int(client.gaps["params"]),
            }

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
