#!/usr/bin/env python3
"""The SDP work of one call: the call path (sipmask.sdp.scan) against the data model, its
test oracle, in the same run.

For each call EmbeddedBackend reads the caller's offer and the callee's answer three times
(endpoints, hold, the body for the other leg). This bench does that for bench/call_cpu.py's
two bodies through the call path, as EmbeddedBackend's `_SipmaskSdp` runs it, and through
the model (parse → check_relayable / media_endpoints / is_on_hold → rewrite_for_relay →
stamp → to_bytes, each body parsed once, as the call path scans it once), and prints µs per
call for each and what the call path saves.

With --in-call N it also runs bench/call_cpu.py's server (the real UDP shell, engine, store
and relay in one process) for N rounds after a warm-up, alternating the two: odd rounds on
the call path, even rounds on the model, so both see the same machine, and prints the CPU
per call of each and their ratio, pair by pair. DESIGN.md rule 14 keeps the call path beside
the model only while it saves ≥5 % of a call's CPU.

Run: python3 bench/sdp.py [--calls 2000] [--repeat 9] [--in-call 16 [--media-ports LO-HI]]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from call_cpu import SDP_A, SDP_B  # noqa: E402  # a call's offer and answer

from sipmask.media import embedded  # noqa: E402
from sipmask.media.embedded import _SipmaskSdp  # noqa: E402
from sipmask.sdp.endpoints import MediaEndpoint  # noqa: E402
from sipmask.sdp.model import SessionDescription  # noqa: E402
from sipmask.sdp.origin import OriginCounter, new_session_id  # noqa: E402
from sipmask.sdp.parser import parse  # noqa: E402
from sipmask.sdp.rewrite import (  # noqa: E402
    check_relayable,
    is_on_hold,
    media_endpoints,
    relay_body,
)

RELAY = "127.0.0.1"


class ModelSdp:
    """`_SipmaskSdp`'s three answers on the data model, each body parsed once."""

    def __init__(self) -> None:
        self._origins: dict[str, OriginCounter] = {}
        self._body: bytes | None = None
        self._model: SessionDescription | None = None

    def _parse(self, sdp: bytes) -> SessionDescription:
        if self._model is None or sdp != self._body:
            self._model, self._body = parse(sdp), sdp
        return self._model

    def parse_endpoints(self, sdp: bytes) -> list[MediaEndpoint | None]:
        described = self._parse(sdp)
        check_relayable(described)
        return media_endpoints(described)

    def is_hold(self, sdp: bytes) -> bool:
        return is_on_hold(self._parse(sdp))

    def rewrite(self, sdp: bytes, address: str, ports: list[int], leg_key: str) -> bytes:
        counter = self._origins.get(leg_key)
        if counter is None or counter.address != address:
            counter = self._origins[leg_key] = OriginCounter(address=address,
                                                             sess_id=new_session_id())
        return relay_body(self._parse(sdp), address=address, ports=ports, counter=counter)

    def forget(self, call_id: str) -> None:
        for leg in ("a", "b"):
            self._origins.pop(f"{call_id}:{leg}", None)


class Alternating:
    """EmbeddedBackend's SDP functions, from the call path or from the model as `model`
    says (bench/call_cpu.py's server, --in-call)."""

    def __init__(self) -> None:
        self.paths = (_SipmaskSdp(), ModelSdp())
        self.model = False

    def parse_endpoints(self, sdp: bytes) -> list[MediaEndpoint | None]:
        return self.paths[self.model].parse_endpoints(sdp)

    def is_hold(self, sdp: bytes) -> bool:
        return self.paths[self.model].is_hold(sdp)

    def rewrite(self, sdp: bytes, address: str, ports: list[int], leg_key: str) -> bytes:
        return self.paths[self.model].rewrite(sdp, address, ports, leg_key)

    def forget(self, call_id: str) -> None:
        for path in self.paths:
            path.forget(call_id)


def in_call(rounds: int, media_ports: str) -> None:
    import call_cpu  # bench/call_cpu.py: its server and driver, rounds as it runs them

    sdp = Alternating()
    embedded.sipmask_sdp = lambda: sdp      # type: ignore[assignment,return-value]
    placed = itertools.count()
    offer = call_cpu.offer

    async def alternating(driver: call_cpu.Driver, first: int, calls: int,
                          rate: float) -> None:
        n = next(placed)             # round 0 warms up on the call path
        sdp.model = n > 0 and n % 2 == 0
        await offer(driver, first, calls, rate)

    call_cpu.offer = alternating
    args = argparse.Namespace(calls=4000, rate=400.0, rounds=rounds, media_ports=media_ports,
                              gc_threshold=None, profile=None)
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with tempfile.TemporaryDirectory(prefix="bench-sdp-") as tmp, runner:
        results = runner.run(call_cpu.run_sipmask(args, Path(tmp)))
    pairs = [(results[i][0], results[i + 1][0]) for i in range(0, len(results) - 1, 2)]
    ratios = [model / scan for scan, model in pairs]
    print(f"\nCPU per call in bench/call_cpu.py's server, loop thread, {len(pairs)} pairs of "
          "rounds (call path, model):")
    print("  " + ", ".join(f"{scan:,.0f}/{model:,.0f}" for scan, model in pairs))
    print(f"  model / call path: median {statistics.median(ratios):.3f}, "
          f"{min(ratios):.3f}-{max(ratios):.3f}")


def per_call_us(sdp: _SipmaskSdp | ModelSdp, calls: int) -> float:
    start = time.perf_counter()
    for n in range(calls):
        call_id = str(n)
        for body, towards in ((SDP_A, "b"), (SDP_B, "a")):
            sdp.parse_endpoints(body)
            sdp.is_hold(body)
            sdp.rewrite(body, RELAY, [40000], f"{call_id}:{towards}")
        sdp.forget(call_id)
    return (time.perf_counter() - start) * 1e6 / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls a repeat")
    parser.add_argument("--repeat", type=int, default=9, help="repeats; the best is shown")
    parser.add_argument("--in-call", type=int, default=0, metavar="ROUNDS",
                        help="also alternate the two in bench/call_cpu.py's server")
    parser.add_argument("--media-ports", default="61000-64999",
                        help="relay port range for --in-call (above the ephemeral range)")
    args = parser.parse_args()
    # Both answer alike (tests/unit/sdp/test_sdp_oracle.py); check it here too.
    made: list[Callable[[], _SipmaskSdp | ModelSdp]] = [_SipmaskSdp, ModelSdp]
    outputs = {factory().rewrite(body, RELAY, [40000], "c:a")
               for factory in made for body in (SDP_A,)}
    assert len({o.split(b"\r\n", 2)[2] for o in outputs}) == 1, outputs
    best = {factory: float("inf") for factory in made}
    for _ in range(args.repeat):       # interleaved, so a busy moment hits both
        for factory in made:
            best[factory] = min(best[factory], per_call_us(factory(), args.calls))
    scan_us, model_us = best[_SipmaskSdp], best[ModelSdp]
    print(f"SDP work per call (offer + answer, best of {args.repeat} x {args.calls} calls):")
    print(f"  call path (sdp/scan.py)        {scan_us:7.1f} µs")
    print(f"  model, its oracle (same run)   {model_us:7.1f} µs  ({model_us / scan_us:.2f}x)")
    print(f"  saved by the call path         {model_us - scan_us:7.1f} µs per call")
    if args.in_call:
        in_call(args.in_call, args.media_ports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
