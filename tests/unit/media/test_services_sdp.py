"""media/services.leg_media: which relay line and codec a leg's prompts, keys and recording
use, read from its SDP and, once known, the other leg's (pure)."""

from __future__ import annotations

from sipmask.media.services import leg_media
from sipmask.media.wav import G711
from sipmask.sdp.scan import Scan, scan


def body(*media: str, session: str = "") -> Scan:
    head = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    return scan((head + session + "".join(media)).encode())


AUDIO = ("m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
         "a=rtpmap:101 telephone-event/8000\r\n")


def test_the_first_g711_of_the_leg_without_the_other_side() -> None:
    found = leg_media(body(AUDIO))
    assert found is not None
    assert found.line == 0
    assert found.prompt == (G711.PCMU, 0)
    assert found.codecs == {0: G711.PCMU, 8: G711.PCMA}
    assert found.events == {101}


def test_the_negotiated_codec_once_the_answer_is_known() -> None:
    answer = body("m=audio 5000 RTP/AVP 8 96\r\na=rtpmap:96 telephone-event/8000\r\n")
    found = leg_media(body(AUDIO), answer)
    assert found is not None
    assert found.prompt == (G711.PCMA, 8)
    assert found.events == {101, 96}        # the sender numbers as the receiver asked


def test_no_g711_in_common_keeps_the_legs_own_first() -> None:
    answer = body("m=audio 5000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n")
    found = leg_media(body(AUDIO), answer)
    assert found is not None and found.prompt == (G711.PCMU, 0)


def test_a_dynamic_payload_type_for_pcmu() -> None:
    found = leg_media(body("m=audio 4000 RTP/AVP 97\r\na=rtpmap:97 PCMU/8000\r\n"))
    assert found is not None and found.prompt == (G711.PCMU, 97)
    assert found.codecs == {97: G711.PCMU} and found.events == frozenset()


def test_the_relay_line_counts_only_lines_with_a_port() -> None:
    video = "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    refused = "m=video 0 RTP/AVP 96\r\n"
    first = leg_media(body(video, AUDIO))
    second = leg_media(body(refused, AUDIO))
    assert first is not None and first.line == 1
    assert second is not None and second.line == 0


def test_srtp_or_non_g711_audio_is_skipped_for_the_next_stream() -> None:
    srtp = "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"
    g729 = "m=audio 4002 RTP/AVP 18\r\n"
    found = leg_media(body(srtp, g729, AUDIO))
    assert found is not None and found.line == 2
    assert leg_media(body(srtp, g729)) is None


def test_a_leg_that_does_not_receive_gets_no_prompt_but_keeps_its_codecs() -> None:
    for direction in ("sendonly", "inactive"):
        found = leg_media(body(AUDIO + f"a={direction}\r\n"))
        assert found is not None and found.prompt is None
        assert found.codecs == {0: G711.PCMU, 8: G711.PCMA}
    held = leg_media(body(AUDIO, session="a=sendonly\r\n"))
    assert held is not None and held.prompt is None
