"""The asyncio shell's part of the announcements (b2bua/engine.py): it reads the file,
plays it on the media backend, tells the core when it ended, and hands the backend's keys
to the core. Over ShellHarness (tests/support/engine.py) with a backend double that keeps
what it was asked: what each performer does with the backend, and what comes back to the
core. The real relay behind a real `sipmask serve` is tests/integration/test_announcing_serve.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipmask.b2bua import engine as engine_mod
from sipmask.errors import MediaError
from sipmask.media.backend import DigitCallback, Playback, PlayEnd
from sipmask.media.wav import Audio, encode_wav
from sipmask.sip.message import Response
from tests.support.engine import (
    A_ADDR,
    A_NUM,
    B_ADDR,
    AsyncRelaySdp,
    ShellHarness,
    X,
    a_invite,
    harness_config,
)
from tests.support.tones import pcm, sine

EARLY_SDP = (b"v=0\r\no=- 9 9 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
             b"a=rtpmap:101 telephone-event/8000\r\n")


class Backend(AsyncRelaySdp):
    """The MediaPort with services: prompts end as `end` says (None: they never report an
    end, as rtpengine without a duration), keys go to the callback the shell gave."""

    def __init__(self, end: PlayEnd | None = PlayEnd.FINISHED) -> None:
        super().__init__()
        self.end = end
        self.played: list[tuple[str, str, Audio]] = []
        self.stopped: list[tuple[str, str]] = []
        self.on_digit: DigitCallback | None = None
        self.fail_play = False
        self.playing: dict[tuple[str, str], Playback] = {}

    async def open_early(self, call_id: str, leg: str, offer_sdp: bytes, *,
                         sip_source: str | None = None) -> bytes | None:
        return EARLY_SDP

    async def play(self, call_id: str, leg: str, audio: Audio, *,
                   loop: bool = False) -> Playback:
        if self.fail_play:
            raise MediaError("no media for the call")
        self.played.append((call_id, leg, audio))
        playback = Playback(call_id, "a", asyncio.get_running_loop().create_future())
        if self.end is not None:
            playback.ended.set_result(self.end)
        self.playing[(call_id, leg)] = playback
        return playback

    async def stop_play(self, call_id: str, leg: str) -> None:
        self.stopped.append((call_id, leg))
        playback = self.playing.pop((call_id, leg), None)
        if playback is not None and not playback.ended.done():
            playback.ended.set_result(PlayEnd.STOPPED)

    async def collect_digits(self, call_id: str, leg: str, on_digit: DigitCallback, *,
                             inband: bool = False) -> None:
        self.on_digit = on_digit

    async def stop_digits(self, call_id: str, leg: str) -> None:
        self.on_digit = None


def finals(h: ShellHarness) -> list[int]:
    return [m.status for m in h.take(A_ADDR) if isinstance(m, Response)
            and m.cseq.method == "INVITE" and m.status >= 200]


def tone_file(tmp_path: Path, seconds: float = 0.1) -> Path:
    path = tmp_path / "prompt.wav"
    path.write_bytes(encode_wav(pcm(sine(1000.0, seconds))))
    return path


def shell(tmp_path: Path, backend: Backend, *overrides: str) -> ShellHarness:
    return ShellHarness(config=harness_config(overrides=[
        f"announcements.unbound={tone_file(tmp_path)}", *overrides]), media=backend)


def invite_unbound(tmp_path: Path, backend: Backend) -> ShellHarness:
    """A caller's INVITE to an unbound X through the shell, run until nothing is left."""
    async def flow() -> ShellHarness:
        h = shell(tmp_path, backend)
        h.deliver(a_invite(), A_ADDR)
        await h.idle()
        return h
    return asyncio.run(flow())


def test_the_shell_plays_the_configured_file_and_the_404_follows_its_end(
        tmp_path: Path) -> None:
    backend = Backend()
    h = invite_unbound(tmp_path, backend)
    [(_, leg, audio)] = backend.played
    assert leg == "a" and audio.pcm == pcm(sine(1000.0, 0.1))
    assert finals(h) == [404]
    assert h.engine.active_calls == 0 and backend.sync.deleted


def test_a_prompt_whose_end_is_never_reported_is_stopped_after_its_length(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "PROMPT_GRACE_S", 0.05)
    backend = Backend(end=None)
    h = invite_unbound(tmp_path, backend)
    assert finals(h) == [404]
    assert len(backend.stopped) == 1


def test_a_backend_that_cannot_play_ends_the_prompt_and_the_attempt_goes_on(
        tmp_path: Path) -> None:
    backend = Backend()
    backend.fail_play = True
    h = invite_unbound(tmp_path, backend)
    assert finals(h) == [404]
    assert h.engine.active_calls == 0


def test_the_backend_s_keys_reach_the_core_and_the_extension_routes(tmp_path: Path) -> None:
    backend = Backend(end=None)             # the prompt plays on: the first key stops it

    async def flow() -> ShellHarness:
        h = ShellHarness(config=harness_config(overrides=[
            f"announcements.ext_prompt={tone_file(tmp_path, 5.0)}"]), media=backend)
        h.store.create(mode="axe", tenant="demo", a=A_NUM, x=X, ext="0042", ttl=0)
        h.deliver(a_invite(caller="13700000003"), A_ADDR)
        while backend.on_digit is None or not backend.played:
            await asyncio.sleep(0.01)
        call_id = backend.played[0][0]
        for key in "0042":
            backend.on_digit(call_id, "a", key)   # as the backend does: from the loop
        await asyncio.sleep(0)
        await h.idle()
        return h

    h = asyncio.run(flow())
    assert backend.stopped == [(backend.played[0][0], "a")]     # barge-in
    assert backend.on_digit is None                            # keys no longer collected
    invites = [m for m in h.take(B_ADDR) if not isinstance(m, Response)]
    assert [m.method for m in invites] == ["INVITE"]
    assert invites[0].uri.startswith(f"sip:{A_NUM}@")

