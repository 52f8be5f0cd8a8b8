"""Making untrusted text safe to show: control characters become visible placeholders."""

from __future__ import annotations

import re

# Characters that are not shown but act, or hide: controls (Unicode category Cc), format
# characters (Cf: bidirectional controls, zero-width characters, the soft hyphen, tags, ...) and
# the line and paragraph separators (Zl, Zp). Ranges are kept whole where a later Unicode version
# adds to them (Egyptian format controls, tags); a test checks them against unicodedata.
_JOINERS = "\u200c\u200d"  # ZWNJ and ZWJ: Persian and Indic text and emoji sequences need them
_HIDDEN = (  # the rest of them, but for the C0 controls
    "\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200e\u200f"
    "\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001345f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f"
)
BEYOND_C0 = _HIDDEN + _JOINERS  # what JSON output escapes (json.dumps escapes C0 itself)
INVISIBLE = "\x00-\x1f" + BEYOND_C0  # what a file name may not hold
# Text shown in a terminal keeps the joiners: they hide nothing that a reader would miss.
_CONTROL = re.compile(f"[\x00-\x1f{_HIDDEN}]")
_CONTROL_KEEP_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_HIDDEN}]")


def characters(ranges: str) -> list[str]:
    """The characters of a regular-expression class body such as "a-z0" (no escapes)."""
    found, at = [], 0
    while at < len(ranges):
        if at + 2 < len(ranges) and ranges[at + 1] == "-":
            found += map(chr, range(ord(ranges[at]), ord(ranges[at + 2]) + 1))
            at += 3
        else:
            found.append(ranges[at])
            at += 1
    return found


def _placeholder(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # Unicode control pictures: ESC -> ␛, BEL -> ␇
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"<U+{code:04X}>"


# str.translate, not a regular expression's sub with a function: a body of 3 million zero-width
# spaces takes 0.1 s instead of 4.5 s (a Python call per character).
_PLACEHOLDERS = {ord(c): _placeholder(c) for c in characters(INVISIBLE) if c not in _JOINERS}
_KEEP_LINES = {**_PLACEHOLDERS}
del _KEEP_LINES[ord("\t")], _KEEP_LINES[ord("\n")]


def visible(text: str) -> str:
    """One line of untrusted text with every control character shown, not obeyed."""
    return text.translate(_PLACEHOLDERS) if _CONTROL.search(text) else text


def visible_block(text: str) -> str:
    """Like `visible`, but keeps newlines and tabs (message bodies); CR is dropped at line ends."""
    text = text.replace("\r\n", "\n")
    return text.translate(_KEEP_LINES) if _CONTROL_KEEP_LINES.search(text) else text


def format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"
