"""The call core's dispatch tables (core._on_request), one case per row: out of a dialog
(INVITE, OPTIONS, 481 / 405 / 501 by RFC 3261 §12.2.2, §21.4.6, §21.5.2) and inside one
(BYE, PRACK, REFER, the relayed methods, 405 for the rest)."""

from __future__ import annotations

import pytest

from sipmask.b2bua import core as core_mod
from sipmask.b2bua import relaying
from sipmask.b2bua.call import Leg
from sipmask.media.backend import LEGS
from sipmask.sip.message import Request, Response
from sipmask.sip.methods import ALLOW, KNOWN_METHODS, RELAYED_IN_DIALOG
from tests.support.engine import (
    A_ADDR,
    B_ADDR,
    Harness,
    X,
    answered_call,
    b_response,
    in_dialog,
    run,
)

_TRUNK_VIA = "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKd"


def _responses(h: Harness, dest: tuple[str, int]) -> list[Response]:
    return [m for m in h.take(dest) if isinstance(m, Response)]


@pytest.mark.parametrize(("method", "to_tag", "extra", "status"), [
    ("OPTIONS", None, "", 200),               # §11.2: answered as an INVITE would be
    ("OPTIONS", None, "Require: foo\r\n", 420),
    ("BYE", None, "", 481),                   # §12.2.2: no such dialog
    ("INFO", None, "", 405),                  # §21.4.6: known, not served out of a dialog
    ("SUBSCRIBE", None, "", 405),
    ("FOO", None, "", 501),                   # §21.5.2: not known at all
    ("INVITE", "nosuch", "", 481),            # a re-INVITE of no dialog of ours
    ("MESSAGE", "nosuch", "", 481),
    ("FOO", "nosuch", "", 481),
])
def test_out_of_dialog_requests(method: str, to_tag: str | None, extra: str,
                                status: int) -> None:
    def flow(h: Harness) -> None:
        to = f"<sip:{X}@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
        request = in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                            from_="<sip:trunk@192.0.2.10>;tag=f1", to=to,
                            call_id="ood-1@192.0.2.10", cseq=1, via=_TRUNK_VIA + method)
        h.deliver(request.replace("Content-Length", extra + "Content-Length"), A_ADDR)
        [answer] = _responses(h, A_ADDR)
        assert answer.status == status
        assert h.take(B_ADDR) == [] and not h.core.calls and not h.cdrs.records
        allow = answer.headers.get_fields("allow")
        assert allow == ([ALLOW] if status in (200, 405, 501) else [])
        if status == 420:
            assert answer.headers.get("unsupported") == "foo"

    run(flow)


def _from_a(h: Harness, a_inv: Request, method: str, cseq: int,
                  a_tag: str | None = None) -> None:
    if a_tag is None:
        [ctx] = h.core.calls.values()
        a_tag = ctx.a_tag
    h.deliver(in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                              from_=a_inv.headers.get("from") or "",
                              to=f"<sip:{X}@127.0.0.1>;tag={a_tag}", call_id=a_inv.call_id,
                              cseq=cseq, via=f"{_TRUNK_VIA}{method}{cseq}"), A_ADDR)


def _from_b(h: Harness, b_inv: Request, method: str, cseq: int) -> None:
    h.deliver(in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                              from_=f"{b_inv.headers.get('to')};tag=tb1",
                              to=b_inv.headers.get("from") or "", call_id=b_inv.call_id,
                              cseq=cseq, via=f"SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKb{cseq}"),
                    B_ADDR)


@pytest.mark.parametrize(("leg", "method", "status"), [
    ("a", "PRACK", 481),          # RFC 3262 §3: we send A no reliable provisionals
    ("b", "PRACK", 405),          # nothing to acknowledge once the call is up
    ("a", "SUBSCRIBE", 405),      # known, not relayed in a dialog
    ("b", "NOTIFY", 405),
    ("a", "FOO", 405),            # in a dialog even an unknown method is 405 (with Allow)
    ("b", "REFER", 403),          # REFER would carry a URI across (DESIGN.md)
])
def test_in_dialog_requests_answered_by_sipmask(leg: str, method: str, status: int) -> None:
    def flow(h: Harness) -> None:
        a_inv, b_inv = answered_call(h)
        h.take()
        if leg == "a":
            _from_a(h, a_inv, method, 11)
        else:
            _from_b(h, b_inv, method, 11)
        here, there = (A_ADDR, B_ADDR) if leg == "a" else (B_ADDR, A_ADDR)
        [answer] = _responses(h, here)
        assert answer.status == status
        assert h.take(there) == []                # nothing crossed
        assert answer.headers.get_fields("allow") == ([ALLOW] if status == 405 else [])
        [ctx] = h.core.calls.values()
        assert ctx.call.state.value == "confirmed"

    run(flow)


def test_in_dialog_message_from_b_is_relayed_to_a() -> None:
    def flow(h: Harness) -> None:
        _a_inv, b_inv = answered_call(h)
        h.take()
        _from_b(h, b_inv, "MESSAGE", 11)
        [relayed] = h.take(A_ADDR)
        assert isinstance(relayed, Request) and relayed.method == "MESSAGE"
        assert h.take(B_ADDR) == []

    run(flow)


def test_request_in_an_ended_dialog_is_481() -> None:
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        [ctx] = h.core.calls.values()
        _from_a(h, a_inv, "BYE", 11)
        assert [r.status for r in _responses(h, A_ADDR)] == [200]
        [bye_b] = h.take(B_ADDR)
        assert isinstance(bye_b, Request) and bye_b.method == "BYE"
        h.deliver(b_response(bye_b, 200), B_ADDR)
        assert not h.core.calls
        _from_a(h, a_inv, "INFO", 12, ctx.a_tag)
        assert [r.status for r in _responses(h, A_ADDR)] == [481]

    run(flow)


def test_the_tables_name_known_methods_and_legs_keep_the_media_apis_names() -> None:
    assert core_mod._IN_DIALOG.keys() <= KNOWN_METHODS
    assert {m for m, f in core_mod._IN_DIALOG.items()
            if f is relaying.on_relayed} == RELAYED_IN_DIALOG
    assert "REFER" not in RELAYED_IN_DIALOG
    assert set(core_mod._OUT_OF_DIALOG) == {"INVITE", "OPTIONS"}
    # The media backend keys its sides by "a" / "b" (media/backend.py LEGS).
    assert [str(leg) for leg in Leg] == list(LEGS) and Leg.A == "a"
    assert (Leg.A.other, Leg.B.other) == (Leg.B, Leg.A)
    assert f"{Leg.B}" == "b"


def test_a_draining_node_answers_options_as_it_would_an_invite() -> None:
    """§11.2: OPTIONS gets what an INVITE would; a draining node refuses INVITEs with 503,
    so a dispatcher's OPTIONS probe takes it out of rotation (kamailio-dispatcher.cfg)."""
    def flow(h: Harness) -> None:
        h.core.draining = True
        request = in_dialog("OPTIONS", ruri=f"sip:{X}@127.0.0.1:5060",
                            from_="<sip:trunk@192.0.2.10>;tag=f1", to=f"<sip:{X}@127.0.0.1>",
                            call_id="probe-1@192.0.2.10", cseq=1, via=_TRUNK_VIA + "probe")
        h.deliver(request, A_ADDR)
        [answer] = _responses(h, A_ADDR)
        assert (answer.status, answer.headers.get("retry-after")) == (503, "5")
        assert not h.cdrs.records

    run(flow)
