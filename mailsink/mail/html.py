"""HTML bodies as readable text for a terminal: blocks on their own lines, links kept.

Not a browser: scripts and styles are dropped, tables become lines of cells. `o` in the TUI opens
the real HTML in a browser. A single linear pass over tags and text: the stdlib's HTMLParser
rescans unfinished tags and takes minutes on hostile input such as "<a " repeated 50 000 times.
"""

from __future__ import annotations

import html
import re

MAX_HTML = 2 * 1024 * 1024  # characters converted; the rest is cut with a notice

# A tag's quoted attribute values may hold ">" but not "<": every attempt to match a tag stops
# at the next "<", so a document full of unfinished tags or quotes is still read in linear time.
_TOKEN = re.compile(
    r"<!--.*?(?:-->|\Z)"  # a comment, to its end or the document's
    r"|<[!?][^<>]*>"  # <!DOCTYPE>, <![CDATA[…]]>, <![if mso]>, <?xml?>: dropped, as browsers do
    r"""|</?[a-zA-Z][^<>"']*(?:(?:"[^"<]*"|'[^'<]*')[^<>"']*)*>"""
    r"|[^<]+|<",  # a "<" that starts no tag ("a < b", "1 <2") is text
    re.DOTALL,
)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)(.*)>", re.DOTALL)
# One attribute: its name, then its value if it has one; finditer walks them in order, so a
# name is only ever matched whole ("data-href" is not "href") and never inside a value.
_ATTRIBUTE = re.compile(r"""([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]*)))?""")
_SPACES = re.compile(r"[ \t\r\n\f]+")
_BLANK_LINES = re.compile(r"\n{3,}")

_BLOCKS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset"),
        *("figcaption", "figure", "footer", "form", "h4", "h5", "h6", "header", "hr", "li"),
        *("main", "nav", "ol", "section", "tr", "ul"),
    }
)
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "table", "blockquote", "pre"})
_SKIPPED = frozenset({"script", "style", "head", "title", "template", "noscript"})


def _attribute(name: str, attributes: str) -> str | None:
    for match in _ATTRIBUTE.finditer(attributes):
        if match.group(1).lower() == name:
            value = next((group for group in match.groups()[1:] if group is not None), "")
            return html.unescape(value)
    return None


def _append_text(out: list[str], data: str, pre: bool) -> None:
    """Text outside <pre> collapses its white space, and none is kept at a line's start (the
    indentation of the source, not of the text); <pre> keeps it exactly."""
    if not pre:
        data = _SPACES.sub(" ", data)
        if not out or out[-1].endswith("\n"):
            data = data.lstrip(" ")
    if data:
        out.append(data)


def html_to_text(document: str) -> str:
    cut = len(document) > MAX_HTML
    out: list[str] = []
    skipping: str | None = None  # inside <script> and the like, until its end tag
    pre = 0
    links: list[str | None] = []
    for token in _TOKEN.finditer(document, 0, MAX_HTML):
        text = token.group()
        if text.startswith(("<!", "<?")):
            continue  # comments and declarations
        tag = _TAG.match(text) if text.startswith("<") and len(text) > 1 else None
        if tag is None:
            if skipping is None:
                _append_text(out, html.unescape(text), pre > 0)
            continue
        closing, name, attributes = tag.group(1) == "/", tag.group(2).lower(), tag.group(3)
        if skipping is not None:
            if closing and name == skipping:
                skipping = None
            continue
        if name in _SKIPPED and not closing:
            skipping = None if attributes.rstrip().endswith("/") else name
        elif name == "br":
            out.append("\n")
        elif name == "pre":
            pre = max(0, pre + (-1 if closing else 1))
            out.append("\n\n")
        elif name == "li" and not closing:
            out.append("\n• ")
        elif name in ("td", "th") and not closing:
            out.append(" | ")
        elif name == "img" and (alt := _attribute("alt", attributes)):
            out.append(f"[image: {alt}]")
        elif name == "a":
            if not closing:
                links.append(_attribute("href", attributes))
            elif links:
                href = links.pop()
                if href and not href.startswith(("#", "mailto:")):
                    out.append(f" <{href}>")
        elif name in _PARAGRAPHS:
            out.append("\n\n")
        elif name in _BLOCKS:
            out.append("\n")
    lines = [line.rstrip(" ") for line in "".join(out).split("\n")]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n") + "\n"
    if cut:
        text += f"\n[cut: only the first {MAX_HTML // (1024 * 1024)} MiB of the HTML is shown]\n"
    return text
