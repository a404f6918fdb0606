"""Announcements and the AXE extension prompt through the call core, on the fake clock
(issue 15 §2-§4; CONTRACT "SIP behaviour": early media before the final response, the AXE
prompt and its digits, the recording notice before the parties hear each other).

The media stand-in (tests/support/engine.RelaySdp) answers OpenEarly with an SDP of its
own and keeps each prompt playing until the test ends it; a StopPrompt or a MediaDelete
ends it as the real backends do. Every test ends with nothing left in the core: no call,
no prompting attempt, no result wait, no timer (DESIGN rule 13).
"""

from __future__ import annotations

from sipmask.b2bua import announcing
from sipmask.b2bua.actions import EndAll, LookupDone
from sipmask.media.backend import PlayEnd
from sipmask.sip.message import Request, Response
from tests.support.engine import (
    A_ADDR,
    A_NUM,
    A_SDP,
    B_ADDR,
    B_SDP,
    STRANGER,
    Harness,
    X,
    a_cancel,
    a_invite,
    b_response,
    bind_axb,
    caller_invite,
    in_dialog,
)

EXT = "0042"
UNBOUND = "announcements.unbound=default"
EXT_PROMPT = "announcements.ext_prompt=default"


def from_a(h: Harness) -> list[Response]:
    out = [m for m in h.take(A_ADDR) if isinstance(m, Response)]
    return [m for m in out if m.cseq.method == "INVITE"]


def statuses(responses: list[Response]) -> list[int]:
    return [r.status for r in responses]


def only_call_id(h: Harness) -> str:
    """The call id the core gave the media of the one attempt so far."""
    ids = {call_id for kind, call_id, _leg in h.media.calls if kind == "early"}
    assert len(ids) == 1, h.media.calls
    return ids.pop()


def bind_axe(h: Harness, ext: str = EXT, tenant: str = "demo") -> None:
    h.store.create(mode="axe", tenant=tenant, a=A_NUM, x=X, ext=ext, ttl=0)


def early_request(method: str, h: Harness, early: Response, cseq: int, *, body: str = "",
                  content_type: str | None = None) -> str:
    """A request of the caller's inside the early dialog sipmask's 183 made."""
    a_inv = caller_invite()
    head = in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                     from_=a_inv.headers.get("from") or "", to=early.headers.get("to") or "",
                     call_id=a_inv.call_id, cseq=cseq,
                     via=f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{method.lower()}{cseq}")
    if not body:
        return head
    head = head.replace("Content-Length: 0\r\n", "")
    return head[:-2] + (f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                        f"{body}")


def answers_to(h: Harness, method: str) -> list[int]:
    return [m.status for m in h.take(A_ADDR)
            if isinstance(m, Response) and m.cseq.method == method]


# -- unbound: the announcement, then 404 ------------------------------------------------------
def test_a_caller_of_an_unbound_x_hears_the_announcement_as_early_media_then_404() -> None:
    h = Harness(overrides=[UNBOUND])
    h.deliver(a_invite(), A_ADDR)
    early = from_a(h)
    assert statuses(early) == [100, 183]
    ringing = early[1]
    assert ringing.headers.get("content-type") == "application/sdp"
    assert b"c=IN IP4 127.0.0.1" in ringing.body and b"telephone-event" in ringing.body
    assert ringing.headers.get("contact") is not None and ringing.to.tag
    call_id = only_call_id(h)
    # Sipmask answered A's own offer, on leg A, told where A's signalling came from.
    assert h.media.seen[0] == ("early", "a", A_SDP, A_ADDR[0])
    assert h.media.prompts == [(call_id, "a", "unbound")]
    assert h.cdrs.records == []                  # nothing is final while the prompt plays
    h.prompt_ends(call_id)
    [final] = from_a(h)
    assert final.status == 404 and final.to.tag == ringing.to.tag      # the same dialog
    [cdr] = h.cdrs.records
    assert (cdr.call_id, cdr.sip_status, cdr.unconnected_cause, cdr.release_side) == (
        call_id, 404, "no_binding", "sipmask")
    assert h.media.deleted == [call_id]
    assert h.refused == ["no_binding"]
    h.assert_nothing_left()


def test_unbound_null_answers_the_bare_404_as_before() -> None:
    h = Harness()         # the harness's config: announcements null
    h.deliver(a_invite(), A_ADDR)
    assert statuses(from_a(h)) == [100, 404]
    assert h.media.calls == []
    h.assert_nothing_left()


def test_a_tenant_overrides_the_announcement_both_ways() -> None:
    # The default plays, the tenant whose pool holds X says null: bare 404.
    h = Harness(overrides=[UNBOUND, "tenants.demo.announcements={unbound: null}"])
    h.deliver(a_invite(), A_ADDR)
    assert statuses(from_a(h)) == [100, 404]
    assert h.media.calls == []
    # The default is null, the tenant asks for it: early media.
    h = Harness(overrides=["tenants.demo.announcements={unbound: default}"])
    h.deliver(a_invite(), A_ADDR)
    assert statuses(from_a(h)) == [100, 183]
    h.prompt_ends(only_call_id(h))
    assert statuses(from_a(h)) == [404]
    h.assert_nothing_left()


def test_an_x_outside_every_pool_takes_the_top_level_announcement() -> None:
    h = Harness(overrides=["tenants.demo.announcements={unbound: null}", UNBOUND])
    h.deliver(a_invite(x="700999000000001"), A_ADDR)
    assert statuses(from_a(h)) == [100, 183]
    h.prompt_ends(only_call_id(h))
    assert statuses(from_a(h)) == [404]
    [cdr] = h.cdrs.records
    assert cdr.tenant == ""
    h.assert_nothing_left()


def test_a_caller_without_an_offer_gets_the_bare_404() -> None:
    h = Harness(overrides=[UNBOUND])
    no_sdp = a_invite().split("Content-Type:")[0] + "Content-Length: 0\r\n\r\n"
    h.deliver(no_sdp, A_ADDR)
    assert statuses(from_a(h)) == [100, 404]
    assert h.media.calls == []
    h.assert_nothing_left()


def test_no_early_media_possible_or_a_media_error_answers_the_404_at_once() -> None:
    for early in ("none", "error"):      # e.g. a G.729-only offer; the ports ran out
        h = Harness(overrides=[UNBOUND])
        h.media.early = early
        h.deliver(a_invite(), A_ADDR)
        assert statuses(from_a(h)) == [100, 404], early
        assert h.media.prompts == [] and h.media.deleted == []
        [cdr] = h.cdrs.records
        assert (cdr.sip_status, cdr.unconnected_cause) == (404, "no_binding")
        h.assert_nothing_left()


def test_a_prompt_that_cannot_play_on_the_leg_ends_at_once_and_the_404_follows() -> None:
    h = Harness(overrides=[UNBOUND])
    h.media.prompt_outcome = PlayEnd.UNPLAYABLE
    h.deliver(a_invite(), A_ADDR)
    assert statuses(from_a(h)) == [100, 183, 404]
    assert h.media.deleted == [only_call_id(h)]
    h.assert_nothing_left()


def test_cancel_during_the_announcement_ends_it_487_and_releases_the_media() -> None:
    h = Harness(overrides=[UNBOUND])
    h.deliver(a_invite(), A_ADDR)
    ringing = from_a(h)[1]
    call_id = only_call_id(h)
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    [final] = from_a(h)
    assert final.status == 487 and final.to.tag == ringing.to.tag
    assert h.media.deleted == [call_id] and h.media.playing == {}
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause, cdr.release_side) == (
        487, "no_binding", "caller")
    h.assert_nothing_left()


def test_bye_in_the_early_dialog_is_a_hang_up_too() -> None:
    h = Harness(overrides=[UNBOUND])
    h.deliver(a_invite(), A_ADDR)
    ringing = from_a(h)[1]
    h.deliver(early_request("BYE", h, ringing, 11), A_ADDR)
    out = [m for m in h.take(A_ADDR) if isinstance(m, Response)]
    assert sorted((m.cseq.method, m.status) for m in out) == [("BYE", 200), ("INVITE", 487)]
    assert h.media.deleted == [only_call_id(h)]
    h.assert_nothing_left()


def test_cancel_while_early_media_opens_gives_the_session_back_when_it_comes() -> None:
    h = Harness(overrides=[UNBOUND])
    from sipmask.b2bua.actions import EarlyOpened
    h.hold = {EarlyOpened}
    h.deliver(a_invite(), A_ADDR)
    assert statuses(from_a(h)) == [100]
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    assert statuses(from_a(h)) == [487]
    h.release()                         # the session the backend opened meanwhile
    assert h.media.deleted == [only_call_id(h)] and h.media.prompts == []
    assert from_a(h) == []
    h.assert_nothing_left()


def test_an_attempt_cancelled_while_the_store_answered_gets_no_announcement() -> None:
    # The caller has gone (its CANCEL got 200): the refusal answers at once, nothing opens.
    h = Harness(overrides=[UNBOUND])
    h.hold = {LookupDone}
    h.deliver(a_invite(), A_ADDR)
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    h.release()
    assert statuses(from_a(h)) == [100, 404]
    assert h.media.calls == []
    h.assert_nothing_left()


def test_a_drain_ends_the_announcement_with_its_refusal() -> None:
    h = Harness(overrides=[UNBOUND])
    h.deliver(a_invite(), A_ADDR)
    assert statuses(from_a(h)) == [100, 183]
    assert h.core.active_calls == 1          # the drain waits for it
    h.feed(EndAll())
    assert statuses(from_a(h)) == [404]
    h.assert_nothing_left()


# -- not_allowed: optional, null by default ---------------------------------------------------
def test_not_allowed_is_null_by_default_and_plays_before_the_403_when_set() -> None:
    h = Harness()
    bind_axb(h)
    h.deliver(a_invite(caller=STRANGER), A_ADDR)
    assert statuses(from_a(h)) == [100, 403]
    h = Harness(overrides=["announcements.not_allowed=default"])
    bind_axb(h)
    h.deliver(a_invite(caller=STRANGER), A_ADDR)
    assert statuses(from_a(h)) == [100, 183]
    call_id = only_call_id(h)
    assert h.media.prompts == [(call_id, "a", "not_allowed")]
    h.prompt_ends(call_id)
    assert statuses(from_a(h)) == [403]
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause) == (403, "not_allowed")
    h.assert_nothing_left()


# -- AXE: the extension prompt ---------------------------------------------------------------
def prompted(h: Harness, caller: str = STRANGER) -> tuple[str, Response]:
    """`caller` dials the AXE X alone: 183 and ext_prompt, keys collected on leg A."""
    h.deliver(a_invite(caller=caller), A_ADDR)
    out = from_a(h)
    assert statuses(out) == [100, 183]
    call_id = only_call_id(h)
    assert h.media.prompts[-1] == (call_id, "a", "ext_prompt")
    assert (call_id, "a") in h.media.collecting
    return call_id, out[1]


def leg_b_invite(h: Harness) -> Request:
    [b_inv] = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
    assert b_inv.method == "INVITE"
    return b_inv


def test_the_axe_x_alone_prompts_and_the_keyed_extension_reaches_a() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, ringing = prompted(h)
    assert h.take(B_ADDR) == []
    h.press(EXT, call_id)       # four keys: ext_digits, no # needed
    assert h.media.playing == {}                       # the first key stopped the prompt
    assert (call_id, "a") not in h.media.collecting
    b_inv = leg_b_invite(h)
    assert b_inv.uri.startswith(f"sip:{A_NUM}@") and b_inv.call_id == call_id
    # The caller's media is the early session: A's offer joins it, nothing new is opened.
    assert [c for c in h.media.calls if c[0] != "early"] == [("offer", call_id, "a")]
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    [ok] = from_a(h)
    assert ok.status == 200 and ok.to.tag == ringing.to.tag
    [up] = h.cdrs.up.values()
    assert (up.direction, up.callee) == ("n_to_a", A_NUM)


def test_digits_by_info_dtmf_relay_in_the_early_dialog() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    _, ringing = prompted(h)
    for cseq, key in enumerate(EXT, start=11):
        h.deliver(early_request("INFO", h, ringing, cseq, body=f"Signal={key}\r\nDuration=160\r\n",
                                content_type="application/dtmf-relay"), A_ADDR)
        assert answers_to(h, "INFO") == [200]
    b_inv = leg_b_invite(h)
    assert b_inv.uri.startswith(f"sip:{A_NUM}@")
    h.deliver(b_response(b_inv, 486), B_ADDR)
    assert statuses(from_a(h)) == [486]
    h.assert_nothing_left()


def test_an_info_that_is_not_a_key_is_refused_and_changes_nothing() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, ringing = prompted(h)
    h.deliver(early_request("INFO", h, ringing, 11, body="Signal=x\r\n",
                            content_type="application/dtmf-relay"), A_ADDR)
    assert answers_to(h, "INFO") == [400]
    h.deliver(early_request("INFO", h, ringing, 12, body="<x/>",
                            content_type="application/xml"), A_ADDR)
    assert answers_to(h, "INFO") == [415]
    assert (call_id, "a") in h.media.playing          # still prompting
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    assert statuses(from_a(h)) == [487]
    h.assert_nothing_left()


def test_a_wrong_extension_hears_the_prompt_again_and_three_tries_end_404() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    for attempt in range(1, 4):
        h.press("99#", call_id)
        assert h.take(B_ADDR) == []
        if attempt < 3:
            assert h.media.prompts.count((call_id, "a", "ext_prompt")) == attempt + 1
            assert from_a(h) == []
    assert statuses(from_a(h)) == [404]
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause, cdr.release_side) == (
        404, "no_binding", "sipmask")
    assert h.media.deleted == [call_id]
    h.assert_nothing_left()


def test_a_right_extension_on_the_last_try_still_connects() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    h.press("1111", call_id)
    h.press("2222", call_id)
    h.press(EXT, call_id)
    leg_b_invite(h)


def test_silence_after_the_prompt_counts_as_a_try() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    for attempt in range(1, 4):
        h.prompt_ends(call_id)
        h.advance(announcing.FIRST_DIGIT_S - 0.5)
        assert from_a(h) == []
        assert h.media.prompts.count((call_id, "a", "ext_prompt")) == attempt
        h.advance(1.0)
    assert statuses(from_a(h)) == [404]
    h.assert_nothing_left()


def test_an_inter_digit_pause_ends_what_was_keyed() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    h.hold = {LookupDone}
    h.press("0", call_id)
    h.advance(announcing.INTER_DIGIT_S - 0.5)
    h.press("0", call_id)
    h.advance(announcing.INTER_DIGIT_S - 0.5)
    assert h.held == []
    h.advance(1.0)              # the pause after "00": that is the extension keyed
    assert len(h.held) == 1
    h.release()
    # "00" is no extension: the prompt again.
    assert h.media.prompts.count((call_id, "a", "ext_prompt")) == 2
    assert h.take(B_ADDR) == []


def test_the_whole_prompting_has_a_time_limit() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    # A key every few seconds, never completing: only the overall limit ends it.
    spent = 0.0
    while spent < announcing.PROMPTING_S - 4:
        h.press("*", call_id)
        h.advance(3.0)
        spent += 3.0
    assert from_a(h) == []
    h.advance(4.0)
    assert statuses(from_a(h)) == [404]
    h.assert_nothing_left()


def test_cancel_during_digit_collection_releases_everything() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, ringing = prompted(h)
    h.press("00", call_id)
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    [final] = from_a(h)
    assert final.status == 487 and final.to.tag == ringing.to.tag
    assert h.media.deleted == [call_id] and h.media.collecting == set()
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause, cdr.release_side) == (487, "none", "caller")
    h.assert_nothing_left()


def test_cancel_while_the_extension_is_looked_up_ends_it_and_the_answer_is_dropped() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    h.hold = {LookupDone}
    h.press(EXT, call_id)
    assert len(h.held) == 1
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    assert statuses(from_a(h)) == [487]
    h.release()
    assert h.take(B_ADDR) == [] and from_a(h) == []
    h.assert_nothing_left()


def test_the_tenant_s_ext_digits_decide_when_the_extension_is_complete() -> None:
    h = Harness(overrides=[EXT_PROMPT, "tenants.demo.ext_digits=2"])
    bind_axe(h, ext="42")
    call_id, _ = prompted(h)
    h.press("42", call_id)
    leg_b_invite(h)


def test_hash_ends_a_short_entry_at_once() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    h.hold = {LookupDone}
    h.press("4", call_id)
    assert h.held == []
    h.press("#", call_id)
    assert len(h.held) == 1


def test_ext_prompt_null_answers_the_axe_x_alone_404_as_before() -> None:
    h = Harness()
    bind_axe(h)
    h.deliver(a_invite(caller=STRANGER), A_ADDR)
    assert statuses(from_a(h)) == [100, 404]
    h.assert_nothing_left()


def test_a_drain_during_the_extension_prompt_answers_503() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    h.feed(EndAll())
    assert statuses(from_a(h)) == [503]
    assert h.media.deleted == [call_id]
    h.assert_nothing_left()


def test_the_routed_call_cancelled_later_frees_the_early_session_once() -> None:
    h = Harness(overrides=[EXT_PROMPT])
    bind_axe(h)
    call_id, _ = prompted(h)
    h.press(EXT, call_id)
    leg_b_invite(h)
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    assert statuses(from_a(h)) == [487]
    assert h.media.deleted == [call_id]


# -- notices after the answer ----------------------------------------------------------------
def answer(h: Harness) -> tuple[str, Request]:
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    assert statuses(from_a(h)) == [100]
    b_inv = leg_b_invite(h)
    h.deliver(b_response(b_inv, 180), B_ADDR)
    assert statuses(from_a(h)) == [180]
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    assert [m.method for m in h.take(B_ADDR) if isinstance(m, Request)] == ["ACK"]
    return b_inv.call_id, b_inv


def test_callee_notice_plays_to_the_callee_before_the_caller_is_answered() -> None:
    h = Harness(overrides=["announcements.callee_notice=default"])
    call_id, _ = answer(h)
    assert from_a(h) == []                      # A waits while B hears the notice
    assert h.media.prompts == [(call_id, "b", "callee_notice")]
    assert h.cdrs.up == {}
    h.prompt_ends(call_id, "b")
    [ok] = from_a(h)
    assert ok.status == 200 and b"c=IN IP4 127.0.0.1" in ok.body


def test_recording_notice_plays_to_both_sides_then_bridges_and_records() -> None:
    h = Harness(overrides=["tenants.demo.record=true", "announcements.recording_notice=default"])
    call_id, _ = answer(h)
    [early] = from_a(h)
    # The caller hears it as early media: a 183 with the answer the 200 will carry.
    assert early.status == 183 and b"m=audio 30000" in early.body
    assert sorted(h.media.prompts) == [(call_id, "a", "recording_notice"),
                                       (call_id, "b", "recording_notice")]
    assert h.media.recordings == []             # not before they hear each other
    h.prompt_ends(call_id, "a")
    assert from_a(h) == []                      # B still hears it
    h.prompt_ends(call_id, "b")
    [ok] = from_a(h)
    assert ok.status == 200 and ok.body == early.body and ok.to.tag == early.to.tag
    assert h.media.recordings == [("start", call_id, "demo")]


def test_both_notices_play_one_after_the_other() -> None:
    h = Harness(overrides=["tenants.demo.record=true", "announcements.recording_notice=default",
                           "announcements.callee_notice=default"])
    call_id, _ = answer(h)
    assert h.media.prompts == [(call_id, "b", "callee_notice")]
    assert from_a(h) == []
    h.prompt_ends(call_id, "b")
    assert statuses(from_a(h)) == [183]
    h.prompt_ends(call_id, "a")
    h.prompt_ends(call_id, "b")
    assert statuses(from_a(h)) == [200]


def test_cancel_during_a_notice_ends_the_call_487_and_hangs_up_the_callee() -> None:
    h = Harness(overrides=["tenants.demo.record=true", "announcements.recording_notice=default"])
    call_id, _ = answer(h)
    assert statuses(from_a(h)) == [183]
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    assert statuses(from_a(h)) == [487]
    [bye] = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
    assert bye.method == "BYE"
    assert h.media.deleted == [call_id] and h.media.playing == {}
    assert h.media.recordings == []
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.release_side, cdr.answer_at, cdr.duration_s) == (
        487, "caller", None, 0.0)


def test_the_callee_hanging_up_during_its_notice_ends_the_caller_480() -> None:
    h = Harness(overrides=["announcements.callee_notice=default"])
    call_id, b_inv = answer(h)
    b_tag = "tb1"
    bye = in_dialog("BYE", ruri=f"sip:{X}@127.0.0.1:5060",
                    from_=f"{b_inv.headers.get('to')};tag={b_tag}",
                    to=b_inv.headers.get("from") or "", call_id=b_inv.call_id, cseq=1,
                    via="SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKbbye")
    h.deliver(bye, B_ADDR)
    assert [m.status for m in h.take(B_ADDR) if isinstance(m, Response)] == [200]
    assert statuses(from_a(h)) == [480]
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.release_side, cdr.unconnected_cause) == (
        480, "callee", "callee_failed")
    assert h.media.deleted == [call_id]


def test_a_notice_that_cannot_play_lets_the_call_go_on() -> None:
    h = Harness(overrides=["announcements.callee_notice=default"])
    h.media.prompt_outcome = PlayEnd.UNPLAYABLE        # B's codec is neither PCMU nor PCMA
    answer(h)
    assert statuses(from_a(h)) == [200]
