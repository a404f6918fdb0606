"""The call core's tables and caches: dispatch by event type covers every event, every
action of the call's table has a method, the next hop a dialog names is worked out once
per value, and a Contact is made once per call and leg."""

from __future__ import annotations

import typing

import pytest

from sipmask.b2bua import actions
from sipmask.b2bua import core as core_mod
from sipmask.b2bua.call import TRANSITIONS, Action, Leg
from sipmask.sip import transaction
from tests.support.engine import (
    A_ADDR,
    B_ADDR,
    B_SDP,
    Harness,
    a_invite,
    answered_call,
    b_response,
    bind_axb,
    run,
)
from tests.support.paths import is_compiled


def test_every_event_type_has_a_handler() -> None:
    assert set(typing.get_args(transaction.TUEvent)) <= set(core_mod._EVENT_HANDLERS)
    assert set(typing.get_args(actions.CoreEvent)) == set(core_mod._EVENT_HANDLERS)


@pytest.mark.skipif(is_compiled(transaction),
                    reason="a class compiled by mypyc cannot have an interpreted subclass")
def test_a_subclass_of_an_event_is_handled_as_its_base() -> None:
    class Late(transaction.AckTimeout):
        pass

    h = Harness()
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    [b_inv] = [m for m in h.take(B_ADDR) if isinstance(m, transaction.Request)]
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    h.take()
    [ctx] = h.core.calls.values()
    # Our 2xx to A went unacknowledged (§13.3.1.4): BYE both ways.
    h.feed(Late(ctx.a_txn, None))  # type: ignore[arg-type]
    assert [m.method for m in h.take(A_ADDR) if isinstance(m, transaction.Request)] == ["BYE"]
    assert [m.method for m in h.take(B_ADDR) if isinstance(m, transaction.Request)] == ["BYE"]


def test_every_action_of_the_call_table_has_a_method() -> None:
    used = {a for _, acts in TRANSITIONS.values() for a in acts}
    assert used <= set(core_mod._ACTIONS)
    assert set(core_mod._ACTIONS) == set(Action) - {Action.SEND_B_INVITE}


def test_next_hop_follows_a_changed_dialog_target() -> None:
    def test(h: Harness) -> None:
        answered_call(h)
        [ctx] = h.core.calls.values()
        assert ctx.b_dialog is not None
        assert h.core.next_hop(ctx, Leg.B) == (("127.0.0.1", 5090), "udp", None)
        ctx.b_dialog.remote_target = "sip:b@10.9.9.9:5099;transport=tcp"
        assert h.core.next_hop(ctx, Leg.B) == (("10.9.9.9", 5099), "tcp", None)
        ctx.b_dialog.remote_target = "sip:b@pbx.example"
        assert h.core.next_hop(ctx, Leg.B) == (ctx.b_dest, ctx.b_transport, None)
        assert h.core.next_hop(ctx, Leg.A) == (("192.0.2.10", 5060), "udp", None)
        # Over TCP the shell may reuse the connection B's signalling came on.
        ctx.b_transport, ctx.b_source = "tcp", ("127.0.0.9", 40000)
        assert h.core.next_hop(ctx, Leg.B)[2] == (("127.0.0.9", 40000), "tcp")
    run(test)


def test_contact_is_made_once_per_call_and_transport() -> None:
    def test(h: Harness) -> None:
        answered_call(h)
        [ctx] = h.core.calls.values()
        made = h.core.contact_of(ctx, Leg.A)
        assert made == f"<sip:{ctx.call.x}@127.0.0.1:5060>"
        assert h.core.contact_of(ctx, Leg.A) is made
        ctx.b_transport = "tcp"
        assert h.core.contact_of(ctx, Leg.B) == made     # made once, when B was called
        ctx.contacts.clear()
        assert h.core.contact_of(ctx, Leg.B).endswith(";transport=tcp>")
    run(test)


def test_answered_call_then_end_all_still_ends_with_one_cdr() -> None:
    def test(h: Harness) -> None:
        a_inv, b_inv = answered_call(h)
        h.take()
        assert len(h.core.calls) == 1
        [ctx] = h.core.calls.values()
        assert ctx.a_key == (a_inv.call_id, "fromzq1")
        assert h.core._by_a[ctx.a_key] is ctx
        h.feed(actions.EndAll())
        sent_a = [m for m in h.take(A_ADDR) if isinstance(m, transaction.Request)]
        sent_b = [m for m in h.take(B_ADDR) if isinstance(m, transaction.Request)]
        assert [m.method for m in sent_a] == ["BYE"]
        assert [m.method for m in sent_b] == ["BYE"]
        assert b_inv.method == "INVITE"
        assert len(h.cdrs.records) == 1
    run(test)
