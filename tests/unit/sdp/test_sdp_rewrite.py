"""The model rewrite (the call path's test oracle): addresses, ports, origin, what is dropped
and what is kept; endpoints, direction (hold) and the per-leg origin counter. The call path
(sdp/scan.py) is held to the same answers by test_sdp_oracle.py."""

from __future__ import annotations

import ipaddress
import re

import pytest
import sdp_samples

from sipmask.sdp.endpoints import Direction, MediaEndpoint
from sipmask.sdp.errors import SdpError
from sipmask.sdp.model import Attribute, Connection, Line, Origin, SessionDescription
from sipmask.sdp.origin import OriginCounter, new_session_id
from sipmask.sdp.parser import parse
from sipmask.sdp.rewrite import (
    check_relayable,
    direction,
    is_on_hold,
    media_endpoints,
    origin_of,
    relay_ports_needed,
    rewrite_for_relay,
    stamp,
    uses_ice,
)

RELAY = "192.0.2.200"
RELAY6 = "2001:db8::200"
ORIGIN = Origin.for_address(RELAY, 555000111, 555000111)
CODEC_ATTRIBUTES = {"rtpmap", "fmtp", "ptime", "sendrecv", "sendonly", "recvonly", "inactive"}

_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])[0-9a-fA-F]*:[0-9a-fA-F:]*:[0-9a-fA-F]+(?![\w:])")


def relay_ports(sd: SessionDescription, first: int = 30000) -> list[int]:
    return [first + 2 * i for i in range(relay_ports_needed(sd))]


def rewrite(body: bytes, address: str = RELAY) -> tuple[SessionDescription, bytes]:
    sd = parse(body)
    out = rewrite_for_relay(sd, address=address, ports=relay_ports(sd), origin=ORIGIN)
    return out, out.to_bytes()


def addresses_in(text: str) -> set[str]:
    found = set(_IPV4.findall(text)) | set(_IPV6.findall(text))
    return {str(ipaddress.ip_address(a)) for a in found if _is_address(a)}


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def tokens(data: bytes) -> set[str]:
    return set(re.split(r"[\s:/=]+", data.decode()))


@pytest.mark.parametrize("name", sorted(sdp_samples.ALL))
def test_no_input_address_port_or_origin_survives(name: str) -> None:
    body = sdp_samples.ALL[name]
    sd = parse(body)
    _, out = rewrite(body)
    held = {"0.0.0.0"} if name == "hold" else set()
    leaked = (addresses_in(body.decode()) - held) & addresses_in(out.decode())
    assert not leaked
    ports = {str(m.port) for m in sd.media if m.port >= 1024}
    ports |= {a.value.split()[0] for m in sd.media for a in m.attributes
              if a.key == "rtcp" and a.value and int(a.value.split()[0]) >= 1024}
    assert not ports & tokens(out)
    if sd.origin.username != "-":
        assert sd.origin.username.encode() not in out
    assert sd.origin.sess_id.encode() not in out
    assert out.startswith(b"v=0\r\no=- 555000111 555000111 IN IP4 192.0.2.200\r\ns=-\r\n")


@pytest.mark.parametrize("name", sorted(sdp_samples.ALL))
def test_ice_ssrc_msid_and_vendor_lines_are_gone(name: str) -> None:
    _, out = rewrite(sdp_samples.ALL[name])
    for banned in (b"a=candidate", b"a=ice-", b"a=end-of-candidates", b"a=ssrc",
                   b"a=msid", b"a=tool", b"a=X-", b"a=path", b"a=label", b"BUNDLE",
                   b"\r\ni=", b"\r\nu=", b"\r\ne=", b"\r\np=", b"\r\nk=", b"cname"):
        assert banned not in out, banned


@pytest.mark.parametrize("name", sorted(sdp_samples.ALL))
def test_every_address_points_at_the_relay(name: str) -> None:
    sd = parse(sdp_samples.ALL[name])
    out, data = rewrite(sdp_samples.ALL[name])
    assert parse(data) == out
    hold_kept = {Connection("IN", "IP4", "0.0.0.0")} if name == "hold" else set()
    connections = [line for line in out.lines if isinstance(line, Connection)]
    connections += [c for m in out.media for c in m.connections]
    assert set(connections) <= {Connection("IN", "IP4", RELAY), *hold_kept}
    assert out.connection is not None
    active = [m for m in out.media if m.port != 0]
    assert [m.port for m in active] == relay_ports(sd)
    for media in active:
        rtcp = media.attribute("rtcp")
        assert rtcp is None or rtcp.value == f"{media.port + 1} IN IP4 {RELAY}"
    assert out.session_name == "-"
    assert out.origin == ORIGIN


@pytest.mark.parametrize("name", sorted(sdp_samples.ALL))
def test_codec_lists_and_their_lines_are_kept_in_order(name: str) -> None:
    sd = parse(sdp_samples.ALL[name])
    out, _ = rewrite(sdp_samples.ALL[name])
    assert len(out.media) == len(sd.media)
    for before, after in zip(sd.media, out.media, strict=True):
        assert (after.kind, after.proto, after.formats) == (before.kind, before.proto,
                                                            before.formats)
        assert [a for a in after.attributes if a.key in CODEC_ATTRIBUTES] == [
            a for a in before.attributes if a.key in CODEC_ATTRIBUTES]
        assert after.bandwidths == before.bandwidths


@pytest.mark.parametrize("name", sorted(sdp_samples.ALL))
def test_the_input_description_is_not_changed(name: str) -> None:
    sd = parse(sdp_samples.ALL[name])
    rewrite_for_relay(sd, address=RELAY, ports=relay_ports(sd), origin=ORIGIN)
    assert sd.to_bytes() == sdp_samples.ALL[name]


def test_carrier_offer_exactly() -> None:
    _, out = rewrite(sdp_samples.CARRIER)
    assert out == (b"v=0\r\no=- 555000111 555000111 IN IP4 192.0.2.200\r\ns=-\r\n"
                   b"c=IN IP4 192.0.2.200\r\nt=0 0\r\nm=audio 30000 RTP/AVP 8 0 18 101\r\n"
                   b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:18 G729/8000\r\n"
                   b"a=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\n"
                   b"a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n")


def test_pjsip_offer_keeps_bandwidth_and_moves_rtcp() -> None:
    out, data = rewrite(sdp_samples.PJSIP_ICE)
    assert b"b=AS:84\r\n" in data
    [audio] = out.media
    assert audio.connection == Connection("IN", "IP4", RELAY)
    assert audio.attribute("rtcp") == Attribute("rtcp", f"30001 IN IP4 {RELAY}")
    assert [a.key for a in audio.attributes] == [
        "rtcp", "sendrecv", *["rtpmap", "fmtp", "rtpmap", "rtpmap", "rtpmap"],
        *["rtpmap", "fmtp", "rtpmap", "fmtp"]]


def test_webrtc_offer_keeps_keying_and_drops_identities() -> None:
    out, data = rewrite(sdp_samples.WEBRTC)
    for kept in (b"a=fingerprint:sha-256 7B:8B", b"a=setup:actpass", b"a=mid:0",
                 b"a=rtcp-mux", b"a=rtcp-fb:111 transport-cc",
                 b"a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                 b"a=extmap-allow-mixed"):
        assert kept in data, kept
    for gone in (b"alice", b"example.com", b"3f2a9c1e", b"WMS", b"group:"):
        assert gone not in data, gone
    assert [m.port for m in out.media] == [30000, 30002]


def test_chatty_session_lines_are_gone_but_bandwidth_and_time_stay() -> None:
    out, data = rewrite(sdp_samples.CHATTY)
    for gone in (b"Alice", b"alice", b"example.com", b"138", b"4711", b"keys", b"Linphone",
                 b"msrp", b"prompt"):
        assert gone not in data, gone
    assert [line for line in out.lines if isinstance(line, Line)] == [Line("t", "0 0")]
    assert b"b=CT:128\r\n" in data


def test_ipv6_peer_to_ipv4_relay_and_back() -> None:
    out, data = rewrite(sdp_samples.IPV6)
    assert b"IP6" not in data
    assert out.media[0].attribute("rtcp") == Attribute("rtcp", f"30001 IN IP4 {RELAY}")
    out6, data6 = rewrite(sdp_samples.CARRIER, address=RELAY6)
    assert out6.connection == Connection("IN", "IP6", RELAY6)
    assert b"10.1.2.3" not in data6


def test_rtcp_attribute_for_ipv6_relay_names_ip6() -> None:
    sd = parse(sdp_samples.IPV6)
    out = rewrite_for_relay(sd, address=RELAY6, ports=[40000],
                            origin=Origin.for_address(RELAY6, 1, 1))
    assert out.media[0].attribute("rtcp") == Attribute("rtcp", f"40001 IN IP6 {RELAY6}")
    assert out.origin.addrtype == "IP6"


def test_hold_keeps_zero_address_and_sendonly() -> None:
    out, data = rewrite(sdp_samples.HOLD)
    assert out.connection == Connection("IN", "IP4", "0.0.0.0")
    assert b"a=sendonly\r\n" in data
    assert b"198.51.100.7" not in data
    assert out.media[0].port == 30000
    assert is_on_hold(out)


def test_media_level_hold_address_is_kept_and_session_address_moved() -> None:
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\n"
               b"t=0 0\r\nm=audio 49170 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n")
    out = rewrite_for_relay(sd, address=RELAY, ports=[30000], origin=ORIGIN)
    assert out.connection == Connection("IN", "IP4", RELAY)
    assert out.media[0].connection == Connection("IN", "IP4", "0.0.0.0")


def test_ice_placeholder_zero_address_is_not_hold_and_is_rewritten() -> None:
    # RFC 8840 §4.2: a trickle-ICE offer with no candidate yet says port 9, c=0.0.0.0.
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
               b"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
               b"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\na=sendrecv\r\n")
    assert uses_ice(sd)
    assert direction(sd) is Direction.SENDRECV
    out = rewrite_for_relay(sd, address=RELAY, ports=[30000], origin=ORIGIN)
    assert out.media[0].connection == Connection("IN", "IP4", RELAY)
    assert not uses_ice(out)


def test_rejected_stream_stays_at_port_zero_without_address_or_rtcp() -> None:
    sd = parse(sdp_samples.AUDIO_AND_REJECTED_VIDEO)
    assert relay_ports_needed(sd) == 1
    out = rewrite_for_relay(sd, address=RELAY, ports=[30000], origin=ORIGIN)
    audio, video = out.media
    assert audio.port == 30000
    assert audio.attribute("rtcp") == Attribute("rtcp", f"30001 IN IP4 {RELAY}")
    assert (video.port, video.formats) == (0, ["31"])
    assert video.connections == []
    assert video.attribute("rtcp") is None
    assert video.attribute("rtpmap") == Attribute("rtpmap", "31 H261/90000")


@pytest.mark.parametrize("ports", [[], [30000, 30002]])
def test_wrong_number_of_ports_is_a_caller_error(ports: list[int]) -> None:
    sd = parse(sdp_samples.AUDIO_AND_REJECTED_VIDEO)
    with pytest.raises(ValueError, match="1 relay ports needed"):
        rewrite_for_relay(sd, address=RELAY, ports=ports, origin=ORIGIN)


@pytest.mark.parametrize(("body", "reason"), [
    (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
     b"m=video 49170/2 RTP/AVP 31\r\n", "several ports"),
    (b"v=0\r\no=- 1 1 ATM NSAP 47.0091\r\ns=-\r\nc=ATM NSAP 47.0091\r\nt=0 0\r\n"
     b"m=audio 49170 RTP/AVP 0\r\n", "network type"),
])
def test_streams_the_relay_cannot_carry_are_488(body: bytes, reason: str) -> None:
    sd = parse(body)
    with pytest.raises(SdpError) as caught:
        rewrite_for_relay(sd, address=RELAY, ports=relay_ports(sd), origin=ORIGIN)
    assert caught.value.status == 488
    assert reason in caught.value.reason


def test_missing_time_line_is_added() -> None:
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
               b"m=audio 49170 RTP/AVP 0\r\n")
    out = rewrite_for_relay(sd, address=RELAY, ports=[30000], origin=ORIGIN)
    assert b"\r\nt=0 0\r\nm=audio" in out.to_bytes()


def test_repeat_and_zone_lines_stay_with_their_time() -> None:
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
               b"t=3034423619 3042462419\r\nr=7d 1h 0 25h\r\nz=2882844526 -1h\r\n")
    out = rewrite_for_relay(sd, address=RELAY, ports=[], origin=ORIGIN).to_bytes()
    assert out.endswith(b"t=3034423619 3042462419\r\nr=7d 1h 0 25h\r\nz=2882844526 -1h\r\n")


def test_non_bundle_groups_are_kept() -> None:
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
               b"a=group:LS 1 2\r\na=group:bundle 1 2\r\n")
    out = rewrite_for_relay(sd, address=RELAY, ports=[], origin=ORIGIN)
    assert out.attributes == [Attribute("group", "LS 1 2")]


def test_media_endpoints_prefer_media_level_address() -> None:
    assert media_endpoints(parse(sdp_samples.CARRIER)) == [MediaEndpoint("10.1.2.3", 31274)]
    assert media_endpoints(parse(sdp_samples.AUDIO_AND_REJECTED_VIDEO)) == [
        MediaEndpoint("198.51.100.20", 49170, rtcp_port=49171), None]
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
               b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.9\r\nm=audio 4002 RTP/AVP 0\r\n"
               b"m=audio 4004 RTP/AVP 0\r\nc=IN IP4 233.252.0.1/127\r\n")
    assert media_endpoints(sd) == [MediaEndpoint("192.0.2.9", 4000),
                                   MediaEndpoint("192.0.2.1", 4002),
                                   MediaEndpoint("233.252.0.1", 4004)]
    assert media_endpoints(parse(sdp_samples.IPV6)) == [
        MediaEndpoint("2001:db8::2", 49172, rtcp_port=49173, rtcp_host="2001:db8::2")]


def test_media_endpoints_read_rtcp_and_the_srtp_profiles() -> None:
    """RFC 3605 a=rtcp (its port, and its address when it names one); a value that is not
    a port is ignored. SAVP and SAVPF, plain or under DTLS (RFC 5764), are SRTP."""
    sd = parse(HEAD.replace(b"t=0 0", b"c=IN IP4 192.0.2.1\r\nt=0 0") +
               b"m=audio 4000 RTP/SAVP 0\r\na=rtcp:5001 IN IP4 192.0.2.7\r\n"
               b"m=audio 4002 UDP/TLS/RTP/SAVPF 0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
               b"m=audio 4004 RTP/AVPF 0\r\na=rtcp:x\r\n"
               b"m=audio 4006 RTP/AVP 0\r\na=RTCP:5007\r\na=rtcp:5009\r\n")
    assert media_endpoints(sd) == [
        MediaEndpoint("192.0.2.1", 4000, 5001, "192.0.2.7", secure=True),
        MediaEndpoint("192.0.2.1", 4002, 9, "0.0.0.0", secure=True),
        MediaEndpoint("192.0.2.1", 4004),
        MediaEndpoint("192.0.2.1", 4006, 5007)]


def test_check_relayable_refuses_what_the_relay_cannot_carry() -> None:
    body = HEAD.replace(b"t=0 0", b"c=IN IP4 192.0.2.1\r\nt=0 0") + b"m=audio 4000 RTP/AVP 0\r\n"
    check_relayable(parse(body))
    check_relayable(parse(body + b"m=video 0/2 RTP/AVP 31\r\n"))       # disabled: no ports
    with pytest.raises(SdpError, match="several ports"):
        check_relayable(parse(body.replace(b"4000", b"4000/2")))
    with pytest.raises(SdpError, match="not IN"):
        check_relayable(parse(body.replace(b"c=IN", b"c=ATM")))


def test_media_endpoints_refuse_a_stream_without_address() -> None:
    sd = parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n"
               b"m=audio 4000 RTP/AVP 0\r\n")
    with pytest.raises(SdpError, match="m= line 2 has no c="):
        media_endpoints(sd)


HEAD = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"


@pytest.mark.parametrize(("session", "media", "expected"), [
    (b"c=IN IP4 192.0.2.1\r\n", b"", Direction.SENDRECV),
    (b"c=IN IP4 192.0.2.1\r\n", b"a=sendonly\r\n", Direction.SENDONLY),
    (b"c=IN IP4 192.0.2.1\r\n", b"a=recvonly\r\n", Direction.RECVONLY),
    (b"c=IN IP4 192.0.2.1\r\n", b"a=inactive\r\n", Direction.INACTIVE),
    (b"c=IN IP4 192.0.2.1\r\na=sendonly\r\n", b"", Direction.SENDONLY),
    (b"c=IN IP4 192.0.2.1\r\na=sendonly\r\n", b"a=sendrecv\r\n", Direction.SENDRECV),
    (b"c=IN IP4 0.0.0.0\r\n", b"", Direction.SENDONLY),
    (b"c=IN IP4 0.0.0.0\r\n", b"a=recvonly\r\n", Direction.INACTIVE),
    (b"c=IN IP4 0.0.0.0\r\n", b"c=IN IP4 192.0.2.1\r\n", Direction.SENDRECV),
    (b"c=IN IP4 192.0.2.1\r\n", b"c=IN IP6 ::\r\n", Direction.SENDONLY),
    (b"c=IN IP4 192.0.2.1\r\n", b"a=sendonly:x\r\n", Direction.SENDRECV),
])
def test_direction_of_one_stream(session: bytes, media: bytes, expected: Direction) -> None:
    sd = parse(HEAD.replace(b"t=0 0\r\n", session + b"t=0 0\r\n")
               + b"m=audio 4000 RTP/AVP 0\r\n" + media)
    assert direction(sd.media[0], sd) is expected
    assert direction(sd) is expected
    assert is_on_hold(sd) is (not expected.receives)


def test_direction_of_a_whole_description() -> None:
    sd = parse(HEAD + b"c=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n"
               b"m=video 4002 RTP/AVP 31\r\na=recvonly\r\nm=video 0 RTP/AVP 31\r\n")
    assert [direction(m, sd) for m in sd.media] == [
        Direction.SENDONLY, Direction.RECVONLY, Direction.INACTIVE]
    assert direction(sd) is Direction.SENDRECV
    assert not is_on_hold(sd)
    assert direction(parse(HEAD)) is Direction.INACTIVE
    assert direction(parse(sdp_samples.HOLD).media[0]) is Direction.SENDONLY


def test_origin_counter_raises_version_only_when_the_body_changes() -> None:
    counter = OriginCounter(address=RELAY, sess_id=4242)
    carrier = parse(sdp_samples.CARRIER)
    first = stamp(counter, rewrite_for_relay(carrier, address=RELAY, ports=[30000],
                                            origin=origin_of(counter)))
    assert first.origin == Origin("-", "4242", "4242", "IN", "IP4", RELAY)
    again = stamp(counter, rewrite_for_relay(carrier, address=RELAY, ports=[30000],
                                            origin=origin_of(counter)))
    assert again.origin.sess_version == "4242"
    held = stamp(counter, rewrite_for_relay(parse(sdp_samples.HOLD), address=RELAY,
                                           ports=[30000], origin=origin_of(counter)))
    assert (held.origin.sess_id, held.origin.sess_version) == ("4242", "4243")
    resumed = stamp(counter, rewrite_for_relay(carrier, address=RELAY, ports=[30000],
                                              origin=origin_of(counter)))
    assert resumed.origin.sess_version == "4244"
    assert origin_of(counter).sess_version == "4244"


def test_origin_counter_returns_a_copy_and_takes_a_start_version() -> None:
    counter = OriginCounter(address=RELAY6, sess_id=7, sess_version=1, username="sipmask")
    sd = parse(sdp_samples.CARRIER)
    out = stamp(counter, sd)
    assert counter.value() == f"sipmask 7 1 IN IP6 {RELAY6}"
    assert out.origin == Origin("sipmask", "7", "1", "IN", "IP6", RELAY6)
    assert sd.to_bytes() == sdp_samples.CARRIER
    out.media[0].formats.append("99")
    out.lines.append(Attribute("recvonly"))
    assert sd.to_bytes() == sdp_samples.CARRIER


def test_new_session_ids_are_numeric_fresh_and_below_2_to_31() -> None:
    ids = {new_session_id() for _ in range(200)}
    assert len(ids) > 190
    assert all(2**20 <= i < 2**31 for i in ids)
