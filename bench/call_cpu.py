#!/usr/bin/env python3
"""CPU per call inside one sipmask, without SIPp: the figure to watch while optimising.

bench/calls.py measures what a carrier sees (SIPp on both sides, real sockets), but its CPU
per call moves by ±5 % from run to run on this VM, more than most single changes save. This
bench runs the real server in-process: the real UDP shell's `datagram_received` gets the
caller's and callee's datagrams, the real transaction layer, engine, LMDB store, CDR group
commit and relay (its sockets are real; no RTP flows) do their work, and what sipmask sends
is caught at the datagram transport's `sendto` instead of the kernel. A small driver plays
both peers (the flow of bench/calls.py: INVITE with SDP, 180, 200 with SDP, ACK, a hold,
BYE, 200) at a fixed offered rate, so the loop sees calls arrive as it would under SIPp.

Printed: sipmask's CPU per call on the loop thread and in the whole process (the CDR
writer thread included), with the driver's own time measured and taken off, as the median
of --rounds rounds, and the baseline from the same run: the driver alone against a stub
that answers each datagram with a canned one (the cost of producing and reading the
datagrams, no SIP logic). Kernel time for real UDP is not in these figures.

Run: python3 bench/call_cpu.py [--calls 4000] [--rate 400] [--rounds 3] [--profile FILE]
                               [--gc-threshold G0,G1,G2] [--media-ports LO-HI]
                               [--store postgres [--dsn DSN]]
With --store postgres the store is a PostgreSQL database (a throwaway durable server from
Debian's postgresql unless --dsn names one): lookups, CDRs and the journal over the network,
from the loop's own connections (the threads take what those cannot); the process figure
includes any thread.
Also printed per round: the time the cyclic garbage collector ran (gc.callbacks), and the
user and system CPU of the process's other threads per call (the CDR writer on LMDB; on
PostgreSQL whatever the loop handed to threads), which hold the GIL for their user time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from calls import SIPMASK_IP, free_port  # noqa: E402  # bench/ is not a package

from sipmask.config import loader  # noqa: E402
from sipmask.observability import logging as sm_logging  # noqa: E402
from sipmask.server import GcFreezer, Services, SipServer  # noqa: E402

CALLER, CALLEE = ("127.0.0.2", 5061), ("127.0.0.3", 5062)
A, B, X = "13800000001", "13900000002", "700100000000001"
HOLD_S = 0.1

CALL_ID = re.compile(rb"\r\nCall-ID: *([^\r]+)", re.I)
CSEQ = re.compile(rb"\r\nCSeq: *(\d+) (\w+)", re.I)
HEADER = {name: re.compile(rb"\r\n(" + name + rb": *[^\r]+)", re.I)
          for name in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")}
TO_TAG = re.compile(rb"\r\nTo: *[^\r]*;tag=([^;\r]+)", re.I)
CONTACT = re.compile(rb"\r\nContact: *<([^>]+)>", re.I)

SDP_A = (b"v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.2\r\ns=call from caller\r\n"
         b"c=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 16000 RTP/AVP 0 101\r\n"
         b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
         b"a=sendrecv\r\n")
SDP_B = SDP_A.replace(b"caller", b"callee").replace(b"127.0.0.2", b"127.0.0.3").replace(
    b"16000", b"18000")


def caller_request(method: str, n: int, cseq: int, uri: str, to_tag: str = "",
                   body: bytes = b"") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    head = (f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.2:5061;branch=z9hG4bK-{n}-{cseq}-{method};rport\r\n"
            f'From: "Caller Name" <sip:{A}@127.0.0.2:5061;user=phone>;tag={n}SIPpTag00\r\n'
            f"To: <sip:{X}@127.0.0.1:5060;user=phone>{tag}\r\n"
            f"Call-ID: {n}-callerleg@127.0.0.2\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{A}@127.0.0.2:5061;transport=UDP>\r\nMax-Forwards: 70\r\n")
    if method == "INVITE":
        head += ("P-Asserted-Identity: <sip:13800000001@127.0.0.2>\r\nUser-Agent: caller-ua\r\n"
                 "Subject: secret subject\r\n"
                 "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO\r\n"
                 "Content-Type: application/sdp\r\n")
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def callee_response(request: bytes, status: bytes, tag: bytes, body: bytes = b"") -> bytes:
    lines = [b"SIP/2.0 " + status]
    for name, pattern in HEADER.items():
        found = pattern.search(request)
        assert found is not None, name
        line = found.group(1)
        if name == b"To" and tag and b";tag=" not in line:
            line += b";tag=" + tag
        lines.append(line)
    lines.append(b"Contact: <sip:13900000002@127.0.0.3:5062;transport=UDP>")
    lines.append(b"Server: callee-ua")
    if body:
        lines.append(b"Content-Type: application/sdp")
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class GcClock:
    """Time the cyclic collector runs (gc.callbacks), in seconds, and how often."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.runs = 0
        self._start = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.spent += time.perf_counter() - self._start
            self.runs += 1


class Wire:
    """Stands in for the datagram transport: what sipmask sends lands in `on_send`."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.driver.on_send(data, addr)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def close(self) -> None:
        pass


class Driver:
    """Both peers. Every callback's own time goes to `self.spent`, to be taken off."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.loop = loop
        self.deliver = deliver          # (data, source) -> None: into sipmask's UDP shell
        self.spent = 0.0
        self.done = 0
        self.failed = 0
        self.calls: dict[bytes, int] = {}   # leg A Call-ID -> call number
        self.finished = asyncio.Event()
        self.expected = 0

    def _in(self, data: bytes, source: tuple[str, int]) -> None:
        """Deliver on the next loop pass, as a socket would (never inside sipmask's send)."""
        self.loop.call_soon(self.deliver, data, source)

    def place(self, n: int) -> None:
        t0 = time.perf_counter()
        self.calls[f"{n}-callerleg@127.0.0.2".encode()] = n
        self._in(caller_request("INVITE", n, 1, f"sip:{X}@127.0.0.1:5060;user=phone",
                                body=SDP_A), CALLER)
        self.spent += time.perf_counter() - t0

    def on_send(self, data: bytes, addr: tuple[str, int]) -> None:
        t0 = time.perf_counter()
        try:
            self._react(data, addr)
        finally:
            self.spent += time.perf_counter() - t0

    def _react(self, data: bytes, addr: tuple[str, int]) -> None:
        cseq = CSEQ.search(data)
        assert cseq is not None
        method = cseq.group(2)
        if addr[0] == CALLEE[0]:                       # sipmask -> callee
            if data.startswith(b"INVITE "):
                tag = b"callee-" + CALL_ID.search(data).group(1)[:12]  # type: ignore[union-attr]
                self._in(callee_response(data, b"180 Ringing", tag), CALLEE)
                self._in(callee_response(data, b"200 OK", tag, SDP_B), CALLEE)
            elif data.startswith(b"BYE "):
                self._in(callee_response(data, b"200 OK", b""), CALLEE)
            return
        if not data.startswith(b"SIP/2.0 "):           # sipmask -> caller: a request
            return
        status = data[8:11]
        n = self.calls.get(CALL_ID.search(data).group(1))  # type: ignore[union-attr]
        if n is None:
            return
        if method == b"INVITE" and status == b"200":
            tag = TO_TAG.search(data).group(1).decode()  # type: ignore[union-attr]
            uri = CONTACT.search(data).group(1).decode()  # type: ignore[union-attr]
            self._in(caller_request("ACK", n, 1, uri, tag), CALLER)
            self.loop.call_later(HOLD_S, self._bye, n, uri, tag)
        elif method == b"INVITE" and status[0:1] in b"3456":
            self._end(n, ok=False)
        elif method == b"BYE":
            self._end(n, ok=status == b"200")

    def _bye(self, n: int, uri: str, tag: str) -> None:
        t0 = time.perf_counter()
        self._in(caller_request("BYE", n, 2, uri, tag), CALLER)
        self.spent += time.perf_counter() - t0

    def _end(self, n: int, ok: bool) -> None:
        self.calls.pop(f"{n}-callerleg@127.0.0.2".encode(), None)
        self.done += 1
        self.failed += not ok
        if self.done >= self.expected:
            self.finished.set()


async def offer(driver: Driver, first: int, calls: int, rate: float) -> None:
    """Place `calls` calls at `rate` a second (open loop, like SIPp -r)."""
    driver.expected, driver.done, driver.failed = calls, 0, 0
    driver.finished.clear()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(calls):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        driver.place(first + i)
    await asyncio.wait_for(driver.finished.wait(), timeout=calls / rate + 30)


def thread_cpu() -> dict[str, tuple[float, float]]:
    """CPU seconds (user, system) of each live thread of this process by its Python name
    (threads of one pool summed, their numbers dropped), from /proc (Linux); {} elsewhere."""
    names = {t.native_id: re.sub(r"_\d+$", "", t.name) for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, float]] = {}
    for tid, name in names.items():
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()      # utime, stime: fields 14, 15 of stat
        user, system = out.get(name, (0.0, 0.0))
        out[name] = (user + int(fields[11]) / tick, system + int(fields[12]) / tick)
    return out


async def run_sipmask(args: argparse.Namespace, tmp: Path) -> list[tuple[float, float]]:
    if args.dsn:
        from sipmask.store.crypto import create_key_file
        create_key_file(tmp / "store.key")
        store = ["store.backend=postgres", f"store.dsn={args.dsn}",
                 f"store.key_file={tmp / 'store.key'}"]
    else:
        store = [f"store.path={tmp / 'bench.lmdb'}"]
    config = loader.loads(loader.default_text(), [
        *store, f"sip.listen=[udp://{SIPMASK_IP}:{free_port(SIPMASK_IP)}]",
        "api.listen=null", "log.level=warning", f"media.ports={args.media_ports}",
        f"trunks.carrier.outbound=udp://{CALLEE[0]}:{CALLEE[1]}",
        "trunks.carrier.inbound_allow=['127.0.0.0/8']", *args.set])
    sm_logging.setup(config.log)
    services = Services.open(config)
    server = SipServer(config, handler_factory=services.engine_factory)
    services.watch(server)
    await server.start()
    freezer = GcFreezer(asyncio.get_running_loop())   # as serve() runs it
    if args.gc_threshold:
        gc.set_threshold(*(int(v) for v in args.gc_threshold.split(",")))
    collector = GcClock()
    services.store.create(mode="axb", tenant=next(iter(config.tenants)), a=A, b=B, x=X,
                          ttl=0)
    loop = asyncio.get_running_loop()
    udp = server.udp[0]
    driver = Driver(loop, lambda data, source: udp.datagram_received(data, source))
    udp.transport = Wire(driver)  # type: ignore[assignment]
    results: list[tuple[float, float]] = []
    try:
        first = 0
        for round_no in range(args.rounds + 1):     # round 0 warms up (pools, caches)
            calls = args.calls if round_no else max(200, args.calls // 4)
            profiler = cProfile.Profile() if args.profile and round_no == args.rounds else None
            driver.spent = 0.0
            collector.spent, collector.runs = 0.0, 0
            commits0 = services.engines[0]._cdr_group.commits
            threads0 = thread_cpu()
            thread0, process0 = time.thread_time(), time.process_time()
            if profiler:
                profiler.enable()
            await offer(driver, first, calls, args.rate)
            await asyncio.sleep(0.2)                # the CDR commits of the last calls
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            thread = time.thread_time() - thread0 - driver.spent
            process = time.process_time() - process0 - driver.spent
            first += calls
            if driver.failed:
                raise SystemExit(f"{driver.failed} of {calls} calls failed")
            if round_no:
                results.append((1e6 * thread / calls, 1e6 * process / calls))
                print(f"  round {round_no}: {calls} calls, loop thread {results[-1][0]:,.0f} "
                      f"µs/call, process {results[-1][1]:,.0f} µs/call; cyclic GC "
                      f"{1e6 * collector.spent / calls:,.0f} µs/call in {collector.runs} runs; "
                      f"{(services.engines[0]._cdr_group.commits - commits0) / calls:.2f} "
                      "CDR commits/call",
                      flush=True)
                spent = {name: (user - threads0.get(name, (0.0, 0.0))[0],
                                system - threads0.get(name, (0.0, 0.0))[1])
                         for name, (user, system) in thread_cpu().items()
                         if name != "MainThread"}
                if spent:
                    print("    other threads, user/system µs per call: " + ", ".join(
                        f"{name} {1e6 * u / calls:,.0f}/{1e6 * y / calls:,.0f}"
                        for name, (u, y) in sorted(spent.items()) if u + y > 0), flush=True)
    finally:
        freezer.close()
        server.close()
        await services.close()
    return results


async def run_baseline(args: argparse.Namespace) -> float:
    """The driver against a stub that answers each datagram with a canned datagram."""
    loop = asyncio.get_running_loop()
    invite = caller_request("INVITE", 0, 1, "sip:x@127.0.0.1", body=SDP_A)
    ok_a = callee_response(invite, b"200 OK", b"t1", SDP_B).replace(
        b"\r\nContact: <sip:13900000002@127.0.0.3:5062", b"\r\nContact: <sip:x@127.0.0.1:5060")

    def stub(data: bytes, source: tuple[str, int]) -> None:
        # One canned answer per datagram sipmask would have sent for it.
        n = CALL_ID.search(data).group(1)  # type: ignore[union-attr]
        if data.startswith(b"INVITE "):
            wire.sendto(invite.replace(b"Call-ID: 0-callerleg", b"Call-ID: b" + n), CALLEE)
            wire.sendto(ok_a.replace(b"0-callerleg@127.0.0.2", n).replace(
                b"CSeq: 1 INVITE", b"CSeq: 1 INVITE"), CALLER)
        elif data.startswith(b"BYE "):
            wire.sendto(ok_a.replace(b"0-callerleg@127.0.0.2", n).replace(
                b"CSeq: 1 INVITE", b"CSeq: 2 BYE"), CALLER)

    driver = Driver(loop, stub)
    wire = Wire(driver)
    driver.spent = 0.0
    thread0 = time.thread_time()
    await offer(driver, 0, args.calls, args.rate)
    return float(1e6 * (time.thread_time() - thread0) / args.calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls a round")
    parser.add_argument("--rate", type=float, default=400.0, help="calls a second offered")
    parser.add_argument("--rounds", type=int, default=3)
    block = 20_000 + 6_000 * (os.getpid() % 6)     # runs side by side rarely collide
    parser.add_argument("--media-ports", default=f"{block}-{block + 5_999}",
                        help="relay port range (default: a 6,000-port block by pid)")
    parser.add_argument("--gc-threshold", metavar="G0,G1,G2",
                        help="gc.set_threshold for the server (default: Python's)")
    parser.add_argument("--profile", help="cProfile the last round into this file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the sipmask under test, as `sipmask "
                             "serve --set`; repeatable")
    parser.add_argument("--store", choices=("lmdb", "postgres"), default="lmdb",
                        help="postgres: a throwaway durable PostgreSQL server (or --dsn)")
    parser.add_argument("--dsn", help="--store postgres: this database (its schema is "
                                      "made if missing), not a throwaway server")
    args = parser.parse_args()
    server = None
    if args.store == "postgres" and not args.dsn:
        from tests.support.postgres import DURABLE, throwaway_database
        args.dsn, server = throwaway_database(DURABLE)
    try:
        return measure(args)
    finally:
        if server is not None:
            server.stop()


def measure(args: argparse.Namespace) -> int:
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with tempfile.TemporaryDirectory(prefix="bench-call-cpu-") as tmp, runner:
        print(f"{args.calls} calls a round at {args.rate:g}/s offered, {args.rounds} rounds "
              "after a warm-up", flush=True)
        results = runner.run(run_sipmask(args, Path(tmp)))
        baseline = runner.run(run_baseline(args))
    loop_us = statistics.median(r[0] for r in results)
    process_us = statistics.median(r[1] for r in results)
    print(f"\nsipmask CPU per call (median of {len(results)}): loop thread {loop_us:,.0f} µs, "
          f"process {process_us:,.0f} µs")
    print(f"baseline, same run (driver and a canned-answer stub): {baseline:,.0f} µs per call "
          f"({loop_us / baseline:.1f}× of it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
