"""Call.apply works from a table precomputed at import (_STEPS): it must do exactly what the
plain reading of TRANSITIONS and the record rules did, for every (state, event) and every
record the call may already hold."""

from __future__ import annotations

import itertools
from dataclasses import fields, replace

import pytest

from sipmask.b2bua import call as call_mod
from sipmask.b2bua.call import TRANSITIONS, Action, Call, CallEvent, CallState
from sipmask.errors import CallStateError

S, E, A = CallState, CallEvent, Action


def _reference_apply(call: Call, event: CallEvent, now: float, status: int | None
                     ) -> tuple[Action, ...]:
    """Call.apply as it was written before _STEPS (the specification)."""
    try:
        next_state, actions = TRANSITIONS[(call.state, event)]
    except KeyError:
        raise CallStateError(f"{event.value} is not allowed in state {call.state.value}"
                             ) from None
    call.history.append((call.state, event))
    if event is E.B_PROVISIONAL and call.ring_at is None and call.state is not S.CANCELLING:
        call.ring_at = now
    if event is E.B_ANSWER and call.answer_at is None and call.state in (S.CALLING, S.EARLY):
        call.answer_at = now
        call.sip_status = status or 200
    if A.RELAY_FAILURE_TO_A in actions:
        call.sip_status = status
    notice_end = call.state is S.NOTICE and A.WRITE_CDR in actions
    if notice_end:
        # Issue 15 §4: ended while a notice played, A never heard the answer.
        call.answer_at = None
        call.sip_status = None
    for action in actions:
        if action in call_mod._STATUS_FOR_ACTION and call.sip_status is None:
            call.sip_status = call_mod._STATUS_FOR_ACTION[action]
    if call.release_side is None and event in call_mod._RELEASE_SIDE and (
            actions or event in (E.A_CANCEL,)):
        call.release_side = call_mod._RELEASE_SIDE[event]
    causes = dict(call_mod._CAUSE_FOR_EVENT)
    if call.state is S.NOTICE:
        causes.update(call_mod._NOTICE_CAUSE)
    if call.answer_at is None and event in causes and call.unconnected_cause == "none":
        call.unconnected_cause = causes[event]
    if A.WRITE_CDR in actions:
        call.end_at = now
    call.state = next_state
    return actions


def _base(state: CallState) -> Call:
    return Call(call_id="c1", tenant="t", binding_id="b", x="700", caller="138", callee="139",
                direction="a_to_b", invite_at=1.0, state=state)


PRIORS = [
    {},
    {"ring_at": 2.0},
    {"answer_at": 3.0, "sip_status": 200},
    {"sip_status": 486},
    {"release_side": "callee"},
    {"unconnected_cause": "timeout"},
    {"ring_at": 2.0, "answer_at": 3.0, "sip_status": 200, "release_side": "caller"},
]


def _snapshot(call: Call) -> dict[str, object]:
    return {f.name: getattr(call, f.name) for f in fields(call)}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(CallState, CallEvent)))
def test_apply_matches_reference_for_every_state_and_event(state: CallState,
                                                           event: CallEvent) -> None:
    for prior, status in itertools.product(PRIORS, (None, 180, 183, 200, 202, 486, 503)):
        new = replace(_base(state), **prior)
        new.history = []
        ref = replace(_base(state), **prior)
        ref.history = []
        try:
            expected: tuple[Action, ...] | str = _reference_apply(ref, event, 9.0, status)
        except CallStateError as exc:
            expected = str(exc)
        try:
            got: tuple[Action, ...] | str = new.apply(event, 9.0, status=status)
        except CallStateError as exc:
            got = str(exc)
        assert got == expected, (state, event, prior, status)
        assert _snapshot(new) == _snapshot(ref), (state, event, prior, status)


def test_steps_cover_exactly_the_transitions() -> None:
    assert call_mod._STEPS.keys() == TRANSITIONS.keys()
    for key, (next_state, actions) in TRANSITIONS.items():
        assert call_mod._STEPS[key][:2] == (next_state, actions)


def test_enum_members_hash_by_identity_and_still_key_dicts() -> None:
    for enum in (CallState, CallEvent, Action):
        table = {member: member.value for member in enum}
        assert all(table[m] == m.value for m in enum)
        assert len({hash(m) for m in enum}) == len(enum)
    assert CallState("routing") is S.ROUTING
    assert CallEvent["A_BYE"] is E.A_BYE


def test_long_random_walks_match_reference() -> None:
    import random
    rng = random.Random(7)
    events = list(CallEvent)
    for _ in range(300):
        new, ref = _base(S.ROUTING), _base(S.ROUTING)
        for step in range(30):
            event = rng.choice(events)
            status = rng.choice((None, 180, 200, 404, 487))
            try:
                expected: object = _reference_apply(ref, event, float(step), status)
            except CallStateError as exc:
                expected = str(exc)
            try:
                got: object = new.apply(event, float(step), status=status)
            except CallStateError as exc:
                got = str(exc)
            assert got == expected
            assert _snapshot(new) == _snapshot(ref)
