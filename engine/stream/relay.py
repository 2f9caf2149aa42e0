"""Fan-out relay: re-publishes one engine's three sockets through ZeroMQ's own proxy (`zmq.proxy_steerable`).

    engine 5555 PUB    → XSUB ⇄ XPUB   (bound per the stream config; subscriptions travel upstream)
    engine 5556 PUB    → XSUB ⇄ XPUB
    engine 5557 ROUTER → DEALER ⇄ ROUTER (asset requests; the REQ envelope carries the route back)

Run it on a machine that many viewers can reach so the engine sends each message once. Binding follows the
same rules as the engine (loopback, or CURVE, or `insecure`); the upstream side may use CURVE client keys.

Security is never lowered silently: a relay that reads a CURVE engine but republishes without CURVE says so
at start, and an upstream handshake that fails (a CURVE engine and no or wrong keys: the relay would pass on
nothing) is logged with the fix and kept in `upstream`, watched on the params socket's monitor.
"""

from __future__ import annotations

import logging
import threading

import zmq

from engine.config import StreamConfig
from engine.errors import UserError
from engine.stream.client import engine_addresses
from engine.stream.publisher import PARAMS_HWM_FACTOR
from engine.stream.security import ClientKeys, ServerSecurity, bind_endpoint

log = logging.getLogger(__name__)

_HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed (CURVE on one side only, or a wrong key?)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security mechanisms differ (CURVE on one side only?)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication refused (this relay's client key is not allowed?)",
}


class Relay:
    """Three proxies (params, frame, assets) from the engine at `upstream` (`tcp://HOST:5555`) to local binds.

    `endpoints`: {"params", "frame", "assets"} → the bound addresses. `close()` stops the proxies.
    """

    def __init__(self, upstream: str, config: StreamConfig, upstream_keys: ClientKeys | None = None):
        self._context = zmq.Context()
        self._security = ServerSecurity()
        self._threads: list[threading.Thread] = []
        self._controls: list[zmq.Socket] = []
        self._closing = threading.Event()
        self.endpoints: dict[str, str] = {}
        self.upstream = "connecting"  # "connected", or why the engine refused this relay
        try:
            self._security = ServerSecurity.from_config(config, self._context)
            if upstream_keys is not None and not self._security.enabled:
                log.warning("relay: the engine at %s is read with CURVE, but this relay republishes it without "
                            "encryption or client keys on %s; anyone who can reach those ports can watch. Give "
                            "the relay stream.curve_server_secret and stream.curve_allowed_clients to keep CURVE",
                            upstream, config.bind_address)  # fmt: skip
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
                if name == "params":
                    self._watch_upstream(up, upstream, upstream_keys is not None)
                up.connect(sources[name])
                self.endpoints[name] = down.getsockopt_string(zmq.LAST_ENDPOINT)
                self._start_proxy(name, down, up)
        except BaseException:
            self.close()
            raise

    def _watch_upstream(self, socket: zmq.Socket, upstream: str, with_keys: bool) -> None:
        """Log how the upstream handshake ends (a refused relay otherwise relays nothing, without a word)."""
        monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_HANDSHAKE_FAILED))
        hint = (
            "check --server-key/--client-key" if with_keys else "the engine may need CURVE: --server-key/--client-key"
        )

        def watch() -> None:
            from zmq.utils.monitor import recv_monitor_message

            reported = None
            while not self._closing.is_set():
                try:
                    if not monitor.poll(100):
                        continue
                    event = recv_monitor_message(monitor)["event"]
                except zmq.ZMQError:  # the socket or context closed: the relay is stopping
                    break
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.upstream = "connected"
                    if reported is not None:
                        log.info("relay: the engine at %s accepted this relay", upstream)
                    reported = None
                elif event in _HANDSHAKE_FAILED and reported != event:
                    reported = event
                    self.upstream = _HANDSHAKE_FAILED[event]
                    log.warning("relay: the engine at %s refused this relay: %s; nothing is relayed (%s)", upstream,
                                _HANDSHAKE_FAILED[event], hint)  # fmt: skip
            monitor.close(linger=0)

        thread = threading.Thread(target=watch, name="scapecast-relay-upstream", daemon=True)
        thread.start()
        self._threads.append(thread)

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
        self._closing.set()
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
