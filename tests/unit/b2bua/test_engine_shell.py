"""The engine inside the real SipServer shell, over real loopback UDP sockets.

DESIGN rule 15 (no re-entry): the shell performs what the engine asked for after the engine
returned, and a send that fails at once comes back as an event the engine can match. Before,
`udp.send` refusing the trunk's destination delivered TransportFailed inside
`send_request`, before the engine knew its transaction: the event was dropped, the caller
heard 408 after ring_timeout_s and the call stayed in the engine for ever.
"""

from __future__ import annotations

import asyncio

from sipmask.b2bua.engine import Engine
from sipmask.cdr.store import MemoryCdrLog
from sipmask.clock import SystemClock
from sipmask.config import loader
from sipmask.server import SipActions, SipServer
from sipmask.sip.message import Response
from sipmask.sip.parser import parse_message
from sipmask.store.memory import MemoryStore
from tests.support.engine import A_NUM, B_NUM, RelaySdp, X, a_invite
from tests.support.net import LOOPBACK, free_port


class Caller(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[Response] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        message = parse_message(data)
        assert isinstance(message, Response)
        self.received.put_nowait(message)


def test_send_refused_at_once_ends_the_call_with_503() -> None:
    port = free_port()
    config = loader.loads(loader.default_text(), [
        f"sip.listen=[udp://{LOOPBACK}:{port}]",
        # A host name: accepted by the config, refused by the UDP shell (no DNS on the path).
        "trunks.carrier.outbound=udp://sbc.carrier.example:5060"])
    store = MemoryStore(tenants=config.tenants)
    store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0)
    cdrs = MemoryCdrLog()
    engines: list[Engine] = []

    def engine_factory(actions: SipActions) -> Engine:
        engine = Engine(actions, config=config, store=store,  # type: ignore[arg-type]
                        media=RelaySdp(), cdrs=cdrs, clock=SystemClock())
        engines.append(engine)
        return engine

    async def main() -> list[int]:
        server = SipServer(config, handler_factory=engine_factory)
        await server.start()
        loop = asyncio.get_running_loop()
        transport, caller = await loop.create_datagram_endpoint(
            Caller, local_addr=(LOOPBACK, 0))
        try:
            local = transport.get_extra_info("sockname")
            invite = a_invite().replace("192.0.2.10:5060", f"{local[0]}:{local[1]}")
            transport.sendto(invite.encode(), (LOOPBACK, port))
            statuses: list[int] = []
            while not statuses or statuses[-1] < 200:
                # ring_timeout_s is 60: a final answer within 2 s is the failure itself.
                response = await asyncio.wait_for(caller.received.get(), 2.0)
                statuses.append(response.status)
            return statuses
        finally:
            transport.close()
            server.close()

    assert asyncio.run(main()) == [100, 503]
    [engine] = engines
    assert engine.calls == {}
    [record] = cdrs.records
    assert (record.sip_status, record.unconnected_cause, record.release_side) == (
        503, "trunk_unreachable", "sipmask")
