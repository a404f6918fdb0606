"""A masked call between two real pjsua2 endpoints through a real `sipmask serve`.

A (13800000001, on 127.0.0.2) calls X (700100000000001) at sipmask (127.0.0.1); sipmask
looks X up, finds the AXB binding and calls B (13900000002, on 127.0.0.3, the carrier
trunk's outbound). Each endpoint plays its own tone and records the other's. The media
promise (CONTRACT.md, SIP behaviour): each hears the other, both see only X as the far party,
and RTP on both legs goes to sipmask's relay, never to the other endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.goertzel import dominant_tone, tone_powers
from tests.support.net import LOOPBACK, free_port_range
from tests.support.pjsua import (
    CALLEE_IP,
    CALLEE_TONE,
    CALLER_IP,
    CALLER_TONE,
    MEDIA_PORTS,
    TONES,
    endpoint_binds,
    run_pair,
)
from tests.support.serve import ServeProcess, sipmask_cli

pytest.importorskip("pjsua2")
pytestmark = pytest.mark.pjsua

A, B, X = "13800000001", "13900000002", "700100000000001"


def test_masked_call_media_and_identities(serve: Callable[..., ServeProcess],
                                          tmp_path: Path) -> None:
    store = tmp_path / "e2e.lmdb"
    first, last = free_port_range(MEDIA_PORTS)
    caller_bind, callee_bind = endpoint_binds()
    sipmask_cli(store, "bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0")
    server = serve("--set", f"store.path={store}",
                   "--set", f"trunks.carrier.outbound=udp://{callee_bind[0]}:{callee_bind[1]}",
                   "--set", f"media.address={LOOPBACK}",
                   "--set", f"media.ports={first}-{last}")

    pair = run_pair(tmp_path / "call", f"sip:{X}@{LOOPBACK}:{server.port}",
                       caller_bind, callee_bind, caller_number=A, callee_number=B)
    report = pair.report() + f"\nserve stderr:\n{server.stderr()[-4000:]}"
    assert pair.caller.ok and pair.callee.ok, report
    assert pair.caller.data["last_status"] == 200, report

    # Media crosses both legs: each hears the other's tone, not its own.
    assert dominant_tone(pair.caller.recorded, TONES) == CALLEE_TONE, \
        (tone_powers(pair.caller.recorded, TONES), report)
    assert dominant_tone(pair.callee.recorded, TONES) == CALLER_TONE, \
        (tone_powers(pair.callee.recorded, TONES), report)

    # Identities: each side's dialog names X; nothing it received names the other party,
    # by number or by address.
    assert X in pair.caller.data["remote_uri"], report
    assert X in pair.callee.data["remote_uri"], report
    caller_saw, callee_saw = pair.caller.identity_text(), pair.callee.identity_text()
    assert B not in caller_saw and CALLEE_IP not in caller_saw, caller_saw
    assert A not in callee_saw and CALLER_IP not in callee_saw, callee_saw

    # RTP goes to sipmask's relay on both legs, never endpoint to endpoint.
    for seen, other in ((pair.caller, pair.callee), (pair.callee, pair.caller)):
        host, port = seen.rtp_remote
        assert host == LOOPBACK and first <= port <= last, report
        assert seen.data["rtp_remote"] != other.data["rtp_local"], report
