"""The two-leg state machine: every flow's transitions, actions and the record it leaves."""

from __future__ import annotations

import pytest

from sipmask.b2bua.call import LIVE, TRANSITIONS, Action, Call, CallEvent, CallState
from sipmask.errors import CallStateError

E, A, S = CallEvent, Action, CallState


def new_call() -> Call:
    return Call(call_id="c1", tenant="demo", binding_id="b1", x="700100000000001",
                caller="13800000001", callee="13900000002", direction="a_to_b",
                invite_at=100.0)


def drive(call: Call, *steps: tuple[CallEvent, float] | tuple[CallEvent, float, int]
          ) -> list[tuple[Action, ...]]:
    out = []
    for step in steps:
        event, now = step[0], step[1]
        status = step[2] if len(step) == 3 else None
        out.append(call.apply(event, now, status=status))
    return out


def test_answered_call_caller_hangs_up() -> None:
    call = new_call()
    actions = drive(call, (E.LEG_B_SENT, 100.01), (E.B_PROVISIONAL, 100.5, 180),
                    (E.B_ANSWER, 103.0, 200), (E.A_ACK, 103.05), (E.A_BYE, 163.0),
                    (E.BYES_DONE, 163.02))
    assert actions == [(), (A.RELAY_PROVISIONAL_TO_A,), (A.ACK_B, A.RELAY_ANSWER_TO_A), (),
                       (A.FREE_MEDIA, A.WRITE_CDR, A.ANSWER_BYE_A, A.BYE_B), ()]
    assert call.state is S.ENDED and call.done
    assert (call.ring_at, call.answer_at, call.end_at) == (100.5, 103.0, 163.0)
    assert call.duration_s == pytest.approx(60.0)
    assert call.release_side == "caller"
    assert call.sip_status == 200
    assert call.unconnected_cause == "none"


def test_callee_hangs_up() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.B_ANSWER, 101, 200), (E.A_ACK, 101))
    assert call.apply(E.B_BYE, 130) == (A.FREE_MEDIA, A.WRITE_CDR, A.ANSWER_BYE_B, A.BYE_A)
    assert call.release_side == "callee"


def test_callee_busy_passes_status_through() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.B_PROVISIONAL, 101, 180))
    assert call.apply(E.B_FAILURE, 102, status=486) == (A.FREE_MEDIA, A.WRITE_CDR,
                                                        A.RELAY_FAILURE_TO_A)
    assert call.sip_status == 486
    assert call.release_side == "callee"
    assert call.unconnected_cause == "callee_failed"
    assert call.duration_s == 0.0
    assert call.end_at == 102


def test_caller_cancels_while_ringing() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.B_PROVISIONAL, 101, 180))
    assert call.apply(E.A_CANCEL, 105) == (A.FREE_MEDIA, A.WRITE_CDR, A.CANCEL_B,
                                           A.ANSWER_A_487)
    assert call.state is S.CANCELLING and call.recorded
    assert call.apply(E.B_FAILURE, 105.1, status=487) == ()
    assert call.sip_status == 487 and call.end_at == 105
    assert call.release_side == "caller"


def test_answer_crossing_cancel_is_acked_and_hung_up() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.A_CANCEL, 101))
    assert call.apply(E.B_ANSWER, 101.01, status=200) == (A.ACK_B, A.BYE_B)
    assert call.answer_at is None  # never connected for the caller
    assert call.apply(E.BYES_DONE, 101.2) == ()
    assert call.sip_status == 487


def test_ring_timeout() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.B_PROVISIONAL, 101, 180))
    assert call.apply(E.RING_TIMEOUT, 160) == (A.FREE_MEDIA, A.WRITE_CDR, A.CANCEL_B,
                                               A.ANSWER_A_408)
    assert call.sip_status == 408
    assert call.release_side == "sipmask"
    assert call.unconnected_cause == "timeout"


def test_leg_b_timeout() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100))
    assert call.apply(E.B_TIMEOUT, 132) == (A.FREE_MEDIA, A.WRITE_CDR, A.ANSWER_A_408)
    assert (call.sip_status, call.unconnected_cause, call.release_side) == (408, "timeout",
                                                                            "sipmask")


def test_media_timeout_ends_both_legs() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.B_ANSWER, 101, 200), (E.A_ACK, 101))
    assert call.apply(E.MEDIA_TIMEOUT, 200) == (A.FREE_MEDIA, A.WRITE_CDR, A.BYE_A, A.BYE_B)
    assert call.release_side == "sipmask"
    assert call.apply(E.B_BYE, 200.1) == (A.ANSWER_BYE_B,)  # crossing BYE still answered
    assert call.release_side == "sipmask"


def test_in_dialog_requests_relay_without_state_change() -> None:
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.B_ANSWER, 101, 200), (E.A_ACK, 101))
    assert call.apply(E.A_REQUEST, 110) == (A.RELAY_REQUEST_TO_B,)
    assert call.apply(E.B_REQUEST, 111) == (A.RELAY_REQUEST_TO_A,)
    assert call.state is S.CONFIRMED


def test_setup_failure() -> None:
    call = new_call()
    assert call.apply(E.SETUP_FAILED, 100) == (A.FREE_MEDIA, A.WRITE_CDR, A.ANSWER_A_503)
    assert call.sip_status == 503


def test_a_bye_from_the_caller_in_an_early_dialog_ends_it_as_a_cancel_does() -> None:
    # RFC 3261 §15: the caller may BYE an early dialog (an announcement's 183 makes one).
    call = new_call()
    drive(call, (E.LEG_B_SENT, 100), (E.B_PROVISIONAL, 101, 180))
    assert call.apply(E.A_BYE, 102) == (A.FREE_MEDIA, A.WRITE_CDR, A.ANSWER_BYE_A, A.CANCEL_B,
                                        A.ANSWER_A_487)
    assert (call.state, call.sip_status, call.release_side) == (S.CANCELLING, 487, "caller")


@pytest.mark.parametrize(("state", "event"), [
    (S.ROUTING, E.A_ACK), (S.CALLING, E.A_ACK), (S.ENDED, E.A_BYE), (S.CONFIRMED, E.LEG_B_SENT),
    (S.ENDED, E.BYES_DONE),
])
def test_illegal_events_raise(state: CallState, event: CallEvent) -> None:
    call = new_call()
    call.state = state
    with pytest.raises(CallStateError, match=event.value):
        call.apply(event, 1.0)
    assert call.state is state


def test_cdr_written_once_when_the_end_is_decided_before_any_answer() -> None:
    answers = {A.RELAY_FAILURE_TO_A, A.ANSWER_A_487, A.ANSWER_A_408, A.ANSWER_A_503,
               A.ANSWER_BYE_A, A.ANSWER_BYE_B, A.BYE_A, A.BYE_B, A.CANCEL_B}
    for (state, event), (next_state, actions) in TRANSITIONS.items():
        leaves_live = state in LIVE and next_state not in LIVE
        assert (A.WRITE_CDR in actions) == leaves_live, (state, event)
        assert (A.FREE_MEDIA in actions) == leaves_live, (state, event)
        if leaves_live:
            first_answer = min((actions.index(a) for a in answers if a in actions), default=99)
            assert actions.index(A.WRITE_CDR) < first_answer, (state, event)


def test_every_state_but_ended_can_be_left() -> None:
    reachable = {s for s, _ in TRANSITIONS}
    assert reachable == set(S) - {S.ENDED}
    # From every live state some chain of events reaches ENDED.
    graph: dict[CallState, set[CallState]] = {}
    for (s, _), (n, _) in TRANSITIONS.items():
        graph.setdefault(s, set()).add(n)
    for start in reachable:
        seen, todo = {start}, [start]
        while todo:
            for n in graph.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        assert S.ENDED in seen, start


def test_max_duration_or_media_timeout_before_the_ack_still_ends_the_call() -> None:
    for event in (E.MAX_DURATION, E.MEDIA_TIMEOUT):
        call = new_call()
        drive(call, (E.LEG_B_SENT, 100), (E.B_ANSWER, 101, 200))
        assert call.apply(event, 102) == (A.FREE_MEDIA, A.WRITE_CDR, A.BYE_A, A.BYE_B)
        assert call.release_side == "sipmask"
