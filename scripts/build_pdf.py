"""Build the print edition: the whole book as one HTML page, printed to PDF by headless chromium.

Usage: python scripts/build_pdf.py [OUT.pdf]   (default _build/pdf/attention-mechanisms.pdf)
Steps: `jupyter-book build --builder singlehtml` (no warnings allowed) into _build/pdf; the
single page is copied to the root of that build so that its relative links resolve; Debian's
chromium prints it, with enough virtual time for MathJax to typeset and the widget manager to
draw every widget's current frame (a static image on paper). Works offline.
"""
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                 "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw"]


def build_pdf(out, work=ROOT / "_build" / "pdf"):
    """Build the single-page HTML into ``work`` and print it to ``out``; return ``out``."""
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb), "build", str(ROOT), "--builder", "singlehtml", "--path-output", str(work),
                    "-W", "-n", "--keep-going"], check=True, cwd=ROOT)
    html = work / "_build" / "singlehtml"
    root_page = (html / "index.html").read_text().split("url=")[1].split('"')[0]  # the redirect
    page = html / "print.html"
    shutil.copyfile(html / root_page, page)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out = pathlib.Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium, *CHROMIUM_ARGS, f"--print-to-pdf={out}", page.as_uri()], check=True,
                   capture_output=True)
    return out


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else ROOT / "_build" / "pdf" / "attention-mechanisms.pdf"
    print(f"The PDF is ready: {build_pdf(target)}")
