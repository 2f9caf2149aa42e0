"""Asset service under load and under attack: chunked, credit-windowed transfer; clients that never read;
servers that answer nonsense. Real sockets on loopback; abusers in their own processes."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from engine.config import StreamConfig
from engine.stream.assets import ASSET_HWM, CHUNK_BYTES, MAX_REPLY_BYTES, AssetError, fetch_bundle
from engine.stream.client import StreamClient
from engine.stream.publisher import Publisher
from engine.types import FaceState

BIG_BYTES = 8 * 1024 * 1024 + 12_345  # a 2048²-class file in miniature: 65 chunks, the last one short


@pytest.fixture
def big_bundle(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "identity.json").write_text('{"schema_version": 1, "name": "ada"}')
    (directory / "texture.png").write_bytes(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    (directory / "bases.npz").write_bytes(rng.integers(0, 256, BIG_BYTES, dtype=np.uint8).tobytes())
    return directory


@pytest.fixture
def publisher(big_bundle: Path) -> Iterator[Publisher]:
    config = StreamConfig(params_port=0, frame_port=0, asset_port=0)
    with Publisher(config, "engine-test", {"id": "ada", "model_id": "ict-light"}, big_bundle) as pub:
        yield pub


def dealer(address: str) -> tuple[zmq.Context, zmq.Socket]:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
    socket.connect(address)
    return context, socket


def test_a_large_file_arrives_whole_in_chunks(publisher: Publisher, big_bundle: Path, tmp_path: Path) -> None:
    context, socket = dealer(publisher.endpoints["assets"])
    try:
        files = fetch_bundle(socket, publisher.endpoints["assets"], tmp_path / "got", timeout_s=20)
    finally:
        socket.close()
        context.term()
    assert files["bases.npz"].read_bytes() == (big_bundle / "bases.npz").read_bytes()
    counters = publisher._assets.counters  # type: ignore[union-attr]
    sizes = [(big_bundle / name).stat().st_size for name in files]
    assert counters["chunks"] == sum(math.ceil(size / CHUNK_BYTES) for size in sizes)
    assert counters["bytes"] == sum(sizes) and counters["dropped"] == 0


def test_chunk_requests_are_checked_and_never_echoed(publisher: Publisher) -> None:
    context, socket = dealer(publisher.endpoints["assets"])
    replies = []
    try:
        for request in (
            [b"get", b"bases.npz"],  # no offset: the first chunk
            [b"get", b"bases.npz", str(BIG_BYTES - 5).encode()],  # the last five bytes
            [b"get", b"bases.npz", b"-1"],
            [b"get", b"bases.npz", str(BIG_BYTES + 1).encode()],
            [b"get", b"x" * 60_000],  # a long name is not sent back
        ):
            socket.send_multipart([b"", *request])
            assert socket.poll(3000)
            replies.append(socket.recv_multipart()[1:])
    finally:
        socket.close()
        context.term()
    first, last = replies[0], replies[1]
    assert msgpack.unpackb(first[1])["offset"] == 0 and len(first[2]) == CHUNK_BYTES
    assert msgpack.unpackb(last[1])["offset"] == BIG_BYTES - 5 and len(last[2]) == 5
    assert [r[0] for r in replies[2:]] == [b"error"] * 3
    assert b"bad offset" in replies[2][1] and b"bad offset" in replies[3][1]
    assert len(replies[4][1]) < 200


ABUSER = """
import sys, time, zmq
address, clients, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.stdin.readline()  # started and imported before the measurement; the attack begins on the test's word
context = zmq.Context()
sockets = []
for _ in range(clients):
    s = context.socket(zmq.DEALER)
    s.rcvhwm = 1  # read nothing, hold as little as the client side can: the engine must not hold it either
    # A fixed small kernel buffer: Linux otherwise grows a loopback socket's to tcp_rmem's maximum (32 MiB on
    # some hosts), and the kernel, not the engine, would then absorb every reply and none would be dropped.
    s.rcvbuf = 65536
    s.connect(address)
    sockets.append(s)
for s in sockets:
    for i in range(requests):
        s.send_multipart([b"", b"get", b"bases.npz", str((i % 60) * 131072).encode()])
print("sent", flush=True)
time.sleep(float(sys.argv[4]))
"""


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _abuser(script: str, *args: str) -> subprocess.Popen:
    """A Python process running `script`, started (and its imports done) before the measurement begins: it
    waits for a line on stdin, so the measured gaps are the attack's, not a process start's."""
    return subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip


def _go(process: subprocess.Popen) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def _params_while(publisher: Publisher, action: Callable[[], object], seconds: float) -> tuple[list[float], object]:
    """Publish params at 100 Hz for `seconds` while `action` runs; the arrival times a client saw."""
    stop = threading.Event()

    def engine_loop() -> None:
        i = 0
        while not stop.is_set():
            publisher.publish_params(FaceState.neutral(frame_index=i))
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=engine_loop)
    thread.start()
    arrivals: list[float] = []
    try:
        with StreamClient(publisher.endpoints["params"], topics=("params",)) as client:
            assert client.wait("params", 3.0) is not None
            last = client.latest("params")
            result = action()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                message = client.wait("params", 1.0, newer_than=last)
                if message is not None:
                    arrivals.append(time.monotonic())
                    last = message
    finally:
        stop.set()
        thread.join()
    return arrivals, result


def test_forty_clients_that_never_read_pin_little_and_params_flow(publisher: Publisher) -> None:
    """40 clients each ask for 60 chunks of bases.npz and read none (before chunking, 40 such clients pinned
    4.7 GiB): each can hold at most its socket's send queue of chunks, params keep their pace, and the
    replies that did not fit are counted as dropped. (60: more than the kernel's socket buffers absorb on
    hosts that let them grow to 4 MiB a connection, so the engine's own queues fill.)"""
    abuser = _abuser(ABUSER, publisher.endpoints["assets"], "40", "60", "4")
    time.sleep(1.0)  # its interpreter and zmq are loaded
    rss_before = _rss_mib()
    arrivals, _ = _params_while(publisher, lambda: _go(abuser), 3.0)
    peak_growth = _rss_mib() - rss_before
    out, _ = abuser.communicate(timeout=30)
    time.sleep(0.5)  # the abusers' connections are gone: their queued chunks are released
    counters = publisher._assets.counters  # type: ignore[union-attr]
    assert out.strip() == "sent"
    print(
        f"asset abuse: {counters}, peak RSS growth {peak_growth:.1f} MiB, largest params gap "
        f"{max(np.diff(arrivals)) * 1000:.0f} ms"
    )
    assert counters["requests"] == 2400 and counters["dropped"] > 0
    assert counters["chunks"] <= 40 * 40, counters  # the queue and what the kernel buffers, per client
    assert len(arrivals) > 200 and max(np.diff(arrivals)) < 0.2
    # What the design lets the clients pin: each one's full send queue, plus the interpreter's own slack.
    pinned_mib = 40 * ASSET_HWM * CHUNK_BYTES / 2**20
    assert peak_growth < pinned_mib + 16, peak_growth
    assert _rss_mib() - rss_before < pinned_mib + 16


class NonsenseServer:
    """A ROUTER that answers `list` honestly and every `get` with the reply `make_reply` builds."""

    def __init__(self, make_reply: Callable[[list[bytes]], list[bytes]], files: dict[str, dict]) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.make_reply, self.files = make_reply, files
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            peer, _, *request = self.socket.recv_multipart()
            if request == [b"list"]:
                reply = [b"list", msgpack.packb({"v": 1, "id": "x", "files": self.files})]
            else:
                reply = self.make_reply(request)
            self.socket.send_multipart([peer, b"", *reply])

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.socket.close()
        self.context.term()


def _header(name: str = "bases.npz", offset: int = 0, size: int = 10) -> bytes:
    return msgpack.packb({"v": 1, "name": name, "sha256": "0" * 64, "size": size, "offset": offset})


MALFORMED: dict[str, tuple[dict[str, dict], Callable[[list[bytes]], list[bytes]]]] = {
    "header not msgpack": ({"bases.npz": {"sha256": "0" * 64, "size": 10}}, lambda r: [b"file", b"\xc1", b"0" * 10]),
    "header not a map": (
        {"bases.npz": {"sha256": "0" * 64, "size": 10}},
        lambda r: [b"file", msgpack.packb([1, 2]), b"0" * 10],
    ),  # fmt: skip
    "data frame missing": ({"bases.npz": {"sha256": "0" * 64, "size": 10}}, lambda r: [b"file", _header()]),
    "wrong offset": (
        {"bases.npz": {"sha256": "0" * 64, "size": 10}},
        lambda r: [b"file", _header(offset=5), b"0" * 10],
    ),  # fmt: skip
    "too short": ({"bases.npz": {"sha256": "0" * 64, "size": 10}}, lambda r: [b"file", _header(), b"0" * 3]),
    "error not msgpack": ({"bases.npz": {"sha256": "0" * 64, "size": 10}}, lambda r: [b"error", b"\xc1"]),
    "oversized reply": (
        {"bases.npz": {"sha256": "0" * 64, "size": 10}},
        lambda r: [b"file", _header(), b"0" * (MAX_REPLY_BYTES + 1)],
    ),  # fmt: skip
    "empty file name": ({"": {"sha256": "0" * 64, "size": 10}}, lambda r: [b"file", _header(""), b"0" * 10]),
    "parent folder name": ({"..": {"sha256": "0" * 64, "size": 10}}, lambda r: [b"file", _header(".."), b"0"]),
    "huge size": ({"bases.npz": {"sha256": "0" * 64, "size": 1 << 40}}, lambda r: [b"file", _header(), b"0"]),
    "files not a map of maps": ({"bases.npz": 7}, lambda r: [b"file", _header(), b"0" * 10]),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_replies_are_one_line_errors_and_leave_nothing_behind(case: str, tmp_path: Path) -> None:
    files, make_reply = MALFORMED[case]
    server = NonsenseServer(make_reply, files)
    context, socket = dealer(server.address)
    destination = tmp_path / "cache" / "bundle"
    try:
        with pytest.raises(AssetError) as error:
            fetch_bundle(socket, server.address, destination, timeout_s=2.0)
    finally:
        socket.close()
        context.term()
        server.close()
    assert "\n" not in str(error.value)
    left = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert left == [], left  # no partial file in the bundle folder or the cache root (`..partial` once)


def test_a_hundred_megabyte_request_is_refused_at_the_socket(publisher: Publisher) -> None:
    """A 100 MB `get` name (it stalled params for 4.3 s, and the error reply echoed it) never reaches the
    asset thread: the socket drops that connection once the message passes its size limit."""
    script = (
        "import sys, zmq\n"
        "name = b'x' * (100 * 1024 * 1024)\n"
        "s = zmq.Context().socket(zmq.DEALER)\n"
        "s.connect(sys.argv[1])\n"
        "sys.stdin.readline()\n"
        "s.send_multipart([b'', b'get', name])\n"
        "print('answered' if s.poll(2000) else 'nothing', flush=True)\n"
    )
    abuser = _abuser(script, publisher.endpoints["assets"])
    time.sleep(1.0)  # its interpreter and zmq are loaded, the 100 MB name built
    rss_before = _rss_mib()
    arrivals, _ = _params_while(publisher, lambda: _go(abuser), 2.5)
    growth = _rss_mib() - rss_before
    out, _ = abuser.communicate(timeout=30)
    assert out.strip() == "nothing" and publisher._assets.counters["requests"] == 0  # type: ignore[union-attr]
    assert len(arrivals) > 150 and max(np.diff(arrivals)) < 0.2
    assert growth < 50, growth
