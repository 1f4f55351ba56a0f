"""The built documentation site, as a reader sees it: every page opened in headless Chromium.

``make site-check`` (part of ``make test``, after ``make docs``) runs this file on the freshly built
``site/``. Each page is served from localhost and loaded in Debian's ``chromium``, driven through the
DevTools protocol over a pipe (``--remote-debugging-pipe``: the standard library is enough, and no
browser is downloaded, unlike Playwright's own builds). A page fails on

* raw TeX left in its text (MathJax did not render a formula),
* an image that does not load (the gallery's SVGs, the tutorials' plots),
* a JavaScript exception or console error, a resource that fails to load,
* a request to anything but the local server (the site must work offline).

The search box must find ``Box``. Screenshots of a few pages go to ``build/site-screenshots/``
(gitignored; CI keeps them as build artefacts). Without a built site or a Chromium binary the tests
are skipped with the reason; ``PARAMSHAPE_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site"
SHOTS = ROOT / "build" / "site-screenshots"
# Pages worth a picture: math in Markdown, math in docstrings, a notebook with plots, the gallery.
SCREENSHOTS = {
    "transforms/": "transforms",
    "api/elementwise/": "api-elementwise",
    "tutorials/03_bounded_outputs/": "tutorial-03",
    "gallery/": "gallery",
}
# The flags a root, sandbox-less, offline machine needs; without the networking ones Chromium keeps
# trying to reach Google's services and logs the refusals.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--remote-debugging-pipe",
]
TIMEOUT = 60.0

# Raw TeX in a page's visible text: a \( \) or \[ \] delimiter, a $...$ pair around something that
# looks like math, or a TeX command. Code, preformatted text and MathJax's own output are skipped.
RAW_TEX = re.compile(
    r"\\\(|\\\)|\\\[|\\\]"  # \( \) \[ \]
    r"|\$(?=[^\s$])[^$\n]{1,200}?(?<=[^\s$])\$(?!\d)"  # $...$, by MathJax's rule: no space inside
    r"|\\(?:frac|sigma|mathbb|mathrm|operatorname|sum|left|right|sqrt|cdot|top|log|exp)\b"
)

_VISIBLE_TEXT = """
(() => {
  const skip = new Set(["SCRIPT", "STYLE", "PRE", "CODE", "TEXTAREA", "KBD", "MJX-CONTAINER",
                        "MJX-ASSISTIVE-MML", "NOSCRIPT", "svg"]);
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el; el = el.parentElement) {
        if (skip.has(el.tagName) || el.classList.contains("md-search")) return NodeFilter.FILTER_REJECT;
      }
      return NodeFilter.FILTER_ACCEPT;
    },
  });
  for (let n = walker.nextNode(); n; n = walker.nextNode()) out.push(n.nodeValue);
  return out.join(" ");
})()
"""

# Every image, loaded eagerly (a lazy one off screen would never load in a headless window), and
# decoded: decode() rejects for a missing or corrupt file.
_BROKEN_IMAGES = """
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach((img) => { img.loading = "eager"; });
  const results = await Promise.all(imgs.map((img) =>
    img.decode().then(() => (img.naturalWidth > 0 ? null : img.src), () => img.src)));
  return JSON.stringify({count: imgs.length, broken: results.filter((r) => r !== null)});
})()
"""

# MathJax typesets after the load event; startup.promise resolves once the page is done.
_MATHJAX_DONE = """
(async () => {
  if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) return "absent";
  await MathJax.startup.promise;
  return String(document.querySelectorAll("mjx-container").length);
})()
"""


def _chromium() -> str | None:
    explicit = os.environ.get("PARAMSHAPE_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _pages() -> list[str]:
    """Every page of the built site, as a URL path (``transforms/``), the 404 page excepted."""
    if not (SITE / "index.html").is_file():
        return []
    pages = []
    for html in sorted(SITE.rglob("index.html")):
        rel = html.parent.relative_to(SITE).as_posix()
        if rel.startswith("javascripts"):
            continue
        pages.append("" if rel == "." else rel + "/")
    return pages


class Browser:
    """A headless Chromium driven through the DevTools protocol over ``--remote-debugging-pipe``.

    The protocol's messages are JSON objects separated by NUL bytes: commands are written to the
    browser's fd 3, replies and events read from its fd 4. One page (target) is attached, in flat
    mode, so every page-level command carries its sessionId.
    """

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="paramshape-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:
            # Runs in the child before exec: the protocol's fixed descriptors 3 and 4. Copied high
            # first, so that a pipe end already sitting on 3 or 4 is not overwritten.
            high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # preexec_fn is unsafe beside other threads; the tests ask for the browser fixture
            # before the server's, so Chromium is started while the process has none.
            preexec_fn=wire_fds,  # noqa: PLW1509
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Run one protocol command and return its result; events met meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", session=True, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, method: str, deadline: float) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired", time.monotonic() + TIMEOUT)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):  # already gone is fine
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    if not (SITE / "index.html").is_file():
        pytest.skip("no built site in site/: run `make docs` first (make test does)")
    with _serve(SITE) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = _chromium()
    if binary is None:
        pytest.skip(
            "no Chromium found (apt-get install chromium, or set PARAMSHAPE_CHROMIUM): "
            "the site was built but not checked in a browser"
        )
    instance = Browser(binary)
    yield instance
    instance.close()


def _problems(events: list[dict[str, Any]], origin: str) -> list[str]:
    """Console errors, exceptions, failed loads and off-site requests among a page's events."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            found.append(f"{entry['source']} error: {entry['text']} {entry.get('url', '')}".rstrip())
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith((origin, "data:", "blob:", "about:")):
                found.append(f"request to the network: {url}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            found.append(f"failed to load ({params['errorText']}): request {params['requestId']}")
    return found


PAGES = _pages()


@pytest.mark.parametrize("page", PAGES or ["<no site built>"])
def test_page_renders_math_images_and_scripts(browser: Browser, server: str, page: str) -> None:
    url = server + page
    browser.open(url)
    mathjax = browser.evaluate(_MATHJAX_DONE)
    assert mathjax != "absent", f"{url}: MathJax is not loaded"
    text = browser.evaluate(_VISIBLE_TEXT)
    raw = sorted({m.group(0) for m in RAW_TEX.finditer(text)})
    assert not raw, f"{url}: raw TeX left in the page: {raw[:10]}"
    images = json.loads(browser.evaluate(_BROKEN_IMAGES))
    assert not images["broken"], f"{url}: {len(images['broken'])} broken image(s): {images['broken'][:5]}"
    problems = _problems(browser.events, server)
    assert not problems, f"{url}:\n" + "\n".join(problems)
    if page in SCREENSHOTS:
        # Scrolled to the first formula (or image), so the picture shows what the check is about.
        browser.evaluate(
            '(document.querySelector("mjx-container") || document.querySelector(".md-content img"))'
            '?.scrollIntoView({block: "center"})'
        )
        browser.screenshot(SHOTS / f"{SCREENSHOTS[page]}.png")


def test_pages_with_math_and_plots_are_checked() -> None:
    """The check above cannot pass by finding nothing: the pages it must see are in the build."""
    if not PAGES:
        pytest.skip("no built site in site/: run `make docs` first (make test does)")
    for page in (*SCREENSHOTS, "tutorials/01_quickstart/", "checkpoints/"):
        assert page in PAGES, f"{page} missing from the built site"


def test_formulas_are_typeset(browser: Browser, server: str) -> None:
    """MathJax really renders: the transforms page and a tutorial hold typeset formulas."""
    for page, least in (("transforms/", 10), ("api/elementwise/", 5), ("tutorials/03_bounded_outputs/", 1)):
        browser.open(server + page)
        count = int(browser.evaluate(_MATHJAX_DONE))
        assert count >= least, f"{page}: {count} typeset formulas, expected at least {least}"


_BROKEN_PAGE = r"""<!doctype html>
<html><head><title>broken</title><link rel="icon" href="data:,"></head><body>
<p>Raw math: \(f(x) = l + (h - l)\sigma(x)\) and $[-1, 1]$.</p>
<img src="missing.png" alt="a plot that was never written">
<script>console.error("something broke");</script>
<script src="https://cdn.example.invalid/mathjax.js"></script>
</body></html>
"""


def test_the_checks_fail_on_a_broken_page(browser: Browser, tmp_path: Path) -> None:
    """Each check of the page test flags what it is there for, on a page that has all of it."""
    (tmp_path / "index.html").write_text(_BROKEN_PAGE)
    with _serve(tmp_path) as url:
        browser.open(url)
        text = browser.evaluate(_VISIBLE_TEXT)
        assert {m.group(0) for m in RAW_TEX.finditer(text)} >= {"\\(", "$[-1, 1]$"}
        images = json.loads(browser.evaluate(_BROKEN_IMAGES))
        assert images["count"] == 1
        assert images["broken"] == [url + "missing.png"]
        assert browser.evaluate(_MATHJAX_DONE) == "absent"
        problems = "\n".join(_problems(browser.events, url))
    assert "console.error: something broke" in problems
    assert "request to the network: https://cdn.example.invalid/mathjax.js" in problems
    assert "404" in problems  # the missing image's failed load


def test_raw_tex_detector_sees_raw_tex() -> None:
    """The pattern the page check relies on flags the strings the issue saw raw, and not prose."""
    for raw in (r"\(f(x) = l + (h - l)\sigma(x)\)", "$[-1, 1]$", r"$x_i$", r"\frac{a}{b}"):
        assert RAW_TEX.search(raw), raw
    for prose in ("costs $5 and $10", "a (b) [c]", "x = 1"):
        assert not RAW_TEX.search(prose), prose


def test_search_finds_box(browser: Browser, server: str) -> None:
    browser.open(server)
    browser.evaluate('document.querySelector("input.md-search__input").focus()')
    browser.send("Input.insertText", session=True, text="Box")
    deadline = time.monotonic() + 20
    results: list[str] = []
    while time.monotonic() < deadline:
        results = browser.evaluate(
            'Array.from(document.querySelectorAll(".md-search-result__item")).map(e => e.innerText)'
        )
        if results:
            break
        time.sleep(0.2)
    assert results, "the search box returned nothing for 'Box'"
    assert any("Box" in r for r in results), results[:3]
    browser.screenshot(SHOTS / "search-box.png")
    problems = _problems(browser.events, server)
    assert not problems, "\n".join(problems)
