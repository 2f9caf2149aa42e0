"""Asset service: hands an identity bundle's files (identity.json, texture.png, bases.npz) to remote renderers.

Socket: ROUTER, default port 5557. Requests use the REQ envelope: an empty delimiter frame, then the request
(a REQ socket adds the delimiter itself; a DEALER sends it explicitly). The reply carries the same envelope,
so requests also pass through ROUTER/DEALER proxies (`run_engine.py relay`).

    request  [b"", b"list"]                      → [b"", b"list", msgpack{v, id, files: {name: {sha256, size}}}]
    request  [b"", b"get", name, offset (ascii)] → [b"", b"file", msgpack{v, name, sha256, size, offset}, bytes]
    request  [b"", b"get", name]                 → the same from offset 0
    anything else, or an unknown name            → [b"", b"error", msgpack{v, reason}]

Files travel in chunks of at most `CHUNK_BYTES` (the ZeroMQ guide's credit-based file transfer): a client
keeps at most `CREDIT` chunk requests outstanding and asks for the next one as each arrives, so the server
never holds more than a chunk per request, and a client that stops reading can pin at most its socket's
send queue (`ASSET_HWM` chunks) of the engine's memory. A reply to a peer whose queue is full is dropped
and counted (`counters["dropped"]`), never waited for: the asset thread serves everyone else meanwhile.

Only the bundle's own files (`BUNDLE_FILES`), by name, never through a symbolic link. Each chunk is read when
asked for; the client hashes the whole file against `list`, so a bundle that changed underneath is noticed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from engine.errors import UserError
from engine.identity import BUNDLE_FILES
from engine.stream.schema import VERSION

log = logging.getLogger(__name__)


#: The largest file a client accepts (a 2048² bundle's bases are ~0.5 GB uncompressed; they travel compressed).
MAX_ASSET_BYTES = 1 << 30


class AssetError(UserError):
    """Fetching assets failed: no answer, an error reply, or a hash mismatch."""


@dataclass(frozen=True)
class AssetFile:
    path: Path
    sha256: str
    size: int


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan_bundle(directory: Path | None) -> dict[str, AssetFile]:
    """{file name: AssetFile} for the bundle's own files (`BUNDLE_FILES`) in `directory` (empty for None).

    Nothing else in the folder is served, and never a symbolic link: whatever a user or another program leaves
    beside a bundle (or links into it, to /etc/passwd say) stays private."""
    if directory is None:
        return {}
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"identity bundle directory not found: {directory}")
    out = {}
    for name in BUNDLE_FILES:
        path = directory / name
        if path.is_symlink():
            log.warning("not serving %s: it is a symbolic link", path)
            continue
        if path.is_file():
            data = path.read_bytes()
            out[name] = AssetFile(path, _sha256(data), len(data))
    return out


#: Largest chunk of a file in one reply, and chunk requests a client keeps in flight (its credit).
CHUNK_BYTES = 128 * 1024
CREDIT = 4
#: Replies queued per peer before further ones are dropped: what one non-reading client can pin (1 MiB).
#: Twice the credit: libzmq's pipe refuses a message somewhat before its HWM, and a client that keeps to
#: its credit must never lose a reply.
ASSET_HWM = 2 * CREDIT
#: The largest reply a client accepts: a chunk plus its header (a bigger one is a hostile or broken server).
MAX_REPLY_BYTES = CHUNK_BYTES + 64 * 1024


class AssetServer:
    """Serves `files` on an already bound ROUTER socket from its own thread until `stop()`.

    `counters`: requests, chunks sent, bytes sent, replies dropped (peer not reading or gone)."""

    def __init__(self, socket: zmq.Socket, bundle_id: str, files: dict[str, AssetFile]):
        self._socket = socket
        # Without ROUTER_MANDATORY a ROUTER drops a reply to a full or vanished peer silently; with it the send
        # raises, so each drop is counted.
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._bundle_id = bundle_id
        self._files = files
        self._stop = threading.Event()
        self.counters = {"requests": 0, "chunks": 0, "bytes": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._run, name="scapecast-assets", daemon=True)
        self._thread.start()

    @property
    def requests(self) -> int:
        return self.counters["requests"]

    def _error(self, reason: str) -> list[bytes]:
        return [b"error", msgpack.packb({"v": VERSION, "reason": reason})]

    def _reply(self, request: list[bytes]) -> list[bytes]:
        command = request[0] if request else b""
        if command == b"list" and len(request) == 1:
            files = {n: {"sha256": f.sha256, "size": f.size} for n, f in self._files.items()}
            return [b"list", msgpack.packb({"v": VERSION, "id": self._bundle_id, "files": files})]
        if command == b"get" and len(request) in (2, 3):
            name = request[1].decode("utf-8", "replace")
            if name not in self._files:
                # Never echo the request: a name can be up to the socket's message limit long.
                return self._error(f"no asset named {name[:64]!r}" + ("…" if len(name) > 64 else ""))
            asset = self._files[name]
            offset = request[2] if len(request) == 3 else b"0"
            if not offset.isdigit() or len(offset) > 15 or int(offset) > asset.size:
                return self._error(f"bad offset for {name}: expected 0 … {asset.size}")
            try:
                with open(asset.path, "rb") as fh:
                    fh.seek(int(offset))
                    data = fh.read(CHUNK_BYTES)
            except OSError as exc:
                return self._error(f"cannot read {name}: {exc.strerror}")
            header = {"v": VERSION, "name": name, "sha256": asset.sha256, "size": asset.size, "offset": int(offset)}
            return [b"file", msgpack.packb(header), data]
        return self._error("expected [list] or [get, name, offset]")

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(100):
                continue
            frames = self._socket.recv_multipart()
            # Each ROUTER hop prepends a peer id; the envelope runs up to the empty delimiter and is echoed back.
            if b"" in frames:
                split = frames.index(b"") + 1
                envelope, request = frames[:split], frames[split:]
            else:
                envelope, request = [frames[0], b""], []
            self.counters["requests"] += 1
            reply = self._reply(request)
            try:
                self._socket.send_multipart(envelope + reply, flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:  # EAGAIN: the peer's queue is full; EHOSTUNREACH: it has gone
                self.counters["dropped"] += 1
                if self.counters["dropped"] in (1, 10, 100, 1000) or self.counters["dropped"] % 10_000 == 0:
                    log.warning("asset reply dropped (%s): peer not reading or gone; %d so far", exc.strerror,
                                self.counters["dropped"])  # fmt: skip
                continue
            if reply[0] == b"file":
                self.counters["chunks"] += 1
                self.counters["bytes"] += len(reply[2])
        self._socket.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def _unpack(data: bytes, address: str, what: str) -> dict[str, Any]:
    """A msgpack map from the asset service, or AssetError naming what was wrong with it."""
    try:
        value = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several types for one meaning: not a valid message
        raise AssetError(f"asset service at {address}: malformed {what} ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise AssetError(f"asset service at {address}: malformed {what} (not a map)")
    return value


def _receive(socket: zmq.Socket, deadline: float, address: str) -> list[bytes]:
    remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
    if not socket.poll(remaining_ms):
        raise AssetError(f"no answer from the asset service at {address} (engine down, wrong port, or keys?)")
    reply = socket.recv_multipart()
    if not reply or reply[0] != b"":
        raise AssetError(f"asset service at {address}: malformed reply (no envelope)")
    reply = reply[1:]
    if not reply or reply[0] == b"error":
        reason = _unpack(reply[1], address, "error reply").get("reason") if len(reply) == 2 else "empty reply"
        raise AssetError(f"asset service at {address}: {str(reason)[:200]}")
    return reply


def _request(socket: zmq.Socket, frames: list[bytes], deadline: float, address: str) -> list[bytes]:
    socket.send_multipart([b"", *frames])
    return _receive(socket, deadline, address)


def _safe_name(name: object) -> bool:
    """A plain file name: no folder, not hidden, not empty (a reply cannot write outside `dest_dir`)."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and name[0] != "."


def _fetch_file(
    socket: zmq.Socket, address: str, name: str, size: int, sha256: str, partial: Path, deadline: float
) -> None:
    """Download `name` chunk by chunk into `partial`, keeping `CREDIT` requests in flight; check every reply."""
    digest = hashlib.sha256()
    offsets = list(range(0, size, CHUNK_BYTES)) or [0]
    pending: collections.deque[int] = collections.deque()
    next_request = 0
    with open(partial, "wb") as out:
        for expected in offsets:
            while next_request < len(offsets) and len(pending) < CREDIT:
                socket.send_multipart([b"", b"get", name.encode(), str(offsets[next_request]).encode()])
                pending.append(offsets[next_request])
                next_request += 1
            reply = _receive(socket, deadline, address)
            pending.popleft()
            if reply[0] != b"file" or len(reply) != 3:
                raise AssetError(f"asset service at {address}: malformed reply to get {name}")
            header = _unpack(reply[1], address, f"header of {name}")
            want = min(CHUNK_BYTES, size - expected)
            if (header.get("name"), header.get("offset"), header.get("size")) != (name, expected, size) or len(
                reply[2]
            ) != want:
                raise AssetError(
                    f"asset service at {address}: reply to get {name} at {expected} does not match the listing "
                    "(changed underneath, or a broken server)"
                )
            digest.update(reply[2])
            out.write(reply[2])
    if digest.hexdigest() != sha256:
        raise AssetError(f"{name} from {address} does not match its announced sha256 (changed or corrupted)")


def fetch_bundle(
    socket: zmq.Socket, address: str, dest_dir: Path, expected: dict[str, str] | None = None, timeout_s: float = 30.0
) -> dict[str, Path]:
    """Download every listed file into `dest_dir` over a connected DEALER `socket`; {name: path}.

    Files already in `dest_dir` with the right hash are not downloaded again. Every file is checked against
    the hash in `list` and, when given, `expected` ({name: sha256} from the `identity` message); a
    mismatch or a malformed reply raises AssetError and leaves no partial file behind. The socket should
    refuse replies over `MAX_REPLY_BYTES` (`zmq.MAXMSGSIZE`) so a hostile server cannot send a huge one.
    """
    deadline = time.monotonic() + timeout_s
    listing = _unpack(_request(socket, [b"list"], deadline, address)[1], address, "list reply")
    files = listing.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("size"), int)
        for info in files.values()
    ):
        raise AssetError(f"asset service at {address}: malformed list reply (files)")
    if expected is not None and {n: f["sha256"] for n, f in files.items()} != expected:
        raise AssetError(f"asset service at {address} lists other files than the identity message announces")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, info in files.items():
        if not _safe_name(name):
            raise AssetError(f"asset service at {address} offers an unsafe file name {str(name)[:64]!r}")
        if not 0 <= info["size"] <= MAX_ASSET_BYTES:
            raise AssetError(f"asset service at {address} offers {name} of {info['size']} bytes: refused")
        target = dest_dir / name
        if target.is_file() and _sha256(target.read_bytes()) == info["sha256"]:
            out[name] = target
            continue
        partial = target.with_name(f".{name}.partial")
        try:
            _fetch_file(socket, address, name, info["size"], info["sha256"], partial, deadline)
            partial.replace(target)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        out[name] = target
    return out
