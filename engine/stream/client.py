"""Subscriber client for wire format v1: a receiver thread that keeps the newest message per topic.

Wire format v1 (full text: docs/protocol.md; checks: engine/stream/schema.py):

    tcp://HOST:5555  SUB  [topic, msgpack header]          topics: params, identity, status, stats
    tcp://HOST:5556  SUB  [b"frame", msgpack header, image] codec: jpeg | rgba
    tcp://HOST:5557  DEALER → ROUTER asset service          [b"list"] / [b"get", name]
    header: {v: 1, seq, t_capture_ns, t_publish_ns, source, ...topic fields}

Porting notes: subscribe to each topic by name; read in a loop on a background thread and overwrite a
per-topic slot (rendering wants the newest pose, not a queue of old ones); validate every message and drop
what fails instead of crashing (values out of range included: schema.py); `seq` gaps are messages this
subscriber missed; a stale or repeated `seq` never replaces the newest message. ZeroMQ reconnects by itself;
heartbeats make it notice a peer that vanished without closing the connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import zmq

from engine.errors import UserError
from engine.names import arkit_to_ict
from engine.stream.assets import MAX_REPLY_BYTES, AssetError, fetch_bundle
from engine.stream.schema import (
    FRAME,
    IDENTITY,
    MAX_FRAME_PIXELS,
    PARAMS,
    STATS,
    STATUS,
    Message,
    SchemaError,
    validate,
)
from engine.stream.security import ClientKeys
from engine.types import FaceState, HeadPose, TrackingState

log = logging.getLogger(__name__)

# No valid header (params, identity, status, stats, frame) comes near this; larger messages are refused.
MAX_HEADER_BYTES = 1024 * 1024
# A seq this low after a higher one is a restarted engine (it counts from 0), not a stale message.
RESTART_SEQ = 100
# A seq this far ahead of the last is a broken sender, not missed messages (30 fps for ~9 hours).
MAX_SEQ_JUMP = 1_000_000


class StreamClient:
    """Subscribes to an engine; `latest(topic)` is the newest valid message, `wait()` blocks for a new one.

    params_address: the PUB socket with params/identity/status/stats (`tcp://HOST:5555`). frame_address:
    the frame socket (`tcp://HOST:5556`), or None to skip images. asset_address: the asset service, needed
    only by `fetch_assets`. keys: CURVE keys when the engine requires them.
    Counters: `received` {topic: n}, `dropped` {reason: n} (malformed), `gaps` {topic: n} (missed by seq).
    """

    def __init__(
        self,
        params_address: str,
        frame_address: str | None = None,
        asset_address: str | None = None,
        *,
        topics: Iterable[str] = (PARAMS, IDENTITY, STATUS, STATS),
        keys: ClientKeys | None = None,
        rcv_hwm: int = 1000,
    ):
        self.asset_address = asset_address
        self.received: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()
        self._keys = keys
        self._latest: dict[tuple[str, int], Message] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        try:
            self._subscribe(params_address, topics, rcv_hwm, MAX_HEADER_BYTES)
            if frame_address is not None:
                # Images are big: a short queue (newest wins anyway), and nothing larger than the largest valid one.
                self._subscribe(frame_address, [FRAME], 4, MAX_FRAME_PIXELS * 4 + MAX_HEADER_BYTES)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, name="scapecast-client", daemon=True)
        self._thread.start()

    def _socket(self, kind: int, address: str, hwm: int = 1000, max_bytes: int = -1) -> zmq.Socket:
        socket = self._context.socket(kind)
        socket.linger = 0
        # A message larger than any valid one drops the connection before it is received whole (-1: no limit).
        socket.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        socket.rcvhwm = hwm  # before connect: a pipe keeps the HWM it was created with
        socket.ipv6 = address.startswith("tcp://[")
        socket.reconnect_ivl, socket.reconnect_ivl_max = 100, 2000  # ms
        socket.heartbeat_ivl, socket.heartbeat_timeout = 1000, 3000  # ms: detect a vanished publisher
        if self._keys is not None:
            self._keys.apply(socket)
        try:
            socket.connect(address)
        except zmq.ZMQError as exc:
            socket.close()
            raise UserError(f"cannot connect to {address!r}: {exc.strerror} (expected tcp://HOST:PORT)") from None
        return socket

    def _subscribe(self, address: str, topics: Iterable[str], hwm: int, max_bytes: int) -> None:
        socket = self._socket(zmq.SUB, address, hwm, max_bytes)
        for topic in topics:
            socket.subscribe(topic.encode("ascii"))
        self._sockets.append(socket)

    def _run(self) -> None:
        poller = zmq.Poller()
        for socket in self._sockets:
            poller.register(socket, zmq.POLLIN)
        while not self._stop.is_set():
            for socket, _ in poller.poll(100):
                for _ in range(1000):  # drain, but let the other socket and the stop flag in now and then
                    try:
                        parts = socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(parts)

    def _handle(self, parts: list[bytes]) -> None:
        try:
            message = validate(parts, time.monotonic_ns())
        except SchemaError as exc:
            if self.dropped[exc.reason] == 0:
                log.warning("dropping malformed message (%s); further ones are only counted", exc.reason)
            self.dropped[exc.reason] += 1
            return
        topic, header = message.topic, message.header
        stream = (topic, header["source"])
        last = self._last_seq.get(stream)
        if last is not None and not self._in_order(topic, last, message.seq):
            return
        if last is not None and message.seq > last + 1:
            self.gaps[topic] += message.seq - last - 1
        self._last_seq[stream] = message.seq
        with self._changed:
            self._latest[(topic, int(header.get("face", 0)))] = message
            self.received[topic] += 1
            self._changed.notify_all()

    def _in_order(self, topic: str, last: int, seq: int) -> bool:
        """Whether `seq` may follow `last` from one source; else the message is dropped and counted.

        A repeat or an older seq never replaces the newest message — unless it is one of the first
        `RESTART_SEQ` of a stream, which is how a restarted engine looks (it counts from 0 again). A jump of
        more than `MAX_SEQ_JUMP` is not a gap that loopback or a LAN can produce: the sender is broken."""
        if seq <= last and seq >= RESTART_SEQ:
            self.dropped[f"{topic}.seq_stale"] += 1
            return False
        if seq > last + MAX_SEQ_JUMP:
            self.dropped[f"{topic}.seq_jump"] += 1
            return False
        return True

    @property
    def running(self) -> bool:
        """True while the receiver thread is alive (it only stops on close())."""
        return self._thread.is_alive()

    def latest(self, topic: str, face: int = 0) -> Message | None:
        """The newest valid message of `topic` (for `params`/`frame`: of face index `face`), or None yet."""
        with self._changed:
            return self._latest.get((topic, face))

    def wait(self, topic: str, timeout_s: float, newer_than: Message | None = None, face: int = 0) -> Message | None:
        """Block until `latest(topic, face)` exists and is not `newer_than`; None after `timeout_s`."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._latest.get((topic, face)) not in (None, newer_than) or self._stop.is_set(), timeout_s
            )
            message = self._latest.get((topic, face))
            return None if message is newer_than else message

    def fetch_assets(self, dest_dir: Path, timeout_s: float = 30.0) -> dict[str, Path]:
        """Download the identity bundle into `dest_dir`, hash-checked; {file name: path}.

        Waits up to `timeout_s` for the `identity` message first, so the files are also checked against the
        hashes it announces. Raises AssetError (a UserError) on timeout or mismatch.
        """
        if self.asset_address is None:
            raise AssetError("this StreamClient has no asset_address")
        identity = self.wait(IDENTITY, timeout_s)
        if identity is None:
            raise AssetError(f"no identity message within {timeout_s:.0f} s: is the engine running and reachable?")
        socket = self._socket(zmq.DEALER, self.asset_address, max_bytes=MAX_REPLY_BYTES)
        try:
            return fetch_bundle(socket, self.asset_address, Path(dest_dir), identity.header["assets"], timeout_s)
        finally:
            socket.close(linger=0)

    def close(self) -> None:
        """Stop the receiver thread and close the sockets. Idempotent."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        for socket in self._sockets:
            socket.close(linger=0)
        self._sockets.clear()
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_addresses(params_address: str) -> dict[str, str]:
    """`tcp://HOST:5555` → {"params", "frame", "assets"} at ports +0, +1, +2 (the default layout of §7)."""
    base, _, port = params_address.rpartition(":")
    if not base.startswith("tcp://") or not port.isdigit() or not 0 < int(port) < 65534:
        raise UserError(f"expected an engine address like tcp://HOST:5555, got {params_address!r}")
    return {name: f"{base}:{int(port) + i}" for i, name in enumerate(("params", "frame", "assets"))}


def params_to_face_state(message: Message) -> FaceState:
    """A `params` message → FaceState (53 ICT weights; ARKit channels the engine merges drive both sides)."""
    header = message.header
    pose = header["pose"]
    return FaceState(
        pose=HeadPose(np.asarray(pose["quaternion"], float), np.asarray(pose["translation"], float), pose["scale"]),
        weights=arkit_to_ict(header["blendshapes"]),
        tracking=TrackingState(header["tracking"]["state"]),
        confidence=float(header["tracking"]["confidence"]),
        t_capture_ns=header["t_capture_ns"],
        frame_index=header["frame_index"],
        face_index=header["face"],
    )


def decode_frame(message: Message) -> np.ndarray:
    """A `frame` message → image: (H, W, 4) uint8 RGBA for `rgba`, (H, W, 3) uint8 RGB for `jpeg`."""
    header, payload = message.header, message.payload
    if header["codec"] == "rgba":
        return np.frombuffer(payload, np.uint8).reshape(header["height"], header["width"], 4)  # type: ignore[arg-type]
    bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)  # type: ignore[arg-type]
    if bgr is None or bgr.shape[:2] != (header["height"], header["width"]):
        raise ValueError("frame payload is not a JPEG of the announced size")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
