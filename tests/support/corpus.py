"""The captured messages in tests/corpus/: RFC 4475's torture tests (valid/ and invalid/)
and real trunk messages."""

from __future__ import annotations

from sipmask.errors import ParseError
from sipmask.sip.parser import parse_message
from tests.support.paths import CORPUS

RFC4475 = CORPUS / "rfc4475"
TRUNK = CORPUS / "trunk"


def rfc4475_message(folder: str, name: str) -> bytes:
    """The bytes of RFC 4475 message `name` in `folder` ("valid" or "invalid")."""
    return (RFC4475 / folder / name).read_bytes()


def corpus_messages() -> list[bytes]:
    """Every valid RFC 4475 message and trunk message the parser takes, in file order."""
    found = sorted((RFC4475 / "valid").glob("*.dat"))
    found += sorted(TRUNK.glob("*.sip"))
    out = []
    for path in found:
        data = path.read_bytes()
        try:
            parse_message(data)
        except ParseError:
            continue
        out.append(data)
    return out


CORPUS_MESSAGES = corpus_messages()
