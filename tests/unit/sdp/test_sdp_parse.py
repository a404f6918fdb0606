"""SDP parse and serialize: fidelity on real bodies, the typed view, and what is refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sdp_samples

import sipmask.sdp
from sipmask.errors import ParseError
from sipmask.sdp import scan
from sipmask.sdp.model import (
    Attribute,
    Bandwidth,
    Connection,
    Line,
    MediaDescription,
    Origin,
    SdpLine,
    SessionDescription,
    in_rfc_order,
)
from sipmask.sdp.parser import parse

CORPUS = Path(__file__).resolve().parents[2] / "corpus"


@pytest.mark.parametrize("name", sorted(sdp_samples.ALL))
def test_real_bodies_round_trip_byte_for_byte(name: str) -> None:
    body = sdp_samples.ALL[name]
    assert parse(body).to_bytes() == body


def test_corpus_invite_body_round_trips() -> None:
    message = (CORPUS / "trunk" / "invite_sdp.sip").read_bytes()
    body = message.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"v=0\r\n")
    assert bytes(parse(body)) == body


def test_bare_lf_is_read_and_written_back_with_crlf() -> None:
    body = sdp_samples.CARRIER
    assert parse(body.replace(b"\r\n", b"\n")).to_bytes() == body


def test_missing_final_crlf_and_trailing_blank_lines_are_tolerated() -> None:
    body = sdp_samples.CARRIER
    assert parse(body[:-2]).to_bytes() == body
    assert parse(body + b"\r\n\r\n").to_bytes() == body


def test_typed_view_of_a_pjsip_offer() -> None:
    sd = parse(sdp_samples.PJSIP_ICE)
    assert sd.version == 0
    assert sd.origin == Origin("-", "3916404426", "3916404426", "IN", "IP4", "192.168.1.23")
    assert sd.session_name == "pjmedia"
    assert sd.connection is None
    assert sd.bandwidths == [Bandwidth("AS", "84")]
    assert sd.attributes == [Attribute("X-nat", "0")]
    assert Line("t", "0 0") in sd.lines
    [audio] = sd.media
    assert (audio.kind, audio.port, audio.port_count, audio.proto) == (
        "audio", 4000, None, "RTP/AVP")
    assert audio.formats == ["96", "9", "8", "0", "101", "102"]
    assert audio.connection == Connection("IN", "IP4", "192.168.1.23")
    assert audio.bandwidths == [Bandwidth("TIAS", "64000")]
    assert audio.attribute("RTCP") == Attribute("rtcp", "4001 IN IP4 192.168.1.23")
    assert audio.attribute("sendrecv") == Attribute("sendrecv", None)
    assert [a.name for a in audio.attributes].count("candidate") == 4
    assert audio.attribute("nope") is None


def test_attribute_order_and_raw_text_are_kept() -> None:
    sd = parse(sdp_samples.WEBRTC)
    raw = [line for line in sdp_samples.WEBRTC.decode().split("\r\n")
           if line.startswith("a=")]
    rendered = [f"a={a.text()}" for a in sd.attributes]
    rendered += [f"a={a.text()}" for media in sd.media for a in media.attributes]
    assert rendered == raw
    # The space after the colon belongs to the value and survives.
    assert sd.attribute("msid-semantic") == Attribute("msid-semantic",
                                                      " WMS 3f2a9c1e-8d7b-4c6a-9e5f-0a1b2c3d4e5f")


def test_ipv6_and_port_count_and_empty_attribute_value() -> None:
    body = (b"v=0\r\no=- 1 1 IN IP6 2001:db8::2\r\ns=-\r\nc=IN IP6 2001:db8::2\r\nt=0 0\r\n"
            b"m=video 49170/2 RTP/AVP 31\r\na=x-empty:\r\n")
    sd = parse(body)
    assert sd.connection == Connection("IN", "IP6", "2001:db8::2")
    assert sd.media[0].port_count == 2
    assert sd.media[0].attributes == [Attribute("x-empty", "")]
    assert sd.to_bytes() == body


def test_multicast_connection_keeps_ttl_and_host_drops_it() -> None:
    connection = parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n"
                       b"c=IN IP4 233.252.0.1/127/3\r\nt=0 0\r\n").connection
    assert connection is not None
    assert connection.address == "233.252.0.1/127/3"
    assert connection.host == "233.252.0.1"


def test_rejected_stream_without_formats_is_kept() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP\r\n"
    sd = parse(body)
    assert sd.media[0].formats == []
    assert sd.to_bytes() == body


def test_unknown_line_types_are_kept_in_place() -> None:
    body = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nx=vendor thing\r\n"
            b"a=recvonly\r\nm=audio 1 RTP/AVP 0\r\ny=more\r\na=ptime:20\r\n")
    sd = parse(body)
    assert Line("x", "vendor thing") in sd.lines
    assert sd.media[0].lines[0] == Line("y", "more")
    assert sd.to_bytes() == body


def test_out_of_order_lines_come_out_in_rfc_4566_order() -> None:
    body = (b"v=0\r\ns=-\r\na=recvonly\r\nt=0 0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
            b"c=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=ptime:20\r\nc=IN IP4 192.0.2.2\r\n")
    assert parse(body).to_bytes() == (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"a=recvonly\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 192.0.2.2\r\na=ptime:20\r\n")


def test_rfc_order_keeps_t_r_groups_and_unknown_lines_behind_their_neighbour() -> None:
    lines: list[SdpLine] = [Line("t", "1 2"), Line("r", "7d 1h 0"), Line("t", "3 4"),
                            Line("x", "y"), Attribute("a"), Connection("IN", "IP4", "192.0.2.1")]
    ranks = {"c": 5, "t": 7, "r": 7, "a": 10}
    assert in_rfc_order(lines, ranks) == [lines[5], *lines[:5]]


def test_non_utf8_bytes_survive_the_round_trip() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=caf\xe9\r\nt=0 0\r\n"
    assert parse(body).to_bytes() == body


def test_built_description_serializes_in_rfc_order() -> None:
    sd = SessionDescription(
        origin=Origin.for_address("2001:db8::1", 7, 8),
        lines=[Line("t", "0 0"), Connection.for_address("192.0.2.1")],
        media=[MediaDescription("audio", 30000, "RTP/AVP", ["0"],
                                lines=[Attribute("sendrecv")])],
    )
    assert sd.to_bytes() == (b"v=0\r\no=- 7 8 IN IP6 2001:db8::1\r\ns=-\r\n"
                             b"c=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n"
                             b"a=sendrecv\r\n")


GOOD_HEAD = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"


@pytest.mark.parametrize(("body", "where"), [
    (b"", "empty body"),
    (b"\r\n\r\n", "empty body"),
    (b"o=- 1 1 IN IP4 192.0.2.1\r\n", "line 1: must begin with v=0"),
    (b"v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "line 1: must begin with v=0"),
    (b"v=0\r\ns=-\r\n", "no o= line"),
    (b"v=0\r\no=- 1 1 IN IP4\r\n", "line 2: o= needs 6 fields"),
    (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\no=- 2 2 IN IP4 192.0.2.1\r\n", "line 3: second o="),
    (GOOD_HEAD + b"s=again\r\n", "line 5: second s="),
    (GOOD_HEAD + b"v=0\r\n", "line 5: v= out of place"),
    (GOOD_HEAD + b"m=audio 1 RTP/AVP 0\r\no=- 1 1 IN IP4 192.0.2.1\r\n",
     "line 6: o= out of place"),
    (GOOD_HEAD + b"c=IN IP4\r\n", "line 5: c= needs 3 fields"),
    (GOOD_HEAD + b"b=128\r\n", "line 5: b= is not"),
    (GOOD_HEAD + b"a=\r\n", "line 5: a= without a name"),
    (GOOD_HEAD + b"a=:x\r\n", "line 5: a= without a name"),
    (GOOD_HEAD + b"audio\r\n", "line 5: not <type>=<value>"),
    (GOOD_HEAD + b"a =x\r\n", "line 5: not <type>=<value>"),
    (GOOD_HEAD + b"a=x\ry\r\n", "line 5: NUL or CR"),
    (GOOD_HEAD + b"a=x\x00y\r\n", "line 5: NUL or CR"),
    (GOOD_HEAD + b"m=audio RTP/AVP\r\n", "line 5: m= needs media, port and proto"),
    (GOOD_HEAD + b"m=audio 65536 RTP/AVP 0\r\n", "line 5: m= port"),
    (GOOD_HEAD + b"m=audio -1 RTP/AVP 0\r\n", "line 5: m= port"),
    (GOOD_HEAD + b"m=audio 1/x RTP/AVP 0\r\n", "line 5: m= port"),
    (GOOD_HEAD + "m=audio ١٢ RTP/AVP 0\r\n".encode(), "line 5: m= port"),
])
def test_malformed_sdp_is_a_400_naming_the_line(body: bytes, where: str) -> None:
    """The call path's reader and the model parser (its oracle) refuse alike."""
    for read in (parse, scan.scan):
        with pytest.raises(ParseError) as caught:
            read(body)
        assert caught.value.status == 400
        assert where in caught.value.reason


def test_error_reasons_never_repeat_the_line_text() -> None:
    for read in (parse, scan.scan):
        with pytest.raises(ParseError) as caught:
            read(GOOD_HEAD + b"c=IN IP4 13800000001 extra\r\n")
        assert "13800000001" not in str(caught.value)


def test_sdp_modules_import_no_io() -> None:
    package = Path(str(sipmask.sdp.__file__)).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {str(node.module).split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert not imported & {"asyncio", "socket", "time", "lmdb", "uvloop"}, path.name


def test_no_sdp_object_is_built_behind_its_constructors_back() -> None:
    """DESIGN.md rule 14: no `cls.__new__` / `object.__new__` in sdp/."""
    package = Path(str(sipmask.sdp.__file__)).parent
    for path in sorted(package.glob("*.py")):
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Attribute) and node.attr == "__new__"]
        assert calls == [], path.name
