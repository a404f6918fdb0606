"""How many G.711 calls the media path carries on one core, with the loss measured.

Each call is two streams, A->B and B->A: 172-byte RTP packets (12-byte header, 160 bytes
of PCMU, 20 ms) at 50 packets/s each way, so N calls are 100 x N packets/s through the
relay. Calls start at spread phases across the 20 ms tick, as real calls do.

Processes, each pinned to its own core (`os.sched_setaffinity`):
  relay      the embedded relay (sipmask.media.relay, uvloop) on core 0,
             or with `--backend rtpengine` the real daemon in userspace mode on core 0
  generator  all the phones (a pool of UDP sockets per side) on core 1
For each N of the ladder, two runs of `--seconds` each:
  baseline   the same traffic sent phone to phone directly (no relay): the generator's
             own ceiling on this machine, measured in the same run
  relay      the traffic through the relay; loss = 1 - received / sent
The answer is the highest N with relay loss < 0.1 %; the ratio compares relayed to direct
throughput at each step, and prints the relay's CPU cost per packet.

Media services (embedded relay), each step right after its unrecorded run, against it:
  --record   every call recorded as sipmask serve records it (media/services.py: a tap on
             both sides, CallRecorder, a 0600 file per call sealed with a store key,
             store/recording_file.py, written by the relay's disk thread, media/disk.py) in a
             temporary directory; loss as above, the CPU per relayed packet and its ratio to
             the unrecorded run's, the disk queue's drops and failed recordings;
  --prompts  every call hears a looped announcement on both legs (the packaged ext_prompt,
             PCMU, 50 packets/s per leg, the parties muted meanwhile); the phones read each
             prompt stream's sequence numbers: loss = packets missing from the sequence plus
             20 ms slots the players skipped for being late, over the packets due; the CPU and
             its ratio to the unrecorded run's.
The relay process does all of it on one core: the disk thread, sealing included, shares it.

Run: python3 bench/relay.py [--ladder 100,200,300,500,700,1000] [--seconds 5]
                            [--backend relay|rtpengine] [--loop uvloop|asyncio]
                            [--record] [--prompts]
Loopback only (127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipmask.config.schema import HostPort, MediaConfig, PortRange  # noqa: E402

HOST = "127.0.0.1"
PAYLOAD = 160            # G.711 20 ms
TICK = 0.020             # packetization interval: 50 packets/s per stream
PHASES = 10              # calls spread over 10 sub-slots of 2 ms
SOCKETS_PER_SIDE = 16    # phone sockets on each side, shared round-robin by the calls
LOSS_LIMIT = 0.001       # 0.1 %
RELAY_CORE, GENERATOR_CORE = 0, 1


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


# -- the relay process -----------------------------------------------------------------
def relay_process(conn: Connection, ports: PortRange, loop_kind: str) -> None:
    """Serves commands from the pipe: ("open", [(a_addr, b_addr)...], service, record_dir)
    -> [(a_port, b_port)] (service: None, "record" or "prompts"), ("cpu",) -> CPU seconds,
    ("close",) -> (stats dict), ("quit",)."""
    pin(RELAY_CORE)
    from sipmask.media.prompt import announcement
    from sipmask.media.relay import Relay, Side
    from sipmask.media.services import CallServices, LegMedia, PromptTicker
    from sipmask.media.wav import G711
    from sipmask.store.crypto import Keyring
    from sipmask.store.recording_file import SealedWriter

    # Both legs PCMU on line 0, as the bench's SDP says (_sdp).
    pcmu = LegMedia(0, (G711.PCMU, 0), {0: G711.PCMU}, frozenset())
    keys = Keyring.generate()
    prompt = announcement("ext_prompt", "default")
    assert prompt is not None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        relay = Relay(MediaConfig(address=HOST, ports=ports, timeout_s=3600),
                      on_timeout=lambda call_id: None, sweep=False)
        services: list[CallServices] = []
        ticker = PromptTicker(relay.clock)      # as EmbeddedBackend has one per relay

        async def handle(message: tuple[Any, ...]) -> None:
            if message[0] == "open":
                local = []
                _, pairs, service, record_dir = message
                sessions = []
                for index, (a_addr, b_addr) in enumerate(pairs):
                    session = await relay.open_session(f"call-{index}")
                    session.set_remote(Side.A, *a_addr)
                    session.set_remote(Side.B, *b_addr)
                    local.append((session.local(Side.A).rtp, session.local(Side.B).rtp))
                    sessions.append(session)
                # Services start once every session is open: a prompt started while the
                # rest are opened would fall behind (counted as late) before the run begins.
                for index, session in enumerate(sessions if service is not None else []):
                    call = CallServices(session, clock=relay.clock,
                                        describe=lambda leg: pcmu, counters=relay.services,
                                        disk=relay.disk, ticker=ticker)
                    session.services = call
                    services.append(call)
                    if service == "record":
                        name = f"call-{index}-{relay.stats().sessions_opened}.wav"
                        call.start_recording(lambda name=name: SealedWriter.create(
                            record_dir, name, keys, "bench"))
                    else:
                        call.bridged = True         # a prompt after the answer, muted
                        for leg in ("a", "b"):
                            call.play(leg, prompt, loop=True)
                conn.send(local)
            elif message[0] == "cpu":
                conn.send((time.process_time(), late_and_sent()))
            elif message[0] == "close":
                stats = relay.stats()
                services.clear()
                await relay.close()             # the disk thread writes every file out
                after = relay.stats()
                conn.send({"relayed": stats.packets_relayed, "dropped": stats.dropped,
                           "rejected": stats.rejected,
                           "recordings_failed": after.recordings_failed,
                           "writes_dropped": after.recording_writes_dropped})

        def late_and_sent() -> tuple[int, int]:
            """20 ms prompt slots skipped for being late, and prompt packets sent, so far."""
            return (sum(player.stats.slots_skipped for call in services
                        for player in call._players.values()),
                    relay.services.prompt_packets)

        # Commands are read in a thread, blocked in recv while traffic runs (no CPU taken
        # from the relay); add_reader would make the pipe non-blocking under uvloop.
        while (message := await loop.run_in_executor(None, conn.recv))[0] != "quit":
            await handle(message)

    if loop_kind == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


# -- the generator process -------------------------------------------------------------
class Streams:
    """Per SSRC: packets received and the span of sequence numbers seen (RFC 3550 §A.1's
    extended sequence number), so the packets a stream lost are told from edge effects."""

    def __init__(self) -> None:
        self.found: dict[int, list[int]] = {}    # ssrc -> [first, highest, last seq, count]

    def add(self, ssrc: int, seq: int) -> None:
        entry = self.found.get(ssrc)
        if entry is None:
            self.found[ssrc] = [seq, seq, seq, 1]
            return
        ext = entry[1] + ((seq - entry[2] + 0x8000) & 0xFFFF) - 0x8000
        entry[1] = max(entry[1], ext)
        entry[2] = seq
        entry[3] += 1

    def totals(self) -> tuple[int, int]:
        """(packets expected from the sequence spans, packets received)."""
        return (sum(e[1] - e[0] + 1 for e in self.found.values()),
                sum(e[3] for e in self.found.values()))


def generator_process(conn: Connection, a_socks: list[socket.socket],
                      b_socks: list[socket.socket], a_ports: list[int], b_ports: list[int],
                      seconds: float, read_streams: bool = False) -> None:
    """Plays N calls: each tick, call i sends one packet from its A socket to a_ports[i]
    and one from its B socket to b_ports[i]; counts what comes back on each side. With
    `read_streams` it also reads each received packet's SSRC and sequence number, and sends
    back (expected, received) of the streams seen instead of (sent, received)."""
    pin(GENERATOR_CORE)
    streams = Streams()
    seq_ssrc = struct.Struct("!2xH4xI")
    calls = len(a_ports)
    header = struct.Struct("!BBHII")
    by_phase: list[list[tuple[socket.socket, tuple[str, int], socket.socket,
                              tuple[str, int]]]] = [[] for _ in range(PHASES)]
    for i in range(calls):
        by_phase[i % PHASES].append((a_socks[i % SOCKETS_PER_SIDE], (HOST, a_ports[i]),
                                     b_socks[i % SOCKETS_PER_SIDE], (HOST, b_ports[i])))
    socks = a_socks + b_socks
    payload = b"\xff" * PAYLOAD
    buf = bytearray(2048)
    received = sent = 0
    start = time.monotonic() + 0.05
    end = start + seconds
    slot = 0
    next_at = start

    def drain() -> int:
        got = 0
        for sock in socks:
            try:
                while True:
                    sock.recv_into(buf)
                    got += 1
                    if read_streams:
                        seq, ssrc = seq_ssrc.unpack_from(buf)
                        streams.add(ssrc, seq)
            except BlockingIOError:
                pass
        return got

    while True:
        now = time.monotonic()
        if now >= next_at:
            if now >= end:
                break
            seq = (slot // PHASES) & 0xFFFF
            packet = header.pack(0x80, 0, seq, seq * 160, 0x5EED) + payload
            for a_sock, a_to, b_sock, b_to in by_phase[slot % PHASES]:
                a_sock.sendto(packet, a_to)
                b_sock.sendto(packet, b_to)
                sent += 2
            slot += 1
            next_at = start + slot * (TICK / PHASES)
            continue
        ready, _, _ = select.select(socks, [], [], max(0.0, next_at - now))
        if ready:
            received += drain()
    # Late packets still in flight: half a second to arrive.
    settle = time.monotonic() + 0.5
    while time.monotonic() < settle:
        ready, _, _ = select.select(socks, [], [], 0.05)
        if ready:
            received += drain()
    conn.send(streams.totals() if read_streams else (sent, received))


def phone_sockets() -> list[socket.socket]:
    socks = []
    for _ in range(SOCKETS_PER_SIDE):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        socks.append(sock)
    return socks


@dataclass
class Step:
    calls: int
    sent: int
    received: int
    seconds: float
    cpu_s: float | None = None
    services: dict[str, int] = field(default_factory=dict)   # the relay's close counters

    @property
    def us_per_packet(self) -> float:
        return (self.cpu_s or 0.0) / self.received * 1e6 if self.received else 0.0

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0

    @property
    def pps(self) -> float:
        return self.received / self.seconds


def play(a_ports: list[int], b_ports: list[int], a_socks: list[socket.socket],
         b_socks: list[socket.socket], seconds: float,
         read_streams: bool = False) -> tuple[int, int]:
    # What a late relay delivered after the last run's settle time is not this run's.
    for sock in a_socks + b_socks:
        try:
            while True:
                sock.recv(2048)
        except BlockingIOError:
            pass
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    # Forked: the child inherits the phone sockets.
    proc = ctx.Process(target=generator_process,
                       args=(child, a_socks, b_socks, a_ports, b_ports, seconds,
                             read_streams))
    proc.start()
    sent, received = parent.recv()
    proc.join()
    return int(sent), int(received)


# -- backends --------------------------------------------------------------------------
class EmbeddedRelay:
    name = "sipmask relay"

    def __init__(self, ports: PortRange, loop_kind: str) -> None:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=relay_process, args=(child, ports, loop_kind))
        self.proc.start()

    def open(self, a_addrs: list[tuple[str, int]], b_addrs: list[tuple[str, int]],
             service: str | None = None, record_dir: str | None = None
             ) -> tuple[list[int], list[int]]:
        self.conn.send(("open", list(zip(a_addrs, b_addrs, strict=True)), service,
                        record_dir))
        local: list[tuple[int, int]] = self.conn.recv()
        return [a for a, _ in local], [b for _, b in local]

    def cpu(self) -> tuple[float, tuple[int, int]]:
        """CPU seconds so far, and (prompt slots skipped late, prompt packets sent)."""
        self.conn.send(("cpu",))
        cpu, prompts = self.conn.recv()
        return float(cpu), (int(prompts[0]), int(prompts[1]))

    def close_calls(self) -> dict[str, int]:
        self.conn.send(("close",))
        stats: dict[str, int] = self.conn.recv()
        return stats

    def stop(self) -> None:
        self.conn.send(("quit",))
        self.proc.join(10)


class Rtpengine:
    name = "rtpengine (userspace)"

    def __init__(self, ports: PortRange) -> None:
        binary = shutil.which("rtpengine")
        if binary is None:
            raise SystemExit("rtpengine not found (apt-get install rtpengine-daemon)")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            self.ng = HostPort(HOST, probe.getsockname()[1])
        self.log = open("/tmp/bench-relay-rtpengine.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, "--config-file=none", "--table=-1", f"--interface={HOST}",
             f"--listen-ng={self.ng}", "--foreground", "--log-stderr", "--log-level=4",
             f"--port-min={ports.first}", f"--port-max={ports.last}", "--delete-delay=0",
             "--timeout=3600"],
            stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: pin(RELAY_CORE))
        self.calls = 0
        asyncio.run(self._ping())

    async def _ping(self) -> None:
        from sipmask.media.rtpengine import NgClient
        deadline = time.monotonic() + 10
        while True:
            client = await NgClient.connect(self.ng, timeout_s=0.2, attempts=1)
            try:
                await client.request("ping")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
            finally:
                client.close()

    def open(self, a_addrs: list[tuple[str, int]], b_addrs: list[tuple[str, int]],
             service: str | None = None, record_dir: str | None = None
             ) -> tuple[list[int], list[int]]:
        if service is not None:
            raise SystemExit("--record and --prompts measure the embedded relay only")
        return asyncio.run(self._open(a_addrs, b_addrs))

    async def _open(self, a_addrs: list[tuple[str, int]], b_addrs: list[tuple[str, int]]
                    ) -> tuple[list[int], list[int]]:
        from sipmask.media.rtpengine import RtpengineBackend
        backend = RtpengineBackend(MediaConfig(backend="rtpengine", rtpengine=_ng(self.ng)))
        a_ports, b_ports = [], []
        for index, (a_addr, b_addr) in enumerate(zip(a_addrs, b_addrs, strict=True)):
            call_id = f"bench-{self.calls}-{index}"
            to_b = await backend.offer(call_id, "a", _sdp(a_addr))
            to_a = await backend.answer(call_id, "b", _sdp(b_addr))
            a_ports.append(_port(to_a))
            b_ports.append(_port(to_b))
        await backend.close()
        self._open_calls = len(a_addrs)
        return a_ports, b_ports

    def cpu(self) -> tuple[float, tuple[int, int]]:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), (0, 0)

    def close_calls(self) -> dict[str, int]:
        return asyncio.run(self._close())

    async def _close(self) -> dict[str, int]:
        from sipmask.media.rtpengine import RtpengineBackend
        backend = RtpengineBackend(MediaConfig(backend="rtpengine", rtpengine=_ng(self.ng)))
        relayed = 0
        for index in range(self._open_calls):
            relayed += (await backend.delete(f"bench-{self.calls}-{index}")).packets_relayed
        await backend.close()
        self.calls += 1
        return {"relayed": relayed}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def _ng(ng: HostPort) -> Any:
    from sipmask.config.schema import RtpengineConfig
    return RtpengineConfig(ng=ng, timeout_ms=2000)


def _sdp(addr: tuple[str, int]) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\nt=0 0\r\n"
            f"m=audio {addr[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


def _port(sdp: bytes) -> int:
    found = re.search(rb"m=audio (\d+)", sdp)
    assert found is not None
    return int(found.group(1))


def through(backend: EmbeddedRelay | Rtpengine, a_addr: list[tuple[str, int]],
            b_addr: list[tuple[str, int]], a_socks: list[socket.socket],
            b_socks: list[socket.socket], seconds: float, service: str | None = None,
            record_dir: str | None = None) -> Step:
    """One run of the calls through the backend, with every call recorded into
    `record_dir` (service "record") or hearing prompts (service "prompts"). For prompts,
    `sent` is the packets the streams' sequence numbers say were due."""
    a_ports, b_ports = backend.open(a_addr, b_addr, service, record_dir)
    cpu_before, (late_before, prompts_before) = backend.cpu()
    sent, received = play(a_ports, b_ports, a_socks, b_socks, seconds,
                          read_streams=service == "prompts")
    cpu_after, (late_after, prompts_after) = backend.cpu()
    step = Step(len(a_addr), sent, received, seconds, cpu_after - cpu_before)
    step.services = backend.close_calls()
    step.services.update(slots_skipped=late_after - late_before,
                         prompt_packets=prompts_after - prompts_before)
    return step


# -- the ladder ------------------------------------------------------------------------
def measured(step: Step, seconds: float) -> str:
    """A relayed run's loss, packets/s and share of the core: the columns every row has."""
    return f"{step.loss:>9.3%} {step.pps:>13,.0f} {(step.cpu_s or 0) / seconds:>8.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ladder", default="100,200,300,500,700,1000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--backend", choices=("relay", "rtpengine"), default="relay")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--ports", default="30000-39999", type=PortRange.parse)
    parser.add_argument("--record", action="store_true",
                        help="also run each step with every call recorded (embedded relay)")
    parser.add_argument("--prompts", action="store_true",
                        help="also run each step with every call hearing prompts on both "
                             "legs (embedded relay)")
    args = parser.parse_args()
    if (args.record or args.prompts) and args.backend != "relay":
        parser.error("--record and --prompts measure the embedded relay only")
    ladder = [int(n) for n in args.ladder.split(",")]
    a_socks, b_socks = phone_sockets(), phone_sockets()

    def addrs(socks: list[socket.socket], n: int) -> list[tuple[str, int]]:
        return [socks[i % SOCKETS_PER_SIDE].getsockname()[:2] for i in range(n)]

    backend: EmbeddedRelay | Rtpengine = (
        Rtpengine(args.ports) if args.backend == "rtpengine"
        else EmbeddedRelay(args.ports, args.loop))
    label = backend.name + (f" ({args.loop})" if args.backend == "relay" else "")
    print(f"media bench: {label}, G.711 20 ms both ways, {args.seconds:g} s per step, "
          f"cores {os.cpu_count()}", flush=True)
    print(f"{'calls':>6} {'pkt/s':>8} | {'direct loss':>11} | {'relay loss':>10} "
          f"{'relayed pkt/s':>13} {'relay CPU':>9} {'us/pkt':>7} | ratio", flush=True)
    best = best_recorded = best_prompted = 0
    try:
        for calls in ladder:
            # Baseline: phone to phone, no relay (A sockets send to B sockets and back).
            b_addr, a_addr = addrs(b_socks, calls), addrs(a_socks, calls)
            sent, received = play([p for _, p in b_addr], [p for _, p in a_addr],
                                  a_socks, b_socks, args.seconds)
            direct = Step(calls, sent, received, args.seconds)
            relayed = through(backend, a_addr, b_addr, a_socks, b_socks, args.seconds, None)
            per_packet = relayed.us_per_packet
            ok = relayed.loss < LOSS_LIMIT
            best = calls if ok else best
            print(f"{calls:>6} {calls * 100:>8} | {direct.loss:>10.3%} | "
                  f"{measured(relayed, args.seconds)} "
                  f"{per_packet:>7.1f} | "
                  f"{relayed.pps / direct.pps if direct.pps else 0:.2f} of direct"
                  f"{'' if ok else '  <- over 0.1 % loss'}", flush=True)
            cpu = relayed.cpu_s or 0.0
            if args.record:
                with tempfile.TemporaryDirectory(prefix="bench-relay-rec-") as folder:
                    recorded = through(backend, a_addr, b_addr, a_socks, b_socks,
                                       args.seconds, "record", folder)
                    files = len(os.listdir(folder))
                extra = recorded.services
                ok = recorded.loss < LOSS_LIMIT and extra["recordings_failed"] == 0
                best_recorded = calls if ok else best_recorded
                print(f"{'':>6} {'recorded':>8} | {'':>11} | "
                      f"{measured(recorded, args.seconds)} "
                      f"{recorded.us_per_packet:>7.1f} | {files} sealed files, "
                      f"{recorded.us_per_packet / per_packet if per_packet else 0:.2f}x "
                      f"the unrecorded us/pkt, {extra['recordings_failed']} failed, "
                      f"{extra['writes_dropped']} writes dropped"
                      f"{'' if ok else '  <- over 0.1 % loss or failed'}", flush=True)
            if args.prompts:
                prompted = through(backend, a_addr, b_addr, a_socks, b_socks, args.seconds,
                                   "prompts")
                skipped = prompted.services["slots_skipped"]
                sent_by_relay = prompted.services["prompt_packets"]
                late = skipped / (sent_by_relay + skipped) if sent_by_relay else 0.0
                ok = prompted.loss < LOSS_LIMIT and late < LOSS_LIMIT
                best_prompted = calls if ok else best_prompted
                print(f"{'':>6} {'prompts':>8} | {'':>11} | "
                      f"{measured(prompted, args.seconds)} "
                      f"{'':>7} | {late:.3%} slots late; CPU "
                      f"{(prompted.cpu_s or 0) / cpu if cpu else 0:.2f}x the unrecorded run's"
                      f"{'' if ok else '  <- over 0.1 % loss'}", flush=True)
    finally:
        backend.stop()
    print(f"result: {best} concurrent G.711 calls with < 0.1 % loss through {label} "
          f"on one core (target >= 500)", flush=True)
    if args.record:
        print(f"result: {best_recorded} concurrent recorded calls with < 0.1 % loss and no "
              f"failed recording (target >= 500)", flush=True)
    if args.prompts:
        print(f"result: {best_prompted} concurrent calls hearing prompts on both legs with "
              f"< 0.1 % loss and late slots", flush=True)


if __name__ == "__main__":
    main()
