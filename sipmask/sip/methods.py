"""The SIP methods sipmask knows, defined once (RFC 3261 §27.4's registry as far as a B2BUA
meets it): a known method it does not serve is answered 405 with Allow, an unknown one 501
(§21.4.6, §21.5.2). The parser's fast tiers, the metrics' method labels and every handler
read this set.
"""

from __future__ import annotations

KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER",   # RFC 3261
    "PRACK",                                                   # RFC 3262
    "SUBSCRIBE", "NOTIFY",                                     # RFC 6665
    "UPDATE",                                                  # RFC 3311
    "INFO",                                                    # RFC 6086
    "REFER",                                                   # RFC 3515
    "MESSAGE",                                                 # RFC 3428
    "PUBLISH",                                                 # RFC 3903
})
