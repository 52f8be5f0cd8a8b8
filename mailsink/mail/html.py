"""HTML bodies as readable text for a terminal: blocks on their own lines, links kept.

Not a browser: scripts and styles are dropped, tables become lines of cells. `o` in the TUI opens
the real HTML in a browser.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCKS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tr",
        "ul",
    ]
)
_SKIPPED = frozenset({"script", "style", "head", "title", "template", "noscript"})
_SPACES = re.compile(r"[ \t\r\n\f]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.pre = 0
        self.links: list[str | None] = []

    def _newline(self, count: int = 1) -> None:
        self.out.append("\n" * count)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
        elif tag == "br":
            self._newline()
        elif tag == "pre":
            self.pre += 1
            self._newline(2)
        elif tag == "li":
            self._newline()
            self.out.append("• ")
        elif tag in ("td", "th"):
            self.out.append(" | ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(f"[image: {alt}]")
        elif tag in _BLOCKS:
            self._newline(2 if tag in ("p", "h1", "h2", "h3", "table", "blockquote") else 1)
        if tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self._newline(2)
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and not href.startswith(("#", "mailto:")):
                self.out.append(f" <{href}>")
        elif tag in _BLOCKS:
            self._newline(2 if tag in ("p", "h1", "h2", "h3", "table", "blockquote") else 1)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self.out.append(data if self.pre else _SPACES.sub(" ", data))


def html_to_text(html: str) -> str:
    builder = _TextBuilder()
    try:
        builder.feed(html)
        builder.close()
    except Exception:  # HTMLParser is lenient; this is a last resort
        return html
    lines = [line.strip(" ") for line in "".join(builder.out).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n") + "\n"
