"""A small Chrome DevTools Protocol client for tests: headless Chromium driven over a pipe
(``--remote-debugging-pipe``: the browser reads NUL-terminated JSON commands on fd 3 and writes
responses and events on fd 4), with no dependency beyond the standard library.

    with Browser() as b:
        page = b.open(Path("report.html"))     # loads it, collecting console errors and requests
        page.evaluate("document.title")
        page.screenshot(Path("shot.png"))       # the whole page

The browser runs with an empty profile and no network services (the flags below), so a page that
needs the network shows it as failed requests and console errors.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe")


def find_chromium() -> Optional[str]:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    pass


class Page:
    """One tab, attached with a flat session; ``problems`` collects console errors, uncaught
    exceptions and log errors, ``requests`` every URL the page asked for."""

    def __init__(self, browser: "Browser", session: str) -> None:
        self.browser, self.session = browser, session
        self.problems: List[str] = []
        self.requests: List[str] = []

    def send(self, method: str, params: Optional[dict] = None, timeout: float = 30.0) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str) -> Any:
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in out:
            raise CDPError(f"page script failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
            timeout=60.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def _event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.problems.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                         for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            self.problems.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.problems.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            self.problems.append(f"network: {p.get('errorText')}")


class Browser:
    """Headless Chromium on a pipe; a context manager that always ends the process."""

    def __init__(self, binary: Optional[str] = None, width: int = 1280, height: int = 900) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError("no chromium binary (apt-get install chromium)")
        self.width, self.height = width, height
        self._id = 0
        self._buf = b""
        self._pages: Dict[str, Page] = {}
        self._profile = tempfile.mkdtemp(prefix="cdp-profile-")

    def __enter__(self) -> "Browser":
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser's fds 3 and 4 must be the pipe ends: move them above 9 first, so that the
        # dup2 in the child never maps an fd onto itself (which would keep its close-on-exec flag)
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)

        def child_fds() -> None:
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.proc = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self._profile}"],
                                     pass_fds=(3, 4), preexec_fn=child_fds, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in ends:
            os.close(fd)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close", timeout=10.0)
        except (CDPError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    # protocol ------------------------------------------------------------------------------------
    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: float = 30.0) -> dict:
        self._id += 1
        msg: Dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == msg["id"], timeout, method)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _wait(self, match, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if "method" in m and m.get("sessionId") in self._pages:
                    self._pages[m["sessionId"]]._event(m)
                if match(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"no answer to {what} within {timeout:.0f} s")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise CDPError(f"the browser closed the pipe while waiting for {what} "
                                   f"(exit status {self.proc.poll()})")
                self._buf += chunk

    def open(self, path: Path, timeout: float = 60.0) -> Page:
        """A new tab showing ``path`` (a local file), loaded (the load event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        page.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self._wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session,
                   timeout, f"the load of {path}")
        return page
