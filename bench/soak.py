"""Soak: a long run at a steady call rate through sipmask, then everything back to zero.

    python3 bench/soak.py                       # 10 minutes at 240 calls/s (80 % of 300)
    python3 bench/soak.py --rate 200 --minutes 2

The rate defaults to 80 % of the highest rate bench/calls.py held on this machine (300
calls/s when last measured; pass --rate after a new ladder). Prints, once a minute: calls
placed, failed, sipmask's RSS (heap and file-backed apart) and its gauges (active calls,
transactions, media sessions). At the end: failed calls, memory at start and end, and
whether the gauges went back to zero once the calls and their transactions (Timer D: 32 s)
were over. Reuses bench/calls.py's sipmask, callee and SIPp step runner (same scenarios,
privacy checks stripped).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calls import (  # bench/ is not a package: its directory is put on sys.path above
    SIPMASK_IP,
    Callee,
    Sipmask,
    free_port,
    run_step,
    write_scenarios,
)

CALLEE_IP = "127.0.0.3"
SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$", re.M)


def memory(pid: int) -> dict[str, float]:
    """VmRSS split into RssAnon (heap: Python objects, buffers) and RssFile (file-backed
    pages: mostly the LMDB map the CDRs are written to, plus shared libraries). A leak
    shows as RssAnon growing minute after minute; RssFile grows with the store and is
    page cache the kernel can reclaim."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def memory_text(pid: int) -> str:
    m = memory(pid)
    return (f"RSS {m.get('VmRSS', float('nan')):.0f} MB (anon {m.get('RssAnon', float('nan')):.0f},"
            f" file {m.get('RssFile', float('nan')):.0f})")


def gauges(api_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5).read()
    out: dict[str, float] = {}
    for name, _labels, value in SAMPLE.findall(text.decode()):
        if name in ("sipmask_active_calls", "sipmask_media_sessions",
                    "sipmask_media_ports_in_use"):
            out[name] = float(value)
        elif name == "sipmask_transactions":
            out["transactions"] = out.get("transactions", 0.0) + float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=240, help="calls/s (default 240)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length (default 10)")
    # The same call length as bench/calls.py's ladder, whose highest rate sets --rate: with
    # longer calls more are up at once (relay sockets, timers) and the rate must be lower.
    parser.add_argument("--hold-ms", type=int, default=100,
                        help="call length, as in bench/calls.py (default 100)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipmask-soak-") as name:
        tmp = Path(name)
        caller, callee_xml = write_scenarios(tmp)
        callee_port = free_port(CALLEE_IP)
        api = free_port(SIPMASK_IP)
        callee = Callee(tmp, callee_xml, callee_port)
        server = Sipmask(tmp, callee_port, None,
                         extra=("--set", f"api.listen=127.0.0.1:{api}"))
        try:
            start_mem = memory_text(server.proc.pid)
            print(f"soak: {args.rate} calls/s for {args.minutes:g} min, hold {args.hold_ms} ms; "
                  f"sipmask pid {server.proc.pid}, {start_mem}", flush=True)
            ok = failed = 0
            minutes = max(1, round(args.minutes))
            for minute in range(minutes):
                here = tmp / f"m{minute}"          # run_step writes SIPp's files below it
                here.mkdir()
                step = run_step("soak", here, caller, (SIPMASK_IP, server.port), args.rate,
                                args.minutes * 60 / minutes, args.hold_ms)
                ok, failed = ok + step.successful, failed + step.failed
                print(f"  minute {minute + 1}: ok {step.successful} failed {step.failed} "
                      f"placed {step.placed_rate:.0f}/s setup {step.setup_ms:.1f} ms "
                      f"{memory_text(server.proc.pid)} {gauges(api)}", flush=True)
            end_mem = memory_text(server.proc.pid)
            # Calls end at once; their transactions within Timer D (32 s on UDP).
            deadline = time.monotonic() + 40
            settled = gauges(api)
            while any(settled.values()) and time.monotonic() < deadline:
                time.sleep(2)
                settled = gauges(api)
            total = ok + failed
            print()
            print(f"calls: {total}, failed {failed} ({100 * failed / max(1, total):.3f} %)")
            print(f"memory: start {start_mem}; end of load {end_mem}; "
                  f"after settling {memory_text(server.proc.pid)}")
            print(f"gauges after: {settled} -> "
                  f"{'all back to zero' if not any(settled.values()) else 'NOT zero'}")
        finally:
            server.stop()
            callee.stop()


if __name__ == "__main__":
    main()
