"""Fan-out relay: re-publishes one engine's three sockets through ZeroMQ's own proxy (`zmq.proxy_steerable`).

    engine 5555 PUB    → XSUB ⇄ XPUB   (bound per the stream config; subscriptions travel upstream)
    engine 5556 PUB    → XSUB ⇄ XPUB
    engine 5557 ROUTER → DEALER ⇄ ROUTER (asset requests; the REQ envelope carries the route back)

Run it on a machine that many viewers can reach so the engine sends each message once. Binding follows the
same rules as the engine (loopback, or CURVE, or `insecure`); the upstream side may use CURVE client keys.
"""

from __future__ import annotations

import threading

import zmq

from engine.config import StreamConfig
from engine.errors import UserError
from engine.stream.client import engine_addresses
from engine.stream.publisher import PARAMS_HWM_FACTOR
from engine.stream.security import ClientKeys, ServerSecurity, bind_endpoint


class Relay:
    """Three proxies (params, frame, assets) from the engine at `upstream` (`tcp://HOST:5555`) to local binds.

    `endpoints`: {"params", "frame", "assets"} → the bound addresses. `close()` stops the proxies.
    """

    def __init__(self, upstream: str, config: StreamConfig, upstream_keys: ClientKeys | None = None):
        self._context = zmq.Context()
        self._security = ServerSecurity()
        self._threads: list[threading.Thread] = []
        self._controls: list[zmq.Socket] = []
        self.endpoints: dict[str, str] = {}
        try:
            self._security = ServerSecurity.from_config(config, self._context)
            sources = engine_addresses(upstream)
            ports = {"params": config.params_port, "frame": config.frame_port, "assets": config.asset_port}
            for name, (up_kind, down_kind) in {
                "params": (zmq.XSUB, zmq.XPUB),
                "frame": (zmq.XSUB, zmq.XPUB),
                "assets": (zmq.DEALER, zmq.ROUTER),
            }.items():
                up = self._context.socket(up_kind)
                down = self._context.socket(down_kind)
                for socket in (up, down):
                    socket.linger = 0
                    socket.sndhwm = socket.rcvhwm = config.send_hwm * (PARAMS_HWM_FACTOR if name == "params" else 1)
                if upstream_keys is not None:
                    upstream_keys.apply(up)
                self._security.apply(down)
                address = bind_endpoint(down, config.bind_address, ports[name])
                try:
                    down.bind(address)
                except zmq.ZMQError as exc:
                    up.close()
                    down.close()
                    raise UserError(f"relay cannot bind {address}: {exc.strerror}") from None
                up.connect(sources[name])
                self.endpoints[name] = down.getsockopt_string(zmq.LAST_ENDPOINT)
                self._start_proxy(name, down, up)
        except BaseException:
            self.close()
            raise

    def _start_proxy(self, name: str, frontend: zmq.Socket, backend: zmq.Socket) -> None:
        address = f"inproc://relay-control-{name}"
        control = self._context.socket(zmq.PAIR)
        control.bind(address)
        self._controls.append(control)

        def run() -> None:
            peer = self._context.socket(zmq.PAIR)
            peer.connect(address)
            try:
                zmq.proxy_steerable(frontend, backend, None, peer)
            except zmq.ContextTerminated:
                pass
            for socket in (frontend, backend, peer):
                socket.close(linger=0)

        thread = threading.Thread(target=run, name=f"scapecast-relay-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        """Block until the proxies stop (Ctrl-C in the CLI)."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(timeout=0.5)

    def close(self) -> None:
        """Stop the proxies and close everything. Idempotent."""
        for control in self._controls:
            control.send(b"TERMINATE")
        for thread in self._threads:
            thread.join(timeout=2.0)
        for control in self._controls:
            control.close(linger=0)
        self._controls.clear()
        self._threads.clear()
        self._security.stop()
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
