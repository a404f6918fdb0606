"""The engine's fast paths: dispatch by event type covers every TU event, the next hop a
dialog names is worked out once per value, and actions that never wait run in place."""

from __future__ import annotations

import typing

from sipmask.b2bua import engine as engine_mod
from sipmask.b2bua.call import TRANSITIONS, Leg
from sipmask.sip import transaction
from tests.support.engine import A_ADDR, B_ADDR, Harness, answered_call, run


def test_every_tu_event_type_has_a_handler() -> None:
    assert set(typing.get_args(transaction.TUEvent)) == set(engine_mod._EVENT_HANDLERS)


def test_a_subclass_of_an_event_is_handled_as_its_base() -> None:
    class Late(transaction.AckTimeout):
        pass

    seen: list[str] = []
    h = Harness()
    h.engine._by_a_txn["t1"] = object()  # type: ignore[assignment]
    h.engine._fire = lambda ctx, event, **kw: seen.append(event.name)  # type: ignore[method-assign]
    h.engine.handle_event(Late("t1", None))  # type: ignore[arg-type]
    h.engine.handle_event(transaction.AckTimeout("t1", None))  # type: ignore[arg-type]
    h.engine.handle_event(transaction.TransactionTerminated("t1"))
    assert seen == ["A_ACK_TIMEOUT", "A_ACK_TIMEOUT"]


def test_next_hop_follows_a_changed_dialog_target() -> None:
    async def test(h: Harness) -> None:
        await answered_call(h)
        [ctx] = h.engine.calls.values()
        assert ctx.b_dialog is not None
        assert h.engine._next_hop(ctx, Leg.B) == (("127.0.0.1", 5090), "udp")
        ctx.b_dialog.remote_target = "sip:b@10.9.9.9:5099;transport=tcp"
        assert h.engine._next_hop(ctx, Leg.B) == (("10.9.9.9", 5099), "tcp")
        ctx.b_dialog.remote_target = "sip:b@pbx.example"
        assert h.engine._next_hop(ctx, Leg.B) == (ctx.b_dest, ctx.b_transport)
        assert h.engine._next_hop(ctx, Leg.A) == (("192.0.2.10", 5060), "udp")
    run(test)


def test_contact_is_made_once_per_call_and_transport() -> None:
    async def test(h: Harness) -> None:
        await answered_call(h)
        [ctx] = h.engine.calls.values()
        made = h.engine._contact_of(ctx, Leg.A)
        assert made == f"<sip:{ctx.call.x}@127.0.0.1:5060>"
        assert h.engine._contact_of(ctx, Leg.A) is made
        ctx.b_transport = "tcp"
        assert h.engine._contact_of(ctx, Leg.B) == made     # made once, when B was called
        ctx.contacts.clear()
        assert h.engine._contact_of(ctx, Leg.B).endswith(";transport=tcp>")
    run(test)


def test_actions_that_wait_are_the_only_ones_awaited() -> None:
    every = {a for _, actions in TRANSITIONS.values() for a in actions}
    waiting = engine_mod._AWAITED_ACTIONS
    assert waiting <= every
    # The rest are all handled by _do_now / _do_sync (no coroutine).
    assert {a.name for a in every - waiting} == {
        "ANSWER_A_487", "ANSWER_A_408", "ANSWER_A_503", "ACK_B", "CANCEL_B", "BYE_A", "BYE_B",
        "ANSWER_BYE_A", "ANSWER_BYE_B", "FREE_MEDIA", "RELAY_FAILURE_TO_A"}


def test_answered_call_then_bye_still_ends_with_one_cdr() -> None:
    async def test(h: Harness) -> None:
        a_inv, b_inv = await answered_call(h)
        h.take()
        assert len(h.engine.calls) == 1
        [ctx] = h.engine.calls.values()
        assert ctx.a_key == (a_inv.call_id, "fromzq1")
        assert h.engine._by_a[ctx.a_key] is ctx
        h.engine.end_all()
        await h.idle()
        sent_a = [m for m in h.take(A_ADDR) if isinstance(m, transaction.Request)]
        sent_b = [m for m in h.take(B_ADDR) if isinstance(m, transaction.Request)]
        assert [m.method for m in sent_a] == ["BYE"]
        assert [m.method for m in sent_b] == ["BYE"]
        assert b_inv.method == "INVITE"
    run(test)
