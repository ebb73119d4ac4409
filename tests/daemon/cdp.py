"""A minimal Chrome DevTools Protocol driver for Debian's headless `chromium`.

Started with `--remote-debugging-port=0`; the port is read from DevToolsActivePort in its
profile folder and the page is driven over one WebSocket (`websocket-client`). Missing chromium
skips the test locally and fails it in CI (CI=true), where scripts/setup.sh installs it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium not found: install Debian's chromium package (scripts/setup.sh)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One headless chromium process with one page; stopped by its pid."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        import websocket

        self._log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
             "--no-first-run", "--disable-extensions", "--disable-dev-shm-usage",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start (see {profile.parent}/chromium.log)")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
            if not pages:
                time.sleep(0.1)
        self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                               suppress_origin=True)
        self._next = 0
        for domain in ("Page", "Runtime", "DOM"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params: Any) -> dict:
        """One command; events that arrive meanwhile are dropped."""
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {expression}")
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'")

    def set_file(self, selector: str, path: Path) -> None:
        """Choose a file in an <input type=file> (fires its change event like a user would)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
