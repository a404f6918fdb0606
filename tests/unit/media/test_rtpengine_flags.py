"""The ng flags each media.latching mode sends to rtpengine (their effect on the real daemon
is pinned in tests/integration/test_rtpengine.py). The learning mode travels in the flags
list: rtpengine 10.5 ignores an "endpoint-learning" key given as a string."""

from __future__ import annotations

import pytest

from sipmask.config import loader
from sipmask.errors import ConfigError
from sipmask.media.rtpengine import ng_flags

PRIVACY = {"ICE": "remove", "replace": ["origin", "session-connection"]}


def test_strict_turns_learning_off_and_drops_other_sources() -> None:
    assert ng_flags("strict") == {
        **PRIVACY, "flags": ["strict-source", "endpoint-learning-off", "reject-ICE"]}


def test_any_adds_nothing_and_interfaces_become_direction() -> None:
    assert ng_flags("any") == PRIVACY
    assert ng_flags("any", ("priv", "pub"))["direction"] == ["priv", "pub"]


def test_signalled_ip_is_refused_with_rtpengine_at_load() -> None:
    # rtpengine learns any source for its first seconds: it cannot keep the promise that no
    # leg moves to another IP (tests/integration/test_rtpengine.py measured it).
    with pytest.raises(ConfigError) as info:
        loader.load(None, ["media.backend=rtpengine", "media.latching=signalled_ip"])
    assert info.value.path == "media.latching"
    assert loader.load(None, ["media.backend=relay", "media.latching=signalled_ip"])
    assert loader.load(None, ["media.backend=rtpengine", "media.latching=strict"])


def test_inband_dtmf_is_refused_with_rtpengine_at_load() -> None:
    # rtpengine 10.5 reports no event for in-band tones (tests/integration/
    # test_rtpengine_services.py): a trunk that keys only by tones would never be heard.
    with pytest.raises(ConfigError, match="in-band DTMF") as info:
        loader.load(None, ["media.backend=rtpengine", "trunks.carrier.inband_dtmf=true"])
    assert info.value.path == "trunks.carrier.inband_dtmf"
    assert loader.load(None, ["media.backend=relay", "trunks.carrier.inband_dtmf=true"])
    assert loader.load(None, ["media.backend=rtpengine", "trunks.carrier.inband_dtmf=false"])
