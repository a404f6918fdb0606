"""sipmask's own early-media answer (sipmask/media/early_media.py, RFC 3264 §6)."""

from __future__ import annotations

import pytest

from sipmask.media.early_media import OfferedStream, answer_sdp, offered_streams, plan
from sipmask.media.wav import G711
from sipmask.sdp.origin import OriginCounter
from sipmask.sdp.scan import media_endpoints, scan

OFFER = (b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=call\r\n"
         b"c=IN IP4 192.0.2.10\r\nt=0 0\r\n"
         b"m=audio 49170 RTP/AVP 18 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\n"
         b"a=fmtp:96 0-16\r\na=sendrecv\r\n"
         b"m=video 51372 RTP/AVP 99\r\na=rtpmap:99 H264/90000\r\n")


def answer_for(offer: bytes, port: int = 30000) -> tuple[bytes, OriginCounter] | None:
    streams = offered_streams(scan(offer))
    chosen = plan(streams)
    if chosen is None:
        return None
    origin = OriginCounter(address="198.51.100.7", sess_id=123456)
    return answer_sdp(streams, chosen, port=port, origin=origin), origin


def test_the_answer_names_only_the_relay_and_offers_the_callers_events() -> None:
    result = answer_for(OFFER)
    assert result is not None
    body, _ = result
    assert body == (b"v=0\r\no=- 123456 123456 IN IP4 198.51.100.7\r\ns=-\r\n"
                    b"c=IN IP4 198.51.100.7\r\nt=0 0\r\n"
                    b"m=audio 30000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\n"
                    b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n"
                    b"a=ptime:20\r\na=sendrecv\r\n"
                    b"m=video 0 RTP/AVP 99\r\n")
    assert b"192.0.2.10" not in body and b"alice" not in body
    # sipmask's own SDP reader accepts it and finds the relay in it.
    endpoints = media_endpoints(scan(body))
    assert endpoints[0] is not None and endpoints[0].port == 30000
    assert endpoints[1] is None


def test_without_telephone_event_in_the_offer_none_is_answered() -> None:
    offer = OFFER.replace(b" 96\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-16", b"")
    result = answer_for(offer)
    assert result is not None
    assert b"telephone-event" not in result[0]
    assert b"m=audio 30000 RTP/AVP 8\r\n" in result[0]


def test_the_origin_version_moves_only_when_the_answer_changes() -> None:
    streams = offered_streams(scan(OFFER))
    chosen = plan(streams)
    assert chosen is not None
    origin = OriginCounter(address="198.51.100.7", sess_id=1000)
    first = answer_sdp(streams, chosen, port=30000, origin=origin)
    assert answer_sdp(streams, chosen, port=30000, origin=origin) == first
    assert b"o=- 1000 1001 " in answer_sdp(streams, chosen, port=30002, origin=origin)


@pytest.mark.parametrize(("offer", "why"), [
    (OFFER.replace(b"18 8 0 96", b"18 96"), "no G.711"),
    (OFFER.replace(b"RTP/AVP 18", b"RTP/SAVP 18"), "SRTP"),
    (OFFER.replace(b"m=audio 49170", b"m=audio 0"), "refused stream"),
])
def test_no_early_media_without_a_plain_g711_audio_stream(offer: bytes, why: str) -> None:
    assert answer_for(offer) is None, why


def test_the_direction_mirrors_the_offer() -> None:
    sendonly = plan(offered_streams(scan(OFFER.replace(b"a=sendrecv", b"a=sendonly"))))
    recvonly = plan(offered_streams(scan(OFFER.replace(b"a=sendrecv", b"a=recvonly"))))
    assert sendonly is not None and recvonly is not None
    assert (sendonly.direction, sendonly.plays) == ("recvonly", False)
    assert (recvonly.direction, recvonly.plays) == ("sendonly", True)


def test_plan_takes_the_first_usable_audio_stream() -> None:
    streams = [OfferedStream("audio", 4000, "RTP/AVP", ("18",), ("18 G729/8000",)),
               OfferedStream("audio", 4002, "RTP/AVPF", ("0", "101"),
                             ("101 telephone-event/8000",))]
    chosen = plan(streams)
    assert chosen is not None
    assert (chosen.index, chosen.codec, chosen.payload_type, chosen.event_payload_type) == \
        (1, G711.PCMU, 0, 101)
