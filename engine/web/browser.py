"""Headless Chromium driven through its DevTools protocol (CDP): the tests' and benchmarks' browser.

No selenium and no browser downloads: the system's own Chromium (Debian's `chromium`, `/usr/bin/chromium`) is
started with `--remote-debugging-port=0`; the port it picked is read from `DevToolsActivePort` in its profile
folder, and one WebSocket to the browser endpoint carries every command (flattened sessions: a command for a page
names its `sessionId`). WebGL runs on SwiftShader, Chromium's CPU implementation of the GPU (`--use-angle=swiftshader
--enable-unsafe-swiftshader`), which is what a machine without a GPU has and a fair stand-in for a slow phone GPU.

    with Chromium() as browser:
        page = browser.open("http://127.0.0.1:8080/")
        page.wait_for("window.scapecast && window.scapecast.ready", timeout_s=30)
        stats = page.evaluate("window.scapecast.stats")

`evaluate` awaits promises and returns JSON values; page exceptions and console errors are kept in
`page.console` for failure messages.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from engine.errors import UserError

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

# SwiftShader WebGL; no GPU process sandbox as root; nothing that phones home or throttles a background tab.
DEFAULT_FLAGS = (
    "--headless",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--metrics-recording-only",
    "--no-pings",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """The path of an installed Chromium (`SCAPECAST_CHROMIUM` first), or None."""
    for candidate in (os.environ.get("SCAPECAST_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class BrowserError(UserError):
    """Chromium could not be started, or a DevTools command failed."""


class _Connection:
    """One CDP WebSocket, served by an asyncio loop on a private thread so that callers stay synchronous."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scapecast-cdp", daemon=True)
        self._thread.start()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self._run(self._open(url), 10.0)

    def _run(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _open(self, url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the browser closed its DevTools connection"))

    async def _send(self, method: str, params: dict[str, Any], session: str | None) -> dict[str, Any]:
        message_id = next(self._ids)
        future = self._loop.create_future()
        self._pending[message_id] = future
        payload: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session is not None:
            payload["sessionId"] = session
        await self._ws.send_str(json.dumps(payload))
        return await future

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout_s: float = 60.0) -> dict[str, Any]:  # fmt: skip
        """Send one CDP command and return its `result`; a CDP error raises BrowserError."""
        reply = self._run(self._send(method, params or {}, session), timeout_s)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}".strip())
        return reply.get("result", {})

    def close(self) -> None:
        async def shutdown() -> None:
            await self._ws.close()
            await self._session.close()

        try:
            self._run(shutdown(), 5.0)
        except Exception:  # the browser may already be gone; nothing is left to release then
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)


class Page:
    """One tab: evaluate JavaScript, wait for a condition, capture a screenshot."""

    def __init__(self, connection: _Connection, session: str, target: str) -> None:
        self._connection = connection
        self.session = session
        self.target = target

    def call(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
        return self._connection.call(method, params, self.session, timeout_s)

    def evaluate(self, expression: str, timeout_s: float = 60.0) -> Any:
        """The JSON value of `expression` (promises awaited); a JavaScript exception raises BrowserError."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error in {expression[:80]!r}: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
        """Poll `expression` until it is truthy; its value, or BrowserError after `timeout_s` — or at once when the
        page throws an uncaught exception (a broken script never becomes ready)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            thrown = [line for line in self.console if line.startswith("exception:")]
            if thrown:
                raise BrowserError(f"the page threw while waiting for {expression!r}: {thrown[0]}")
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s:g} s waiting for {expression!r}; console: "
                                   f"{self.console[-10:]}")  # fmt: skip
            time.sleep(interval_s)

    def screenshot(self) -> bytes:
        """A PNG of the visible page."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    @property
    def console(self) -> list[str]:
        """Console messages and uncaught exceptions of this page so far (for failure messages)."""
        out = []
        for event in self._connection.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                out.append(f"{params.get('type')}: {text}")
            elif event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        return out

    def close(self) -> None:
        self._connection.call("Target.closeTarget", {"targetId": self.target})


class Chromium:
    """A headless Chromium process with one DevTools connection; `open(url)` makes a tab (a `Page`)."""

    def __init__(self, executable: str | None = None, flags: tuple[str, ...] = DEFAULT_FLAGS,
                 window: tuple[int, int] = (800, 800), timeout_s: float = 20.0) -> None:  # fmt: skip
        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError("no Chromium found: apt-get install -y chromium (or set SCAPECAST_CHROMIUM)")
        self._profile = Path(tempfile.mkdtemp(prefix="scapecast-chromium-"))
        args = [executable, *flags, f"--window-size={window[0]},{window[1]}", f"--user-data-dir={self._profile}",
                "--remote-debugging-port=0", "about:blank"]  # fmt: skip
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._connection: _Connection | None = None
        try:
            self._connection = _Connection(self._endpoint(timeout_s))
        except BaseException:
            self.close()
            raise

    def _endpoint(self, timeout_s: float) -> str:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace")[-2000:] if self._process.stderr else ""
                raise BrowserError(f"Chromium exited with status {self._process.returncode}: {err}")
            lines = port_file.read_text().split("\n") if port_file.is_file() else []
            if len(lines) >= 2 and lines[0].isdigit():
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise BrowserError(f"Chromium did not open its DevTools port within {timeout_s:g} s")

    @property
    def pid(self) -> int:
        return self._process.pid

    def open(self, url: str, width: int = 800, height: int = 800) -> Page:
        """A new tab showing `url` at a `width` × `height` viewport (the page's own load is not awaited)."""
        assert self._connection is not None
        target = self._connection.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._connection.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self._connection, session, target)
        page.call("Runtime.enable")
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
        page.call("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        """Close the connection, stop the browser (terminate, then kill) and remove its profile."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5.0)
        if self._process.stderr is not None:
            self._process.stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
