"""The SDP that crosses through the real rtpengine (Debian rtpengine-daemon 10.5, userspace)
obeys the same privacy rule as the embedded relay's rewrite (sdp/privacy.py): rtpengine
passes every line it does not own through, so RtpengineBackend scrubs what it returns."""

from __future__ import annotations

import asyncio
import re

import pytest

from sipmask.config.schema import MediaConfig, RtpengineConfig
from sipmask.media.rtpengine import RtpengineBackend
from tests.support.net import LOOPBACK
from tests.support.rtpengine import Daemon

pytestmark = pytest.mark.rtpengine

# A phone that says too much: its number, mail, tool, vendor lines with addresses, ICE,
# WebRTC ids, a session-level a=rtcp naming its own address (RFC 3605 puts a=rtcp at media
# level only; rtpengine passes this one through untouched).
CHATTY = (
    "v=0\r\no=alice 2890844526 2890844526 IN IP4 198.51.100.7\r\ns=Talk to Bob\r\n"
    "i=call from 13800000001\r\nu=http://alice.example/\r\ne=alice@example.com\r\n"
    "p=+8613800000001\r\nc=IN IP4 {host}\r\nb=AS:64\r\nt=0 0\r\nk=prompt\r\n"
    "a=tool:phone 1.2\r\na=X-nat:10.1.2.3\r\na=msid-semantic: WMS abc\r\n"
    "a=rtcp:5555 IN IP4 198.51.100.9\r\n"
    "m=audio {port} RTP/AVP 0 101\r\ni=media info\r\nb=TIAS:64000\r\nk=clear:x\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
    "a=ptime:20\r\na=sendrecv\r\na=ssrc:305419896 cname:alice@host.example\r\n"
    "a=ssrc:305419896 label:x\r\na=ssrc-group:FID 1 2\r\na=msid:abc def\r\na=label:1\r\n"
    "a=path:msrp://a.example:1/x;tcp\r\na=key-mgmt:mikey AQ\r\na=X-vendor:13800000001\r\n"
    "a=bundle-only\r\na=group:BUNDLE 0\r\na=mid:0\r\na=rtcp-mux\r\n"
    "a=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n"
    "a=candidate:1 1 UDP 2130706431 192.0.2.10 {port} typ host\r\na=end-of-candidates\r\n"
    "m=video 0 RTP/AVP 31\r\na=rtpmap:31 H261/90000\r\n")

LEAKS = ("13800000001", "alice", "example", "10.1.2.3", "198.51.100", "192.0.2.10",
         "Talk to Bob", "a=tool", "a=msid", "a=ssrc", "a=label", "a=path", "a=key-mgmt",
         "a=bundle-only", "BUNDLE", "a=ice-", "a=candidate", "a=end-of-candidates", "a=X-",
         "\ni=", "\nu=", "\ne=", "\np=", "\nk=")


def test_offer_and_answer_through_rtpengine_cross_nothing_that_names_a_party(
        daemon: Daemon) -> None:
    config = MediaConfig(backend="rtpengine", timeout_s=60,
                         rtpengine=RtpengineConfig(ng=daemon.ng, timeout_ms=500))

    async def test() -> tuple[str, str]:
        backend = RtpengineBackend(config)
        try:
            offer = await backend.offer("privacy-1", "a",
                                        CHATTY.format(host=LOOPBACK, port=16010).encode())
            answer = await backend.answer(
                "privacy-1", "b",
                CHATTY.format(host=LOOPBACK, port=18010).replace("alice", "bob").encode())
            await backend.delete("privacy-1")
            return offer.decode(), answer.decode()
        finally:
            await backend.close()

    for body in asyncio.run(test()):
        assert [leak for leak in LEAKS if leak in body] == [], body
        assert "\no=- " in body and "\ns=-\r\n" in body
        # What the call needs stays: rtpengine's address and ports, codecs, direction, mux.
        assert f"c=IN IP4 {LOOPBACK}\r\n" in body
        for kept in ("a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000",
                     "a=fmtp:101 0-15", "a=sendrecv", "a=rtcp:", "a=ptime:20", "a=mid:0",
                     "b=AS:64", "b=TIAS:64000", "m=video 0 "):
            assert kept in body, kept
        # The endpoints' ports as whole numbers (the o= sess-id is random digits).
        assert re.search(r"(?<![0-9])(16010|18010)(?![0-9])", body) is None, body
