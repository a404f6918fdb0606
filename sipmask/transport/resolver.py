"""The DNS shell of RFC 3263 (sip/locate.py decides; this asks): SRV and A/AAAA queries off
the event loop, with a deadline, answers cached for their TTL by the TargetList.

`Dns` is the injected interface. `SystemDns` asks the machine's resolvers through
dnspython's asyncio resolver (it reads /etc/resolv.conf; a query never blocks the loop).
Tests inject `HostsDns`, a table the test writes, so no query reaches a nameserver.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipmask.observability import logging as sm_logging
from sipmask.sip.locate import Query, Server, SrvRecord, TargetList, order_srv

log = sm_logging.get_logger("sipmask.transport.resolver")

DEFAULT_DEADLINE_S = 2.0


class DnsError(Exception):
    """No answer: the name does not exist, a server failed, or the deadline passed."""


class Dns(Protocol):
    async def srv(self, name: str) -> tuple[list[SrvRecord], float]:
        """SRV records of `name` and their TTL; ([], ttl) when the name has none."""
        ...

    async def addresses(self, host: str) -> tuple[list[str], float]:
        """A and AAAA addresses of `host` (IPv4 first) and their TTL; DnsError if none."""
        ...


@dataclass
class HostsDns:
    """A resolver over tables (for tests and air-gapped labs): `hosts` name -> addresses,
    `services` SRV name -> records. Counts queries, so a test can see the cache work."""

    hosts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    services: Mapping[str, Sequence[SrvRecord]] = field(default_factory=dict)
    ttl_s: float = 60.0
    queries: int = 0

    async def srv(self, name: str) -> tuple[list[SrvRecord], float]:
        self.queries += 1
        return list(self.services.get(name.rstrip("."), ())), self.ttl_s

    async def addresses(self, host: str) -> tuple[list[str], float]:
        self.queries += 1
        found = self.hosts.get(host.rstrip("."))
        if not found:
            raise DnsError(f"{host}: no such host in the table")
        return list(found), self.ttl_s


class SystemDns:
    """The machine's resolvers, through dnspython (asyncio; never blocks the loop), made at
    the first query: only a trunk named by host name needs dnspython. Names RFC 6761 makes
    special are answered here and never asked of a nameserver: `localhost` is the loopback
    addresses (§6.3), anything under `invalid` does not exist (§6.4)."""

    def __init__(self) -> None:
        self._resolver: Any = None

    def _ask(self) -> Any:
        if self._resolver is None:
            import dns.asyncresolver  # deferred (class docstring)

            self._resolver = dns.asyncresolver.Resolver()
        return self._resolver

    async def srv(self, name: str) -> tuple[list[SrvRecord], float]:
        import dns.exception
        import dns.resolver

        if _special(name) is not None:
            return [], SPECIAL_TTL_S          # no SRV there: the A/AAAA step answers
        try:
            answer = await self._ask().resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], 60.0
        except dns.exception.DNSException as exc:
            raise DnsError(f"{name}: {type(exc).__name__}") from None
        records = [SrvRecord(r.priority, r.weight, r.port, r.target.to_text().rstrip("."))
                   for r in answer]
        return records, float(answer.rrset.ttl if answer.rrset is not None else 60)

    async def addresses(self, host: str) -> tuple[list[str], float]:
        import dns.exception

        special = _special(host)
        if special is not None:
            if not special:
                raise DnsError(f"{host}: no such name (RFC 6761 §6.4)")
            return list(special), SPECIAL_TTL_S
        found: list[str] = []
        ttl = float("inf")
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._ask().resolve(host, rdtype)
            except dns.exception.DNSException:
                continue
            found += [r.to_text() for r in answer]
            if answer.rrset is not None:
                ttl = min(ttl, float(answer.rrset.ttl))
        if not found:
            raise DnsError(f"{host}: no A or AAAA record")
        return found, ttl if ttl != float("inf") else 60.0


SPECIAL_TTL_S = 3600.0


def _special(name: str) -> tuple[str, ...] | None:
    """RFC 6761's answers for names no nameserver is asked about: the loopback addresses
    for `localhost` and its subdomains, nothing for `invalid`'s; None for any other."""
    labels = name.rstrip(".").lower().rsplit(".", 1)
    if labels[-1] == "localhost":
        return ("127.0.0.1", "::1")
    if labels[-1] == "invalid":
        return ()
    return None


async def resolve(dns: Dns, query: Query, *, draw: random.Random | None = None,
                  deadline_s: float = DEFAULT_DEADLINE_S) -> tuple[list[Server], float]:
    """The servers `query` names, in RFC 3263/2782 order, and the TTL to keep them for (the
    smallest of the records used). DnsError when nothing answers within the deadline."""
    rng = draw or random.Random()
    try:
        async with asyncio.timeout(deadline_s):
            return await _resolve(dns, query, rng)
    except TimeoutError:
        raise DnsError(f"{query.srv_name or query.host}: no answer in {deadline_s:g} s") \
            from None


async def _resolve(dns: Dns, query: Query, rng: random.Random) -> tuple[list[Server], float]:
    if query.srv_name is None:
        addresses, ttl = await dns.addresses(query.host)
        return [Server(query.transport, ip, query.port) for ip in addresses], ttl
    records, ttl = await dns.srv(query.srv_name)
    if not records:
        # RFC 3263 §4.2: no SRV records: the name's A/AAAA on the transport's default port.
        addresses, a_ttl = await dns.addresses(query.host)
        return [Server(query.transport, ip, query.port) for ip in addresses], min(ttl, a_ttl)
    servers: list[Server] = []
    for record in order_srv(records, lambda n: rng.randint(0, n)):
        try:
            addresses, a_ttl = await dns.addresses(record.target)
        except DnsError:
            continue                  # one dead target does not hide the others
        ttl = min(ttl, a_ttl)
        servers += [Server(query.transport, ip, record.port) for ip in addresses]
    if not servers:
        raise DnsError(f"{query.srv_name}: no SRV target has an address")
    return servers, ttl


async def refresh(targets: TargetList, dns: Dns, now: float, *,
                  deadline_s: float = DEFAULT_DEADLINE_S) -> None:
    """Resolve every stale URI of `targets` (concurrently); failures keep the old answer."""
    stale = targets.stale(now)
    if not stale:
        return
    outcomes = await asyncio.gather(*(resolve(dns, q, deadline_s=deadline_s) for q in stale),
                                    return_exceptions=True)
    for query, outcome in zip(stale, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, DnsError):
                raise outcome
            log.warning("trunk.resolve_failed", name=query.srv_name or query.host,
                        reason=str(outcome))
            targets.failed(query, now)
        else:
            servers, ttl = outcome
            targets.resolved(query, servers, ttl, now)
