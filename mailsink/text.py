"""Making untrusted text safe to show: control characters become visible placeholders."""

from __future__ import annotations

import re
import unicodedata

# Characters that are not shown but act, or hide: controls (Unicode category Cc), format
# characters (Cf: bidirectional controls, zero-width characters, the soft hyphen, tags, ...),
# the line and paragraph separators (Zl, Zp) and the rest of Unicode's Default_Ignorable_Code_Point
# (DerivedCoreProperties.txt: a combining grapheme joiner, variation selectors, Hangul fillers,
# Khmer inherent vowels, Mongolian variation selectors and unassigned code points reserved as
# ignorable). Ranges are kept whole where a later Unicode version adds to them (Egyptian format
# controls, tags, the ignorable blocks); a test checks them against unicodedata.
# ZWNJ and ZWJ: Persian and Indic text and emoji sequences need them, so bodies keep them; in a
# one-line field (an address, a name, a subject) they can only make two strings look alike.
_JOINERS = "\u200c\u200d"
# Default-ignorable, not Cc or Cf, and needed by some script or by emoji: bodies keep them. The
# combining grapheme joiner (Hebrew, Latin), the Hangul choseong and jungseong fillers (old
# Hangul syllables), the Mongolian free variation selectors and the variation selectors (emoji
# presentation, CJK ideographic variants).
_SCRIPT_MARKS = "\u034f\u115f\u1160\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef"
_HIDDEN = (  # the rest of them, but for the C0 controls
    "\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u17b4\u17b5\u180e\u200b"
    "\u200e\u200f\u2028-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff0-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001345f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e00ff"
    "\U000e01f0-\U000e0fff"
)
BEYOND_C0 = _HIDDEN + _SCRIPT_MARKS + _JOINERS  # what JSON output escapes (json.dumps: C0)
INVISIBLE = "\x00-\x1f" + BEYOND_C0  # what a file name may not hold


def characters(ranges: str) -> list[str]:
    """The characters of a regular-expression class body such as "a-z0" (no escapes)."""
    found: list[str] = []
    at = 0
    while at < len(ranges):
        if at + 2 < len(ranges) and ranges[at + 1] == "-":
            found += map(chr, range(ord(ranges[at]), ord(ranges[at + 2]) + 1))
            at += 3
        else:
            found.append(ranges[at])
            at += 1
    return found


def _class(chars: list[str]) -> str:
    """A class body for `chars`, as ranges."""
    codes, body = sorted(map(ord, chars)), []
    at = 0
    while at < len(codes):
        last = at
        while last + 1 < len(codes) and codes[last + 1] == codes[last] + 1:
            last += 1
        body.append(chr(codes[at]) if last == at else f"{chr(codes[at])}-{chr(codes[last])}")
        at = last + 1
    return "".join(body)


def _placeholder(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # Unicode control pictures: ESC -> ␛, BEL -> ␇
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"<U+{code:04X}>"


# Emoji and pictographs (roughly Unicode's Extended_Pictographic, which `re` cannot name).
_PICTOGRAPHIC = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2\u25aa-\u25fe"
    "\u2600-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
)
# Those that are wide (East Asian Width W: 👨 🔥, and the skin tones) as every terminal and rich
# draw them. Rich counts a ZWJ and the character after it as no cells, as a terminal that joins
# the sequence draws it; so a ZWJ may only join a wide emoji to what is already two cells wide,
# a wide emoji or a pictograph made wide by VS16 (❤️‍🔥). Anything else (☺‍☺: one cell to rich,
# two on screen) would let text be wider than rich measures it and push the columns after it
# off the screen.
_WIDE_PICTOGRAPHIC = _class(
    [c for c in characters(_PICTOGRAPHIC) if unicodedata.east_asian_width(c) == "W"]
)

_SHOWN_IN_BODIES = f"\x00-\x08\x0b-\x1f{_HIDDEN}"
_EMOJI_MARKS = "\u200d\ufe0e\ufe0f"  # ZWJ, VS15, VS16: one-line fields keep them in emoji
_ANY_INVISIBLE = re.compile(f"[{INVISIBLE}]")
_CONTROL_BUT_EMOJI = re.compile(
    "[" + "".join(c for c in _class(characters(INVISIBLE)) if c not in _EMOJI_MARKS) + "]"
)
_CONTROL_KEEP_LINES = re.compile(f"[{_SHOWN_IN_BODIES}]")

# str.translate, not a regular expression's sub with a function: a body of 3 million zero-width
# spaces takes 0.1 s instead of 4.5 s (a Python call per character).
_PLACEHOLDERS = {ord(c): _placeholder(c) for c in characters(INVISIBLE)}
_KEEP_LINES = {ord(c): _placeholder(c) for c in characters(_SHOWN_IN_BODIES)}
_ONE_LINE = {code: shown for code, shown in _PLACEHOLDERS.items() if chr(code) not in _EMOJI_MARKS}

# The marks kept in an emoji, each starting with its literal so that a search skips ahead in C;
# a lookbehind placed after it checks what precedes. ZWJ: between two wide emoji (the first may
# be a pictograph with VS16); VS15 and VS16 (text or emoji presentation): right after a pictograph.
# (The short class of all pictographs first: the wide ones' class is long, and slow to test.)
_JOINS = (
    f"(?=[{_PICTOGRAPHIC}])(?=[{_WIDE_PICTOGRAPHIC}])"
    f"(?:(?<=[{_WIDE_PICTOGRAPHIC}]\u200d)|(?<=[{_PICTOGRAPHIC}]\ufe0f\u200d))"
)
_KEPT_ZWJ = re.compile(f"\u200d{_JOINS}")
_KEPT_VS16 = re.compile(f"\ufe0f(?<=[{_PICTOGRAPHIC}]\ufe0f)")
_KEPT_VS15 = re.compile(f"\ufe0e(?<=[{_PICTOGRAPHIC}]\ufe0e)")
# The kept marks are set aside as C0 controls (none is left by then), the others shown and those
# put back (str.replace: faster than a translate that lengthens most of the text).
_SET_ASIDE = (("\u200d", "\x00"), ("\ufe0f", "\x01"), ("\ufe0e", "\x02"))


def visible(text: str, *, emoji: bool = True) -> str:
    """One line of untrusted text with every control, zero-width and ignorable character shown,
    not obeyed or hidden; only a ZWJ, VS15 or VS16 inside an emoji is kept, and none with
    `emoji=False` (addresses, where an emoji sequence can only make two look alike)."""
    if not emoji:
        return text.translate(_PLACEHOLDERS) if _ANY_INVISIBLE.search(text) else text
    if _CONTROL_BUT_EMOJI.search(text):
        text = text.translate(_ONE_LINE)
    if "\u200d" in text or "\ufe0f" in text or "\ufe0e" in text:
        # Each mark costs a match (about 0.5 s for a million); the others only a replace.
        text = _KEPT_ZWJ.sub("\x00", text)
        text = _KEPT_VS16.sub("\x01", text)
        text = _KEPT_VS15.sub("\x02", text)
        for mark, _aside in _SET_ASIDE:
            text = text.replace(mark, _placeholder(mark))
        for mark, aside in _SET_ASIDE:
            text = text.replace(aside, mark)
    return text


def visible_block(text: str) -> str:
    """Like `visible`, but keeps newlines and tabs (message bodies), the joiners (Persian, Indic
    scripts, emoji) and the other marks that scripts need (_SCRIPT_MARKS); CR is dropped at
    line ends."""
    text = text.replace("\r\n", "\n")
    return text.translate(_KEEP_LINES) if _CONTROL_KEEP_LINES.search(text) else text
