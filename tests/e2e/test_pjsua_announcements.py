"""The AXE extension prompt between two real pjsua2 endpoints through a real `sipmask serve`
(issue 15 §2; CONTRACT "SIP behaviour": AXE).

A stranger (13700000003, on 127.0.0.2) dials the AXE X (700100000000001) alone. sipmask
answers with early media: the caller's pjsua plays it (its recording holds the packaged
`ext_prompt`, speech, before any callee exists), keys 0042 as RFC 4733 telephone-events
(pjsua's dialDtmf) into that early session, and the call goes on to A (13800000001, on
127.0.0.3), whose tone the caller then hears on the same session.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_pjsua_sipmask import MEDIA_PORTS, free_port_range
from tests.support.goertzel import goertzel_power, read_samples
from tests.support.net import LOOPBACK
from tests.support.pjsua import CALLEE_TONE, CALLER_TONE, endpoint_binds, run_pair
from tests.support.serve import ServeProcess, sipmask_cli

pytest.importorskip("pjsua2")
pytestmark = pytest.mark.pjsua

A, STRANGER, X = "13800000001", "13700000003", "700100000000001"
LISTEN_S = 1.5          # of the prompt, before the caller keys


def segment(path: Path, start: float, end: float | None = None) -> list[float]:
    samples, rate = read_samples(path)
    return samples[int(start * rate):None if end is None else int(end * rate)]


def level(samples: list[float]) -> float:
    return math.sqrt(sum(x * x for x in samples) / max(1, len(samples)))


def test_the_caller_hears_the_prompt_keys_rfc4733_and_reaches_a(
        serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    store = tmp_path / "e2e.lmdb"
    first, last = free_port_range(MEDIA_PORTS)
    caller_bind, callee_bind = endpoint_binds()
    sipmask_cli(store, "bind", "axe", "--a", A, "--x", X, "--ext", "0042", "--ttl", "0")
    server = serve("--set", f"store.path={store}",
                   "--set", f"trunks.carrier.outbound=udp://{callee_bind[0]}:{callee_bind[1]}",
                   "--set", f"media.address={LOOPBACK}",
                   "--set", f"media.ports={first}-{last}")

    pair = run_pair(tmp_path / "call", f"sip:{X}@{LOOPBACK}:{server.port}",
                    caller_bind, callee_bind, caller_number=STRANGER, callee_number=A,
                    caller_extra=("--dtmf", "0042", "--dtmf-after", f"{LISTEN_S:g}"))
    report = pair.report() + f"\nserve stderr:\n{server.stderr()[-4000:]}"
    assert pair.caller.ok and pair.callee.ok, report
    assert pair.caller.data["last_status"] == 200, report
    keyed, answered = pair.caller.data["dtmf_at"], pair.caller.data["confirmed_at"]
    assert keyed is not None and answered is not None and answered > keyed, report

    # Early media: the prompt's speech reached the caller before it keyed (its own tone
    # never comes back).
    early = segment(pair.caller.recorded, 0.2, keyed)
    assert level(early) > 0.02, (level(early), report)
    assert goertzel_power(early, CALLER_TONE, 8000) < 1e-4, report
    # The keys routed the call to A: after the answer the caller hears A's tone, on the
    # session the prompt used.
    talk = segment(pair.caller.recorded, answered + 0.3)
    assert goertzel_power(talk, CALLEE_TONE, 8000) > \
        10 * goertzel_power(talk, CALLER_TONE, 8000), report
    callee_saw = pair.callee.identity_text()
    assert STRANGER not in callee_saw and "127.0.0.2" not in callee_saw, callee_saw
    records = sipmask_cli(store, "cdr", "list", "--tenant", "demo")
    assert '"direction": "n_to_a"' in records and '"sip_status": 200' in records, records
