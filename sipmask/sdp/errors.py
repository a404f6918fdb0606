"""SDP errors. A malformed body is `errors.ParseError` (400); an SDP that parses but that
sipmask cannot relay is `SdpError` (488).

Reasons name the line number and the field, never the line's text: an SDP carries addresses,
and e=/p= lines carry e-mail addresses and phone numbers (DESIGN.md, privacy contract).
"""

from __future__ import annotations

from sipmask.errors import ParseError


class SdpError(ParseError):
    """RFC 3261 §21.4.26: the session description (media, addressing) is not acceptable."""

    status = 488
    default_reason = "Not Acceptable Here"
