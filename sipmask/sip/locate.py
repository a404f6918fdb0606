"""Locating a trunk's SIP servers (RFC 3263), as decisions without I/O.

A trunk's `outbound` is one URI or a list (`udp://sbc1.carrier.example`,
`tls://10.0.0.5:5061`, ...), tried in order. Each URI names its transport, so the NAPTR
step of RFC 3263 §4.1 never applies ("if the URI specifies a transport protocol in the
transport parameter, that transport protocol SHOULD be used"); what is left (§4.2):
  - an IP address: that address, the URI's port (or the transport's default);
  - a host name with a port: its A/AAAA records, that port;
  - a host name without a port: its SRV records `_sip._udp`, `_sip._tcp` or `_sips._tcp`
    (TLS), ordered by RFC 2782 (priority, then a weighted random draw), each target's
    A/AAAA records; no SRV record: the name's A/AAAA records on the default port.

`TargetList` keeps what the resolver found (with the TTL it may be kept for) and what
OPTIONS probing learnt (RFC 3263 §4.3: a server that did not answer is skipped while
others remain), and says when to probe whom. The shells run what it asks for off the event
loop: the DNS queries (transport/resolver.py) and the probes (b2bua/trunks.py), whose
outcome comes back here; the call core gets `targets()` as data.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Transport = Literal["udp", "tcp", "tls"]

# RFC 3261 §19.1.2 / §26.2: 5060 for UDP and TCP, 5061 for TLS.
DEFAULT_PORTS: dict[str, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}
# RFC 3263 §4.2 (and RFC 5630 for sips): the SRV service and protocol per transport.
SRV_PREFIXES: dict[str, str] = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}


@dataclass(frozen=True, slots=True)
class Server:
    """One place to send a request: an IP address, a port, a transport."""

    transport: Transport
    ip: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class Target:
    """A server to try, with the URI it came from: the request goes to `server`; its
    Request-URI names `host` (and `port` when the URI gave one), as RFC 3263 §4 keeps the
    URI and resolves only where to send the request."""

    server: Server
    host: str
    port: int | None


def probe_answered(status: int) -> bool:
    """Whether a final response to an OPTIONS probe shows the server taking calls. RFC 3261
    §11.2: OPTIONS is answered as an INVITE would be, so a 503 means it would refuse calls
    too (a draining sipmask answers so); any other status comes from a working server."""
    return status != 503


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Query:
    """What the resolver must ask DNS for one URI: SRV records of `srv_name` (then A/AAAA of
    each target), or A/AAAA of `host` on `port` (`srv_name` None)."""

    transport: Transport
    host: str
    port: int
    srv_name: str | None


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def plan(transport: Transport, host: str, port: int | None) -> Query | Server:
    """RFC 3263 §4.2 for a URI with an explicit transport: the Server at once for an IP
    literal, else the Query to run."""
    if is_ip(host):
        return Server(transport, host, port or DEFAULT_PORTS[transport])
    if port is not None:
        return Query(transport, host, port, None)
    return Query(transport, host, DEFAULT_PORTS[transport],
                 f"{SRV_PREFIXES[transport]}.{host.rstrip('.')}")


def order_srv(records: Iterable[SrvRecord], draw: Callable[[int], int]) -> list[SrvRecord]:
    """RFC 2782's order: lowest priority first; within a priority, repeatedly pick a record
    with probability proportional to its weight (`draw(n)` returns an integer in 0..n, the
    injected randomness), zero-weight records first in the running sum as the RFC says.
    A single record "." means the service is decidedly not available there (empty list)."""
    usable = [r for r in records if r.target not in ("", ".")]
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        group = sorted((r for r in usable if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = draw(total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


@dataclass(slots=True)
class _Entry:
    """One URI of the trunk's list: its plan, and what it resolved to until when."""

    uri: tuple[Transport, str, int | None]
    plan: Query | Server
    servers: tuple[Server, ...] = ()
    expires_at: float = float("-inf")     # monotonic; IP literals never expire
    failed_at: float | None = None        # the last resolution failed (kept: the old servers)


@dataclass(slots=True)
class TargetList:
    """A trunk's servers in the order to try them, skipping those probing found down.

    `stale(now)` says which URIs need resolving; `resolved(...)` stores an answer (with the
    smallest TTL of the records it came from, at least `min_ttl_s`); `targets()` is the
    order for a new INVITE: every known server of every URI in turn, those marked down
    last (tried only when nothing else is left, RFC 3263 §4.3's spirit: never refuse a call
    on a probe's word alone). With `probe_interval_s`, `probes_due(now)` names the servers
    to send OPTIONS to, when there is a choice (two servers or more: with one, a probe
    could change nothing), and `overdue(now)` those whose probe got no final response
    within `probe_timeout_s` (None: the transaction's own Timer F decides).
    """

    entries: list[_Entry]
    min_ttl_s: float = 5.0
    down: set[Server] = field(default_factory=set)
    probe_interval_s: float = 0.0           # 0: no probing
    probe_timeout_s: float | None = None
    next_probe_at: float = float("-inf")    # monotonic: the next round (the first at once)
    pending: dict[Server, float] = field(default_factory=dict)   # probe out: its deadline

    @classmethod
    def of(cls, uris: Sequence[tuple[Transport, str, int | None]],
           min_ttl_s: float = 5.0, *, probe_interval_s: float = 0.0,
           probe_timeout_s: float | None = None) -> TargetList:
        entries = []
        for transport, host, port in uris:
            step = plan(transport, host, port)
            entry = _Entry((transport, host, port), step)
            if isinstance(step, Server):
                entry.servers, entry.expires_at = (step,), float("inf")
            entries.append(entry)
        return cls(entries, min_ttl_s, probe_interval_s=probe_interval_s,
                   probe_timeout_s=probe_timeout_s)

    def stale(self, now: float) -> list[Query]:
        """The queries whose answers are missing or past their TTL."""
        return [e.plan for e in self.entries
                if isinstance(e.plan, Query) and now >= e.expires_at]

    def resolved(self, query: Query, servers: Sequence[Server], ttl_s: float,
                 now: float) -> None:
        for entry in self.entries:
            if entry.plan == query:
                entry.servers = tuple(servers)
                entry.expires_at = now + max(ttl_s, self.min_ttl_s)
                entry.failed_at = None

    def failed(self, query: Query, now: float) -> None:
        """A resolution failed (timeout, SERVFAIL): keep what was known, retry after
        min_ttl_s rather than on every call."""
        for entry in self.entries:
            if entry.plan == query:
                entry.expires_at = now + self.min_ttl_s
                entry.failed_at = now

    def servers(self) -> list[Server]:
        """Every known server, in the configured order (what probing covers)."""
        seen: dict[Server, None] = {}
        for entry in self.entries:
            for server in entry.servers:
                seen.setdefault(server, None)
        return list(seen)

    def targets(self) -> list[Target]:
        """Every known server once, with the URI it came from: in the configured order,
        those marked down last."""
        seen: dict[Server, Target] = {}
        for entry in self.entries:
            _, host, port = entry.uri
            for server in entry.servers:
                seen.setdefault(server, Target(server, host, port))
        every = list(seen.values())
        down = self.down
        return ([t for t in every if t.server not in down]
                + [t for t in every if t.server in down])

    def candidates(self) -> list[Server]:
        return [target.server for target in self.targets()]

    def probes_due(self, now: float) -> list[Server]:
        """The servers to probe now (each once a round, none with a probe still out); each
        is counted as out from now, until `probed` or `overdue`."""
        if not self.probe_interval_s or now < self.next_probe_at:
            return []
        self.next_probe_at = now + self.probe_interval_s
        every = self.servers()
        if len(every) < 2:
            return []
        due = [s for s in every if s not in self.pending]
        deadline = now + self.probe_timeout_s if self.probe_timeout_s else float("inf")
        for server in due:
            self.pending[server] = deadline
        return due

    def overdue(self, now: float) -> list[Server]:
        """Servers whose probe is past its deadline: marked down (a late answer no longer
        counts; the next round asks again)."""
        late = [s for s, deadline in self.pending.items() if now >= deadline]
        for server in late:
            self.probed(server, answered=False)
        return late

    def next_due(self) -> float:
        """When something is next to do (monotonic): a probe round, a probe's deadline, a
        name's answer going stale; inf when nothing ever is, -inf when it is now."""
        times = [e.expires_at for e in self.entries if isinstance(e.plan, Query)]
        times += self.pending.values()
        if self.probe_interval_s and len(self.servers()) > 1:
            times.append(self.next_probe_at)
        return min(times, default=float("inf"))

    def probed(self, server: Server, answered: bool) -> bool:
        """An OPTIONS probe's outcome (`probe_answered` of its final response; a timeout or
        transport error is no answer): no answer marks the server down until a probe is
        answered. True when that changed the order of `targets()`."""
        self.pending.pop(server, None)
        was_down = server in self.down
        if answered:
            self.down.discard(server)
        else:
            self.down.add(server)
        return was_down is answered
