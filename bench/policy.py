"""What "who may call" costs per INVITE, and what a source-rotating flood costs in memory.

Three timings, in one run, on the same prepared INVITE and binding:
  baseline   routing alone: routing.target_x + caller_number + route (what every INVITE pays)
  policy     CallPolicy.admit + admit_attempt + admit_route + call_started/ended with every
             limit switched on (flood, per-caller, per-X, per-tenant buckets, blacklists,
             concurrency cap)
  rotating   admit() from a new source address every time (an attacker rotating sources):
             the keyed limiter holds at most policy.max_tracked_keys buckets
The ratio says what policy adds to routing's cost; the resident size shows the bound holds.

Run: python3 bench/policy.py [--n 200000]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

from sipmask.b2bua import routing
from sipmask.clock import SystemClock
from sipmask.config import loader
from sipmask.policy import CallPolicy
from sipmask.sip.message import Request
from sipmask.sip.parser import parse_message
from sipmask.store.base import Binding

A, B, X = "13800000001", "13900000002", "700100000000001"
INVITE = (f"INVITE sip:{X}@127.0.0.1;user=phone SIP/2.0\r\n"
          f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
          f"From: <sip:{A}@127.0.0.1>;tag=1\r\nTo: <sip:{X}@127.0.0.1>\r\nCall-ID: c1\r\n"
          f"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


@dataclasses.dataclass
class CallRef:
    call_id: str
    x: str


def per_op(fn: object, n: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    n = parser.parse_args().n
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    binding = Binding(id="b1", mode="axb", tenant="demo", x=X, a=A, b=B, created_at=0.0,
                      expires_at=None, blacklist=("137", "150"), max_concurrent=1_000_000)
    # Every bucket on and never empty (a huge burst), refilling slowly so each stays held:
    # the steady cost of checking, not of refusing.
    bucket = "{rate: 1000, burst: 1000000000}"
    config = loader.loads(loader.default_text(), [
        f"policy.source_flood={bucket}", f"policy.per_caller={bucket}",
        f"policy.per_x={bucket}", f"policy.per_tenant={bucket}",
        "tenants.demo.blacklist=['1390000', '010']"])
    policy = CallPolicy(config, SystemClock())
    source = ("127.0.0.1", 5070)
    request.parsed_uri  # noqa: B018  (parsed once, as the engine's first look does)

    def baseline(_: int) -> None:
        x = routing.target_x(request)
        caller = routing.caller_number(request, trust_pai=False)
        routing.route(binding if x else None, x, caller)

    call = CallRef("c", X)

    def with_policy(_: int) -> None:
        baseline(_)
        policy.admit(request, source, "carrier")
        policy.admit_attempt(X, A)
        policy.admit_route(binding, A, "a_to_b")
        policy.call_started(call)
        policy.call_ended(call)

    # Slow refill, so a bucket stays until evicted: the worst case for memory.
    slow = dataclasses.replace(config, policy=dataclasses.replace(
        config.policy, source_flood=dataclasses.replace(config.policy.source_flood,
                                                        rate=0.001, burst=10)))
    rotating_policy = CallPolicy(slow, SystemClock())

    def rotating(i: int) -> None:
        rotating_policy.admit(request, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5060),
                              "carrier")

    base = per_op(baseline, n)
    full = per_op(with_policy, n)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rot = per_op(rotating, n)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"baseline routing       {base * 1e6:8.2f} us/INVITE")
    print(f"routing + policy       {full * 1e6:8.2f} us/INVITE  "
          f"(policy adds {(full - base) * 1e6:.2f} us)")
    print(f"ratio                  {full / base:8.2f} x baseline")
    print(f"rotating sources       {rot * 1e6:8.2f} us/admit, {len(rotating_policy.sources)} "
          f"buckets held for {n} sources (max_tracked_keys "
          f"{config.policy.max_tracked_keys}), evicted {rotating_policy.sources.evicted}, "
          f"max RSS {rss_before // 1024} -> {rss_after // 1024} MiB")


if __name__ == "__main__":
    main()
