"""Making untrusted text safe to show: control characters become visible placeholders."""

from __future__ import annotations

import re

# Characters that are not shown but act, or hide: controls (Unicode category Cc), format
# characters (Cf: bidirectional controls, zero-width characters, the soft hyphen, tags, ...) and
# the line and paragraph separators (Zl, Zp). Ranges are kept whole where a later Unicode version
# adds to them (Egyptian format controls, tags); a test checks them against unicodedata.
# ZWNJ and ZWJ: Persian and Indic text and emoji sequences need them, so bodies keep them; in a
# one-line field (an address, a name, a subject) they can only make two strings look alike.
_JOINERS = "\u200c\u200d"
_HIDDEN = (  # the rest of them, but for the C0 controls
    "\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200e\u200f"
    "\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001345f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f"
)
BEYOND_C0 = _HIDDEN + _JOINERS  # what JSON output escapes (json.dumps escapes C0 itself)
INVISIBLE = "\x00-\x1f" + BEYOND_C0  # what a file name may not hold
_CONTROL_BUT_ZWJ = re.compile(f"[\x00-\x1f{_HIDDEN}\u200c]")  # ZWJ: see visible()
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
_ONE_LINE = {**_PLACEHOLDERS, ord("\u200c"): _placeholder("\u200c")}  # ZWJ: in visible()
_ZWJ_SHOWN = _placeholder("\u200d")

# Emoji and pictographs (roughly Unicode's Extended_Pictographic, which `re` cannot name); before a
# ZWJ inside a sequence there may also be VS16 (❤️‍🔥) or a skin tone (1F3FB-1F3FF, in the block).
_PICTOGRAPHIC = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2\u25aa-\u25fe"
    "\u2600-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
)
# A ZWJ joining two pictographs (as in 👨‍👩‍👧), and one that does not. Each starts with the
# literal, so that a search skips ahead in C; a lookbehind placed after it checks what precedes.
_EMOJI_ZWJ = re.compile(f"\u200d(?=[{_PICTOGRAPHIC}])(?<=[{_PICTOGRAPHIC}\ufe0f]\u200d)")
_LONE_ZWJ = re.compile(f"\u200d(?:(?![{_PICTOGRAPHIC}])|(?<![{_PICTOGRAPHIC}\ufe0f]\u200d))")


def visible(text: str) -> str:
    """One line of untrusted text with every control and zero-width character shown, not
    obeyed or hidden; only a ZWJ inside an emoji sequence is kept."""
    if _CONTROL_BUT_ZWJ.search(text):
        text = text.translate(_ONE_LINE)
    if "\u200d" in text and _LONE_ZWJ.search(text):
        # No NUL is left (any was translated), so NUL can set the emoji's joiners aside while
        # the others are replaced in C: only the emoji's cost a match each, and text made only
        # of emoji sequences does not get here.
        text = _EMOJI_ZWJ.sub("\x00", text).replace("\u200d", _ZWJ_SHOWN)
        text = text.replace("\x00", "\u200d")
    return text


def visible_block(text: str) -> str:
    """Like `visible`, but keeps newlines and tabs (message bodies) and the joiners (Persian,
    Indic scripts, emoji); CR is dropped at line ends."""
    text = text.replace("\r\n", "\n")
    return text.translate(_KEEP_LINES) if _CONTROL_KEEP_LINES.search(text) else text


def format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"
