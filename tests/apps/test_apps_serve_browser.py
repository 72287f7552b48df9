"""``cascade serve`` in a real browser: Debian's headless Chromium, driven over its DevTools protocol.

It loads the page in a 1200 x 700 window, checks that the prompt box is in view without scrolling and that
frames are drawn on the canvas, types a prompt, and waits for the switch figure. It saves a screenshot
(``CASCADE_REGEN_DOCS=1`` writes it to docs/img/serve.png for docs/serve.md). A screenshot taken with
virtual time (before any frame can arrive) shows "waiting for the first frame", not an empty video, and a
stream that ends keeps its last frame. Skipped, with the reason, where Chromium is not installed
(``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.extras import reason

pytest.importorskip("starlette", reason=reason("starlette"))
pytest.importorskip("websockets", reason=reason("websockets"))

from serve_support import config, running_server

from apps.request import ModelSource, RunRequest
from cascade_sched import CascadeSpec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1200,700", "--hide-scrollbars"]
DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "serve.png"

LIT = """(() => { const c = document.getElementById('view');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 90) n++;
    return [n, c.width * c.height]; })()"""  # canvas pixels clearly above the dark ground, and all of them

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")]


class DevTools:
    """The browser-wide DevTools endpoint: one call at a time, events ignored."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._connection = connect(url, max_size=None, open_timeout=20)
        self.ws = self._connection.__enter__()
        self.next_id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def _launch(profile: Path) -> tuple[subprocess.Popen[bytes], DevTools]:
    assert CHROMIUM is not None
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("Chromium did not open its DevTools port")
        time.sleep(0.1)
    port, path = port_file.read_text().splitlines()[:2]
    return proc, DevTools(f"ws://127.0.0.1:{port}{path}")


def test_the_page_draws_frames_and_shows_a_switch(tmp_path: Path) -> None:
    job = RunRequest(spec=CascadeSpec(num_blocks=200, lag=1, window=4, sink=1), source=ModelSource(model="toy"))
    with running_server(config(fps=16.0, stats_interval_s=0.5, token="t0ken"), job) as (address, _):
        proc, dt = _launch(tmp_path / "profile")
        try:
            target = dt.call("Target.createTarget", url=f"http://{address}/?token=t0ken")["targetId"]
            page = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

            def js(expression: str) -> Any:
                r = dt.call("Runtime.evaluate", page, expression=expression, returnByValue=True, awaitPromise=True)
                return r["result"].get("value")

            def wait_for(expression: str, timeout: float = 90.0) -> Any:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    value = js(expression)
                    if value:
                        return value
                    time.sleep(0.2)
                raise AssertionError(f"timed out waiting for {expression}; events: {js('window.cascade.events')}")

            wait_for("window.cascade && window.cascade.framesDrawn >= 6")
            box, height = js("[document.getElementById('prompt').getBoundingClientRect().bottom, innerHeight]")
            assert 0 < box <= height <= 700, f"the prompt box ends at {box}px, below the {height}px window"
            lit = js(LIT)
            assert 0 < lit[0] < lit[1], f"the canvas is blank or uniform: {lit}"  # balls on a dark ground
            js("document.getElementById('prompt').focus()")
            dt.call("Input.insertText", page, text="a blue ball")
            for kind in ("keyDown", "keyUp"):
                dt.call("Input.dispatchKeyEvent", page, type=kind, key="Enter", code="Enter",
                        windowsVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))
            shown = wait_for("document.getElementById('switch').textContent.includes('blocks') && "
                             "document.getElementById('switch').textContent")
            switch = js("window.cascade.lastSwitch")
            assert switch["prompt"] == "a blue ball" and f"{switch['latency_blocks']} blocks" in shown
            wait_for("window.cascade.stats && window.cascade.stats.block > window.cascade.lastSwitch.at_block")
            deadline = time.monotonic() + 10  # the picture for the docs: a frame with a ball in it if one comes
            while js(LIT)[0] < 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            shot = base64.b64decode(dt.call("Page.captureScreenshot", page, format="png")["data"])
        finally:
            dt.close()
            proc.terminate()
            proc.wait(timeout=30)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "serve.png").write_bytes(shot)
    if os.environ.get("CASCADE_REGEN_DOCS") == "1":
        DOCS_IMAGE.write_bytes(shot)


def _virtual_time_shot(url: str, folder: Path) -> Any:
    """``chromium --screenshot --virtual-time-budget``: the page's clock runs ahead of the network, as a
    screenshot tool's does; returns the inside of the video (RGB, below the prompt box)."""
    import io

    from PIL import Image

    assert CHROMIUM is not None
    shot = folder / "vt.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--hide-scrollbars", "--window-size=1200,700",
                        f"--user-data-dir={folder / 'profile'}", "--virtual-time-budget=3000", f"--screenshot={shot}",
                        url], capture_output=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    return Image.open(io.BytesIO(shot.read_bytes())).convert("RGB").crop((20, 130, 490, 590))


def test_a_screenshot_with_virtual_time_shows_words_not_an_empty_video(tmp_path: Path) -> None:
    """Before any frame the video says so on its canvas: with the page alone (served without its stream, so
    no frame can come) the words are there; with the server, the screenshot shows them or a frame."""
    import http.server
    import threading

    from apps.serve.page import PAGE

    class Alone(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Alone)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        alone = _virtual_time_shot(f"http://127.0.0.1:{httpd.server_address[1]}/", tmp_path / "alone")
    finally:
        httpd.shutdown()
    grey = [px for px in alone.get_flattened_data() if px[0] == px[1] == px[2] and px[0] > 120]
    assert len(grey) > 200, "no words on the canvas before the first frame"  # "connecting" / "disconnected"
    job = RunRequest(spec=CascadeSpec(num_blocks=50, lag=1, window=3, sink=1), source=ModelSource(model="toy"))
    with running_server(config(fps=16.0), job) as (address, _):
        served = _virtual_time_shot(f"http://{address}/", tmp_path / "served")
    assert max(hi for _, hi in served.getextrema()) > 90, "the video area is empty: no frame and no words"


def test_an_ended_stream_keeps_its_last_frame(tmp_path: Path) -> None:
    job = RunRequest(spec=CascadeSpec(num_blocks=8, lag=1, window=3, sink=1), source=ModelSource(model="toy"))
    with running_server(config(fps=16.0, stats_interval_s=0.5), job) as (address, _):
        proc, dt = _launch(tmp_path / "profile")
        try:
            target = dt.call("Target.createTarget", url=f"http://{address}/")["targetId"]
            page = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

            def js(expression: str) -> Any:
                r = dt.call("Runtime.evaluate", page, expression=expression, returnByValue=True)
                return r["result"].get("value")

            deadline = time.monotonic() + 90  # the end message, then the frames already sent, then a pause
            while "stream ended" not in (js("window.cascade && window.cascade.showing") or "") and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert js("window.cascade.ended.type") == "end" and js("window.cascade.framesDrawn") > 0
            assert "the last frame" in js("window.cascade.showing")
            assert js(LIT)[0] > 0, "the canvas was cleared when the stream ended"
            assert js("document.getElementById('state').hidden") is False
            assert float(js("window.cascade.firstFrameS")) > 0
        finally:
            dt.close()
            proc.terminate()
            proc.wait(timeout=30)
