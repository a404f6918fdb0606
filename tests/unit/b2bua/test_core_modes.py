"""AXYB and AXE bindings through the call core (CONTRACT "Words", "SIP behaviour"): who is
dialled, which number the new leg shows, and the CDR's direction. Store rules themselves are
tested in tests/unit/store; here the call core must carry them onto the wire."""

from __future__ import annotations

from sipmask.b2bua.actions import MediaTimeout
from sipmask.sip.message import Request, Response
from sipmask.sip.uri import NameAddr, SipUri
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
)
from tests.unit.b2bua.test_core import answer_byes

Y = "700100000000002"
EXT = "1234"


def bind_axyb(h: Harness) -> None:
    h.store.create(mode="axyb", tenant="demo", a=A_NUM, b=B_NUM, x=X, y=Y, ttl=0)


def bind_axe(h: Harness, b: str | None = B_NUM) -> None:
    h.store.create(mode="axe", tenant="demo", a=A_NUM, b=b, x=X, ext=EXT, ttl=0)


def user_of(value: str | None) -> str:
    assert value is not None
    uri = NameAddr.parse(value).uri
    assert isinstance(uri, SipUri)
    return uri.user or ""


def leg_b(h: Harness) -> Request:
    [b_inv] = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
    assert b_inv.method == "INVITE"
    return b_inv


def finals(h: Harness) -> list[int]:
    return [m.status for m in h.take(A_ADDR) if isinstance(m, Response) and m.status >= 200]


def reach(h: Harness, caller: str, dialled: str, callee: str, shown: str,
          direction: str) -> None:
    """`caller` dials `dialled`; leg B goes to `callee` showing `shown` (From and Contact),
    and the answered call's CDR has `direction`."""
    h.deliver(a_invite(caller=caller, x=dialled), A_ADDR)
    b_inv = leg_b(h)
    assert b_inv.uri.startswith(f"sip:{callee}@")
    assert user_of(b_inv.headers.get("from")) == shown
    assert user_of(b_inv.headers.get("contact")) == shown
    text = b_inv.to_bytes().decode()
    for other in {A_NUM, B_NUM} - {callee}:
        assert other not in text
    h.deliver(b_response(b_inv, 486), B_ADDR)
    assert finals(h) == [486]
    [record] = h.cdrs.records
    assert (record.direction, record.callee, record.caller) == (direction, callee, caller)


def test_axyb_a_dials_x_and_b_sees_y() -> None:
    h = Harness()
    bind_axyb(h)
    reach(h, A_NUM, X, B_NUM, Y, "a_to_b")


def test_axyb_b_dials_y_and_a_sees_x() -> None:
    h = Harness()
    bind_axyb(h)
    reach(h, B_NUM, Y, A_NUM, X, "b_to_a")


def test_axyb_a_stranger_on_y_is_403_and_b_on_x_too() -> None:
    for caller, dialled in ((STRANGER, Y), (B_NUM, X), (A_NUM, Y)):
        h = Harness()
        bind_axyb(h)
        h.deliver(a_invite(caller=caller, x=dialled), A_ADDR)
        assert finals(h) == [403], (caller, dialled)
        assert h.take(B_ADDR) == []
        [record] = h.cdrs.records
        assert record.unconnected_cause == "not_allowed"


def test_axe_x_followed_by_the_extension_reaches_a() -> None:
    h = Harness()
    bind_axe(h)
    reach(h, STRANGER, X + EXT, A_NUM, X, "n_to_a")
    [record] = h.cdrs.records
    assert record.x == X       # the CDR's X is the number, not number + extension


def test_a_calling_its_axe_x_reaches_b() -> None:
    h = Harness()
    bind_axe(h)
    reach(h, A_NUM, X, B_NUM, X, "a_to_b")


def test_axe_with_a_wrong_extension_is_404() -> None:
    h = Harness()
    bind_axe(h)
    h.deliver(a_invite(caller=STRANGER, x=X + "9999"), A_ADDR)
    assert finals(h) == [404]
    assert h.take(B_ADDR) == []
    [record] = h.cdrs.records
    assert (record.unconnected_cause, record.x) == ("no_binding", X)


# -- recording per binding (issue 15 §4) -------------------------------------------------------
def recorded_call(h: Harness) -> str:
    """An answered call on X, ended by sipmask (media timeout); returns its call id."""
    answered_call(h)
    h.take()
    [ctx] = h.core.calls.values()
    h.feed(MediaTimeout(ctx.call.call_id))
    answer_byes(h)
    h.assert_nothing_left()
    return ctx.call.call_id


def test_a_recorded_binding_records_from_the_answer_and_names_the_file_in_the_cdr() -> None:
    h = Harness(overrides=["tenants.demo.record=true"])
    call_id = recorded_call(h)
    local = call_id.partition("@")[0]
    # Started once the answer reached A, stopped before the CDR and before media is freed.
    assert h.media.recordings == [("start", call_id, "demo"), ("stop", call_id, "")]
    assert h.media.deleted == [call_id]
    [cdr] = h.cdrs.records
    assert cdr.recording == f"{local}.wav"


def test_a_failed_recording_leaves_the_cdr_without_one_and_the_call_unharmed() -> None:
    h = Harness(overrides=["tenants.demo.record=true"])
    h.media.recording_fails = True
    recorded_call(h)
    [cdr] = h.cdrs.records
    assert (cdr.recording, cdr.sip_status) == (None, 200)


def test_an_unrecorded_binding_records_nothing() -> None:
    h = Harness()
    recorded_call(h)
    assert h.media.recordings == []
    [cdr] = h.cdrs.records
    assert cdr.recording is None
