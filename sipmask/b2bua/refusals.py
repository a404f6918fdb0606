"""Routing's refusals: the typed errors `routing` raises, each with its SIP status and the
CDR's unconnected_cause (errors.py, "Each error knows how it is answered").

Their own module so that it stays interpreted when the optional compiled build
(sipmask/_compiled.py, README "mypyc") compiles routing: an exception class that mypyc compiles
from an interpreted base (errors.SipError) loses its class attributes (`status`, `cause`), and
a 416 would go out as a 500.
"""

from __future__ import annotations

from sipmask.errors import ForbiddenError, NotFoundError, SipError


class UnknownX(NotFoundError):
    cause = "no_binding"


class NotAllowed(ForbiddenError):
    cause = "not_allowed"


class NeedsExtension(UnknownX):
    """An AXE number dialled without its extension by someone the binding does not route
    without one (store.base.Refusal.ASK_EXT). Answered 404 unless the call core asks the
    caller for the extension (CONTRACT "SIP behaviour": AXE)."""


class UnsupportedScheme(SipError):
    status = 416
    default_reason = "Unsupported URI Scheme"


class BadExtension(SipError):
    """420, with the option tags to list in Unsupported (§8.2.2.3)."""

    status = 420
    default_reason = "Bad Extension"

    def __init__(self, unsupported: list[str]) -> None:
        super().__init__()
        self.unsupported = ", ".join(unsupported)
