"""The UDP side shared by the outputs to other apps (VMC, iFacialMocap, Live Link Face).

Each output turns a FaceState into one or more datagrams (`datagrams`); this base resolves the receiver once
(a name lookup per frame would stall the solve thread), sends without ever blocking, and counts: a frame is
`sent` when all its datagrams left, `dropped` when the OS refused one (a full send buffer, an unreachable
host, a network that went away) — that frame only; the next one is tried as usual.
"""

from __future__ import annotations

import socket
from typing import Self

from engine.types import FaceState


class UdpSender:
    """A non-blocking UDP socket aimed at `host:port`; subclasses say what a frame's datagrams are."""

    #: What the sender is called in errors ("VMC host 'x' cannot be resolved").
    name = "UDP"

    def __init__(self, host: str, port: int) -> None:
        try:
            family, _, _, _, self._address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise ValueError(f"{self.name} host {host!r} cannot be resolved: {exc.strerror}") from None
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a frame that cannot leave now is dropped, never waited for
        self.sent = 0
        self.dropped = 0

    def datagrams(self, state: FaceState) -> list[bytes]:
        """One frame's datagrams, in the order they are sent."""
        raise NotImplementedError

    def send(self, state: FaceState) -> bool:
        """Send one frame; False (and counted in `dropped`) if the OS refused any of its datagrams."""
        try:
            for datagram in self.datagrams(state):
                self._sock.sendto(datagram, self._address)
        except OSError:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
