"""The ng flags each media.latching mode sends to rtpengine (their effect on the real daemon
is pinned in tests/integration/test_rtpengine.py). The learning mode travels in the flags
list: rtpengine 10.5 ignores an "endpoint-learning" key given as a string."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipmask.config import loader
from sipmask.errors import ConfigError
from sipmask.media.rtpengine import ng_flags
from sipmask.media.wav import Audio
from sipmask.server import build_media

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


def test_prompts_for_rtpengine_go_where_prompt_dir_says(tmp_path: Path) -> None:
    # rtpengine reads each prompt from a file on this host; under systemd's PrivateTmp it
    # cannot see sipmask's temporary directory, so the operator names one it can read.
    where = tmp_path / "prompts"
    config = loader.load(None, ["media.backend=rtpengine",
                                f"media.rtpengine.prompt_dir={where}"])
    assert config.media.rtpengine.prompt_dir == where
    backend = build_media(config, on_timeout=lambda _call_id: None)
    try:
        path = backend._prompt_file(Audio(b"\x00\x01" * 800))   # type: ignore[attr-defined]
        assert path.parent == where and path.read_bytes()[:4] == b"RIFF"
        assert where.stat().st_mode & 0o777 == 0o755 and path.stat().st_mode & 0o777 == 0o644
    finally:
        asyncio.run(backend.close())
    assert path.exists()            # the operator's directory is not removed at close
