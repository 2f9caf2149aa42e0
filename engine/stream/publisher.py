"""Publisher: wire format v1 over ZeroMQ (design §7). See `engine/stream/schema.py` and docs/protocol.md.

    port 5555  PUB     [b"params"|b"identity"|b"status"|b"stats", msgpack header]
    port 5556  PUB     [b"frame", msgpack header, image bytes (JPEG or raw RGBA)]
    port 5557  ROUTER  asset service (engine/stream/assets.py)

Every header holds v, seq (per topic), t_capture_ns, t_publish_ns (monotonic ns), source, plus the topic's
fields. Frames get their own socket so that small `params` never queue behind megabyte images.

Slow subscribers: a PUB socket never blocks; when one subscriber's queue reaches SNDHWM (kept small) ZeroMQ
drops that subscriber's messages only. Subscribers see the loss as a `seq` gap. No ZMQ_CONFLATE: it breaks
multipart messages and topic filters; latest-value semantics live in the client instead.
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from engine.config import StreamConfig
from engine.errors import UserError
from engine.names import ARKIT_BLENDSHAPES, UNSUPPORTED_ARKIT
from engine.stream.assets import ASSET_HWM, AssetServer, scan_bundle
from engine.stream.schema import FRAME, IDENTITY, PARAMS, STATS, STATUS, TOPICS, VERSION, encode
from engine.stream.security import ServerSecurity, bind_endpoint
from engine.types import FaceState, RenderedFrame

log = logging.getLogger(__name__)

# The largest message a client may send the engine (a subscription, an asset request).
MAX_INCOMING_BYTES = 64 * 1024

IDENTITY_PERIOD_S = 1.0  # late joiners learn the identity within this period (plus connect time)
# `send_hwm` bounds the frame queue. The params socket's messages are 1–2 KB and come in bursts of up to four
# per frame (params, status, stats, identity), so it gets a larger queue: still tiny in bytes.
PARAMS_HWM_FACTOR = 8


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each client connection is one file
    descriptor; a default soft limit of 1024 refuses the 1025th client). Returns the limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("open-file limit raised from %d to %d", soft, target)
            return target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d (%s): at most ~%d clients", soft, exc, soft)
    return soft


class Publisher:
    """Binds the three sockets of wire format v1 and publishes engine output; never blocks on subscribers.

    identity_info: at least `id` and `model_id` of the identity being rendered (extra keys are passed through
    in the `identity` message). asset_dir: an identity bundle directory served by the asset service.
    Port 0 in `config` binds an ephemeral port; `endpoints` ({"params", "frame", "assets"}: address) tells which.
    """

    def __init__(
        self,
        config: StreamConfig,
        source_id: str,
        identity_info: dict[str, Any] | None = None,
        asset_dir: Path | None = None,
    ):
        self.config = config
        self.source_id = source_id
        self.counts: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self._seq: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self._last_identity = -float("inf")
        self._sockets: list[zmq.Socket] = []
        self._assets: AssetServer | None = None
        self._context = zmq.Context()
        self._security = ServerSecurity()
        self.open_file_limit = raise_open_file_limit()
        self.refused_connections = 0  # accepts that failed (out of file descriptors), counted from the monitors
        self._monitors: list[zmq.Socket] = []
        self._last_refusal_warning = -float("inf")
        try:
            files = scan_bundle(asset_dir)
            info = dict(identity_info or {})
            self.identity_id = str(info.pop("id", "default"))
            self._identity_fields = {
                **info,
                "id": self.identity_id,
                "model_id": str(info.pop("model_id", "")),
                "assets": {name: f.sha256 for name, f in files.items()},
                "channels": [n for n in ARKIT_BLENDSHAPES if n not in UNSUPPORTED_ARKIT],
                "unsupported": list(UNSUPPORTED_ARKIT),
            }
            self._security = ServerSecurity.from_config(config, self._context)
            self._params = self._bind(zmq.PUB, config.params_port, PARAMS_HWM_FACTOR * config.send_hwm)
            self._frames = self._bind(zmq.PUB, config.frame_port, config.send_hwm)
            assets_socket = self._bind(zmq.ROUTER, config.asset_port, ASSET_HWM)
            self._sockets.remove(assets_socket)  # the asset thread owns and closes it
            self.endpoints: dict[str, str] = {
                name: sock.getsockopt_string(zmq.LAST_ENDPOINT)
                for name, sock in (("params", self._params), ("frame", self._frames), ("assets", assets_socket))
            }
            self._assets = AssetServer(assets_socket, self.identity_id, files)
        except BaseException:
            self.close()
            raise

    def _bind(self, kind: int, port: int, hwm: int) -> zmq.Socket:
        socket = self._context.socket(kind)
        self._sockets.append(socket)
        socket.linger = 0
        socket.sndhwm = hwm
        # What reaches these sockets from clients is small (subscriptions: topic names; asset requests: a
        # verb and a file name): a larger message drops that peer's connection before it is buffered, so no
        # client can make the engine hold or parse megabytes.
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_INCOMING_BYTES)
        self._security.apply(socket)
        address = bind_endpoint(socket, self.config.bind_address, port)
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            hint = " (another engine running? pick another port in the stream section)" if in_use else ""
            raise UserError(f"cannot bind {address}: {exc.strerror}{hint}") from None
        # libzmq refuses a connection it cannot accept (no file descriptor left) without a word; its monitor
        # reports each failed accept, so the engine can count and say so.
        self._monitors.append(socket.get_monitor_socket(zmq.EVENT_ACCEPT_FAILED))
        return socket

    def _count_refusals(self) -> None:
        """Count failed accepts reported by the monitors; warn at most every 10 s while they happen."""
        for monitor in self._monitors:
            while True:
                try:
                    monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError:  # the socket closed under us (shutdown)
                    break
                self.refused_connections += 1
        now = time.monotonic()
        if self.refused_connections and now - self._last_refusal_warning >= 10.0:
            self._last_refusal_warning = now
            log.warning("%d client connections refused so far: out of file descriptors (limit %d); close idle "
                        "clients, or raise the limit (ulimit -n)", self.refused_connections,
                        self.open_file_limit)  # fmt: skip

    def _send(
        self, socket: zmq.Socket, topic: str, t_capture_ns: int, fields: dict, payload: bytes | None = None
    ) -> None:
        seq = self._seq[topic]
        self._seq[topic] = seq + 1
        envelope = {"v": VERSION, "seq": seq, "t_capture_ns": int(t_capture_ns), "t_publish_ns": time.monotonic_ns(),
                    "source": self.source_id}  # fmt: skip
        clash = envelope.keys() & fields.keys()
        if clash:  # a topic field must never overwrite the envelope (seq accounting keys on `source`)
            raise ValueError(f"{topic} fields {sorted(clash)} would overwrite the message envelope")
        header = envelope | fields
        # PUB + NOBLOCK never waits: a subscriber at its HWM silently misses this message and sees a seq gap.
        socket.send_multipart(encode(topic, header, payload), flags=zmq.NOBLOCK, copy=payload is None)
        self.counts[topic] += 1

    def publish_params(self, state: FaceState) -> None:
        """Send one `params` message (pose, 51 ARKit blendshapes, tracking) for `state`."""
        self.tick()
        pose = state.pose
        fields = {
            "pose": {
                "quaternion": [float(c) for c in pose.quaternion],
                "translation": [float(c) for c in pose.translation],
                "scale": float(pose.scale),
            },
            "blendshapes": state.arkit(),
            "tracking": {"state": str(state.tracking.value), "confidence": float(state.confidence)},
            "identity": self.identity_id,
            "face": int(state.face_index),
            "frame_index": int(state.frame_index),
        }
        self._send(self._params, PARAMS, state.t_capture_ns, fields)

    def publish_frame(self, frame: RenderedFrame) -> None:
        """Send one `frame` message ((H, W, 4) uint8 RGBA as JPEG — alpha dropped — or raw RGBA per config)."""
        codec = self.config.frame_codec
        if codec == "none":
            return
        image = np.ascontiguousarray(frame.image)
        if image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
            raise ValueError(f"RenderedFrame.image must be (H, W, 4) uint8, got {image.shape} {image.dtype}")
        if codec == "jpeg":
            ok, encoded = cv2.imencode(
                ".jpg", cv2.cvtColor(image, cv2.COLOR_RGBA2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
            )
            if not ok:
                raise RuntimeError("OpenCV failed to JPEG-encode the frame")
            payload = encoded.tobytes()
        else:
            payload = image.tobytes()
        height, width = image.shape[:2]
        fields = {"width": width, "height": height, "codec": codec, "frame_index": int(frame.state.frame_index),
                  "face": int(frame.state.face_index)}  # fmt: skip
        self._send(self._frames, FRAME, frame.state.t_capture_ns, fields, payload)

    def publish_status(self, state: str, detail: dict[str, Any]) -> None:
        """Send a `status` message (a state change such as `running`, `tracking_lost`, `stopping`)."""
        self._send(self._params, STATUS, time.monotonic_ns(), {"state": state, "detail": detail})

    def publish_stats(self, stats: dict[str, Any]) -> None:
        """Send a `stats` message (per-stage timings etc.; numpy scalars and arrays are converted)."""
        self._send(self._params, STATS, time.monotonic_ns(), {"stats": stats})

    @property
    def asset_counters(self) -> dict[str, int]:
        """The asset service's requests, chunks and bytes sent, and replies dropped (empty without a bundle)."""
        return dict(self._assets.counters) if self._assets is not None else {}

    def tick(self) -> None:
        """Periodic work: re-send `identity` once per IDENTITY_PERIOD_S. Called by publish_params; call it when idle."""
        now = time.monotonic()
        if now - self._last_identity >= IDENTITY_PERIOD_S:
            self._last_identity = now
            self._send(self._params, IDENTITY, time.monotonic_ns(), self._identity_fields)
            self._count_refusals()

    def close(self) -> None:
        """Stop the asset thread, close the sockets without lingering, stop the authenticator. Idempotent."""
        if self._assets is not None:
            self._assets.stop()
            self._assets = None
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        for socket in self._sockets:
            socket.close(linger=0)
        self._sockets.clear()
        self._security.stop()
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
