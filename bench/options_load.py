"""OPTIONS load: SIPp drives `sipmask serve` over UDP at a ladder of rates.

For each rate the run lasts --seconds; a rate is *held* when every OPTIONS got its 200 with
no SIPp retransmission (nothing lost) and no failed call. The baseline, measured in the same
run with the same SIPp and the same ladder, is a minimal asyncio (uvloop) responder that
answers 200 by copying five header lines without parsing: it shows what Python and the
event loop cost by themselves, so the ratio isolates sipmask's parse/transaction/handler work.

    python3 bench/options_load.py                    # 1000..4000/s, 10 s each
    python3 bench/options_load.py --rates 2000 --seconds 5

Figures: highest held rate, mean SIPp response time, and server CPU µs per OPTIONS (from
/proc/<pid>/stat), for both; ratios sipmask/baseline at the end. Loopback only.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "sipp-scenarios" / "options.xml"
HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")

BASELINE = r'''
import asyncio, sys
try:
    import uvloop
except ImportError:
    uvloop = None
KEEP = (b"via:", b"from:", b"to:", b"call-id:", b"cseq:", b"v:", b"f:", b"t:", b"i:")

class Echo200(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        lines = data.split(b"\r\n")
        kept = [l for l in lines[1:] if l[:8].lower().startswith(KEEP)]
        for i, l in enumerate(kept):
            if l.lower().startswith(b"to:") and b"tag=" not in l:
                kept[i] = l + b";tag=echo"
        self.transport.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(kept)
                              + b"\r\nAllow: OPTIONS\r\nContent-Length: 0\r\n\r\n", addr)

async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo200, local_addr=(sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main()) if uvloop is None else uvloop.run(main())
'''


@dataclass
class Step:
    rate: int
    sent: int
    ok: int
    failed: int
    retrans: int
    mean_ms: float
    achieved: float
    cpu_us: float          # server CPU per OPTIONS
    rss_mb: float          # server resident memory after the step

    @property
    def held(self) -> bool:
        # Nothing lost, and the rate really offered (a saturated responder makes SIPp lag).
        return (self.ok == self.sent and self.failed == 0 and self.retrans == 0
                and self.achieved >= 0.98 * self.rate)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hms_to_ms(text: str) -> float:
    h, m, s, us = (int(x) for x in text.split(":"))
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    probe = (f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:9;branch=z9hG4bKp;"
             "rport\r\nFrom: <sip:p@h>;tag=1\r\nTo: <sip:h>\r\nCall-ID: probe\r\n"
             "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for _ in range(100):
            if proc.poll() is not None:
                raise SystemExit(f"responder exited with {proc.returncode}")
            s.sendto(probe, (HOST, port))
            try:
                s.recv(4096)
                return
            except TimeoutError:
                continue
    raise SystemExit("responder never answered")


def run_step(port: int, pid: int, rate: int, seconds: float, workdir: Path) -> Step:
    stats = workdir / f"stats-{port}-{rate}.csv"
    total = int(rate * seconds)
    cpu0 = cpu_seconds(pid)
    subprocess.run(
        ["sipp", "-sf", str(SCENARIO), "-i", HOST, "-p", "0", "-m", str(total),
         "-r", str(rate), "-l", str(max(rate, 1000)), "-nostdin", "-buff_size", "4194304",
         "-timeout", f"{int(seconds) + 30}s", "-max_retrans", "2", "-trace_stat",
         "-stf", str(stats), "-fd", "1", f"{HOST}:{port}"],
        cwd=workdir, capture_output=True, timeout=seconds + 60)
    cpu = cpu_seconds(pid) - cpu0
    with stats.open(newline="") as f:
        row = list(csv.DictReader(f, delimiter=";"))[-1]
    ok = int(row["SuccessfulCall(C)"])
    return Step(rate, total, ok, int(row["FailedCall(C)"]), int(row["Retransmissions(C)"]),
                hms_to_ms(row["ResponseTimeoptions(C)"]), float(row["CallRate(C)"]),
                cpu / max(ok, 1) * 1e6, rss_mb(pid))


def ladder(name: str, argv: list[str], port: int, rates: list[int], seconds: float,
           workdir: Path) -> list[Step]:
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=(workdir / f"{name}.stderr").open("wb"))
    try:
        wait_ready(port, proc)
        steps = []
        for rate in rates:
            step = run_step(port, proc.pid, rate, seconds, workdir)
            steps.append(step)
            print(f"  {name:9} {rate:6}/s  ok {step.ok}/{step.sent}  failed {step.failed}  "
                  f"retrans {step.retrans}  achieved {step.achieved:7.0f}/s  "
                  f"mean {step.mean_ms:6.2f} ms  cpu {step.cpu_us:6.1f} µs/req  "
                  f"rss {step.rss_mb:5.0f} MB  "
                  f"{'held' if step.held else 'LOST'}", flush=True)
        return steps
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def best(steps: list[Step]) -> Step | None:
    held = [s for s in steps if s.held]
    return max(held, key=lambda s: s.rate) if held else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 2000, 3000, 4000])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sipmask-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        print(f"baseline: minimal asyncio responder on udp://{HOST}:{port}")
        base = ladder("baseline", [sys.executable, "-c", BASELINE, HOST, str(port)], port,
                      args.rates, args.seconds, workdir)
        port = free_port()
        print(f"sipmask serve on udp://{HOST}:{port}")
        serve = [sys.executable, "-m", "sipmask", "serve",
                 "--set", f"sip.listen=[udp://{HOST}:{port}]", "--set", "api.listen=null",
                 "--set", f"store.path={workdir / 'store.lmdb'}", "--set", "log.level=warning"]
        ours = ladder("sipmask", serve, port, args.rates, args.seconds, workdir)
    b, o = best(base), best(ours)
    print()
    for name, step, steps in (("baseline", b, base), ("sipmask", o, ours)):
        held = f"{step.rate}/s held, mean {step.mean_ms:.2f} ms" if step else "no rate held"
        cpu = sum(s.cpu_us for s in steps) / len(steps)
        print(f"{name:9} highest rate with none lost: {held}; cpu {cpu:.1f} µs/OPTIONS")
    if b and o:
        print(f"ratio sipmask/baseline: held rate {o.rate / b.rate:.2f}, "
              f"cpu per OPTIONS {sum(s.cpu_us for s in ours) / sum(s.cpu_us for s in base):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
