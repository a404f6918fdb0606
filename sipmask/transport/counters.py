"""What the transports and the server count. A plain dataclass: the metrics module reads it,
`sipmask serve` prints it at shutdown; nothing here knows about Prometheus."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SipCounters:
    received: int = 0          # messages handed to the core (requests and responses)
    sent: int = 0              # messages written to a socket
    parse_errors: int = 0      # messages that failed to parse (answered or dropped)
    answered_400: int = 0      # of those, answered with a 4xx/5xx error (400, 505, 513)
    dropped: int = 0           # messages with no answer possible (no readable Via, ACKs, …)
    too_large: int = 0         # over sip.max_message_bytes
    internal_errors: int = 0   # exceptions caught in a shell; the process goes on
    send_errors: int = 0       # socket writes that failed (unreachable peer, closed stream)
    # Connections: TCP and TLS together (a TLS connection is a TCP one with one more layer).
    tcp_accepted: int = 0
    tcp_refused: int = 0       # inbound closed at once: over sip.tcp_max_connections
    tcp_refused_per_ip: int = 0    # inbound closed at once: its IP holds sip.tcp_max_per_ip
    tcp_refused_acl: int = 0   # inbound closed at once: source in no trunk's inbound_allow
    tcp_message_timeouts: int = 0  # closed: a message (or a first message, or a TLS
                                   # handshake) not complete within sip.tcp_message_timeout_s
    tcp_idle_closed: int = 0   # closed: no traffic for sip.tcp_idle_timeout_s
    tls_failed: int = 0        # closed on a TLS error: handshake refused (no or untrusted
                               # certificate, not TLS at all) or a bad record
    requests_by_method: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["requests_by_method"] = dict(self.requests_by_method)
        data["responses_by_status"] = {str(k): v for k, v in self.responses_by_status.items()}
        return data
