"""The RFC 4566 §5 grammar both SDP readers share: the call path (sdp/scan.py) and the model
parser that is its test oracle (sdp/parser.py). Lines, their order, port numbers, and the
400 a bad line gets. Reasons name the line number and the field, never the line's text: an
SDP carries addresses, and e=/p= lines carry e-mail addresses and phone numbers."""

from __future__ import annotations

from sipmask.errors import ParseError

# RFC 4566 §5: the order of the optional lines. r= repeats belong to the t= before them and
# share its rank, so a stable sort keeps each (t, r*) group together.
SESSION_ORDER = {"i": 1, "u": 2, "e": 3, "p": 4, "c": 5, "b": 6, "t": 7, "r": 7, "z": 8,
                 "k": 9, "a": 10}
MEDIA_ORDER = {"i": 1, "c": 2, "b": 3, "k": 4, "a": 5}

# RFC 4566 §5.14 port and number of ports; RFC 768 ports go up to 65535.
MAX_PORT = 65535


def bad_line(number: int, problem: str) -> ParseError:
    return ParseError(f"Bad SDP: line {number}: {problem}")


def split_lines(text: str) -> list[str]:
    """Lines without their CRLF or LF ends (RFC 4566 §5 allows parsers to accept a bare
    LF). RFC 4566 §9: text excludes NUL, CR and LF, so a NUL or a CR not followed by LF is
    refused. The checks run on the whole text first; the line-by-line search only runs to
    name the bad line."""
    lines = text.split("\r\n")
    # What is left once every CRLF is taken out: one search each for LF and CR, not a count.
    rest = "".join(lines)
    if "\n" not in rest:
        clean = "\r" not in rest
    else:
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        clean = not any("\r" in line for line in lines)
    if clean and "\x00" not in text:
        return lines
    for number, line in enumerate(lines, start=1):
        if "\r" in line or "\x00" in line:
            raise bad_line(number, "NUL or CR inside a line")
    raise AssertionError("unreachable: a NUL or CR was seen above")


def first_line(lines: list[str]) -> int:
    """The index of the first line that is not empty, which must be v=0 (§5.1: a
    description begins with v=, and 0 is the only version). Empty lines (often a stray CRLF
    after the last line) are skipped here and everywhere else."""
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1
    if first == len(lines):
        raise ParseError("Bad SDP: empty body")
    if lines[first] != "v=0":
        raise bad_line(first + 1, "must begin with v=0")
    return first


def port_number(text: str, number: int) -> int:
    """An m= port or number of ports: ASCII digits, 0-65535."""
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > MAX_PORT:
        raise bad_line(number, f"m= port is not 0-{MAX_PORT}")
    return int(text)
