#!/usr/bin/env python3
"""bench/call_cpu.py's call flow without the event loop: for instruction counts that repeat.

Under valgrind, bench/call_cpu.py's figure moves with scheduling (how many calls are in
flight, how CDR commits batch, when the cyclic collector runs). This replays the same
messages (its caller's INVITE with SDP, the callee's 180 and 200 with SDP, ACK, BYE and its
200) through the sans-IO call core and the real transaction layer, driven as
tests/support/engine.py's Harness drives them: a fake clock, the in-memory store, CDR log
and media stand-in, no sockets. What it counts is the SIP side of a call (parse, the
transaction layer, the core, building and writing messages); the asyncio shell, LMDB and the
relay are bench/call_cpu.py's to count.

Two runs give the instructions per call, as in ../notes' measure.md:

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        python bench/call_replay.py --calls 200   (and --calls 800)

per call = (I[800] - I[200]) / 600, the same on every run (PYTHONHASHSEED=0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from call_cpu import (  # noqa: E402  # bench/ is not a package
    CALL_ID,
    CALLEE,
    CALLER,
    CONTACT,
    CSEQ,
    SDP_A,
    SDP_B,
    TO_TAG,
    A,
    B,
    X,
    callee_response,
    caller_request,
)

from tests.support.engine import Harness  # noqa: E402

Address = tuple[str, int]


class Replay(Harness):
    """The core and transaction layer, with both peers answering what sipmask sends."""

    def __init__(self) -> None:
        super().__init__(overrides=[f"trunks.carrier.outbound=udp://{CALLEE[0]}:{CALLEE[1]}",
                                    "trunks.carrier.inbound_allow=['127.0.0.0/8']"])
        self.store.create(mode="axb", tenant=next(iter(self.config.tenants)), a=A, b=B, x=X,
                          ttl=0)
        self.inbox: list[tuple[bytes, Address]] = []     # what the peers send next
        self.calls: dict[bytes, int] = {}                # leg A Call-ID -> call number
        self.byes: list[tuple[int, str, str]] = []       # calls answered: BYE them

    def _collect(self) -> None:
        # What sipmask sent, read as bench/call_cpu.py's driver reads it (not parsed).
        for out in self.layer.outgoing():
            self._react(out.data, out.dest)

    def _react(self, data: bytes, dest: Address) -> None:
        cseq = CSEQ.search(data)
        assert cseq is not None
        if dest == CALLEE:
            if data.startswith(b"INVITE "):
                call_id = CALL_ID.search(data)
                assert call_id is not None
                callee_tag = b"callee-" + call_id.group(1)[:12]
                self.inbox.append((callee_response(data, b"180 Ringing", callee_tag), CALLEE))
                self.inbox.append((callee_response(data, b"200 OK", callee_tag, SDP_B), CALLEE))
            elif data.startswith(b"BYE "):
                self.inbox.append((callee_response(data, b"200 OK", b""), CALLEE))
            return
        call_id = CALL_ID.search(data)
        if not data.startswith(b"SIP/2.0 ") or call_id is None:
            return
        n = self.calls.get(call_id.group(1))
        if n is None:
            return
        method, status = cseq.group(2), data[8:11]
        if method == b"INVITE" and status == b"200":
            to_tag, contact = TO_TAG.search(data), CONTACT.search(data)
            assert to_tag is not None and contact is not None
            uri, tag = contact.group(1).decode(), to_tag.group(1).decode()
            self.inbox.append((caller_request("ACK", n, 1, uri, tag), CALLER))
            self.byes.append((n, uri, tag))
        elif method == b"BYE":
            del self.calls[call_id.group(1)]

    def pump(self) -> None:
        while self.inbox:
            data, source = self.inbox.pop(0)
            self.deliver(data, source)

    def call(self, n: int) -> None:
        """One call: INVITE to its 200 and ACK, the clock on by 10 ms, BYE to its 200."""
        self.calls[f"{n}-callerleg@127.0.0.2".encode()] = n
        self.inbox.append((caller_request("INVITE", n, 1, f"sip:{X}@127.0.0.1:5060;user=phone",
                                          body=SDP_A), CALLER))
        self.pump()
        self.advance(0.01)
        while self.byes:
            m, uri, tag = self.byes.pop(0)
            self.inbox.append((caller_request("BYE", m, 2, uri, tag), CALLER))
            self.pump()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    replay = Replay()
    for n in range(args.calls):
        replay.call(n)
    replay.advance(40)                  # the transactions' timers run out
    if replay.calls:
        raise SystemExit(f"{len(replay.calls)} of {args.calls} calls did not end")
    print(f"{args.calls} calls replayed, {len(replay.cdrs.records)} CDRs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
