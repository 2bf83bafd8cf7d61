"""Check the rendered book for math and roles that were not rendered.

The strict build (``jupyter-book build . -W -n``) passes on Markdown that parses
into something other than what the author meant: an inline formula continued on
a source line that begins with ``+`` or ``-`` becomes a bullet list, and the page
shows raw TeX. This script reads the built HTML pages and fails on text *outside*
math elements, code and scripts that contains

- a ``$``, ``\\(`` or ``\\)`` (a formula that MyST did not turn into math),
- ``\\frac``, ``\\partial``, ``\\bar`` (TeX commands in prose),
- an unresolved role: ``{cite``, ``{eq}``, ``{ref}``, ``{numref}``, ``{glue``;
- a Markdown table that was printed instead of rendered (``|---|``).

    python tools/check_rendered.py                    # _build/html/book/**/*.html
    python tools/check_rendered.py page.html ...      # given pages

It prints one line per finding (page and snippet) and exits with status 1 if
there is any.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GLOB = "_build/html/book/**/*.html"

# What may legitimately contain TeX or role syntax: rendered math (MathJax's input
# elements, class "math", and its output, mjx-container), code, scripts, styles.
SKIP_TAGS = ["script", "style", "pre", "code", "kbd", "samp", "textarea", "mjx-container", "svg"]
SKIP_CLASSES = ["math", "highlight"]

PATTERNS = {
    "$": re.compile(r"\$"),
    "\\( or \\)": re.compile(r"\\[()]"),
    "\\frac": re.compile(r"\\frac"),
    "\\partial": re.compile(r"\\partial"),
    "\\bar": re.compile(r"\\bar"),
    "unresolved role": re.compile(r"\{(cite|eq|ref|numref|glue|doc|term)[:}]"),
    # a table's rule row, as typed (|---|) or after smart dashes turned "---" into an em dash (|—|)
    "unrendered table": re.compile(r"\|\s*:?(?:-{3,}|[\u2013\u2014]+-?):?\s*\|"),
}


@dataclass
class Finding:
    page: str
    pattern: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.page}: {self.pattern}: ...{self.snippet}..."


def visible_text(html: str) -> str:
    """The page's main text with math, code and scripts removed."""
    soup = BeautifulSoup(html, "html.parser")
    main = soup.find("main") or soup.find("article") or soup.body or soup
    for tag in main.find_all(SKIP_TAGS):
        tag.decompose()
    for cls in SKIP_CLASSES:
        for tag in main.find_all(class_=cls):
            tag.decompose()
    return main.get_text(" ")


def check_html(html: str, page: str = "<page>", context: int = 60) -> list[Finding]:
    """Every place in the page's text outside math and code that looks like unrendered TeX or an
    unresolved role."""
    text = re.sub(r"\s+", " ", visible_text(html))
    findings = []
    for name, pattern in PATTERNS.items():
        for match in pattern.finditer(text):
            start, end = max(0, match.start() - context), match.end() + context
            findings.append(Finding(page, name, text[start:end]))
    return findings


def check_pages(paths: list[Path]) -> list[Finding]:
    findings = []
    for path in paths:
        findings += check_html(path.read_text(encoding="utf-8"), page=str(path))
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pages", nargs="*", type=Path, help=f"HTML pages (default: {DEFAULT_GLOB})")
    args = parser.parse_args(argv)
    paths = args.pages or sorted(ROOT.glob(DEFAULT_GLOB))
    if not paths:
        print(f"no pages to check (build the book first: {DEFAULT_GLOB} is empty)", file=sys.stderr)
        return 1
    findings = check_pages(paths)
    for finding in findings:
        print(finding)
    print(f"{len(paths)} pages checked, {len(findings)} finding(s) of unrendered math or roles")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
