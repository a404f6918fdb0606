"""The engine with policy.CallPolicy: refusals answered with their status, Retry-After and
CDR cause; the concurrency count follows calls; the binding's length limit ends a call with
BYE both ways. Same in-memory harness as test_engine.py (peers are bytes, no sockets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sipmask.b2bua.call import CallState
from sipmask.b2bua.timers import CallTimer
from sipmask.policy import CallPolicy
from sipmask.sip.message import Request, Response
from tests.support.engine import (
    A_ADDR,
    A_NUM,
    B_ADDR,
    B_NUM,
    STRANGER,
    Harness,
    X,
    a_invite,
    answered_call,
    b_response,
    in_dialog,
)


@dataclass
class Load:
    overloaded: bool = False


def run(flow: Callable[[Harness], None], *overrides: str, load: Load | None = None
        ) -> Harness:
    """`flow` on a harness whose core asks a real CallPolicy (on the harness's clock)."""
    h = Harness(overrides=overrides,
                policy=lambda config, clock: CallPolicy(config, clock, load=load))
    flow(h)
    return h


def policy_of(h: Harness) -> CallPolicy:
    assert isinstance(h.policy, CallPolicy)
    return h.policy


def finals(h: Harness) -> list[Response]:
    return [m for m in h.take(A_ADDR) if isinstance(m, Response) and m.status > 100]


def outcomes(h: Harness) -> list[tuple[int | None, str]]:
    return [(c.sip_status, c.unconnected_cause) for c in h.cdrs.records]


def test_blacklisted_caller_is_403_with_cause_blacklist() -> None:
    def flow(h: Harness) -> None:
        h.store.create(mode="axn", tenant="demo", a=A_NUM, x=X, ttl=0, blacklist=(B_NUM,))
        h.deliver(a_invite(caller=STRANGER, branch="z9hG4bKt"), A_ADDR)  # tenant list
        h.deliver(a_invite(caller=B_NUM, branch="z9hG4bKb"), A_ADDR)     # binding list
        assert [r.status for r in finals(h)] == [403, 403]
        assert h.take(B_ADDR) == []

    h = run(flow, "tenants.demo.blacklist=['1370000']")
    assert outcomes(h) == [(403, "blacklist"), (403, "blacklist")]
    assert h.core.stats["refused_blacklist"] == 2


def test_direction_rule_refuses_the_other_way() -> None:
    def flow(h: Harness) -> None:
        h.store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0,
                       direction="a_to_b")
        h.deliver(a_invite(caller=B_NUM, branch="z9hG4bKd"), A_ADDR)
        assert [r.status for r in finals(h)] == [403]
        assert h.take(B_ADDR) == []
        h.deliver(a_invite(caller=A_NUM, branch="z9hG4bKe"), A_ADDR)
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request) and b_inv.method == "INVITE"

    h = run(flow)
    assert outcomes(h) == [(403, "not_allowed")]


def test_source_flood_is_503_with_retry_after() -> None:
    def flow(h: Harness) -> None:
        h.store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0)
        for i in range(4):
            h.deliver(a_invite(branch=f"z9hG4bKf{i}"), A_ADDR)
        refused = [r for r in finals(h) if r.status == 503]
        assert len(refused) == 2
        assert all(r.headers.get("retry-after") == "100" for r in refused)   # 1 token/100 s
        assert len(h.take(B_ADDR)) == 2

    h = run(flow, "policy.source_flood={rate: 0.01, burst: 2}", "policy.retry_after_s=7")
    assert outcomes(h) == []            # load shedding is counted, not recorded
    assert h.core.stats["refused_rate_limited"] == 2


def test_overloaded_loop_refuses_new_calls_but_not_calls_in_progress() -> None:
    load = Load()

    def flow(h: Harness) -> None:
        answered_call(h)
        h.take()
        load.overloaded = True
        h.deliver(a_invite(branch="z9hG4bKo"), A_ADDR)
        [busy] = finals(h)
        assert (busy.status, busy.headers.get("retry-after")) == (503, "5")
        [ctx] = h.core.calls.values()
        assert ctx.call.state is CallState.CONFIRMED     # the call up before goes on

    h = run(flow, load=load)
    assert outcomes(h) == []            # load shedding is counted, not recorded
    assert h.core.stats["refused_rate_limited"] == 1


def test_per_caller_rate_is_403_rate_limited() -> None:
    def flow(h: Harness) -> None:
        h.store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0)
        h.deliver(a_invite(branch="z9hG4bKr1"), A_ADDR)
        h.deliver(a_invite(branch="z9hG4bKr2"), A_ADDR)
        assert [r.status for r in finals(h)] == [403]
        assert [r.headers.get("retry-after") for r in h.take(A_ADDR)] == []

    h = run(flow, "policy.per_caller={rate: 0.01, burst: 1}")
    assert outcomes(h) == [(403, "rate_limited")]


def test_concurrency_cap_per_x_is_486_and_frees_when_a_call_ends() -> None:
    def flow(h: Harness) -> None:
        policy = policy_of(h)
        h.store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0,
                       max_concurrent=1)
        h.deliver(a_invite(branch="z9hG4bKc1"), A_ADDR)
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request)
        assert policy.in_progress(X) == 1
        h.deliver(a_invite(caller=B_NUM, branch="z9hG4bKc2"), A_ADDR)
        assert [r.status for r in finals(h)] == [486]
        h.deliver(b_response(b_inv, 480), B_ADDR)     # the first call fails
        assert policy.in_progress(X) == 0
        h.take()
        h.deliver(a_invite(caller=B_NUM, branch="z9hG4bKc3"), A_ADDR)
        assert [m.method for m in h.take(B_ADDR) if isinstance(m, Request)] == ["INVITE"]

    h = run(flow)
    assert outcomes(h) == [(486, "rate_limited"), (480, "callee_failed")]


def answer_bye(h: Harness, bye: Request, peer: tuple[str, int]) -> None:
    vias = "".join(f"Via: {v}\r\n" for v in bye.headers.get_fields("via"))
    h.deliver(f"SIP/2.0 200 OK\r\n{vias}From: {bye.headers.get('from')}\r\n"
                    f"To: {bye.headers.get('to')}\r\nCall-ID: {bye.call_id}\r\n"
                    f"CSeq: {bye.headers.get('cseq')}\r\nContent-Length: 0\r\n\r\n", peer)


def test_max_duration_ends_the_call_with_bye_both_ways() -> None:
    def flow(h: Harness) -> None:
        policy = policy_of(h)
        answered_call(h)
        h.take()
        [ctx] = h.core.calls.values()
        assert ctx.call.state is CallState.CONFIRMED
        h.advance(0.999)
        assert h.take() == []                               # not before the limit
        h.advance(0.001)
        [bye_a] = h.take(A_ADDR)
        [bye_b] = h.take(B_ADDR)
        assert isinstance(bye_a, Request) and isinstance(bye_b, Request)
        assert (bye_a.method, bye_b.method) == ("BYE", "BYE")
        answer_bye(h, bye_a, A_ADDR)
        answer_bye(h, bye_b, B_ADDR)
        assert h.core.calls == {}
        assert policy.in_progress(X) == 0

    h = run(flow, "policy.max_duration_s=1")
    [cdr] = h.cdrs.records
    assert (cdr.release_side, cdr.unconnected_cause) == ("sipmask", "none")
    assert cdr.duration_s >= 1.0


def test_a_call_hung_up_before_the_limit_cancels_its_timer() -> None:
    def flow(h: Harness) -> None:
        a_inv, _ = answered_call(h)
        h.take()
        [ctx] = h.core.calls.values()
        call_id = ctx.call.call_id
        assert h.core.timers.deadline(call_id, CallTimer.MAX_DURATION) == \
            h.clock.monotonic() + 1
        h.deliver(in_dialog("BYE", ruri=f"sip:{X}@127.0.0.1:5060",
                                  from_=a_inv.headers.get("from") or "",
                                  to=f"<sip:{X}@127.0.0.1>;tag={ctx.a_tag}",
                                  call_id=a_inv.call_id, cseq=11,
                                  via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye"), A_ADDR)
        [bye_b] = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
        answer_bye(h, bye_b, B_ADDR)
        assert h.core.calls == {}
        assert h.core.timers.deadline(call_id, CallTimer.MAX_DURATION) is None
        assert h.core.next_timer() is None

    h = run(flow, "policy.max_duration_s=1")
    assert h.cdrs.records[0].release_side == "caller"
