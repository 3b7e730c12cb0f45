"""Text as the encoders see it: bytes decoded one way everywhere, and optional clean-up.

Sources that read bytes decode them with ``decode`` (their ``encoding``, UTF-8 by default; a
document whose bytes are not valid in it is read as Latin-1, which maps every byte, and
counted). The served model receives strings, decoded by its caller, so preprocess and serving
see the same characters. The optional stripping of headers, signature blocks and quoted
replies follows scikit-learn's ``remove=`` for 20 Newsgroups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from textclf.errors import TextclfError

_QUOTE_LINE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


FALLBACK_ENCODING = "latin-1"


def decode(raw: bytes, encoding: str = "utf-8") -> tuple[str, bool]:
    """-> (the text, whether it fell back to Latin-1 because ``raw`` is not valid ``encoding``)."""
    try:
        return raw.decode(encoding), False
    except UnicodeDecodeError:
        return raw.decode(FALLBACK_ENCODING), True


def check_encoding(encoding: str) -> str:
    """A codec name Python knows (data.encoding), else one line naming it."""
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise TextclfError(f"data.encoding: unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    return encoding


def strip_headers(text: str) -> str:
    """Drops everything before the first blank line (the RFC 822 header block)."""
    _, blank, body = text.partition("\n\n")
    return body if blank else text


def strip_quotes(text: str) -> str:
    """Drops quoted lines ("> ...") and the attribution lines that introduce them."""
    return "\n".join(line for line in text.split("\n") if not _QUOTE_LINE.search(line))


def strip_footer(text: str) -> str:
    """Drops the signature block: everything after the last line made only of dashes."""
    lines = text.strip().split("\n")
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip().strip("-") == "":
            return "\n".join(lines[:index]) if index > 0 else text
    return text


def clean(text: str, remove: Iterable[str]) -> str:
    remove = set(remove)
    if "headers" in remove:
        text = strip_headers(text)
    if "footers" in remove:
        text = strip_footer(text)
    if "quotes" in remove:
        text = strip_quotes(text)
    return text


class Tokenizer:
    """Regex tokenizer; the default pattern is scikit-learn's (words of 2+ word characters)."""

    def __init__(self, pattern: str, lowercase: bool) -> None:
        try:
            self._find = re.compile(pattern).findall
        except re.error as error:
            raise TextclfError(f"encoder.token_pattern: not a valid regex ({error})") from error
        self.lowercase = lowercase

    def __call__(self, text: str) -> list[str]:
        return self._find(text.lower() if self.lowercase else text)
