"""The trunks' targets kept current off the call path: the asyncio shell around
sip/locate.py's TargetList (issue 14 §4).

One `TrunkMonitor` per engine. For every trunk it keeps a TargetList (calling.target_list:
the config's URIs, its probe timing) and does what the list asks, never on the call path:
it resolves host names through the injected resolver (transport/resolver.py: RFC 3263 SRV,
then A/AAAA, with a deadline) when their answers are missing or past their TTL, and sends
OPTIONS probes to each server of a trunk that has a choice (RFC 3263 §4.3), through the
SIP server's transaction layer like any request. A probe's final response, its timeout or
a transport error comes back through the engine (`take`, before the call core sees it);
whenever a trunk's order of targets changes, the core gets it as an event (TrunkTargets)
in a batch of its own (DESIGN rule 15: the monitor never runs inside the core's work).

Calls placed meanwhile use what is known: an expired answer is kept until a new one comes,
and a name never resolved leaves its trunk without that target (503 at once when nothing
else is left).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from sipmask.b2bua import calling, masking, routing
from sipmask.b2bua.actions import CoreEvent, TrunkTargets
from sipmask.clock import Clock
from sipmask.config.schema import Config, TrunkConfig
from sipmask.errors import TransactionError
from sipmask.observability import logging as sm_logging
from sipmask.sip.dialog import new_call_id, new_tag
from sipmask.sip.locate import Server, Target, TargetList, probe_answered
from sipmask.sip.message import Request
from sipmask.sip.transaction import (
    ResponseReceived,
    TransactionTimeout,
    TransportFailed,
)
from sipmask.transport.resolver import Dns, refresh

if TYPE_CHECKING:
    from sipmask.b2bua.engine import SipPort

log = sm_logging.get_logger("sipmask.trunks")

MAX_SLEEP_S = 60.0      # the loop looks again at least this often (a clock that jumped)


class TrunkMonitor:
    """Every trunk's targets for one engine; `feed` hands the core a TrunkTargets event."""

    def __init__(self, sip: SipPort, clock: Clock, config: Config, dns: Dns | None,
                 feed: Callable[[CoreEvent], None],
                 stats: collections.Counter[str] | None = None) -> None:
        self.sip = sip
        self.stats = stats if stats is not None else collections.Counter()
        self.clock = clock
        self.dns = dns
        self.feed = feed
        self.advertise = config.sip.advertise
        self.lists: dict[str, TargetList] = {}
        self._trunks: dict[str, TrunkConfig] = {}
        self._fed: dict[str, tuple[Target, ...]] = {}
        self._probes: dict[str, tuple[str, Server]] = {}    # probe txn -> (trunk, server)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.configure(config)

    # -- what the engine calls -------------------------------------------------------------
    def configure(self, config: Config) -> None:
        """At start and on a reload: a trunk whose settings changed starts a new list (its
        names resolved again, its servers probed again); the others keep theirs. The core
        forgets every fed list on a reload, so all count as not fed (feed_changes)."""
        self.advertise = config.sip.advertise
        lists: dict[str, TargetList] = {}
        for name, trunk in config.trunks.items():
            kept = self.lists.get(name)
            old = self._trunks.get(name)
            same = old is not None and _targets_of(old) == _targets_of(trunk)
            lists[name] = kept if kept is not None and same else calling.target_list(trunk)
        self.lists, self._trunks = lists, dict(config.trunks)
        self._fed.clear()
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Run the monitor on the running loop until close()."""
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def take(self, event: object) -> bool:
        """A TU event of the transaction layer: True when it was a probe's (the monitor
        took it; the call core never sees it)."""
        txn_id: str | None = getattr(event, "txn_id", None)
        found = self._probes.get(txn_id) if txn_id is not None else None
        if found is None or txn_id is None:
            return False
        if isinstance(event, ResponseReceived):
            status = event.response.status
            if status < 200:
                return True
            answered = probe_answered(status)
        elif isinstance(event, TransactionTimeout | TransportFailed):
            answered = False
        else:
            return True
        del self._probes[txn_id]
        trunk, server = found
        targets = self.lists.get(trunk)
        if targets is not None and targets.probed(server, answered):
            self._changed(trunk, server, answered)
            self.feed_changes()
        return True

    # -- the work ----------------------------------------------------------------------------
    async def step(self) -> None:
        """One pass: resolve what is stale, give up probes past their deadline, send the
        probes due, then feed the core every trunk whose targets changed."""
        now = self.clock.monotonic()
        stale = [targets for targets in self.lists.values() if targets.stale(now)]
        if stale and self.dns is not None:
            dns = self.dns
            await asyncio.gather(*(refresh(targets, dns, now) for targets in stale))
        elif stale:
            for targets in stale:       # no resolver: names stay unresolved (503 at once)
                for query in targets.stale(now):
                    targets.failed(query, now)
        now = self.clock.monotonic()
        for name, targets in self.lists.items():
            was_down = set(targets.down)
            for server in targets.overdue(now):
                self._forget_probe(name, server)
                if server not in was_down:
                    self._changed(name, server, answered=False)
            for server in targets.probes_due(now):
                self._probe(name, server, targets)
        self.feed_changes()

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("trunk.monitor_failed")
            due = min((t.next_due() for t in self.lists.values()), default=math.inf)
            delay = min(max(due - self.clock.monotonic(), 0.0), MAX_SLEEP_S)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _probe(self, trunk: str, server: Server, targets: TargetList) -> None:
        target = next(t for t in targets.targets() if t.server == server)
        try:
            txn_id = self.sip.send_request(self._options(target), server.address,
                                           server.transport)
        except (TransactionError, OSError) as exc:
            log.warning("trunk.probe_not_sent", trunk=trunk, error=str(exc))
            if targets.probed(server, answered=False):
                self._changed(trunk, server, answered=False)
            return
        self._probes[txn_id] = (trunk, server)

    def _options(self, target: Target) -> Request:
        """RFC 3261 §11.1 OPTIONS to the server itself (no user part), as a dispatcher
        probes: Max-Forwards 70, From sipmask, a new Call-ID each time."""
        port = f":{target.port}" if target.port is not None else ""
        uri = f"sip:{routing.uri_host(target.host)}{port}"
        local = f"<sip:sipmask@{routing.uri_host(self.advertise)}>;tag={new_tag()}"
        return masking.build_request(
            "OPTIONS", request_uri=uri, local=local, remote=f"<{uri}>",
            call_id=new_call_id(host=self.advertise), cseq=1, contact=None,
            max_forwards=70, extra=(("Accept", masking.SDP),))

    def _forget_probe(self, trunk: str, server: Server) -> None:
        """A probe past its deadline: a late answer no longer counts (it goes to the core,
        which knows no such transaction)."""
        for txn_id, found in list(self._probes.items()):
            if found == (trunk, server):
                del self._probes[txn_id]

    def _changed(self, trunk: str, server: Server, answered: bool) -> None:
        self.stats["trunk_target_up" if answered else "trunk_target_down"] += 1
        log.warning("trunk.target_up" if answered else "trunk.target_down", trunk=trunk,
                    target=f"{server.transport}:{server.ip}:{server.port}")

    def feed_changes(self) -> None:
        """Feed the core each trunk whose targets changed since they were last fed."""
        for name, targets in self.lists.items():
            now = tuple(targets.targets())
            if self._fed.get(name) != now:
                self._fed[name] = now
                self.feed(TrunkTargets(name, now))


def _targets_of(trunk: TrunkConfig) -> tuple[object, ...]:
    """What a trunk's TargetList is made from (calling.target_list)."""
    return (trunk.outbound, trunk.probe_interval_s, trunk.failover_timeout_ms)
