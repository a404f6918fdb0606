"""Call-rate ladder: SIPp caller -> callee directly, and through `sipmask serve`, in one run.

Each call is INVITE (with SDP) / 100 / 180 / 200 (with SDP) / ACK, held for --hold-ms, then
BYE / 200: the scenarios of sipp-scenarios/caller.xml and callee.xml, copied to a temp dir
with their <action> blocks (the privacy regexps) stripped, so the direct baseline, where
nothing is masked, passes too and both runs do the same SIPp work. The callee's final
timewait is cut to 500 ms so a step's calls do not linger into the next.

    caller SIPp 127.0.0.2 ── direct ──────────────────────────► callee SIPp 127.0.0.3
    caller SIPp 127.0.0.2 ──► sipmask 127.0.0.1 (X bound A->B) ─► callee SIPp 127.0.0.3

For each offered rate, the caller places rate x --duration calls (-r rate, -l cap on calls
up at once) and SIPp's -trace_stat CSV gives successful and failed calls and the mean
setup time (ResponseTime1: INVITE sent to 200 received). A rate is "held" when fewer than
1 % of the calls fail and the calls were placed at >= 95 % of the offered rate (the -l cap
did not throttle them). Printed: a table per mode, the highest held rate of each, the ratio
sipmask/direct, and sipmask's setup time at 400 calls/s.

Also printed per step: sipmask's own CPU per call (/proc, user + system, writer thread
included), and the highest rate held with a mean setup under 20 ms.

With --store postgres a ladder through sipmask on a PostgreSQL store follows the LMDB one
(a throwaway server from Debian's postgresql, as durable as LMDB, or --dsn), and the ratio
of the rates held is printed (issue 14's target: >= 0.80, setup < 20 ms at 400 calls/s).

With --nodes N (N >= 2) another ladder runs: N `sipmask serve` processes sharing one store,
behind Kamailio (Debian `kamailio`) with configs/kamailio-dispatcher.cfg, which dispatches
each INVITE by a hash of X (README "Scaling past one core"); CPU per call is then all the
nodes' together, and Kamailio's is printed beside it.

    caller SIPp ──► Kamailio 127.0.0.1 ─┬─► sipmask node 1 ─┬─► callee SIPp
                                        └─► sipmask node 2 ─┘

Run: python3 bench/calls.py [--rates 50,100,200,300,400,500,600] [--duration 10]
                            [--hold-ms 100] [--quick]
                            [--only sipmask|direct|postgres|nodes] [--store postgres]
                            [--dsn URI] [--nodes 2] [--keep] [--set KEY=VALUE ...] [--pin CPU]
Under load, `py-spy top --pid PID` / `py-spy record -f raw --pid PID` (pip install py-spy)
show where sipmask's time goes (the PID is printed). With SIPMASK_BENCH_PROFILE=FILE set,
the sipmask under test runs under cProfile (bench-only hook: python3 -m cProfile -o FILE
-m sipmask serve) and the top functions by own and cumulative time are printed at the end.
Loopback only (127.0.0.0/8).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))       # sipmask's store key, tests/support's PostgreSQL server
SCENARIOS = ROOT / "sipp-scenarios"
SIPMASK_IP, CALLER_IP, CALLEE_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
# Test numbers (CONTRACT.md): A calls X, X is bound to reach B.
A, B, X = "13800000001", "13900000002", "700100000000001"
CALLER_MEDIA_PORT, CALLEE_MEDIA_PORT = 17200, 19200
FAIL_LIMIT = 0.01
SETUP_TARGET_MS = 20.0
PLACED_MIN = 0.95
TARGET_RATE = 400
# With --nodes the calls go to many Xs (Kamailio picks a node by X), one per call in turn.
NODE_XS = [f"70010000000{1000 + n}" for n in range(64)]


@dataclass
class Step:
    mode: str
    offered: int
    calls: int
    successful: int
    failed: int
    setup_ms: float
    placed_rate: float
    wall_s: float
    cpu_ms_per_call: float = float("nan")   # sipmask's own CPU (user + system) per call

    @property
    def failure(self) -> float:
        done = self.successful + self.failed
        return self.failed / done if done else 1.0

    @property
    def held(self) -> bool:
        return (self.failure < FAIL_LIMIT and self.successful + self.failed >= self.calls
                and self.placed_rate >= PLACED_MIN * self.offered)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def strip_actions(text: str) -> str:
    """The privacy checks (<action> blocks) go: the direct baseline would fail them."""
    text = re.sub(r"<action>.*?</action>", "", text, flags=re.S)
    return re.sub(r'<timewait milliseconds="\d+"/>', '<timewait milliseconds="500"/>', text)


def write_scenarios(tmp: Path) -> tuple[Path, Path]:
    caller, callee = tmp / "caller.xml", tmp / "callee.xml"
    caller.write_text(strip_actions((SCENARIOS / "caller.xml").read_text("latin-1")), "latin-1")
    callee.write_text(strip_actions((SCENARIOS / "callee.xml").read_text("latin-1")), "latin-1")
    return caller, callee


def hms_ms(value: str) -> float:
    """SIPp's hh:mm:ss:usec (response times) or hh:mm:ss.usec (elapsed) as milliseconds."""
    parts = value.split(":")
    us = int(parts.pop()) if len(parts) == 4 else 0
    h, m, s = int(parts[0]), int(parts[1]), float(parts[2])
    return (h * 3600 + m * 60 + s) * 1000.0 + us / 1000.0


def options_ok(port: int) -> bool:
    request = (f"OPTIONS sip:{SIPMASK_IP}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {SIPMASK_IP}:5999;branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
               "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\n"
               f"To: <sip:{SIPMASK_IP}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
               "Content-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((SIPMASK_IP, 0))
        s.settimeout(0.3)
        s.sendto(request, (SIPMASK_IP, port))
        try:
            return s.recv(65535).startswith(b"SIP/2.0 200")
        except TimeoutError:
            return False


def bench_key(tmp: Path) -> Path:
    """The store key every store of this run is sealed with (made once)."""
    key = tmp / "store.key"
    if not key.exists():
        from sipmask.store.crypto import create_key_file
        create_key_file(key)
    return key


class Sipmask:
    """`python3 -m sipmask serve` on a free UDP port, temp store, X bound once."""

    def __init__(self, tmp: Path, callee_port: int, profile: str | None,
                 extra: tuple[str, ...] = (), *, media_ports: str = "20000-29999",
                 bind: bool = True, name: str = "serve", store: str = "bench.lmdb",
                 dsn: str | None = None, cpu: int | None = None) -> None:
        self.tmp = tmp
        self.port = free_port(SIPMASK_IP)
        self.name = name
        # The store key in the temp dir (a PostgreSQL store never makes one: bench_key).
        stored = (["store.backend=postgres", f"store.dsn={dsn}"] if dsn is not None
                  else [f"store.path={tmp / store}"])
        stored.append(f"store.key_file={bench_key(tmp)}")
        self.settings = [*(arg for setting in stored for arg in ("--set", setting)),
                         "--set", f"sip.listen=[udp://{SIPMASK_IP}:{self.port}]",
                         "--set", "api.listen=null", "--set", "log.level=warning",
                         "--set", f"media.ports={media_ports}",
                         "--set", f"trunks.carrier.outbound=udp://{CALLEE_IP}:{callee_port}",
                         *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("SIPMASK_CONFIG", None)
        self.env = env
        if bind:
            bound = subprocess.run([sys.executable, "-m", "sipmask", "bind", "axb", "--a", A,
                                    "--b", B, "--x", X, "--ttl", "0", *self.settings],
                                   capture_output=True, text=True, cwd=ROOT, env=env,
                                   timeout=60)
            if bound.returncode != 0:
                raise SystemExit(f"bind failed: {bound.stderr}")
        runner = ([sys.executable, "-m", "cProfile", "-o", profile] if profile
                  else [sys.executable])
        self.stderr = (tmp / f"{name}.stderr").open("wb")
        # --pin: the process and every thread it starts on one core, as deploy/'s
        # CPUAffinity= would run it (README "What one process holds today").
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        self.proc = subprocess.Popen([*runner, "-m", "sipmask", "serve", *self.settings],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     cwd=ROOT, env=env, preexec_fn=pin)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"sipmask serve exited: {(tmp / f'{name}.stderr').read_text()}")
            if options_ok(self.port):
                return
        self.stop()
        raise SystemExit("sipmask serve did not answer OPTIONS")

    def cpu_seconds(self) -> float:
        """User + system CPU the server process used so far (Linux /proc)."""
        return cpu_of(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def _stat(path: Path) -> list[str]:
    """/proc/PID/stat's fields after the command name: [1] is the parent pid, [11] and
    [12] user and system CPU in clock ticks."""
    return path.read_text().rpartition(")")[2].split()


def _cpu(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    return _cpu(_stat(Path(f"/proc/{pid}/stat")))


class Nodes:
    """N sipmask nodes on one store behind Kamailio (configs/kamailio-dispatcher.cfg)."""

    def __init__(self, tmp: Path, callee_port: int, n: int) -> None:
        if shutil.which("kamailio") is None:
            raise SystemExit("--nodes needs Kamailio: apt-get install kamailio")
        width = 10000 // n - (10000 // n) % 2
        self.nodes = [Sipmask(tmp, callee_port, None, bind=i == 0, name=f"node{i + 1}",
                              store="nodes.lmdb",
                              media_ports=f"{20000 + i * width}-{20000 + (i + 1) * width - 1}")
                      for i in range(n)]
        rows = "".join(f'{{"mode":"axb","a":"{A}","b":"{B}","x":"{x}","ttl":0}}\n'
                       for x in NODE_XS if x != X)
        (tmp / "xs.jsonl").write_text(rows)
        imported = subprocess.run([sys.executable, "-m", "sipmask", "import",
                                   str(tmp / "xs.jsonl"), *self.nodes[0].settings],
                                  capture_output=True, text=True, cwd=ROOT,
                                  env=self.nodes[0].env, timeout=120)
        if imported.returncode != 0:
            for node in self.nodes:        # Kamailio is not started yet
                node.stop()
            raise SystemExit(f"import of the bench Xs failed: {imported.stderr[-1500:]}")
        # The caller takes each call's X from an injection file (SIPp -inf, [field0]).
        self.inf = tmp / "xs.csv"
        self.inf.write_text("SEQUENTIAL\n" + "".join(f"{x};\n" for x in NODE_XS))
        listing = tmp / "dispatcher.list"
        listing.write_text("".join(f"1 sip:{SIPMASK_IP}:{node.port}\n" for node in self.nodes))
        self.port = free_port(SIPMASK_IP)
        self.stderr = (tmp / "kamailio.stderr").open("wb")
        self.proc = subprocess.Popen(
            ["kamailio", "-f", str(ROOT / "configs" / "kamailio-dispatcher.cfg"), "-DD", "-E",
             "-w", str(tmp), "-A", f"LISTEN=udp:{SIPMASK_IP}:{self.port}",
             "-A", f'DS_LIST="{listing}"', "-A", "WORKERS=2"],
            stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=tmp)
        deadline = time.monotonic() + 20
        while not options_ok(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("kamailio did not start: "
                                 f"{(tmp / 'kamailio.stderr').read_text()[-1500:]}")

    def cpu_seconds(self) -> float:
        return sum(node.cpu_seconds() for node in self.nodes)

    def dispatcher_cpu_seconds(self) -> float:
        """Kamailio's main process and its children."""
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = _stat(stat)
                if self.proc.pid in (int(stat.parent.name), int(fields[1])):
                    total += _cpu(fields)
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        for node in self.nodes:
            node.stop()


class Callee:
    """One UAS SIPp for a whole ladder: answers every INVITE, no call limit."""

    def __init__(self, tmp: Path, scenario: Path, port: int) -> None:
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(scenario), "-i", CALLEE_IP, "-mi", CALLEE_IP,
             "-mp", str(CALLEE_MEDIA_PORT), "-p", str(port), "-nostdin", "-l", "100000",
             "-buff_size", "4194304", "-max_recv_loops", "10000"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise SystemExit("callee SIPp did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # SIPp: quit now
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_step(mode: str, tmp: Path, scenario: Path, target: tuple[str, int], rate: int,
             duration: float, hold_ms: int, extra: tuple[str, ...] = ()) -> Step:
    calls = max(1, int(rate * duration))
    # SIPp writes its trace files beside the scenario: one directory per step.
    here, again = tmp / f"{mode}-{rate}", 1
    while here.exists():   # the same rate twice in one ladder (repeated to gauge noise)
        again += 1
        here = tmp / f"{mode}-{rate}-{again}"
    here.mkdir()
    scenario = Path(shutil.copy(scenario, here))
    stat, rtt = here / "stat.csv", here / "*_rtt.csv"
    # Up to 3 s of calls may be up at once: a slow B2BUA shows as a throttled rate,
    # not as an unbounded pile of calls.
    limit = max(50, rate * 3)
    started = time.monotonic()
    result = subprocess.run(
        ["sipp", f"{target[0]}:{target[1]}", "-sf", str(scenario), "-i", CALLER_IP,
         "-mi", CALLER_IP, "-mp", str(CALLER_MEDIA_PORT), "-p", "0",
         "-key", "caller", A, "-key", "x", X, "-r", str(rate), "-m", str(calls),
         "-l", str(limit), "-d", str(hold_ms), "-nostdin", "-recv_timeout", "5000",
         "-timeout", f"{int(duration * 3 + 30)}s", "-buff_size", "4194304",
         "-max_recv_loops", "10000", "-trace_stat", "-stf", str(stat), "-fd", "1",
         "-trace_rtt", "-rtt_freq", "1", *extra],
        cwd=here, capture_output=True, text=True)
    wall = time.monotonic() - started
    rows = list(csv.DictReader(stat.open(), delimiter=";")) if stat.exists() else []
    if not rows:
        raise SystemExit(f"{mode} {rate}/s: no SIPp stats (exit {result.returncode}):\n"
                         f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
    last = rows[-1]
    # Placed rate: calls created over the time it took to create them all (the per-second
    # rows interpolated to when the count reached its final value).
    created = int(last["TotalCallCreated"])
    start = epoch(last["StartTime"])
    t_prev, n_prev, placed_at = start, 0, epoch(last["CurrentTime"]) - start
    for r in rows:
        t, n = epoch(r["CurrentTime"]), int(r["TotalCallCreated"])
        if n >= created:
            placed_at = t_prev - start + (t - t_prev) * (created - n_prev) / max(1, n - n_prev)
            break
        t_prev, n_prev = t, n
    placed_rate = min(created / max(placed_at, 1e-3), float(rate)) if created else 0.0
    return Step(mode, rate, calls, int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"]),
                mean_setup_ms(rtt), placed_rate, wall)


def epoch(value: str) -> float:
    """SIPp's 'date<TAB>time<TAB>epoch' stamp."""
    return float(value.split("\t")[-1])


def mean_setup_ms(rtt: Path) -> float:
    """Mean of the per-call setup times SIPp wrote with -trace_rtt (ms; the stat file's
    ResponseTime column is rounded to whole milliseconds)."""
    times = []
    for path in rtt.parent.glob(rtt.name):
        for line in path.read_text().splitlines()[1:]:
            fields = line.split(";")
            if len(fields) >= 2:
                with contextlib.suppress(ValueError):
                    times.append(float(fields[1]))
    return sum(times) / len(times) if times else float("nan")


def print_table(steps: list[Step]) -> None:
    print(f"{'mode':8} {'offered':>7} {'placed':>7} {'ok':>6} {'failed':>6} {'fail%':>6} "
          f"{'setup ms':>9} {'held':>5} {'cpu ms/call':>11}")
    for s in steps:
        print(f"{s.mode:8} {s.offered:7d} {s.placed_rate:7.0f} {s.successful:6d} {s.failed:6d} "
              f"{100 * s.failure:6.2f} {s.setup_ms:9.2f} {'yes' if s.held else 'no':>5} "
              f"{s.cpu_ms_per_call:11.2f}")


def highest(steps: list[Step], setup_ms: float | None = None) -> int:
    """The highest offered rate held (and, with `setup_ms`, set up within it on average),
    counting only up to the first one that was not."""
    best = 0
    for s in sorted(steps, key=lambda s: s.offered):
        if not s.held or (setup_ms is not None and not s.setup_ms < setup_ms):
            break
        best = s.offered
    return best


def ladder(mode: str, tmp: Path, caller: Path, target: tuple[str, int], rates: list[int],
           duration: float, hold_ms: int, server: Sipmask | Nodes | None = None
           ) -> list[Step]:
    steps = []
    extra: tuple[str, ...] = ()
    if isinstance(server, Nodes):
        many = tmp / "caller_xs.xml"
        many.write_text(caller.read_text("latin-1").replace("[x]", "[field0]"), "latin-1")
        caller, extra = many, ("-inf", str(server.inf))
    for rate in rates:
        cpu = server.cpu_seconds() if server is not None else 0.0
        front = server.dispatcher_cpu_seconds() if isinstance(server, Nodes) else 0.0
        step = run_step(mode, tmp, caller, target, rate, duration, hold_ms, extra)
        note = ""
        done = step.successful + step.failed
        if server is not None and done:
            step.cpu_ms_per_call = 1000 * (server.cpu_seconds() - cpu) / done
        if isinstance(server, Nodes) and done:
            note = (f", Kamailio CPU "
                    f"{1000 * (server.dispatcher_cpu_seconds() - front) / done:.2f} ms/call")
        steps.append(step)
        print(f"  {mode} {rate}/s: {step.successful} ok, {step.failed} failed "
              f"({100 * step.failure:.2f} %), setup {step.setup_ms:.2f} ms, placed "
              f"{step.placed_rate:.0f}/s, {step.wall_s:.1f} s, sipmask CPU "
              f"{step.cpu_ms_per_call:.2f} ms/call{note}", flush=True)
        if step.failure > 0.2:
            print(f"  {mode}: {100 * step.failure:.0f} % failed, stopping this ladder", flush=True)
            break
        time.sleep(1.0)  # let the callee's timewaits drain
    return steps


def run_through(mode: str, server: Sipmask | Nodes, processes: list[Sipmask], callee: Callee,
                tmp: Path, caller: Path, rates: list[int], duration: float,
                hold_ms: int) -> list[Step]:
    """A ladder through `server`, then everything stopped and the sipmask stderr shown."""
    try:
        return ladder(mode, tmp, caller, (SIPMASK_IP, server.port), rates, duration,
                      hold_ms, server)
    finally:
        server.stop()
        callee.stop()
        for proc in processes:
            errors = (tmp / f"{proc.name}.stderr").read_text("utf-8", "replace").strip()
            if errors:
                print(f"{proc.name} stderr (last lines):\n{errors[-1500:]}")


def print_profile(path: str) -> None:
    stats = pstats.Stats(path)
    total = max((row[3] for row in stats.stats.values()), default=1.0)  # type: ignore[attr-defined]
    print(f"\nprofile of sipmask serve ({path}); % of the busiest cumulative time "
          f"{total:.1f} s")
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative")):
        print(f"-- top by {title}")
        stats.sort_stats(key)
        for func in stats.fcn_list[:25]:  # type: ignore[attr-defined]
            _cc, nc, tt, ct, _ = stats.stats[func]  # type: ignore[attr-defined]
            name = f"{Path(func[0]).name}:{func[1]}({func[2]})"
            print(f"  {100 * tt / total:5.1f}% own {100 * ct / total:5.1f}% cum  {nc:8d}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="50,100,200,300,400,500,600")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of calls a step")
    parser.add_argument("--hold-ms", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 short steps")
    parser.add_argument("--only", choices=("direct", "sipmask", "postgres", "nodes"))
    parser.add_argument("--store", choices=("lmdb", "postgres"), default="lmdb",
                        help="postgres: also a ladder through sipmask on a PostgreSQL store "
                             "(a throwaway durable server, or --dsn), after the LMDB one")
    parser.add_argument("--dsn", help="--store postgres: this database, not a throwaway one")
    parser.add_argument("--nodes", type=int, default=0,
                        help="also N sipmask nodes behind Kamailio (N >= 2; needs kamailio)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (SIPp stats and traces, sipmask stderr)")
    parser.add_argument("--set", dest="serve_set", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a config override for the sipmask under test (LMDB and "
                             "PostgreSQL ladders), as `sipmask serve --set`; repeatable")
    parser.add_argument("--pin", type=int, metavar="CPU",
                        help="run the sipmask under test (LMDB and PostgreSQL ladders) on "
                             "this one core, all its threads (sched_setaffinity)")
    args = parser.parse_args()
    serve_set = tuple(arg for setting in args.serve_set for arg in ("--set", setting))
    if shutil.which("sipp") is None:
        raise SystemExit("sipp (sip-tester) is not installed")
    rates = [int(r) for r in args.rates.split(",")]
    duration = args.duration
    if args.quick:
        rates, duration = [50, 200], 2.0
    profile = os.environ.get("SIPMASK_BENCH_PROFILE")
    print(f"rates {rates}/s, {duration:g} s each, hold {args.hold_ms} ms; "
          f"{os.cpu_count()} cores, SIPp on the same machine", flush=True)

    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp_name = tempfile.mkdtemp(prefix="bench-calls-")
            print(f"keeping {tmp_name}")
        else:
            tmp_name = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-calls-"))
        tmp = Path(tmp_name)
        caller, callee_xml = write_scenarios(tmp)
        steps: dict[str, list[Step]] = {"direct": [], "sipmask": [], "postgres": [],
                                        "nodes": []}
        callee_port = free_port(CALLEE_IP)
        if args.only in (None, "direct"):
            print("direct: caller -> callee", flush=True)
            callee = Callee(tmp, callee_xml, callee_port)
            try:
                steps["direct"] = ladder("direct", tmp, caller, (CALLEE_IP, callee_port), rates,
                                         duration, args.hold_ms)
            finally:
                callee.stop()
        if args.only in (None, "sipmask"):
            print("sipmask: caller -> sipmask -> callee", flush=True)
            callee = Callee(tmp, callee_xml, callee_port)
            server = Sipmask(tmp, callee_port, profile, extra=serve_set, cpu=args.pin)
            print(f"sipmask serve pid {server.proc.pid} (profile it: py-spy top --pid "
                  f"{server.proc.pid})", flush=True)
            steps["sipmask"] = run_through("sipmask", server, [server], callee, tmp, caller,
                                           rates, duration, args.hold_ms)
        if args.store == "postgres" and args.only in (None, "postgres"):
            dsn = args.dsn
            if dsn is None:
                from tests.support.postgres import DURABLE, throwaway_database
                print("postgres: starting a throwaway server (fsync on)", flush=True)
                dsn, pg = throwaway_database(DURABLE)
                stack.callback(pg.stop)
            print("postgres: caller -> sipmask (PostgreSQL store) -> callee", flush=True)
            callee = Callee(tmp, callee_xml, callee_port)
            server = Sipmask(tmp, callee_port, profile, serve_set, name="postgres", dsn=dsn,
                             cpu=args.pin)
            steps["postgres"] = run_through("postgres", server, [server], callee, tmp, caller,
                                            rates, duration, args.hold_ms)
        if args.nodes >= 2 and args.only in (None, "nodes"):
            print(f"nodes: caller -> Kamailio -> {args.nodes} sipmask nodes -> callee",
                  flush=True)
            nodes = Nodes(tmp, callee_port, args.nodes)
            callee = Callee(tmp, callee_xml, callee_port)
            print(f"sipmask node pids {[n.proc.pid for n in nodes.nodes]}, kamailio "
                  f"{nodes.proc.pid}", flush=True)
            steps["nodes"] = run_through("nodes", nodes, nodes.nodes, callee, tmp, caller,
                                         rates, duration, args.hold_ms)

    print()
    print_table([step for mode in steps.values() for step in mode])
    held = {mode: highest(s) for mode, s in steps.items() if s}
    for mode, rate in held.items():
        print(f"highest rate held (<{100 * FAIL_LIMIT:g} % failed): {mode} {rate} calls/s, "
              f"with mean setup < {SETUP_TARGET_MS:g} ms: "
              f"{highest(steps[mode], SETUP_TARGET_MS)} calls/s")
    for mode in ("sipmask", "postgres", "nodes"):
        if held.get("direct") and mode in held:
            print(f"ratio {mode}/direct: {held[mode] / held['direct']:.2f}")
    if held.get("sipmask") and "postgres" in held:
        # Issue 14: PostgreSQL holds >= 80 % of LMDB's rate, setup < 20 ms at 400 calls/s.
        print(f"ratio postgres/lmdb: {held['postgres'] / held['sipmask']:.2f} (target >= 0.80)")
    for mode in ("sipmask", "postgres", "nodes"):
        at_target = [s for s in steps[mode] if s.offered == TARGET_RATE]
        if at_target:
            print(f"{mode} mean setup at {TARGET_RATE} calls/s: {at_target[0].setup_ms:.2f} ms "
                  f"(target < 20 ms; {'held' if at_target[0].held else 'NOT held'})")
    if profile and Path(profile).exists():
        print_profile(profile)


if __name__ == "__main__":
    main()
