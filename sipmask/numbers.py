"""Phone numbers: one normaliser for everything that enters, one masker for everything logged.

National format is the canonical form inside sipmask: mobiles `1[3-9]` + 9 digits, fixed
lines `0` + area code + subscriber (10–12 digits), X numbers `700` + 12 digits. Whatever the
trunk or the API sends (`+86 138-0000-0001`, `0086…`, `86…`, `tel:+86…`, a SIP user with
`;user=phone` parameters) is brought to that form before any lookup or write.
"""

from __future__ import annotations

import re
import unicodedata

X_LENGTH = 15
X_PREFIX = "700"

# ASCII digits only: a full-width "１３８…" would be stored and never match a real call.
_SEPARATORS = re.compile(r"[\s\-.()\u00a0]", re.ASCII)
_MOBILE = re.compile(r"1[3-9]\d{9}", re.ASCII)
_FIXED = re.compile(r"0[1-9]\d{8,10}", re.ASCII)
_X = re.compile(r"700\d{12}", re.ASCII)
# An AXE Request-URI user: X followed directly by the extension (1 to 8 digits).
_X_EXT = re.compile(r"(700\d{12})(\d{1,8})", re.ASCII)
_DIGITS = re.compile(r"\d+", re.ASCII)

# A real number inside free text: mobile or fixed line, optionally with a country prefix,
# and not part of a longer digit run (so X numbers, ports and timestamps stay intact).
# Unicode digits here on purpose: masking more is the safe side for logs.
_REAL_IN_TEXT = re.compile(r"(?<![\d])(?:\+?86|0086)?(1[3-9]\d{9}|0[1-9]\d{8,10})(?![\d])")


class NumberError(ValueError):
    """Not a phone number we can use. str() says why, without echoing the whole number."""


def normalise(raw: str) -> str:
    """Bring a dialled or presented number to national format, or raise NumberError.

    Accepts `tel:` URIs (parameters after `;` are dropped), `+86`/`0086`/`86` prefixes and
    visual separators. A number without a country prefix is taken as national already.
    """
    text = raw.strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    text = text.split(";", 1)[0]
    text = _SEPARATORS.sub("", text)
    if not text:
        raise NumberError("empty number")
    international = False
    if text.startswith("+"):
        text = text[1:]
        if not text.startswith("86"):
            raise NumberError("only +86 numbers are served")
        text = text[2:]
        international = True
    elif text.startswith("0086"):
        text = text[4:]
        international = True
    elif text.startswith("86") and (
        _MOBILE.fullmatch(text[2:]) or _X.fullmatch(text[2:])
    ):
        # Bare `86` is ambiguous with national numbers; strip it only when what is left is
        # unmistakably a mobile or an X number.
        text = text[2:]
    if not _DIGITS.fullmatch(text):
        raise NumberError("a number may hold only digits after its prefix")
    if international and not (_MOBILE.fullmatch(text) or text.startswith(X_PREFIX)):
        # E.164 drops the national trunk prefix of fixed lines: +86 10 … is 010 … (Beijing's
        # area code starts with 1 too, so only a whole mobile number keeps its digits).
        text = "0" + text
    return text


def is_x(number: str) -> bool:
    """A 700 privacy number: `700` + 12 digits."""
    return _X.fullmatch(number) is not None


def is_real(number: str) -> bool:
    """A number a person can have: a mobile or a fixed line, in national format."""
    return _MOBILE.fullmatch(number) is not None or _FIXED.fullmatch(number) is not None


def normalise_real(raw: str) -> str:
    """Normalise and insist on a real (non-X) number."""
    if _MOBILE.fullmatch(raw) or _FIXED.fullmatch(raw):
        return raw   # already national: bulk imports mostly arrive like this
    number = normalise(raw)
    if not is_real(number):
        if is_x(number):
            raise NumberError("a 700 number cannot be a real party")
        raise NumberError("not a valid mobile or fixed-line number")
    return number


def normalise_x(raw: str) -> str:
    """Normalise and insist on a 15-digit 700 number."""
    if _X.fullmatch(raw):
        return raw
    number = normalise(raw)
    if not is_x(number):
        raise NumberError("X must be a 15-digit number starting with 700")
    return number


def normalise_x_ext(raw: str) -> tuple[str, str | None]:
    """A dialled 700 number as (X, extension): X alone gives (X, None); X followed
    directly by 1 to 8 digits (an AXE extension, CONTRACT "SIP behaviour") gives both.
    Prefixes and separators as normalise_x."""
    if _X.fullmatch(raw):
        return raw, None
    number = normalise(raw)
    if is_x(number):
        return number, None
    found = _X_EXT.fullmatch(number)
    if found is None and number.startswith("86"):
        found = _X_EXT.fullmatch(number[2:])     # "86" + X + E: normalise keeps the 86
    if found is None:
        raise NumberError("X must be a 15-digit number starting with 700, then at most an "
                          "extension of 1 to 8 digits")
    return found.group(1), found.group(2)


def mask(number: str) -> str:
    """Keep the first 3 and the last 4 digits (a mobile shows as `138****0001`); strings of
    7 or fewer characters are masked whole."""
    if len(number) <= 7:
        return "*" * len(number)
    return f"{number[:3]}****{number[-4:]}"


def mask_text(text: str) -> str:
    """Mask every real-number-shaped run inside free text; X numbers stay readable.
    Non-ASCII text is NFKC-folded first, so full-width digits cannot slip past the mask."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return _REAL_IN_TEXT.sub(lambda m: mask(m.group(1)), text)
