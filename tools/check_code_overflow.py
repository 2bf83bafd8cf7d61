"""Check, in a real browser, that no code cell of the built book scrolls sideways.

tools/check_code_width.py counts columns; whether those columns fit depends on the
theme's content column and the code font (``_static/code.css``). This opens each
built chapter in headless Chromium at a window width (1366 pixels by default, a
common laptop screen), and reports every code cell whose content is wider than
its box (``scrollWidth > clientWidth``) with its longest line's length.

    python tools/check_code_overflow.py                     # the chapters, 1366 px
    python tools/check_code_overflow.py --width 1280 _build/html/book/03_*.html

Needs a built book (``make book``) and a ``chromium`` on the PATH; exit status 1
if any cell overflows, 2 if Chromium is missing. A local check, not part of CI
(the CI machine has no browser).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GLOB = "_build/html/book/[0-9]*.html"

# Runs after the page (and its fonts) loaded; writes its findings into the DOM, which
# Chromium's --dump-dom prints.
MEASURE = """<script>
window.addEventListener('load', () => document.fonts.ready.then(() => {
  const rows = [...document.querySelectorAll('div.cell_input pre')].map(p => [
    Math.max(...p.textContent.split('\\n').map(line => line.length)),
    p.scrollWidth, p.clientWidth]);
  const out = document.createElement('div');
  out.id = 'overflow-measure';
  out.textContent = JSON.stringify(rows);
  document.body.appendChild(out);
}));
</script></body>"""


def measure(page: Path, width: int, chromium: str) -> list[list[int]]:
    """``[longest line, scrollWidth, clientWidth]`` of every code cell of ``page``."""
    # a copy beside the page, so its relative links to the theme's CSS still resolve
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=page.parent) as copy:
        copy.write(page.read_text().replace("</body>", MEASURE, 1))
        copy.flush()
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             f"--window-size={width},900", "--virtual-time-budget=8000",
             "--dump-dom", Path(copy.name).as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
    found = re.search(r'id="overflow-measure">([^<]*)<', dom)
    if found is None:
        raise RuntimeError(f"{page}: the measuring script did not run")
    rows: list[list[int]] = json.loads(found.group(1).replace("&quot;", '"'))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pages", nargs="*", type=Path, help=f"default: {DEFAULT_GLOB}")
    parser.add_argument("--width", type=int, default=1366, help="window width in pixels")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("check_code_overflow: no chromium on the PATH (apt-get install chromium)")
        return 2
    pages = args.pages or sorted(ROOT.glob(DEFAULT_GLOB))
    if not pages:
        print(f"check_code_overflow: no pages match {DEFAULT_GLOB}; run `make book` first")
        return 1
    overflowing, cells = 0, 0
    for page in pages:
        rows = measure(page, args.width, chromium)
        cells += len(rows)
        for longest, scroll, client in rows:
            if scroll > client:
                overflowing += 1
                print(f"{page.name}: a cell of {longest} columns is {scroll} px wide in {client}")
    print(f"{cells} code cells in {len(pages)} pages at {args.width} px: {overflowing} scroll")
    return 1 if overflowing else 0


if __name__ == "__main__":
    sys.exit(main())
