"""StreamFramer: cutting a TCP byte stream into messages (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmask.errors import MessageTooLarge, ParseError
from sipmask.sip.parser import StreamFramer, parse_message

INVITE = (Path(__file__).resolve().parents[2] / "corpus" / "trunk" /
          "invite_sdp.sip").read_bytes()
# A body holding a blank line, so only Content-Length can say where the message ends.
MESSAGE = (b"MESSAGE sip:700100000000001@127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-m1\r\n"
           b"From: <sip:13800000001@127.0.0.1>;tag=f1\r\n"
           b"To: <sip:700100000000001@127.0.0.1>\r\n"
           b"Call-ID: m1@127.0.0.1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
           b"Content-Type: text/plain\r\nl: 13\r\n\r\n"
           b"a\r\n\r\nb\r\n\r\nc\r\n")
STREAM = INVITE + b"\r\n\r\n" + MESSAGE + b"\r\n" + INVITE


def test_whole_stream_in_one_chunk() -> None:
    framer = StreamFramer()
    assert framer.feed(STREAM) == [INVITE, MESSAGE, INVITE]
    assert framer.buffered == 0
    assert framer.keepalives == 3
    assert framer.take_pings() == 1 and framer.take_pings() == 0


def test_split_at_every_byte_boundary() -> None:
    for cut in range(1, len(STREAM)):
        framer = StreamFramer()
        out = framer.feed(STREAM[:cut]) + framer.feed(STREAM[cut:])
        assert out == [INVITE, MESSAGE, INVITE], cut
        assert framer.buffered == 0


def test_one_byte_at_a_time() -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        out += framer.feed(STREAM[i:i + 1])
    assert out == [INVITE, MESSAGE, INVITE]
    assert framer.keepalives == 3 and framer.take_pings() == 1
    for message in out:
        assert parse_message(message, stream=True).to_bytes() == message


def test_keepalive_pings_and_pongs() -> None:
    # RFC 5626 §4.4.1: CRLFCRLF is a ping (answered with CRLF), a lone CRLF a pong.
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == []
    assert framer.take_pings() == 2
    assert framer.feed(MESSAGE) == [MESSAGE]
    assert framer.buffered == 0


def test_partial_message_waits() -> None:
    framer = StreamFramer()
    assert framer.feed(MESSAGE[:-1]) == []
    assert framer.buffered == len(MESSAGE) - 1
    assert framer.feed(MESSAGE[-1:]) == [MESSAGE]


def test_missing_content_length_is_fatal() -> None:
    data = MESSAGE.replace(b"l: 13\r\n", b"")
    with pytest.raises(ParseError, match="Missing Content-Length"):
        StreamFramer().feed(data)


@pytest.mark.parametrize("value", [b"-1", b"x", b"99999999999"])
def test_bad_content_length_is_fatal(value: bytes) -> None:
    with pytest.raises(ParseError, match="Content-Length"):
        StreamFramer().feed(MESSAGE.replace(b"l: 13", b"l: " + value))


def test_conflicting_content_lengths_are_fatal() -> None:
    with pytest.raises(ParseError, match="Conflicting"):
        StreamFramer().feed(MESSAGE.replace(b"l: 13\r\n", b"l: 13\r\nContent-Length: 3\r\n"))


def test_oversized_header_block() -> None:
    framer = StreamFramer(max_bytes=200)
    with pytest.raises(MessageTooLarge):
        framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"p" * 300)


def test_oversized_message_is_refused_before_its_body_arrives() -> None:
    framer = StreamFramer(max_bytes=len(MESSAGE) - 1)
    with pytest.raises(MessageTooLarge) as err:
        framer.feed(MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4])
    assert err.value.status == 513
    assert StreamFramer(max_bytes=len(MESSAGE)).feed(MESSAGE) == [MESSAGE]


def test_long_header_block_split_in_small_chunks_is_found() -> None:
    # The search for the blank line resumes where it stopped, including across a cut
    # inside the CRLFCRLF itself.
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(INVITE), 3):
        out += framer.feed(INVITE[i:i + 3])
    assert out == [INVITE]
