"""Losing the PostgreSQL primary (issue 14 §4 "Database"): a primary with a synchronous hot
standby (tests/support/postgres.py `pg_pair`), the primary killed (`pg_ctl stop -m
immediate`) and the standby promoted while sipmask writes and routes.

What must hold: no binding acknowledged before the failover is lost (the primary waits for
the standby on every COMMIT); while no primary answers, store calls fail with a StoreError
that says so within their patience (they never hang); once the standby is promoted they
work again by themselves, on the same store object (libpq's multi-host DSN with
`target_session_attrs=read-write` finds the new primary), with nothing restarted.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import structlog
import structlog.testing

from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.errors import StoreError
from sipmask.sip.message import Response
from sipmask.sip.parser import parse_message
from sipmask.store import offload
from sipmask.store.base import Binding
from sipmask.store.postgres import LOOKUP_PATIENCE_S, CommitUnknown, PostgresStore
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.postgres import PgPair, pg_key, pg_pair
from tests.support.serve import ServeProcess

__all__ = ["pg_key", "pg_pair"]     # fixtures

TENANTS = {"demo": TenantConfig("t", (NumberRange.parse("700100000000000-700100000099999"),))}
# The primary is dead this long before the standby is promoted: longer than the first
# reconnect delays of a pool that backs off (1 s, then 2 s: the next try at 7 s).
GAP_S = 4.0
RESUME_S = 1.0            # the store works again at most this long after the promotion
SLACK_S = 0.5             # a patience may be overrun by one try in flight
LOOKUPS_AT_ONCE = 32      # lookups asked together during the outage (the store has 4 threads)
PATIENCE_S = 1.0          # the store's failover_s here: shorter than the gap, so it shows


@dataclass
class _Writes:
    """What a writer thread saw: each create's outcome with its start and end times."""

    acked: list[tuple[Binding, float, float]] = field(default_factory=list)
    failed: list[tuple[float, float, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)    # CommitUnknown: either outcome
    stop: threading.Event = field(default_factory=threading.Event)

    def acked_after(self, when: float) -> int:
        return sum(1 for _, started, _ in self.acked if started >= when)


def _write(store: PostgresStore, writes: _Writes) -> None:
    i = 0
    while not writes.stop.is_set():
        i += 1
        started = time.monotonic()
        try:
            made = store.create(mode="axb", tenant="demo", a=f"138{i:08d}", b=f"139{i:08d}",
                                ttl=0)
        except CommitUnknown as exc:
            writes.unknown.append(f"138{i:08d}: {exc}")
        except StoreError as exc:
            writes.failed.append((started, time.monotonic(), str(exc)))
        else:
            writes.acked.append((made, started, time.monotonic()))


def _wait(condition: object, within: float, what: str) -> float:
    """Poll `condition()` until true; the monotonic time it became true."""
    deadline = time.monotonic() + within
    while not condition():          # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
    return time.monotonic()


def test_acknowledged_bindings_survive_and_the_store_resumes_by_itself(
        pg_pair: PgPair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    events = structlog.testing.LogCapture()
    structlog.configure(processors=[events])
    store = PostgresStore(pg_pair.dsn(), failover_s=PATIENCE_S, key_file=pg_pair.key_file)
    lookups = PostgresStore(pg_pair.dsn(),            # the call path's patience: 2 s
                            key_file=pg_pair.key_file)
    writes = _Writes()
    writer = threading.Thread(target=_write, args=(store, writes), daemon=True)
    try:
        store.sync_tenants(TENANTS)
        writer.start()
        _wait(lambda: len(writes.acked) >= 30, 20, "no creates before the failover")
        probe = writes.acked[0][0]
        assert lookups.route(probe.x, probe.a, time.time()) == probe
        # The primary dies while the standby lags (its WAL sender stopped for a moment):
        # the commits of that moment wait for the standby, unacknowledged, and die with
        # the primary. Without synchronous replication they are acknowledged, then lost
        # (this test then fails at the end: pg_pair with synchronous=False).
        killed = pg_pair.kill_primary_behind(0.3)
        # Lookups while no primary answers, as INVITEs bring them (more at once than the
        # lookup threads): each a StoreError within its patience counted from when it was
        # asked, not from when a thread took it (the last of 32 on 4 threads would wait
        # 8 x 2 s, past any caller's patience).
        started = time.monotonic()
        futures = [offload.lookup(lookups, probe.x, probe.a, time.time())
                   for _ in range(LOOKUPS_AT_ONCE)]
        failed_in = []
        for future in futures:
            with pytest.raises(StoreError, match="unreachable"):
                future.result(timeout=60)
            failed_in.append(time.monotonic() - started)
        lookup_failed_in = max(failed_in)
        time.sleep(max(0.0, killed + GAP_S - time.monotonic()))
        promoted = time.monotonic()
        pg_pair.standby.promote()
        resumed = _wait(lambda: writes.acked_after(promoted) >= 1, 15,
                        "creates did not resume after the promotion")
        _wait(lambda: writes.acked_after(promoted) >= 20, 15, "creates stalled again")
        assert lookups.route(probe.x, probe.a, time.time()) == probe
    finally:
        writes.stop.set()
        writer.join(30)
        store.close()
        lookups.close()
        structlog.reset_defaults()
    print(f"\nfailover: {LOOKUPS_AT_ONCE} lookups failed within {lookup_failed_in:.2f} s; "
          f"creates acknowledged "
          f"again {resumed - promoted:.2f} s after the promotion, {resumed - killed:.2f} s "
          f"after the kill; {len(writes.failed)} creates failed, {len(writes.unknown)} of "
          f"unknown outcome, {len(writes.acked)} acknowledged")
    assert not writer.is_alive()
    # While no primary answered, creates failed, each within its patience (plus a connect
    # attempt), with a message that says what is wrong.
    in_gap = [f for f in writes.failed if f[0] >= killed]
    assert in_gap, "no create failed while the primary was dead"
    for started, ended, message in in_gap:
        assert ended - started < PATIENCE_S + SLACK_S, (ended - started, message)
        assert "PostgreSQL at 127.0.0.41" in message and "unreachable" in message, message
    assert lookup_failed_in < LOOKUP_PATIENCE_S + SLACK_S
    # Back by itself once a primary answers, on the same store object.
    assert resumed - promoted < RESUME_S
    # The outage is told once per store, not once per connection attempt (psycopg_pool
    # logs each, several lines long: about 30 a second here).
    noise = [r for r in caplog.records if r.name == "psycopg.pool"
             and r.levelno >= logging.WARNING]
    assert noise == [], f"{len(noise)} records, e.g. {noise[0].getMessage()[:200]}"
    told = [(e["event"], e["where"]) for e in events.entries
            if e["event"] in ("store.unreachable", "store.reconnected")]
    assert sorted(told) == [("store.reconnected", store.where)] * 2 + [
        ("store.unreachable", store.where)] * 2, told
    # Every create that returned a binding is on the new primary, as it was acknowledged.
    after = PostgresStore(pg_pair.dsn(), key_file=pg_pair.key_file)
    try:
        for made, _, _ in writes.acked:
            assert after.get(made.id) == made
            assert after.route(made.x, made.a, time.time()) == made
    finally:
        after.close()


# -- through a real `sipmask serve` --------------------------------------------------------------
A, B, X = "13800000001", "13900000002", "700100000000001"
CALLER_IP, CALLEE_IP = "127.0.0.2", "127.0.0.3"
INTERVAL_S = 0.2          # one new INVITE this often, before, during and after the outage
CALL_GAP_S = 3.0          # the primary is dead this long: longer than a lookup's patience


@dataclass
class _Attempt:
    """One INVITE: when it left, and its first final status and when that came."""

    sent: float
    status: int | None = None
    answered: float | None = None


class _Caller:
    """A UAC on one UDP socket: an INVITE every INTERVAL_S with a new Call-ID; a 2xx is
    ACKed and the call hung up at once (BYE), so the callee's SIPp moves on."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((CALLER_IP, 0))
        self.local = self.sock.getsockname()
        self.attempts: dict[str, _Attempt] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.receiver = threading.Thread(target=self._receive, daemon=True)
        self.sender = threading.Thread(target=self._send, daemon=True)

    def start(self) -> None:
        self.receiver.start()
        self.sender.start()

    def _headers(self, call_id: str, method: str, cseq: int, to_tag: str = "") -> str:
        host, port = self.local
        return (f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport"
                f"\r\nMax-Forwards: 70\r\nFrom: <sip:{A}@{host}>;tag=f{call_id[:8]}\r\n"
                f"To: <sip:{X}@{self.server[0]}>{to_tag}\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} {method}\r\nContact: <sip:{A}@{host}:{port}>\r\n")

    def _send(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            call_id = f"{i:04d}{secrets.token_hex(4)}"
            sdp = (f"v=0\r\no=- 1 1 IN IP4 {CALLER_IP}\r\ns=-\r\nc=IN IP4 {CALLER_IP}\r\n"
                   "t=0 0\r\nm=audio 16900 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
            invite = (f"INVITE sip:{X}@{self.server[0]}:{self.server[1]} SIP/2.0\r\n"
                      + self._headers(call_id, "INVITE", 1)
                      + f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}"
                      f"\r\n\r\n{sdp}")
            with self.lock:
                self.attempts[call_id] = _Attempt(time.monotonic())
            self.sock.sendto(invite.encode(), self.server)
            self.stop.wait(INTERVAL_S)

    def _receive(self) -> None:
        self.sock.settimeout(0.2)
        while not (self.stop.is_set() and self.settled()):
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_message(data)
            if not isinstance(message, Response) or message.cseq.method != "INVITE" \
                    or message.status < 200:
                continue
            with self.lock:
                attempt = self.attempts.get(message.call_id)
                first = attempt is not None and attempt.status is None
                if attempt is not None and first:
                    attempt.status, attempt.answered = message.status, time.monotonic()
            if message.status < 300:
                # RFC 3261 §13.2.2.4: every 2xx (retransmissions too) is ACKed; then BYE.
                tag = f";tag={message.to.tag}"
                ack = f"ACK sip:{X}@{self.server[0]}:{self.server[1]} SIP/2.0\r\n" \
                    + self._headers(message.call_id, "ACK", 1, tag) + "Content-Length: 0\r\n\r\n"
                self.sock.sendto(ack.encode(), self.server)
                if first:
                    bye = f"BYE sip:{X}@{self.server[0]}:{self.server[1]} SIP/2.0\r\n" \
                        + self._headers(message.call_id, "BYE", 2, tag) \
                        + "Content-Length: 0\r\n\r\n"
                    self.sock.sendto(bye.encode(), self.server)

    def settled(self) -> bool:
        with self.lock:
            return all(a.status is not None for a in self.attempts.values())

    def snapshot(self) -> list[_Attempt]:
        with self.lock:
            return sorted((replace(a) for a in self.attempts.values()), key=lambda a: a.sent)

    def close(self, within: float) -> None:
        self.stop.set()
        self.sender.join(5)
        self.receiver.join(within)
        self.sock.close()


@pytest.mark.sipp
@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed")
def test_calls_get_503_only_while_no_primary_answers(
        pg_pair: PgPair, serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    sets = ("--set", "store.backend=postgres", "--set", f"store.dsn={pg_pair.dsn()}",
            "--set", f"store.key_file={pg_pair.key_file}")
    made = subprocess.run([sys.executable, "-m", "sipmask", "bind", "axb", "--a", A, "--b", B,
                           "--x", X, "--ttl", "0", *sets],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert made.returncode == 0, made.stderr
    callee_port = free_port(CALLEE_IP)
    node = serve(*sets, "--set", f"trunks.carrier.outbound=udp://{CALLEE_IP}:{callee_port}",
                 "--set", "media.ports=43000-43999")
    callee = subprocess.Popen(
        ["sipp", "-sf", str(REPO / "sipp-scenarios" / "callee.xml"), "-i", CALLEE_IP,
         "-mi", CALLEE_IP, "-mp", "18700", "-p", str(callee_port), "-m", "1000", "-nostdin",
         "-timeout", "60s"], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    caller = _Caller(node.udp)
    try:
        caller.start()
        _wait(lambda: sum(a.status == 200 for a in caller.snapshot()) >= 3, 15,
              "no call connected before the failover")
        killed = time.monotonic()
        pg_pair.primary.kill()
        time.sleep(max(0.0, killed + CALL_GAP_S - time.monotonic()))
        promoted = time.monotonic()
        pg_pair.standby.promote()
        _wait(lambda: sum(a.status == 200 and a.sent >= promoted
                          for a in caller.snapshot()) >= 3, 20,
              "calls did not connect again after the promotion")
    finally:
        caller.close(within=10)
        callee.kill()
        callee.wait(10)
    attempts = caller.snapshot()
    first_200 = min(a.answered for a in attempts if a.status == 200 and a.answered is not None
                    and a.answered > killed)
    refused = [a for a in attempts if a.status != 200]
    print(f"\nfailover through sipmask serve: first 200 {first_200 - killed:.2f} s after the "
          f"kill ({first_200 - promoted:.2f} s after the promotion); "
          f"{len(attempts)} INVITEs, statuses of the others: "
          f"{sorted({a.status for a in refused}, key=str)}, for INVITEs sent from "
          f"{min((a.sent - killed for a in refused), default=0):.2f} s to "
          f"{max((a.sent - killed for a in refused), default=0):.2f} s after the kill")
    # Every INVITE was answered (no silence), with 200 or 503 and nothing else.
    timeline = [(round(a.sent - killed, 2), a.status,
                 None if a.answered is None else round(a.answered - a.sent, 2))
                for a in attempts]
    assert all(a.status in (200, 503) for a in attempts), timeline
    # 503 only while no primary answered: before the kill and after the promotion, 200.
    assert all(a.status == 200 for a in attempts
               if a.sent < killed or a.sent >= promoted), timeline
    assert any(a.status == 503 for a in attempts if killed <= a.sent < promoted), timeline
