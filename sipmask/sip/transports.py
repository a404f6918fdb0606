"""The SIP transports sipmask speaks, named once (RFC 3261 §18; TLS is §26.2.1's `sips`).

Every module that talks about a transport takes its type from here: the transaction layer
(which transports are reliable, §17), the shells, the engine and the config.
"""

from __future__ import annotations

from typing import Literal

Transport = Literal["udp", "tcp", "tls"]
Address = tuple[str, int]

# Stream transports: no retransmissions (§17.1.1.2, §17.2.1), responses go back on the
# connection the request came on (§18.2.2), framing by Content-Length (§18.3).
RELIABLE: frozenset[str] = frozenset({"tcp", "tls"})
ALL: tuple[Transport, ...] = ("udp", "tcp", "tls")


def is_reliable(transport: str) -> bool:
    return transport in RELIABLE
