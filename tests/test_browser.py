"""The rendered book in a real browser: Debian's chromium, headless, driven over the Chrome DevTools
Protocol on a pipe (--remote-debugging-pipe: no websocket library, no driver to install).

The book is the quick profile's, built once per session (conftest.quick_book) and served on
127.0.0.1. Every page of _toc.yml loads with all its resources, shows no traceback, error or
stderr output, no unresolved glue and no raw injected-parameters cell; every image is a decoded,
non-blank picture; every table fits the page (or scrolls in its own box) without an index column;
every figure is numbered; every CSV download link serves its file; the sidebar and the previous/next links lead through the book in _toc.yml order;
the search page finds pages. A screenshot of the front page is saved as a test artifact
($NORMLIB_ARTIFACTS, default results/artifacts/front_page.png).
"""
import base64
import fcntl
import functools
import http.server
import io
import json
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from normlib.pipeline import book as pbook

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("NORMLIB_ARTIFACTS") or REPO / "results" / "artifacts")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--hide-scrollbars"]
# Known and harmless: sphinx-thebe 0.3.1 adds its inline config script twice to every page (thebe is off).
KNOWN_JS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


def find_chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    reason = "chromium not found: `make browser` installs Debian's package (as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must run the browser test, not skip it", pytrace=False)
    pytest.skip(reason)


class Chromium:
    """Headless chromium speaking CDP over fds 3 (commands in) and 4 (replies out), NUL-separated JSON."""

    def __init__(self, exe, profile_dir):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # fds >= 10 so that placing them at 3 and 4 in the child cannot clobber one another
        cmd_r, out_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, out_w))
        shell = f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, exe, *FLAGS, f"--user-data-dir={profile_dir}", "--remote-debugging-pipe",
             "about:blank"], pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(cmd_r), os.close(out_w)
        self._buf, self._id, self.events = b"", 0, []

    def _message(self, timeout):
        while b"\0" not in self._buf:
            if not select.select([self._out_r], [], [], max(timeout, 0))[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise EOFError(f"chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method, session=None, timeout=60, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            reply = self._message(end - time.monotonic())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, timeout=60):
        end = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(end - time.monotonic()))

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w), os.close(self._out_r)


class Tab:
    """One page target of a Chromium; collects uncaught exceptions and every request's outcome."""

    def __init__(self, browser):
        self.b = browser
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method, **params):
        return self.b.send(method, session=self.session, **params)

    def open(self, url, timeout=60):
        """Navigate and wait for the load event. Returns {exceptions, failed requests, requested urls}."""
        self.b.events.clear()
        self.send("Page.navigate", url=url)
        self.b.wait_for("Page.loadEventFired", timeout)
        return self.drain()

    def drain(self):
        out, urls = {"exceptions": [], "failed": [], "requested": []}, {}
        for e in self.b.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out["exceptions"].append(d.get("exception", {}).get("description") or d.get("text"))
            elif m == "Network.requestWillBeSent":
                urls[p["requestId"]] = p["request"]["url"]
                out["requested"].append(p["request"]["url"])
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                out["failed"].append(f"{p['response']['status']} {p['response']['url']}")
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out["failed"].append(f"{p.get('errorText')} {urls.get(p.get('requestId'), '?')}")
        self.b.events.clear()
        return out

    def js(self, expression):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:60]}...: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait_js(self, expression, timeout=30):
        """Poll a JS expression until it is truthy; returns its last value."""
        end = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value or time.monotonic() > end:
                return value
            time.sleep(0.2)


# What a page shows: its text (and the prose outside code blocks), error outputs, images, sidebar links.
PAGE_JS = r"""(() => {
  const all = sel => [...document.querySelectorAll(sel)];
  const main = document.querySelector('main') || document.body;
  const prose = [];
  const walk = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {acceptNode: n =>
      n.parentElement.closest('pre, code, script, style, .highlight') ? NodeFilter.FILTER_REJECT
                                                                       : NodeFilter.FILTER_ACCEPT});
  while (walk.nextNode()) prose.push(walk.currentNode.textContent);
  const h1 = main.querySelector('h1');
  return {
    path: location.pathname,
    title: document.title,
    h1: h1 ? h1.textContent.replace(/#$/, '').trim() : null,
    text: main.innerText,
    prose: prose.join(' '),
    bad_outputs: all('.output.traceback, .output.stderr, .output.error, [class*="tag_injected-parameters"]')
        .map(e => e.className + ': ' + e.innerText.slice(0, 200)),
    images: all('main img').map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth, h: i.naturalHeight,
                                       done: i.complete})),
    figures: all('main figure').map(f => ({id: f.id, img: !!f.querySelector('img'), text: f.innerText.slice(0, 200)})),
    sidebar: all('nav.bd-docs-nav a.reference.internal').map(a => a.href),
    tables: all('main table').map(t => {
      let a = t.parentElement, scrolls = false;
      while (a && a !== main) {
        const o = getComputedStyle(a).overflowX;
        if (o === 'auto' || o === 'scroll') { scrolls = true; break; }
        a = a.parentElement;
      }
      return {index: t.classList.contains('dataframe') && !!t.querySelector('tbody tr th'),
              width: t.getBoundingClientRect().width, room: main.getBoundingClientRect().width, scrolls: scrolls,
              head: (t.querySelector('tr') || {innerText: ''}).innerText.slice(0, 80)};
    }),
    downloads: all('main a.download, main a.reference.download').map(a => a.href),
    captions: all('main figure figcaption').map(c => c.innerText.slice(0, 60)),
  };
})()"""


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(quick_book):
    """The quick profile's book served on 127.0.0.1 (a free port); yields (root URL, html dir, pages)."""
    if not (quick_book.html / "index.html").exists():
        pytest.fail(f"the quick profile built no book (exit {quick_book.proc.returncode}):\n"
                    f"{quick_book.proc.stderr[-3000:]}", pytrace=False)
    handler = functools.partial(Quiet, directory=str(quick_book.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pages = [f"{entry}.html" for entry in pbook.toc_files(quick_book.root)]
    yield f"http://127.0.0.1:{server.server_address[1]}/", quick_book.html, pages
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    browser = Chromium(find_chromium(), tmp_path_factory.mktemp("chromium-profile"))
    try:
        t = Tab(browser)
        t.send("Emulation.setDeviceMetricsOverride", width=1280, height=2000, deviceScaleFactor=1, mobile=False)
        yield t
    finally:
        browser.close()


def local_file(html, url):
    return html / unquote(urlsplit(url).path).lstrip("/")


def check_picture(data, where):
    """A decodable raster image (or an SVG) with more than one colour."""
    if data[:5] in (b"<?xml", b"<svg ") or b"<svg" in data[:200]:
        assert len(data) > 200, f"{where}: empty SVG"
        return
    img = Image.open(io.BytesIO(data))
    img.load()
    lo_hi = img.convert("L").getextrema()
    assert img.width > 10 and img.height > 10 and lo_hi[0] != lo_hi[1], f"{where}: blank {img.size} image"


def test_front_page_redirects_to_the_introduction_and_is_saved_as_a_screenshot(site, tab):
    base, html, pages = site
    tab.open(base)
    first = "/" + pages[0]
    assert tab.wait_js(f"location.pathname === {json.dumps(first)} && document.readyState === 'complete'", 30), \
        f"index.html did not lead to {first}: at {tab.js('location.href')}"
    tab.wait_js("document.fonts ? document.fonts.status === 'loaded' : true", 10)
    shot = base64.b64decode(tab.send("Page.captureScreenshot", format="png")["data"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "front_page.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    check_picture(shot, "front page screenshot")
    assert Image.open(io.BytesIO(shot)).size == (1280, 2000)


@pytest.fixture(scope="module")
def visits(site, tab):
    """Every page of _toc.yml opened once: {page: (what the page shows, what happened while loading)}."""
    base, html, pages = site
    out = {}
    for page in pages:
        seen = tab.open(base + page)
        out[page] = tab.js(PAGE_JS), seen
    return out


def report(problems):
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_every_page_loads(site, visits):
    base, html, pages = site
    problems = []
    for page, (info, seen) in visits.items():
        if info["path"] != "/" + page:
            problems.append(f"{page}: ended at {info['path']}")
        for e in seen["exceptions"]:
            if not any(k in e for k in KNOWN_JS_ERRORS):
                problems.append(f"{page}: JavaScript error: {e.splitlines()[0]}")
        for f in seen["failed"]:
            if f.split()[-1].startswith(base) and not f.endswith("favicon.ico"):
                problems.append(f"{page}: request failed: {f}")
        if not info["h1"] or info["h1"] not in info["title"]:
            problems.append(f"{page}: title {info['title']!r} does not name the page's heading {info['h1']!r}")
        if len(info["text"]) < 200:
            problems.append(f"{page}: almost empty ({len(info['text'])} characters)")
    report(problems)


def test_no_page_shows_an_error_raw_glue_or_injected_parameters(visits):
    problems = []
    for page, (info, seen) in visits.items():
        for out in info["bad_outputs"]:
            if "stderr" not in out.split(":")[0]:
                problems.append(f"{page}: shows {out!r}")
        for needle in ("Traceback (most recent call last)", "An Exception was encountered", "<Figure size",
                       "{glue", "glue:text", "glue:figure"):
            if needle in info["prose"]:
                problems.append(f"{page}: shows {needle!r}")
        if "# Parameters\n" in info["text"]:
            problems.append(f"{page}: shows papermill's injected parameters")
    report(problems)


def test_no_page_shows_warnings_on_stderr(visits):
    """A warning printed by a cell (e.g. a RuntimeWarning from scipy) ends up on the page."""
    report([f"{page}: shows {out!r}" for page, (info, _) in visits.items()
            for out in info["bad_outputs"] if "stderr" in out.split(":")[0]])


def test_every_figure_and_image_is_shown(site, visits):
    base, html, pages = site
    problems, n_figures = [], 0
    for page, (info, seen) in visits.items():
        n_figures += len(info["figures"])
        for fig in info["figures"]:
            if not fig["img"]:
                problems.append(f"{page}: figure {fig['id'] or fig['text'][:40]!r} has no image")
        for img in info["images"]:
            if not (img["done"] and img["w"] > 0 and img["h"] > 0):
                problems.append(f"{page}: image not displayed: {img['src']}")
                continue
            if img["src"].startswith("data:"):
                data = base64.b64decode(img["src"].split(",", 1)[1])
            else:
                path = local_file(html, img["src"])
                data = path.read_bytes() if path.is_file() else b""
            try:
                check_picture(data, img["src"][:80])
            except Exception as e:  # not an image, or a blank one
                problems.append(f"{page}: image {img['src'][:80]}: {e}")
    report(problems)
    assert n_figures >= len([p for p in pages if "/notebooks/" in p]), f"only {n_figures} figures in the whole book"


def test_tables_fit_the_page_and_show_no_index_column(visits):
    """A reader's table has no pandas index column, and is no wider than the content area unless it
    scrolls inside its own box."""
    problems, n_tables = [], 0
    for page, (info, _) in visits.items():
        n_tables += len(info["tables"])
        for t in info["tables"]:
            if t["index"]:
                problems.append(f"{page}: a table shows a pandas index column ({t['head']!r})")
            if t["width"] > t["room"] + 1 and not t["scrolls"]:
                problems.append(f"{page}: a table {t['width']:.0f}px wide overflows the {t['room']:.0f}px content "
                                f"area ({t['head']!r})")
    report(problems)
    assert n_tables >= 10, f"only {n_tables} tables in the whole book"


def test_every_download_link_serves_its_file(site, visits):
    """Each table's CSV ({download} links) is part of the built book."""
    base, html, pages = site
    links = {u: page for page, (info, _) in visits.items() for u in info["downloads"]}
    assert len(links) >= 5, f"only {len(links)} download links in the book"
    report([f"{page}: download link to a missing file: {u}" for u, page in links.items()
            if not local_file(html, u).is_file()])
    csv = next(u for u in links if u.endswith(".csv"))
    assert local_file(html, csv).read_text().count("\n") >= 2, f"{csv}: an empty table"


def test_figures_are_numbered(visits):
    report([f"{page}: figure without a number: {c!r}" for page, (info, _) in visits.items()
            for c in info["captions"] if not c.startswith("Fig")])


def test_pages_need_nothing_from_the_internet(site, visits):
    """The book must read the same offline (and in CI, which has no internet): MathJax included."""
    base, html, pages = site
    allowed = (base, "data:", "blob:", "about:")
    report([f"{page}: loads {u}" for page, (info, seen) in visits.items()
            for u in dict.fromkeys(seen["requested"]) if not u.startswith(allowed)])


def test_math_is_typeset_by_the_local_mathjax(site, tab):
    """The architecture chapter's equations are rendered (MathJax output elements), not shown as TeX."""
    base, html, pages = site
    page = next(p for p in pages if p.endswith("architecture.html"))
    seen = tab.open(base + page)
    n = tab.wait_js("document.querySelectorAll('mjx-container').length || null", 30)
    assert n and n >= 5, f"{page}: MathJax rendered {n} formulas"
    assert any(u.startswith(base + "_static/mathjax/") for u in seen["requested"]), "MathJax not loaded from the book"
    raw = tab.js("document.querySelector('article').innerText.includes('\\\\frac')")
    assert not raw, f"{page}: raw TeX (\\frac) shown as text"


def test_sidebar_lists_every_page_and_next_links_walk_the_book_in_toc_order(site, tab):
    base, html, pages = site
    tab.open(base + pages[0])
    info = tab.js(PAGE_JS)
    linked = {urlsplit(u).path.lstrip("/") for u in info["sidebar"]}
    assert set(pages[1:]) <= linked, f"missing from the sidebar: {sorted(set(pages[1:]) - linked)}"
    for u in info["sidebar"]:
        assert local_file(html, u).is_file(), f"sidebar link to a missing page: {u}"
    walked = [info["path"].lstrip("/")]
    for _ in pages[1:]:
        assert tab.js("!!document.querySelector('a.right-next')"), f"no 'next' link on {walked[-1]}"
        tab.b.events.clear()
        tab.js("document.querySelector('a.right-next').click(); true")
        tab.b.wait_for("Page.loadEventFired", 60)
        walked.append(tab.js("location.pathname").lstrip("/"))
    assert walked == pages
    tab.b.events.clear()
    tab.js("document.querySelector('a.left-prev').click(); true")
    tab.b.wait_for("Page.loadEventFired", 60)
    assert tab.js("location.pathname").lstrip("/") == pages[-2]


@pytest.mark.parametrize("query", ["normalization", "batch"])
def test_search_page_finds_pages(site, tab, query):
    base, html, pages = site
    seen = tab.open(f"{base}search.html?q={query}")
    found = tab.wait_js("""(() => { const li = [...document.querySelectorAll('#search-results li a')];
                            return li.length ? li.map(a => a.href) : null; })()""", 30)
    shown = tab.js("(document.querySelector('#search-results') || {}).innerText")
    assert found, f"no search results for {query!r}: the page shows {shown!r}"
    for u in found:
        assert local_file(html, u).is_file(), f"search result links to a missing page: {u}"
    assert {urlsplit(u).path.lstrip("/") for u in found} & set(pages)
    assert not [f for f in seen["failed"] if "favicon.ico" not in f]
