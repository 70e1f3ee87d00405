"""Open a local HTML file in headless Chromium and report what a reader would see: console errors, images that did
not decode, and a PNG screenshot. Speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4), so it needs no WebSocket library and no network port."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NOT_FOUND = "chromium not found on PATH (run `make browser` as root to install it with apt-get)"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
    "--window-size=1280,1024",
)
# every <img> made eager and awaited; then a short pause lets late errors (timers, onload handlers) surface
IMAGES_JS = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => { i.loading = 'eager'; return i.decode().catch(() => null); }));
  await new Promise(r => setTimeout(r, 100));
  return imgs.map(i => ({name: i.alt || (i.currentSrc || i.src).slice(0, 80), ok: i.complete && i.naturalWidth > 0}));
})()"""


@dataclass
class PageCheck:
    """What Chromium saw: ``console_errors`` (console.error calls, uncaught exceptions, failed loads),
    ``images`` (count of <img>), ``broken_images`` (alt text or src head of those that did not decode),
    ``requests`` (URLs fetched besides the page itself and data:/blob: URLs: empty for a self-contained page),
    ``screenshot`` (PNG bytes of the first viewport, 1280 px wide)."""

    console_errors: list[str]
    images: int
    broken_images: list[str]
    requests: list[str]
    screenshot: bytes


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


MIN_PIXEL_STD = 2.0
"""The screenshot's pixel standard deviation above which a page is not blank: a blank page is 0, a heading alone on
white about 10."""


def assert_renders(html: Path) -> None:
    """``html`` opens in Chromium with no console error, at least one image and every image decoded, nothing
    fetched from outside the file, and a page that is not blank."""
    check = open_page(html)
    assert check.console_errors == [], f"console errors in {html}: {check.console_errors}"
    assert check.images > 0, f"{html} shows no <img>"
    assert check.broken_images == [], f"images that did not decode in {html}: {check.broken_images}"
    assert check.requests == [], f"{html} is not self-contained, it fetched {check.requests}"
    assert pixel_std(check.screenshot) > MIN_PIXEL_STD, f"{html} renders blank"


def pixel_std(png: bytes) -> float:
    """Standard deviation of all RGB values of a PNG: 0 for a blank (single-colour) image."""
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64).std())


class _Devtools:
    """One CDP connection over pipes; events are kept in ``events`` as they arrive."""

    def __init__(self, to_browser: int, from_browser: int, deadline: float, log: Path) -> None:
        self.to_browser, self.from_browser, self.deadline, self.log = to_browser, from_browser, deadline, log
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0

    def _receive(self, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                raise TimeoutError(f"chromium gave no answer to {waiting_for} in time; its log:\n{self._log_tail()}")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(
                    f"chromium closed its devtools pipe during {waiting_for}; its log:\n{self._log_tail()}"
                )
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.is_file() else "(none)"

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events seen meanwhile go to ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"chromium is gone (sending {method}); its log:\n{self._log_tail()}") from None
        while (reply := self._receive(method)).get("id") != self._next_id:
            self.events.append(reply)
        if "error" in reply:
            raise RuntimeError(f"chromium refused {method}: {reply['error']}")
        return reply["result"]

    def wait_for(self, method: str) -> None:
        """Read until the event ``method`` arrives (or has already arrived)."""
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._receive(method))


def _error_text(event: dict[str, Any]) -> str | None:
    """The message of an error-level console/exception/log event, else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return details.get("exception", {}).get("description") or details.get("text", "exception")
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('text', '')} {entry.get('url', '')}".strip()
    return None


def open_page(html: Path, timeout: float = 60.0) -> PageCheck:
    """Load ``html`` in a fresh headless Chromium profile and check it; TimeoutError when the browser hangs
    longer than ``timeout`` seconds in all, RuntimeError when it cannot start or load the page."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(NOT_FOUND)
    html = Path(html).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"no HTML file at {html}")
    with tempfile.TemporaryDirectory(prefix="gpfuse-chromium-") as profile:
        log = Path(profile) / "chromium.log"
        browser_reads, we_write = os.pipe()
        we_read, browser_writes = os.pipe()
        # the browser expects its ends as fds 3 (commands in) and 4 (replies out): bash moves them there from
        # numbers >= 10, so that no move overwrites the other
        browser_reads, browser_writes = (_above_ten(fd) for fd in (browser_reads, browser_writes))
        launch = f'exec "$0" "$@" 3<&{browser_reads} 4>&{browser_writes} {browser_reads}<&- {browser_writes}>&-'
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                ["bash", "-c", launch, chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                pass_fds=(browser_reads, browser_writes),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        os.close(browser_reads)
        os.close(browser_writes)
        try:
            return _check(_Devtools(we_write, we_read, time.monotonic() + timeout, log), html)
        finally:
            os.close(we_write)
            os.close(we_read)
            _stop(process)


def _above_ten(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or more; ``fd`` itself is closed."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def _check(devtools: _Devtools, html: Path) -> PageCheck:
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        devtools.call(f"{domain}.enable", session)
    navigation = devtools.call("Page.navigate", session, url=html.as_uri())
    if navigation.get("errorText"):
        raise RuntimeError(f"chromium could not load {html}: {navigation['errorText']}")
    devtools.wait_for("Page.loadEventFired")
    images = devtools.call("Runtime.evaluate", session, expression=IMAGES_JS, awaitPromise=True, returnByValue=True)
    if "exceptionDetails" in images:
        raise RuntimeError(f"image check script failed in {html}: {images['exceptionDetails']}")
    shot = devtools.call("Page.captureScreenshot", session, format="png")
    events = [event for event in devtools.events if event.get("sessionId") == session]
    errors = [text for event in events if (text := _error_text(event)) is not None]
    fetched = [event["params"]["request"]["url"] for event in events if event["method"] == "Network.requestWillBeSent"]
    found = images["result"]["value"]
    return PageCheck(
        console_errors=errors,
        images=len(found),
        broken_images=[image["name"] for image in found if not image["ok"]],
        requests=[url for url in fetched if url != html.as_uri() and not url.startswith(("data:", "blob:"))],
        screenshot=base64.b64decode(shot["data"]),
    )


def _stop(process: subprocess.Popen) -> None:
    """End the browser and its helper processes (the process group it leads), politely first."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5.0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5.0)
