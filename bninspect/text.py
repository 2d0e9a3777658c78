"""How numbers and shapes read for people, in one place: tables, derivations and messages
all use these, so a value looks the same wherever it appears."""

from __future__ import annotations

import math

MAX_DIGITS = 17  # a float64 needs no more significant digits than this to read back exactly


def number(value: float, digits: int = 5) -> str:
    """About ``digits`` significant digits (5 by default); NaN and infinities spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def digits_to_resolve(values, resolution: float) -> int:
    """Significant digits that show ``values`` to within ``resolution`` (at least 5): a mean of
    10000.0034 beside a spread of 1 reads as 10000.0034, not as 10000."""
    largest = max((abs(float(v)) for v in values if math.isfinite(v)), default=0.0)
    if largest == 0 or not (math.isfinite(resolution) and resolution > 0):
        return 5
    needed = math.floor(math.log10(largest)) - math.floor(math.log10(resolution)) + 1
    return min(max(5, needed), MAX_DIGITS)


def number_apart(value: float, other: float) -> str:
    """``value`` with at least number()'s digits and as many more as it takes to read it apart
    from ``other`` (and one beyond): a scale factor 1.0000023 is not shown as 1."""
    if not (math.isfinite(value) and math.isfinite(other)) or value == other:
        return number(value)
    for digits in range(5, 17):
        if f"{value:.{digits}g}" != f"{other:.{digits}g}":
            return f"{value:.{digits + (digits > 5)}g}"
    return repr(value)


def shape(sizes: tuple[int, ...]) -> str:
    """(1, 2, 3, 4) -> '1x2x3x4'."""
    return "x".join(map(str, sizes))


def short(value: float) -> str:
    """1e-05 -> '1e-5', 0.1 -> '0.1': a number as people write it in an option."""
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 rank', '0 ranks', '4 ranks': the plural only where the count is not 1 (``plural``
    for nouns that do not take an s: 'process', 'processes')."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def items_verb(noun: str, items: list, singular_verb: str, plural_verb: str) -> str:
    """'channel 1 holds', 'channels 1, 4 hold': a list of indices with its noun and verb agreeing
    (more than 8 end in '...')."""
    shown = ", ".join(map(str, items[:8])) + (", ..." if len(items) > 8 else "")
    if len(items) == 1:
        return f"{noun} {shown} {singular_verb}"
    return f"{noun}s {shown} {plural_verb}"


# Characters a terminal would act on or that reorder what it shows, besides C0 and C1 controls
# (ESC starts colour and cursor sequences, a newline would split a one-line message): Unicode's
# line and paragraph separators and its bidirectional overrides, which can make a name read as
# another.
_BIDI = "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (Python's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _unsafe(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or char in _BIDI


def printable(text: str) -> str:
    """``text`` safe to echo on a terminal, on one line: control characters, bidirectional
    overrides and bytes that are not UTF-8 (in a file name) written as \\xNN or \\uNNNN, the
    rest as it is. For display only: a name with a backslash in it reads as it is."""
    if text.isprintable() and not any(c in _BIDI for c in text):
        return text  # the usual case, fast
    return "".join(_escape(c) if _unsafe(c) else c for c in text)
