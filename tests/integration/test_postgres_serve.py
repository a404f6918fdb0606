"""Two `sipmask serve` nodes on one PostgreSQL store: a binding made by the CLI routes on
both, both write their CDRs there, and their webhooks, delivering from one shared outbox,
hand every event to the receiver once.

Calls are placed with SIPp (caller on 127.0.0.2, callee on 127.0.0.3 answering; media
ports away from tests/sipp's 16000/18000, which another suite may hold at the same time).
The receiver is an HTTP server in this test: it refuses (503) until both nodes have seen
the events, so both then hold the same backlog and race for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sipmask.cdr.store import CdrLog
from sipmask.store.postgres import PostgresStore
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.postgres import pg_dsn, pg_key, pg_server
from tests.support.serve import ServeProcess

__all__ = ["pg_dsn", "pg_key", "pg_server"]   # fixtures

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

SCENARIOS = REPO / "sipp-scenarios"
A, B, X = "13800000001", "13900000002", "700100000000001"
SECRET = "s3cret"


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[str, str]]      # (event id, type) acknowledged, in arrival order
    accept: threading.Event         # until set: 503 to everything

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        event = json.loads(body)
        if not self.accept.is_set():
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.got.append((event["id"], event["type"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads what arrived, not the access log."""


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str]], threading.Event]]:
    got: list[tuple[str, str]] = []
    accept = threading.Event()
    handler = type("Handler", (_Receiver,), {"got": got, "accept": accept})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events", got, accept
    finally:
        server.shutdown()
        server.server_close()


def test_two_nodes_share_bindings_cdrs_and_one_outbox(
        serve: Callable[..., ServeProcess], pg_dsn: str, pg_key: Path, tmp_path: Path,
        receiver: tuple[str, list[tuple[str, str]], threading.Event]) -> None:
    url, got, accept = receiver
    store_sets = ("--set", "store.backend=postgres", "--set", f"store.dsn={pg_dsn}",
                  "--set", f"store.key_file={pg_key}")
    made = subprocess.run([sys.executable, "-m", "sipmask", "bind", "axb", "--a", A, "--b", B,
                           "--x", X, "--ttl", "0", *store_sets],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert made.returncode == 0, made.stderr
    callee_port = free_port("127.0.0.3")
    nodes = [serve(*store_sets,
                   "--set", f"trunks.carrier.outbound=udp://127.0.0.3:{callee_port}",
                   "--set", f"media.ports={42000 + 1000 * i}-{42999 + 1000 * i}",
                   "--set", f"sip.node_id=node{i}",
                   "--set", f"events.webhook.url={url}",
                   "--set", f"events.webhook.secret={SECRET}",
                   "--set", "events.webhook.max_backoff_s=1") for i in range(2)]
    callee = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "callee.xml"), "-i", "127.0.0.3", "-mi", "127.0.0.3",
         "-mp", "18600", "-p", str(callee_port), "-m", "4", "-nostdin", "-timeout", "60s"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for i, node in enumerate(nodes):
            calls = subprocess.run(
                ["sipp", f"127.0.0.1:{node.port}", "-sf", str(SCENARIOS / "caller.xml"),
                 "-i", "127.0.0.2", "-mi", "127.0.0.2", "-mp", str(16600 + 200 * i),
                 "-p", "0", "-key", "caller", A, "-key", "x", X, "-m", "2", "-d", "100",
                 "-nostdin", "-timeout", "30s", "-cid_str", f"n{i}-%u-%p@%s"],
                cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert calls.returncode == 0, (calls.stdout[-2000:], node.stderr()[-3000:])
        # 4 calls x (ring, answer, hangup, cdr). A webhook looks every 5 s for events
        # another node wrote: after that both nodes have the whole backlog in view.
        time.sleep(5.5)
        assert got == []
        accept.set()
        deadline = time.monotonic() + 20
        while len(got) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)          # a duplicate, if any, would arrive now
    finally:
        callee.kill()
        callee.wait(10)
        for node in nodes:
            node.stop()
    ids = [event_id for event_id, _ in got]
    assert len(ids) == 16 and len(set(ids)) == 16, got          # each event once
    assert sorted(t for _, t in got) == sorted(["ring", "answer", "hangup", "cdr"] * 4)
    store = PostgresStore(pg_dsn, key_file=pg_key)
    try:
        records = CdrLog(store).list()
        assert len(records) == 4
        assert all((r.sip_status, r.caller, r.callee, r.release_side) == (200, A, B, "caller")
                   for r in records)
        beats = store.read(lambda txn: [k for k, _ in txn.scan("calls_up")])
        assert any(k.endswith(b"node0") for k in beats) and any(k.endswith(b"node1")
                                                                for k in beats)
        assert store.count("outbox") == 0       # every event acknowledged and gone
    finally:
        store.close()
