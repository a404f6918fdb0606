"""The SIP methods sipmask knows, defined once (RFC 3261 §27.4's registry as far as a B2BUA
meets it): a known method it does not serve is answered 405 with Allow, an unknown one 501
(§21.4.6, §21.5.2). The metrics' method labels, the engine's dispatch and DefaultHandler
read these; the sets are checked against each other at import.
"""

from __future__ import annotations

import re

from sipmask.sip import grammar

# In registry order (the metrics list their labels in it).
METHODS = (
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER",   # RFC 3261
    "PRACK",                                                   # RFC 3262
    "UPDATE",                                                  # RFC 3311
    "INFO",                                                    # RFC 6086
    "REFER",                                                   # RFC 3515
    "SUBSCRIBE", "NOTIFY",                                     # RFC 6665
    "MESSAGE",                                                 # RFC 3428
    "PUBLISH",                                                 # RFC 3903
)
KNOWN_METHODS = frozenset(METHODS)

# What the B2BUA serves, as its Allow header lists them (§20.5): on leg B's INVITE, the
# responses relayed to A, OPTIONS, 405 and 501 (never the caller's own list).
ALLOW_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "PRACK")
ALLOW = ", ".join(ALLOW_METHODS)
# Methods relayed from one leg to the other inside a dialog; REFER is refused (it would
# carry a URI across, DESIGN.md), the rest answered 405.
RELAYED_IN_DIALOG = frozenset({"INVITE", "UPDATE", "INFO", "OPTIONS", "MESSAGE"})

if not (set(ALLOW_METHODS) <= KNOWN_METHODS and RELAYED_IN_DIALOG <= KNOWN_METHODS):
    raise ValueError("ALLOW_METHODS and RELAYED_IN_DIALOG must be known methods")
if not all(re.fullmatch(grammar.METHOD, method) for method in METHODS):
    raise ValueError("every known method must be a token (RFC 3261 §25.1 Method)")


def no_dialog_status(method: str, has_to_tag: bool) -> int:
    """The answer to a request that matches no dialog and starts none: 481 for one that
    names a dialog (a To tag, §12.2.2) or only makes sense in one (BYE; CANCEL of no
    transaction, §9.2); else 405 for a known method (§21.4.6), 501 for an unknown
    (§21.5.2). Both carry Allow."""
    if has_to_tag or method == "BYE" or method == "CANCEL":
        return 481
    return 405 if method in KNOWN_METHODS else 501
