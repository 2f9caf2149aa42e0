"""Asset service: hands an identity bundle's files (identity.json, texture.png, bases.npz, …) to remote renderers.

Socket: ROUTER, default port 5557. Requests use the REQ envelope: an empty delimiter frame, then the request
(a REQ socket adds the delimiter itself; a DEALER sends it explicitly). The reply carries the same envelope,
so requests also pass through ROUTER/DEALER proxies (`run_engine.py relay`).

    request  [b"", b"list"]              → reply [b"", b"list", msgpack{v, id, files: {name: {sha256, size}}}]
    request  [b"", b"get", name (utf-8)] → reply [b"", b"file", msgpack{v, name, sha256, size}, bytes]
    anything else, or an unknown name    → reply [b"", b"error", msgpack{v, reason}]

The directory is treated generically: every regular, non-hidden file at its top level is served, by name
only (no paths, so no traversal). Files are read per request and hashed as sent, so a receiver comparing
against `list` (or the `identity` message's `assets`) notices a bundle that changed underneath.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

from engine.errors import UserError
from engine.identity import BUNDLE_FILES
from engine.stream.schema import VERSION

log = logging.getLogger(__name__)


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


class AssetServer:
    """Serves `files` on an already bound ROUTER socket from its own thread until `stop()`."""

    def __init__(self, socket: zmq.Socket, bundle_id: str, files: dict[str, AssetFile]):
        self._socket = socket
        self._bundle_id = bundle_id
        self._files = files
        self._stop = threading.Event()
        self.requests = 0
        self._thread = threading.Thread(target=self._run, name="scapecast-assets", daemon=True)
        self._thread.start()

    def _reply(self, request: list[bytes]) -> list[bytes]:
        command = request[0] if request else b""
        if command == b"list" and len(request) == 1:
            files = {n: {"sha256": f.sha256, "size": f.size} for n, f in self._files.items()}
            return [b"list", msgpack.packb({"v": VERSION, "id": self._bundle_id, "files": files})]
        if command == b"get" and len(request) == 2:
            name = request[1].decode("utf-8", "replace")
            if name in self._files:
                try:
                    data = self._files[name].path.read_bytes()
                except OSError as exc:
                    return [b"error", msgpack.packb({"v": VERSION, "reason": f"cannot read {name}: {exc}"})]
                header = {"v": VERSION, "name": name, "sha256": _sha256(data), "size": len(data)}
                return [b"file", msgpack.packb(header), data]
            return [b"error", msgpack.packb({"v": VERSION, "reason": f"no asset named {name!r}"})]
        return [b"error", msgpack.packb({"v": VERSION, "reason": "expected [list] or [get, name]"})]

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
            self.requests += 1
            try:
                self._socket.send_multipart(envelope + self._reply(request), flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                log.warning("asset reply dropped: peer not reading")
        self._socket.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def _request(socket: zmq.Socket, frames: list[bytes], deadline: float, address: str) -> list[bytes]:
    socket.send_multipart([b"", *frames])
    remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
    if not socket.poll(remaining_ms):
        raise AssetError(f"no answer from the asset service at {address} (engine down, wrong port, or keys?)")
    reply = socket.recv_multipart()[1:]
    if not reply or reply[0] == b"error":
        reason = msgpack.unpackb(reply[1]).get("reason") if len(reply) > 1 else "empty reply"
        raise AssetError(f"asset service at {address}: {reason}")
    return reply


def fetch_bundle(
    socket: zmq.Socket, address: str, dest_dir: Path, expected: dict[str, str] | None = None, timeout_s: float = 30.0
) -> dict[str, Path]:
    """Download every listed file into `dest_dir` over a connected DEALER `socket`; {name: path}.

    Files already in `dest_dir` with the right hash are not downloaded again. Every file is checked against
    the hash in `list` and, when given, `expected` ({name: sha256} from the `identity` message); a
    mismatch raises AssetError and leaves no partial file behind.
    """
    deadline = time.monotonic() + timeout_s
    listing = msgpack.unpackb(_request(socket, [b"list"], deadline, address)[1])
    files: dict[str, dict] = listing.get("files", {})
    if expected is not None and {n: f["sha256"] for n, f in files.items()} != expected:
        raise AssetError(f"asset service at {address} lists other files than the identity message announces")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, info in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise AssetError(f"asset service at {address} offers an unsafe file name {name!r}")
        target = dest_dir / name
        if target.is_file() and _sha256(target.read_bytes()) == info["sha256"]:
            out[name] = target
            continue
        reply = _request(socket, [b"get", name.encode()], deadline, address)
        data = reply[2] if len(reply) == 3 else b""
        if _sha256(data) != info["sha256"]:
            raise AssetError(f"{name} from {address} does not match its announced sha256 (changed or corrupted)")
        partial = target.with_name(f".{name}.partial")
        partial.write_bytes(data)
        partial.replace(target)
        out[name] = target
    return out
