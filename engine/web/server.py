"""`scapecast serve`: one page and one WebSocket that put an engine's avatar into any WebGL2 browser.

Data flow:

    engine PUB :5555 ──ZeroMQ──▶ intake thread (StreamClient: validates, keeps the newest params per face)
                                   │ FramePreparer.prepare: the per-frame maths, once per frame (engine/web/frames.py)
                                   ▼ loop.call_soon_threadsafe
                                 asyncio loop: one WebSocket frame, written to every page's socket
    engine ROUTER :5557 ──▶ identity thread: bundle fetched (sha256-checked, cached) → WebAssets (built once,
                            cached by content hash) → pages told the new manifest's name

HTTP routes (aiohttp):

    GET /, /app.js, /page.css    the page (public: the same for everyone, revalidated by ETag)
    GET /assets/<name>           the identity's asset files by content-hashed name, `immutable` (token)
    GET /ws                      WebSocket (token; same-origin only)

WebSocket messages, server → page: text JSON `{"type": "hello", "config", "shaders", "manifest", "engine"}` once,
`{"type": "identity", "manifest"}` when the avatar changes, `{"type": "status", "engine": "waiting" | "live" |
"silent", "detail"}` on changes, `{"type": "pong", "t"}` answering a page's `{"type": "ping", "t"}` (the page's
clock round trip); binary: the per-frame message (frames.py).

Latest value, never a queue: the per-frame message is framed once and written straight to each page's transport,
skipping a page whose previous message is still waiting in this process (`get_write_buffer_size() > 0`) — it gets
the newest one once it has drained, never a backlog. The kernel's send buffer of each WebSocket is made small
(`SEND_BUFFER_BYTES`) so that a stalled reader holds at most a few dozen messages there too. Nothing here waits
for a page: the intake never blocks on the loop, the loop never awaits a page's socket in the broadcast, and
ZeroMQ's own queue is drained by the intake thread whatever the pages do.

Security (engine/stream/security.py's rules for the HTTP side): bound to 127.0.0.1 by default; another address
needs a token (`--token`, or one is generated and printed in the page URL) unless `--insecure`. With a token,
`/ws` and `/assets/*` answer 403 without `?token=<it>` (compared in constant time). The WebSocket also refuses a
cross-site page (its Origin must be this server), and on loopback without a token the Host header must be a
loopback name, so that a web site the user visits cannot read the stream through a DNS name rebound to
127.0.0.1. Asset names are looked up in the built sets' file lists — a request never reaches the file system with
a path of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from engine.config import Config, DetailConfig, RenderConfig
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.identity import DEFAULT_IDENTITY_DIR
from engine.stream.client import StreamClient, engine_addresses
from engine.stream.schema import IDENTITY, PARAMS
from engine.stream.security import ClientKeys, is_loopback
from engine.web.assets import WebAssets, default_cache_root, is_served_name
from engine.web.frames import FramePreparer
from engine.web.page_config import page_config
from engine.web.shaders import shader_bundle

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"/": "index.html", "/app.js": "app.js", "/page.css": "page.css"}
_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# Kernel send buffer of each WebSocket (Linux doubles it): bounds what a stalled reader can have queued there.
SEND_BUFFER_BYTES = 16 * 1024
SILENT_AFTER_S = 2.0  # no params this long: the pages are told the engine is silent
IDENTITY_RETRY_S = 5.0  # a bundle that could not be fetched or built is tried again this much later
FETCH_TIMEOUT_S = 120.0  # a whole bundle (~30 MB with its bases) over a slow link
IMMUTABLE = "private, max-age=31536000, immutable"


def ws_frame(payload: bytes, text: bool = False) -> bytes:
    """One unmasked, unfragmented server-to-client WebSocket frame (RFC 6455 §5.2) carrying `payload`."""
    first = 0x81 if text else 0x82
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


@dataclass
class ServeSettings:
    """What `serve` connects to and how it listens (the flags: engine/commands/serve.py)."""

    connect: str = "tcp://127.0.0.1:5555"
    assets: str | None = None  # the asset service; None: the params port + 2
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    insecure: bool = False
    face: int = 0
    cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/scapecast (remote/ bundles, web/ asset sets)
    tile_bits: int = 8
    keys: ClientKeys | None = None  # CURVE keys when the engine requires them


def resolve_token(host: str, token: str | None, insecure: bool) -> str | None:
    """The token pages must present: the given one; a new one off loopback unless `insecure`; else None."""
    if token is not None:
        if len(token) < 8 or not token.isascii() or not token.isprintable() or " " in token:
            raise UserError("--token must be at least 8 printable ASCII characters without spaces")
        return token
    if is_loopback(host) or insecure:
        if not is_loopback(host):
            log.warning("serving the avatar WITHOUT a token on %s: anyone who reaches it can watch", host)
        return None
    return secrets.token_urlsafe(18)


@dataclass(eq=False)  # identity, not value, equality: clients live in a set
class _Client:
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    remote: str
    sent: int = 0
    dropped: int = 0
    max_buffered: int = 0  # the most bytes of ours seen waiting in this process for the page (latest-value bound)

    def summary(self) -> dict[str, Any]:
        buffered = self.transport.get_write_buffer_size() if not self.transport.is_closing() else 0
        return {"remote": self.remote, "sent": self.sent, "dropped": self.dropped, "buffered_bytes": buffered,
                "max_buffered_bytes": self.max_buffered}  # fmt: skip


@dataclass
class FrameCost:
    """One frame in serve: received (ZeroMQ, monotonic ns), preparing took (wall and thread CPU ns), the broadcast's
    start and end (monotonic ns) and CPU (ns), pages connected and written to."""

    received: int
    prepare_ns: int
    prepare_cpu_ns: int
    broadcast_start: int
    broadcast_end: int
    broadcast_cpu_ns: int
    clients: int
    written: int


@dataclass
class _State:
    assets: dict[str, WebAssets] = field(default_factory=dict)  # manifest name → set (older ones kept for loaders)
    manifest: str | None = None
    engine: str = "waiting"
    detail: str = ""


class WebServer:
    """The server; `start()`/`stop()` on an asyncio loop (or `WebServerThread` for a thread of its own)."""

    def __init__(self, settings: ServeSettings, render: RenderConfig, detail: DetailConfig) -> None:
        self.settings = settings
        self.render = render
        self.detail = detail
        addresses = engine_addresses(settings.connect)
        self.params_address = addresses["params"]
        self.asset_address = settings.assets or addresses["assets"]
        self.token = resolve_token(settings.host, settings.token, settings.insecure)
        engine_host = urlsplit(self.params_address.replace("tcp://", "http://", 1)).hostname or ""
        self.preparer = FramePreparer(render, same_clock=is_loopback(engine_host))
        self.cache_root = Path(settings.cache_dir) if settings.cache_dir else default_cache_root().parent
        self.costs: deque[FrameCost] = deque(maxlen=100_000)
        self.frames = 0  # frames written to pages (prepared only while some page watches)
        self.received = 0  # params taken from the engine by the intake
        self.intake_cpu_s = 0.0
        self._identity_key: tuple[str, str] | None = None  # (id, assets) announced and loaded or loading
        self._identity_retry_at = 0.0
        self.closed_pages: deque[dict[str, Any]] = deque(maxlen=1000)  # what each page got, once it has gone
        self._clients: set[_Client] = set()
        self._state = _State()
        self._hello_static = {"config": page_config(render, detail), "shaders": shader_bundle()}
        self._static = self._load_static()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stop = threading.Event()
        self._intake: threading.Thread | None = None
        self.port = settings.port

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the HTTP server and start the intake thread (the engine may come later: ZeroMQ reconnects)."""
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/assets/{name}", self._asset)
        for route in STATIC_FILES:
            app.router.add_get(route, self._page)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise UserError(f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}") from None
        if self._runner.addresses:  # the bound port (port 0 picks a free one)
            self.port = self._runner.addresses[0][1]
        self._intake = threading.Thread(target=self._intake_loop, name="scapecast-web-intake", daemon=True)
        self._intake.start()

    async def stop(self) -> None:
        """Close every page's WebSocket, stop the intake thread and the HTTP server."""
        self._stop.set()
        if self._clients:  # all at once, and not waiting long for pages that do not answer the closing handshake
            closing = asyncio.gather(*(client.ws.close() for client in list(self._clients)), return_exceptions=True)
            try:
                await asyncio.wait_for(closing, 3.0)
            except TimeoutError:
                pass
        if self._runner is not None:
            await self._runner.cleanup()
        if self._intake is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._intake.join, 5.0)

    @property
    def url(self) -> str:
        """The page's address on this machine (with `?token=` when one is required)."""
        host = self.settings.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return self._url(shown)

    @property
    def public_url(self) -> str | None:
        """The address for other machines when listening on every interface (by this machine's name), else None."""
        return self._url(socket.gethostname()) if self.settings.host in ("0.0.0.0", "", "::") else None

    def _url(self, host: str) -> str:
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    # -- intake: ZeroMQ → prepared frames ------------------------------------------------------------------

    def _intake_loop(self) -> None:
        try:
            client = StreamClient(self.params_address, asset_address=self.asset_address, topics=(PARAMS, IDENTITY),
                                  keys=self.settings.keys)  # fmt: skip
        except UserError as exc:
            self._set_engine("error", str(exc))
            return
        with client:
            previous = None
            last_params = time.monotonic()
            while not self._stop.is_set():
                message = client.wait(PARAMS, 0.25, newer_than=previous, face=self.settings.face)
                identity = client.latest(IDENTITY)
                now = time.monotonic()
                if identity is not None:
                    key = (identity.header["id"], json.dumps(identity.header["assets"], sort_keys=True))
                    if key != self._identity_key and now >= self._identity_retry_at:
                        self._identity_key = key  # loaded or loading; a failed load clears it to try again later
                        threading.Thread(target=self._load_identity, args=(client, identity, key), daemon=True,
                                         name="scapecast-web-identity").start()  # fmt: skip
                if message is None:
                    if now - last_params > SILENT_AFTER_S and self._state.engine == "live":
                        self._set_engine("silent", f"no params from {self.params_address} for {SILENT_AFTER_S:g} s")
                    continue
                previous, last_params = message, now
                self.received += 1
                if self._state.engine != "live":
                    self._set_engine("live", self.params_address)
                if not self._clients:
                    continue  # nobody is watching: no frame to make (the set is the loop's; its size is read safely)
                start, start_cpu = time.monotonic_ns(), time.thread_time_ns()
                try:
                    frame = ws_frame(self.preparer.prepare(message, start))
                except (ValueError, KeyError) as exc:  # validated already; a pose the camera refuses, say
                    log.warning("params %d not forwarded: %s", message.seq, exc)
                    continue
                prepared, prepared_cpu = time.monotonic_ns(), time.thread_time_ns()
                self._call(self._broadcast, frame, message.t_receive_ns, prepared - start, prepared_cpu - start_cpu)
                self.intake_cpu_s = time.thread_time()  # this thread's CPU time so far (bench_web)

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed between the check and the call (shutting down)
                pass

    def _load_identity(self, client: Any, message: Any, key: tuple[str, str]) -> None:
        """Fetch the announced bundle and build its web assets (seconds, the first time); then tell the pages. A
        failure is retried `IDENTITY_RETRY_S` later (the engine announces its identity every second)."""
        from engine.stream.viewer import remote_cache_dir  # the folder `view` keeps fetched bundles in

        header = message.header
        try:
            model = FaceModel.load()
            if header["model_id"] and header["model_id"] != model.model_id:
                raise UserError(f"the engine renders face model {header['model_id']!r}; this server has "
                                f"{model.model_id!r}")  # fmt: skip
            if header["assets"]:
                directory = remote_cache_dir(header["id"], str(self.cache_root / "remote"))
                client.fetch_assets(directory, timeout_s=FETCH_TIMEOUT_S)
            else:
                log.warning("the engine serves no identity bundle: showing the shipped default identity")
                directory = DEFAULT_IDENTITY_DIR
            assets = WebAssets.load_or_build(directory, model, self.cache_root / "web", self.settings.tile_bits)
        except Exception as exc:  # a thread of its own: whatever failed is said, and the load tried again later
            if not isinstance(exc, UserError):
                log.exception("identity %r could not be prepared for browsers", header.get("id"))
            log.error("identity %r: %s (retrying in %g s)", header.get("id"), exc, IDENTITY_RETRY_S)
            self._set_engine(self._state.engine, f"identity {header.get('id')!r} unavailable: {exc}")
            if self._identity_key == key:
                self._identity_retry_at = time.monotonic() + IDENTITY_RETRY_S
                self._identity_key = None
            return
        log.info("identity %r ready for browsers (%s)", header["id"], assets.manifest_name)
        self._call(self._set_assets, assets, key)

    # -- on the loop --------------------------------------------------------------------------------------

    def _set_assets(self, assets: WebAssets, key: tuple[str, str]) -> None:
        if key != self._identity_key:
            return  # a newer identity was announced while this one loaded: that one is shown when ready
        self._state.assets[assets.manifest_name] = assets
        self._state.manifest = assets.manifest_name
        self._send_all({"type": "identity", "manifest": assets.manifest_name})

    def _set_engine(self, state: str, detail: str) -> None:
        """From the intake or identity thread: record the engine's state on the loop and tell the pages."""

        def apply() -> None:
            if (self._state.engine, self._state.detail) != (state, detail):
                self._state.engine, self._state.detail = state, detail
                self._send_all({"type": "status", "engine": state, "detail": detail})

        self._call(apply)

    def _send_all(self, message: dict[str, Any]) -> None:
        """A control message to every page; never dropped (rare and small), so written whatever is buffered."""
        frame = ws_frame(json.dumps(message).encode(), text=True)
        for client in list(self._clients):
            if not client.transport.is_closing():
                client.transport.write(frame)

    def _broadcast(self, frame: bytes, received_ns: int, prepare_ns: int, prepare_cpu_ns: int) -> None:
        """Write one per-frame message to every page that has nothing of ours still waiting; skip the others."""
        start, start_cpu = time.monotonic_ns(), time.thread_time_ns()
        written = 0
        for client in self._clients:
            transport = client.transport
            if transport.is_closing():
                continue
            buffered = transport.get_write_buffer_size()
            if buffered > 0:
                client.dropped += 1  # still draining an older frame: this one is stale before it could leave
                if buffered > client.max_buffered:
                    client.max_buffered = buffered
                continue
            transport.write(frame)
            client.sent += 1
            written += 1
        end, end_cpu = time.monotonic_ns(), time.thread_time_ns()
        self.frames += 1
        cost = FrameCost(received_ns, prepare_ns, prepare_cpu_ns, start, end, end_cpu - start_cpu, len(self._clients),
                         written)  # fmt: skip
        self.costs.append(cost)

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _load_static(self) -> dict[str, tuple[bytes, str, str]]:
        out = {}
        for route, name in STATIC_FILES.items():
            data = (STATIC_DIR / name).read_bytes()
            out[route] = (data, _STATIC_TYPES[Path(name).suffix], hashlib.sha256(data).hexdigest()[:16])
        return out

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _host_allowed(self, request: web.Request) -> bool:
        """Listening on loopback without a token, only loopback names may be in Host (a DNS name rebound to
        127.0.0.1 is refused). With a token, or off loopback with --insecure, any name reaches this check's end."""
        if self.token is not None or not is_loopback(self.settings.host):
            return True
        host = urlsplit(f"http://{request.host}").hostname or ""
        return is_loopback(host) or host == self.settings.host

    async def _page(self, request: web.Request) -> web.StreamResponse:
        data, content_type, etag = self._static[request.path]
        headers = {"Cache-Control": "no-cache", "ETag": f'"{etag}"', "X-Content-Type-Options": "nosniff"}
        if request.path == "/":
            # The page talks to its own origin only; nothing it loads comes from elsewhere.
            headers["Content-Security-Policy"] = (
                "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; style-src 'self'"
            )
        if request.headers.get("If-None-Match") == f'"{etag}"':
            return web.Response(status=304, headers=headers)
        return web.Response(body=data, content_type=content_type, headers=headers)

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request) or not self._host_allowed(request):
            raise web.HTTPForbidden(text="token required")
        name = request.match_info["name"]
        if not is_served_name(name):
            raise web.HTTPNotFound()
        for assets in self._state.assets.values():
            file = assets.files.get(name)
            if file is not None:
                # FileResponse sends the precompressed `<name>.gz` sibling itself when the browser accepts gzip.
                return web.FileResponse(
                    file.path,
                    headers={
                        "Cache-Control": IMMUTABLE,
                        "Content-Type": file.content_type,
                        "X-Content-Type-Options": "nosniff",
                    },  # fmt: skip
                )
        raise web.HTTPNotFound()

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser page (a tool, a test client): the token is the guard
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == request.host

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            raise web.HTTPForbidden(text="token required")
        if not self._origin_allowed(request) or not self._host_allowed(request):
            raise web.HTTPForbidden(text="cross-origin WebSocket refused")
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=4096, compress=False)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:  # not every platform lets a connected socket shrink its buffer; latest-value still holds
                pass
        client = _Client(ws, transport, request.remote or "?")
        state = self._state
        hello = {"type": "hello", "version": 1, **self._hello_static, "manifest": state.manifest,
                 "engine": state.engine, "detail": state.detail, "face": self.settings.face}  # fmt: skip
        await ws.send_str(json.dumps(hello))
        self._clients.add(client)
        log.debug("page connected from %s (%d pages)", client.remote, len(self._clients))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("type") == "ping":
                    await ws.send_str(json.dumps({"type": "pong", "t": data.get("t")}))
        finally:
            self._clients.discard(client)
            self.closed_pages.append(client.summary())
        return ws

    # -- numbers ------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Pages connected, frames forwarded, and per page what was sent and dropped."""
        return {
            "frames": self.frames,
            "received": self.received,
            "engine": self._state.engine,
            "manifest": self._state.manifest,
            "pages": [c.summary() for c in self._clients],
            "closed_pages": list(self.closed_pages),
        }


class WebServerThread:
    """A WebServer on an event loop of its own thread (`run --web`, tests); `stop()` ends both."""

    def __init__(self, settings: ServeSettings, render: RenderConfig, detail: DetailConfig,
                 timeout_s: float = 10.0) -> None:  # fmt: skip
        self.server = WebServer(settings, render, detail)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="scapecast-web", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise UserError("the web server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.server.stop())
        self._loop.close()

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, fn: Any, timeout_s: float = 5.0) -> Any:
        """Run `fn()` on the server's loop and return its result (its state belongs to that thread)."""
        future: asyncio.Future = asyncio.run_coroutine_threadsafe(_call_async(fn), self._loop)
        return future.result(timeout_s)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10.0)

    def __enter__(self) -> WebServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call_async(fn: Any) -> Any:
    return fn()


def start_web_server(config: Config, host: str | None = None, port: int | None = None):
    """`run --web`: serve this process's own engine (its params over loopback) from a thread; returns a
    WebServerThread (`.url`, `.stop()`). Call it before the pipeline starts; stop it after the run."""
    stream = config.stream
    if not stream.enabled:
        raise UserError("run --web shows the engine's params: it needs stream.enabled=true")
    if stream.params_port == 0:
        raise UserError("run --web needs a fixed stream.params_port (0 binds a port only known later)")
    if stream.curve_server_secret is not None:
        raise UserError("run --web cannot subscribe to a CURVE engine from inside it; run `scapecast serve "
                        "--server-key … --client-key …` beside it instead")  # fmt: skip
    web = config.web
    settings = ServeSettings(
        connect=f"tcp://127.0.0.1:{stream.params_port}",
        assets=f"tcp://127.0.0.1:{stream.asset_port}",
        host=host if host is not None else web.host,
        port=port if port is not None else web.port,
        token=web.token,
        insecure=web.insecure,
        cache_dir=web.cache_dir,
        tile_bits=web.tile_bits,
    )
    server = WebServerThread(settings, config.render, config.detail)
    log.info("the avatar in a browser: %s", server.url)
    return server
