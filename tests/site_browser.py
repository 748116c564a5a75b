"""Open a rendered study site in headless Chromium and report what does not load.

`browse_site(html_dir)` visits every HTML page of the site (and every local page linked from one) as a
`file://` URL and returns one line per problem: a console error or uncaught exception, a request to
another host (all are blocked: the site must work offline), an `<img>` that did not decode
(`naturalWidth == 0`), a same-page `#fragment` with no target, and a local link that does not load.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
ANCHORS = "() => [...document.querySelectorAll('[id],[name]')].flatMap(e => [e.id, e.getAttribute('name')]).filter(Boolean)"
INSTALL_HINT = "install Debian's chromium (apt-get install -y chromium) to run the browser checks"


def require_chromium(executable: str | Path = CHROMIUM) -> Path:
    "The Chromium executable, or an error that says how to install it."
    executable = Path(executable)
    if not executable.is_file():
        raise RuntimeError(f"{executable} is missing: {INSTALL_HINT}")
    return executable


def _file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def _load(page, url: str, timeout_ms: int) -> str | None:
    "Navigate to a non-HTML local file; None when it loads (shown inline or offered as a download)."
    try:
        with page.expect_download(timeout=timeout_ms) as dl:
            try:
                page.goto(url, wait_until="load", timeout=timeout_ms)
                return None  # displayed inline, no download
            except Exception as e:
                if "Download is starting" not in str(e): return str(e).splitlines()[0]
        return None if dl.value.failure() is None else f"download failed: {dl.value.failure()}"
    except Exception as e:
        return str(e).splitlines()[0]


def browse_site(html_dir: str | Path,  # a rendered site (index.html at its root)
                executable: str | Path = CHROMIUM,  # Chromium to drive
                timeout_ms: int = 30_000,  # per navigation
                ) -> list[str]:  # problems, one line each; empty when every page is clean
    "Load every page of a static site in headless Chromium; return its console errors, broken images and links."
    from playwright.sync_api import sync_playwright
    executable = require_chromium(executable)
    root = Path(html_dir).resolve()
    if not (root / "index.html").is_file(): return [f"{root.name}/index.html is missing"]
    rel = lambda p: p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
    problems: list[str] = []
    todo = [root / "index.html"] + sorted(p for p in root.rglob("*.html") if p != root / "index.html")
    seen_pages: set[Path] = set()
    seen_files: set[Path] = set()
    anchors: dict[Path, set[str]] = {}  # page -> its ids and names
    wanted: list[tuple[str, str, Path, str]] = []  # (linking page, href, target page, fragment)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(accept_downloads=True)
            remote: list[str] = []
            def block(route):
                remote.append(route.request.url); route.abort()
            context.route(re.compile(r"^(?!file:|data:|blob:|about:)"), block)
            while todo:
                path = todo.pop(0).resolve()
                if path in seen_pages: continue
                seen_pages.add(path)
                name, messages = rel(path), []
                page = context.new_page()
                page.on("console", lambda m: m.type == "error" and messages.append(f"console error: {m.text}"))
                page.on("pageerror", lambda e: messages.append(f"uncaught exception: {e}"))
                page.on("requestfailed", lambda r: messages.append(f"request failed: {r.url} ({r.failure})"))
                del remote[:]
                try:
                    page.goto(path.as_uri(), wait_until="load", timeout=timeout_ms)
                    page.wait_for_load_state("networkidle", timeout=timeout_ms)
                except Exception as e:
                    problems.append(f"{name}: does not load: {str(e).splitlines()[0]}")
                    page.close(); continue
                for url in dict.fromkeys(remote): problems.append(f"{name}: requests {url} from another host")
                problems += [f"{name}: {m}" for m in dict.fromkeys(messages)]
                anchors[path] = set(page.evaluate(ANCHORS))
                imgs = page.eval_on_selector_all(
                    "img", "els => els.map(e => [e.getAttribute('src') || '', e.complete, e.naturalWidth])")
                for src, complete, width in imgs:
                    if not complete or width == 0: problems.append(f"{name}: image {src[:80]} did not load")
                links = page.eval_on_selector_all("a[href]", "els => els.map(e => [e.getAttribute('href'), e.href])")
                for raw, absolute in links:
                    if not absolute.startswith("file:"): continue
                    target_url, fragment = urldefrag(absolute)
                    target = _file_path(target_url)
                    if target == path:
                        if fragment and unquote(fragment) not in anchors[path]:
                            problems.append(f"{name}: link {raw} has no target on the page")
                        continue
                    if not target.is_relative_to(root): problems.append(f"{name}: link {raw} leaves the site")
                    elif not target.exists(): problems.append(f"{name}: link {raw} does not resolve ({rel(target)} is missing)")
                    elif target.suffix == ".html":
                        todo.append(target)
                        if fragment: wanted.append((name, raw, target.resolve(), unquote(fragment)))
                    elif target not in seen_files:
                        seen_files.add(target)
                        probe = context.new_page()
                        err = _load(probe, target.as_uri(), timeout_ms)
                        probe.close()
                        if err: problems.append(f"{name}: link {raw} does not load: {err}")
                page.close()
        finally:
            browser.close()
    for source, raw, target, fragment in wanted:
        if target in anchors and fragment not in anchors[target]:
            problems.append(f"{source}: link {raw} has no target on {rel(target)}")
    return problems


def evaluate_pages(html_dir: str | Path,  # a rendered site
                   script: str,  # a JavaScript function of no argument, run on each page after it loads
                   executable: str | Path = CHROMIUM,
                   width: int = 1400,  # the window's width in CSS pixels
                   timeout_ms: int = 30_000,
                   ) -> dict[str, object]:  # page (relative to the site) -> what the script returned
    "Run one script on every HTML page of a site, in headless Chromium at the given width, offline."
    from playwright.sync_api import sync_playwright
    executable = require_chromium(executable)
    root = Path(html_dir).resolve()
    out: dict[str, object] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": 1000})
            context.route(re.compile(r"^(?!file:|data:|blob:|about:)"), lambda route: route.abort())
            for path in sorted(root.rglob("*.html")):
                page = context.new_page()
                page.goto(path.as_uri(), wait_until="load", timeout=timeout_ms)
                out[path.relative_to(root).as_posix()] = page.evaluate(script)
                page.close()
        finally:
            browser.close()
    return out
