"""Who may connect: loopback by default, CURVE (with an allow-list of client keys) for anything else.

Key files are ZeroMQ's own certificate format (`zmq.auth.create_certificates`): `NAME.key` holds the
public key, `NAME.key_secret` the public and the secret key. The server needs its `.key_secret`; the
allow-list is a folder of client `.key` files; a client needs the server's `.key` and its own `.key_secret`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from engine.config import StreamConfig
from engine.errors import UserError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for `127.0.0.0/8`, `::1` and `localhost`; false for `*`, `0.0.0.0`, other names and addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"CURVE key file not found: {path} (make keys with `run_engine.py keys DIR`)")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"CURVE key file {path} is not a ZeroMQ certificate: {exc}") from None
    if secret and secret_key is None:
        raise UserError(f"{path} holds no secret key: pass the `.key_secret` file, not the public `.key`")
    return public, secret_key


def consecutive_free_loopback_ports(count: int = 3) -> int:
    """A first port with `count` consecutive TCP ports free on 127.0.0.1 now: the engine's layout (params, frame,
    assets at +0, +1, +2) that `relay` and `serve` derive from one address."""
    for _ in range(50):
        base = free_loopback_ports(1)[0]
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


def free_loopback_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (for benchmarks, soak runs and tests that start
    engines side by side; a port can still be taken between this call and the bind)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def bind_endpoint(socket: zmq.Socket, host: str, port: int) -> str:
    """`tcp://HOST:PORT` for binding `socket` (port 0: any free port; IPv6 hosts bracketed and enabled)."""
    if ":" in host.strip("[]"):
        socket.ipv6 = True
        host = f"[{host.strip('[]')}]"
    return f"tcp://{host}:{port or '*'}"


@dataclass
class ServerSecurity:
    """CURVE server settings for the sockets one process binds; `None` keys mean plain TCP."""

    public_key: bytes | None = None
    secret_key: bytes | None = None
    authenticator: ThreadAuthenticator | None = None

    @staticmethod
    def from_config(config: StreamConfig, context: zmq.Context) -> ServerSecurity:
        """Decide how to bind: CURVE when keys are configured; refuse a non-loopback bind without them.

        Raises UserError when `bind_address` is not loopback and neither CURVE keys nor `insecure` are set,
        or when only one of `curve_server_secret` / `curve_allowed_clients` is set.
        """
        has_secret = config.curve_server_secret is not None
        has_allow = config.curve_allowed_clients is not None
        if has_secret != has_allow:
            raise UserError(
                "CURVE needs both stream.curve_server_secret (the server's .key_secret) and "
                "stream.curve_allowed_clients (a folder of client .key files)"
            )
        if not has_secret:
            if not is_loopback(config.bind_address):
                if not config.insecure:
                    raise UserError(
                        f"refusing to publish unencrypted on {config.bind_address!r}: anyone on the network could "
                        "watch the stream. Make keys with `run_engine.py keys DIR` and set stream.curve_server_secret"
                        " and stream.curve_allowed_clients, or pass --insecure (stream.insecure=true)"
                    )
                log.warning("publishing WITHOUT encryption or authentication on %s", config.bind_address)
            return ServerSecurity()
        allowed = Path(config.curve_allowed_clients).expanduser()  # type: ignore[arg-type]
        if not allowed.is_dir() or not any(allowed.glob("*.key")):
            raise UserError(f"stream.curve_allowed_clients {allowed} must be a folder holding client .key files")
        public, secret = _load(Path(config.curve_server_secret), secret=True)  # type: ignore[arg-type]
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=str(allowed))
        return ServerSecurity(public, secret, auth)

    @property
    def enabled(self) -> bool:
        return self.secret_key is not None

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server (call before bind)."""
        if self.enabled:
            socket.curve_secretkey = self.secret_key
            socket.curve_publickey = self.public_key
            socket.curve_server = True

    def stop(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


@dataclass(frozen=True)
class ClientKeys:
    """A client's CURVE settings: the server's public key and this client's key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @staticmethod
    def load(server_key: Path, client_secret: Path) -> ClientKeys:
        """`server_key`: the server's `.key` (or `.key_secret`); `client_secret`: this client's `.key_secret`."""
        server_public, _ = _load(server_key, secret=False)
        public, secret = _load(client_secret, secret=True)
        return ClientKeys(server_public, public, secret)  # type: ignore[arg-type]

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE client (call before connect)."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


def make_keys(directory: Path, clients: list[str]) -> dict[str, Path]:
    """Create `server.key[_secret]` (kept if present) and one pair per client name under `directory`.

    Each client's public key is also copied into `directory/allowed/` (the allow-list folder). Existing
    client pairs are kept. Returns {label: path} of the files a user has to point the config at.
    """
    directory = Path(directory).expanduser()
    allowed = directory / "allowed"
    allowed.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in ["server", *clients]:
        if not name or "/" in name or name.startswith(".") or name == "allowed":
            raise UserError(f"invalid key name {name!r}: use letters, digits, '-' or '_'")
        public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
        if not secret.is_file():
            # Created private (umask 077), not chmod-ed afterwards: no moment in which others can read it.
            previous = os.umask(0o077)
            try:
                zmq.auth.create_certificates(str(directory), name)
            finally:
                os.umask(previous)
            public.chmod(0o644)  # the public half is meant to be handed out
        elif secret.stat().st_mode & 0o077:
            log.warning("%s was readable by others: made private (0600)", secret)
            secret.chmod(0o600)
        out[f"{name} public"] = public
        out[f"{name} secret"] = secret
        if name != "server":
            (allowed / public.name).write_bytes(public.read_bytes())
    out["allow-list"] = allowed
    return out
