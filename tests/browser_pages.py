"""vfnb's HTML pages read in a real browser (headless Chromium driven by Playwright): problems and screenshots.

:func:`page_problems` opens one page as a reader would (``file://``, 1280 px wide)
and lists what a reader would trip over: a console error or script error, an
image that does not load, a link to a file or anchor that is not there, a warning
or traceback box in rendered notebook output, a path of the machine that made
the page, a missing or generic ``<title>``, and content wider than the window
(text or tables running off the page).

Run as a script, it writes a screenshot of each page kind into a folder
(``make screenshots`` -> ``docs/screenshots/``).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

#: Where Debian's ``chromium`` package puts the browser.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
#: Window of a reader's laptop.
VIEWPORT = {"width": 1280, "height": 900}
#: Paths of a machine: home folders, temporary and work folders, a Windows drive.
MACHINE_PATH = re.compile(r"(?<![\w.])(/home/|/root/|/tmp/|/work/|/Users/|/var/folders/|[A-Z]:\\\\)")
#: Titles that say nothing of the page.
GENERIC_TITLES = {"", "notebook", "untitled"}

_CHECK_SCRIPT = """() => {
  const out = {brokenImages: [], links: [], stderrBoxes: [], overflow: null};
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) out.brokenImages.push(img.getAttribute('src').slice(0, 80));
  }
  for (const a of document.querySelectorAll('a[href]')) out.links.push(a.getAttribute('href'));
  for (const el of document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .output_stderr')) {
    out.stderrBoxes.push(el.innerText.slice(0, 160));
  }
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth + 1) out.overflow = doc.scrollWidth;
  return out;
}"""


def chromium() -> str | None:
    """The browser executable, or None when none is installed (or Playwright is missing)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return None
    found = shutil.which("chromium") or next((c for c in CHROMIUM_CANDIDATES if Path(c).is_file()), None)
    return found


def _link_problem(page_path: Path, href: str, anchors: set[str]) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", href) and not href.startswith("file:"):
        return None  # http(s), mailto, data: not followed here
    target, _, fragment = href.partition("#")
    if not target:
        return None if fragment in anchors else f"link to a missing anchor #{fragment}"
    if href.startswith("file:"):
        return f"link to a file of this machine: {href}"
    resolved = (page_path.parent / target).resolve()
    return None if resolved.exists() else f"broken link {href}"


def page_problems(browser, page_path: Path) -> list[str]:
    """Every problem a reader meets on ``page_path`` (see the module docstring), as sentences."""
    page = browser.new_page(viewport=VIEWPORT)
    messages = []
    page.on("console", lambda m: messages.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: messages.append(f"script error: {e}"))
    try:
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        found = page.evaluate(_CHECK_SCRIPT)
        anchors = set(page.evaluate("() => Array.from(document.querySelectorAll('[id],[name]'))"
                                    ".map(e => e.id || e.getAttribute('name'))"))
        title, text = page.title(), page.inner_text("body")
    finally:
        page.close()
    problems = [f"console: {m}" for m in messages]
    problems += [f"image does not load: {src}" for src in found["brokenImages"]]
    problems += [p for p in (_link_problem(page_path, h, anchors) for h in found["links"]) if p]
    problems += [f"warning or error box in the output: {box!r}" for box in found["stderrBoxes"]]
    if "Traceback (most recent call last)" in text:
        problems.append("a Python traceback is shown")
    problems += sorted({f"machine path shown: ...{text[max(0, m.start() - 30):m.end() + 30]!r}..."
                        for m in MACHINE_PATH.finditer(text)})
    if title.strip().lower() in GENERIC_TITLES:
        problems.append(f"no title that names the page (title is {title!r})")
    if found["overflow"]:
        problems.append(f"content {found['overflow']} px wide in a {VIEWPORT['width']} px window: it runs off the page")
    return problems


#: Longest screenshot (px): the top of a long page is what a reader sees first.
MAX_SHOT_HEIGHT = 2400


def screenshot(browser, page_path: Path, out: Path) -> Path:
    """A PNG of ``page_path`` at the reader's window width, from the top, at most :data:`MAX_SHOT_HEIGHT` tall."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        height = min(MAX_SHOT_HEIGHT, int(page.evaluate("() => document.documentElement.scrollHeight")))
        page.screenshot(path=str(out), full_page=True,
                        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height})
    finally:
        page.close()
    return out


def main(argv: list[str]) -> int:
    """``python tests/browser_pages.py OUT_DIR PAGE...``: one screenshot per page, named after it."""
    from playwright.sync_api import sync_playwright

    if len(argv) < 2:
        print("usage: browser_pages.py OUT_DIR NAME=PAGE.html ...", file=sys.stderr)
        return 2
    exe = chromium()
    if exe is None:
        print("error: no Chromium (apt-get install chromium) or no Playwright (pip install playwright)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        for item in argv[1:]:
            name, _, page = item.partition("=")
            shot = screenshot(browser, Path(page), out / f"{name}.png")
            print(f"wrote {shot}")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
