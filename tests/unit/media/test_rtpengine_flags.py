"""The ng flags each media.latching mode sends to rtpengine (their effect on the real daemon
is pinned in tests/integration/test_rtpengine.py). The learning mode travels in the flags
list: rtpengine 10.5 ignores an "endpoint-learning" key given as a string."""

from __future__ import annotations

from sipmask.media.rtpengine import ng_flags

PRIVACY = {"ICE": "remove", "replace": ["origin", "session-connection"]}


def test_strict_turns_learning_off_and_drops_other_sources() -> None:
    assert ng_flags("strict", "192.0.2.7") == {
        **PRIVACY, "flags": ["strict-source", "endpoint-learning-off", "reject-ICE"]}


def test_signalled_ip_learns_heuristically_from_the_sip_source() -> None:
    assert ng_flags("signalled_ip", "192.0.2.7") == {
        **PRIVACY, "received-from": ["IP4", "192.0.2.7"],
        "flags": ["strict-source", "endpoint-learning-heuristic", "reject-ICE",
                  "SIP-source-address"]}
    assert ng_flags("signalled_ip", "2001:db8::7")["received-from"] == ["IP6", "2001:db8::7"]
    # Without a SIP source the SDP's address is the advertised one.
    assert ng_flags("signalled_ip", None) == {
        **PRIVACY, "flags": ["strict-source", "endpoint-learning-heuristic", "reject-ICE"]}


def test_any_adds_nothing_and_interfaces_become_direction() -> None:
    assert ng_flags("any", "192.0.2.7") == PRIVACY
    assert ng_flags("any", None, ("priv", "pub"))["direction"] == ["priv", "pub"]
