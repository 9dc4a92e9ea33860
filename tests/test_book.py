"""The built book: it builds without a warning, and every page works in headless chromium.

The build runs once per session into a fresh folder (a full build, so that no warning can
hide in Sphinx's cache). The browser test serves it on 127.0.0.1 and blocks every request
to another host, so a page that needs the network fails here as it would offline.
"""
import functools
import http.server
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Build the book with `jupyter-book build -W -n --keep-going`; return (html dir, log)."""
    out = tmp_path_factory.mktemp("book")
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(out), "--builder", "html",
                             "-W", "-n", "--keep-going"], capture_output=True, text=True, cwd=ROOT)
    return out / "_build" / "html", result


def test_book_builds_without_warnings(built_book):
    html, result = built_book
    log = result.stdout + result.stderr
    warnings = [line for line in log.splitlines() if re.search(r"WARNING|ERROR", line)]
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or log[-3000:]
    assert (html / "index.html").exists()


def _pages(html):
    skip = {"genindex.html", "search.html"}
    return sorted(p for p in html.rglob("*.html") if p.name not in skip and "_static" not in p.parts
                  and "vendor" not in p.parts and "_sources" not in p.parts and p.name != "index.html")


def test_toc_pages_are_built(built_book):
    html, _ = built_book
    toc = (ROOT / "_toc.yml").read_text()
    files = re.findall(r"(?:file|root):\s*(\S+)", toc)
    for name in files:
        assert (html / f"{name}.html").exists(), f"{name} is in _toc.yml but was not built"


def test_no_page_links_a_cdn(built_book):
    """No script, stylesheet, image or font is loaded from another host."""
    html, _ = built_book
    for page in _pages(html):
        text = page.read_text()
        loads = (re.findall(r'<script[^>]*\ssrc="(https?://[^"]+)"', text)
                 + re.findall(r'<link[^>]*rel="(?:stylesheet|preload|icon)"[^>]*href="(https?://[^"]+)"', text)
                 + re.findall(r'<img[^>]*\ssrc="(https?://[^"]+)"', text))
        assert not loads, f"{page.relative_to(html)} loads {loads}"


@pytest.fixture(scope="session")
def server(built_book):
    html, _ = built_book
    handler = functools.partial(_QuietHandler, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", html
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not pathlib.Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs it with apt")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, base, url_path):
    """Open a page, recording JavaScript errors and requests to other hosts (which are blocked)."""
    context = browser.new_context()
    page = context.new_page()
    errors, foreign = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def route(r):
        if r.request.url.startswith(base) or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{base}/{url_path}", wait_until="load")
    return context, page, errors, foreign


def _wait_for_math_and_widgets(page):
    page.wait_for_function(
        "() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise)", timeout=20000)
    page.evaluate("() => window.MathJax && window.MathJax.startup ? window.MathJax.startup.promise : null")
    page.wait_for_function(
        """() => document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length
                 <= document.querySelectorAll('.jupyter-widgets.widget-container, .jupyter-widgets.widget-inline-hbox, .jupyter-widgets.widget-inline-vbox, .widget-vbox, .widget-box').length""",
        timeout=30000)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=20000)


def test_every_page_in_the_browser(built_book, server, browser):
    """No JavaScript error, no foreign request, maths typeset, images loaded, widgets rendered."""
    base, html = server
    problems = []
    for path in _pages(html):
        rel = path.relative_to(html).as_posix()
        context, page, errors, foreign = _open(browser, base, rel)
        try:
            _wait_for_math_and_widgets(page)
            report = page.evaluate("""() => ({
                math: document.querySelectorAll('.math').length,
                untypeset: Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container')).length,
                broken: Array.from(document.images).filter(i => !(i.naturalWidth > 0) && i.offsetParent !== null).map(i => i.src),
                views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
                errors: document.querySelectorAll('.jupyter-widgets-error-widget, .widget-error').length,
            })""")
        finally:
            context.close()
        if errors:
            problems.append(f"{rel}: JavaScript errors {errors[:3]}")
        if foreign:
            problems.append(f"{rel}: requests to other hosts {sorted(set(foreign))[:5]}")
        if report["untypeset"]:
            problems.append(f"{rel}: {report['untypeset']} of {report['math']} formulas not typeset")
        if report["broken"]:
            problems.append(f"{rel}: images not loaded {report['broken'][:3]}")
        if report["errors"]:
            problems.append(f"{rel}: {report['errors']} widgets failed to render")
    assert not problems, "\n".join(problems)


def _visible_frame(page):
    return page.evaluate("""() => {
        const imgs = Array.from(document.querySelectorAll('.jupyter-widgets img'))
            .filter(i => i.offsetParent !== null && i.getBoundingClientRect().width > 0);
        return imgs.length ? imgs[0].src : null;
    }""")


def test_static_slider_changes_its_figure(built_book, server, browser):
    """On a page without a kernel, moving a widget's slider switches the figure it shows."""
    base, html = server
    pages = [p for p in _pages(html) if "widget-view+json" in p.read_text() and "notebooks" in p.parts]
    assert pages, "no page of the book has a widget"
    context, page, errors, foreign = _open(browser, base, pages[0].relative_to(html).as_posix())
    try:
        _wait_for_math_and_widgets(page)
        handle = page.locator(".jupyter-widgets .noUi-handle, .jupyter-widgets input[type=range]").first
        handle.scroll_into_view_if_needed()
        before = _visible_frame(page)
        assert before, "the widget shows no image"
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(300)
        after = _visible_frame(page)
    finally:
        context.close()
    assert not errors and not foreign, (errors, foreign)
    assert after and after != before, "moving the slider did not change the figure"


@pytest.fixture(scope="session")
def student_book(tmp_path_factory):
    """Build the student edition (scripts/student_config.py) like `make student`."""
    out = tmp_path_factory.mktemp("student")
    config = out / "config" / "_config.yml"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "student_config.py"), str(config)], check=True,
                   capture_output=True)
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jb), "build", str(ROOT), "--config", str(config), "--path-output", str(out),
                             "--builder", "html", "-W", "-n", "--keep-going"], capture_output=True, text=True,
                            cwd=ROOT)
    return out / "_build" / "html", result


def _count(pages, pattern):
    return {page.name: len(re.findall(pattern, page.read_text())) for page in pages}


def test_student_edition_has_every_exercise_and_no_solution(built_book, student_book):
    html, _ = built_book
    student, result = student_book
    log = result.stdout + result.stderr
    warnings = [line for line in log.splitlines() if re.search(r"WARNING|ERROR", line)]
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or log[-3000:]
    exercise, solution = r'class="exercise admonition', r'class="solution[ "]'
    full = [p for p in _pages(html) if "notebooks" in p.parts]
    assert sum(_count(full, solution).values()) > 0, "the full book should show solutions"
    pages = [student / p.relative_to(html) for p in full]
    assert _count(pages, exercise) == _count(full, exercise), "the student edition lost an exercise"
    assert sum(_count(pages, solution).values()) == 0, "the student edition shows a solution"
    assert not (student / "_sources").exists(), "page sources (which hold the solutions) were copied"
    assert "student edition" in (student / "index.html").read_text() or \
        "student edition" in (student / "book" / "preface.html").read_text()


def _titles():
    """The first heading of every page in _toc.yml (a notebook's or a Markdown page's)."""
    import json

    titles = {}
    for name in re.findall(r"(?:file|root):\s*(\S+)", (ROOT / "_toc.yml").read_text()):
        path = ROOT / f"{name}.ipynb"
        if path.exists():
            cells = json.loads(path.read_text())["cells"]
            text = next("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        else:
            text = (ROOT / f"{name}.md").read_text()
        titles[name] = next(line[2:].strip() for line in text.splitlines() if line.startswith("# "))
    return titles


def test_pdf_has_every_chapter_and_draws_the_widgets(tmp_path_factory):
    """`make pdf` (scripts/build_pdf.py) prints the whole book, every page of the toc in it."""
    from pypdf import PdfReader

    sys.path.insert(0, str(ROOT / "scripts"))
    from build_pdf import build_pdf

    work = tmp_path_factory.mktemp("pdf")
    pdf = build_pdf(work / "book.pdf", work=work)
    reader = PdfReader(pdf)
    text = re.sub(r"\s+", " ", " ".join(page.extract_text() or "" for page in reader.pages))
    missing = [f"{name}: {title}" for name, title in _titles().items()
               if re.sub(r"\s+", " ", title) not in text]
    assert not missing, f"pages missing from the PDF: {missing}"
    single = (work / "_build" / "singlehtml" / "print.html").read_text()
    assert single.count("application/vnd.jupyter.widget-state+json") >= 10, "widget states not loaded"
    images = sum(len(page.images) for page in reader.pages[:60])
    assert images > 0, "no figure in the first pages of the PDF"


def test_pages_are_keyboard_navigable(built_book, server, browser):
    """Tab alone reaches the skip link first, then the page's links and a widget's slider,
    each focused element visible on screen; arrow keys then move the slider (as tested above)."""
    base, html = server
    pages = [p for p in _pages(html) if "widget-view+json" in p.read_text() and "notebooks" in p.parts]
    context, page, errors, foreign = _open(browser, base, pages[0].relative_to(html).as_posix())
    try:
        _wait_for_math_and_widgets(page)
        seen = []
        for _ in range(400):
            page.keyboard.press("Tab")
            seen.append(page.evaluate("""() => {
                const e = document.activeElement;
                const boxes = [e, ...e.querySelectorAll('*')].map(x => x.getBoundingClientRect());
                return {tag: e.tagName, cls: String(e.className), text: (e.innerText || '').trim().slice(0, 40),
                        visible: boxes.some(r => r.width > 0 && r.height > 0),  // a toggle may draw only its icon
                        widget: !!e.closest('.jupyter-widgets')};
            }"""))
            if seen[-1]["widget"]:
                break
    finally:
        context.close()
    assert "skip" in seen[0]["text"].lower() or "skip" in seen[0]["cls"].lower(), f"first Tab stop: {seen[0]}"
    assert any(s["widget"] for s in seen), "no widget control can be reached with the Tab key"
    hidden = [s for s in seen if not s["visible"] and s["tag"] != "BODY"]
    assert not hidden, f"Tab focuses elements that are not visible: {hidden[:3]}"


def test_every_figure_has_alt_text_in_the_html(built_book):
    """No image is described by its own file name (myst-nb's default when a cell gives no alt)."""
    html, _ = built_book
    bad = []
    for page in _pages(html):
        for tag in re.findall(r"<img\b[^>]*>", page.read_text()):
            alt, src = re.search(r'alt="([^"]*)"', tag), re.search(r'src="([^"]*)"', tag)
            if alt is None or len(alt.group(1).strip()) < 5 or (src and alt.group(1) == src.group(1)):
                bad.append(f"{page.relative_to(html)}: {tag[:120]}")
    assert not bad, "images without a real alt text:\n" + "\n".join(bad[:10])
