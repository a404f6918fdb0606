"""Pure parts of the rtpengine backend: the identity scrub on returned SDP and counters
read from a query reply (shaped as rtpengine 10.5 sends it)."""

from __future__ import annotations

from sipmask.media.rtpengine import call_stats, last_rtp_at, scrub_identity


def test_scrub_blanks_origin_user_and_session_name_and_drops_cname() -> None:
    sdp = (b"v=0\r\no=alice 2890844526 2890844527 IN IP4 127.0.0.1\r\ns=Talk to Bob\r\n"
           b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0\r\n"
           b"a=ssrc:305419896 cname:alice@host.example\r\na=ssrc:305419896 label:x\r\n"
           b"a=rtcp:41001\r\n")
    assert scrub_identity(sdp) == (
        b"v=0\r\no=- 2890844526 2890844527 IN IP4 127.0.0.1\r\ns=-\r\n"
        b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0\r\n"
        b"a=rtcp:41001\r\n")


def test_scrub_keeps_lf_only_bodies_lf_only() -> None:
    assert scrub_identity(b"v=0\no=bob 1 1 IN IP4 10.0.0.1\ns=x\n") == (
        b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\n")


def stream(port: int, packets: int, octets: int) -> dict[str, object]:
    return {"local port": port, "stats": {"packets": packets, "bytes": octets, "errors": 0}}


def test_counters_per_leg_from_a_query_reply() -> None:
    reply = {
        "result": b"ok",
        "tags": {
            "a": {"tag": b"a", "medias": [{"streams": [stream(41010, 7, 1204),
                                                       stream(41011, 1, 52)]}]},
            "b": {"tag": b"b", "medias": [{"streams": [stream(41000, 5, 860)]}]},
            "other": {"medias": [{"streams": [stream(41020, 99, 99)]}]},
        },
    }
    stats = call_stats("c1", reply)  # type: ignore[arg-type]
    assert (stats.a.packets_in, stats.a.bytes_in) == (8, 1256)
    assert (stats.b.packets_in, stats.b.bytes_in) == (5, 860)
    # What a party was sent is what the other side received.
    assert (stats.a.packets_out, stats.b.packets_out) == (5, 8)
    assert stats.packets_relayed == 13


def test_counters_from_a_reply_without_tags_are_zero() -> None:
    stats = call_stats("c1", {"result": b"ok"})
    assert stats.packets_relayed == 0 and stats.a.bytes_in == 0


def test_last_rtp_at_is_the_newest_rtp_stream_and_ignores_rtcp() -> None:
    def timed(kind: bytes, at: int) -> dict[str, object]:
        return {"flags": [kind, b"filled"], "last packet": at}
    reply = {"result": b"ok", "tags": {
        "a": {"medias": [{"streams": [timed(b"RTP", 1000), timed(b"RTCP", 1090)]}]},
        "b": {"medias": [{"streams": [timed(b"RTP", 1042), timed(b"RTCP", 1001)]}]}}}
    assert last_rtp_at(reply) == 1042.0  # type: ignore[arg-type]
    assert last_rtp_at({"result": b"ok"}) is None
