"""One SDP privacy rule, three places that apply it: the call path's rewrite (sdp/scan.py,
the embedded relay), the model rewrite it is checked against (sdp/rewrite.py), and the
scrub of the SDP rtpengine returns (media/rtpengine.py). Each must let the same kinds of
line and the same attributes cross, and drop the same ones."""

from __future__ import annotations

from collections import Counter

import pytest
import sdp_samples

from sipmask.media.rtpengine import scrub_identity
from sipmask.sdp import scan
from sipmask.sdp.origin import OriginCounter
from sipmask.sdp.parser import parse
from sipmask.sdp.privacy import NEVER_KEPT, Fate, Section, attribute_fate, line_fate
from sipmask.sdp.rewrite import relay_body, relay_ports_needed

RELAY = "192.0.2.200"

# What rtpengine 10.5 returned for an offer of a chatty SDP with sipmask's ng flags (ICE
# removed, origin and session c= replaced): every line it does not own passes through, the
# session-level a=rtcp with the party's address included. This is what the scrub works on.
RTPENGINE_OUTPUT = sdp_samples.crlf("""
v=0
o=alice 2890844526 2890844526 IN IP4 127.0.0.1
s=Talk to Bob
i=call from 13800000001
u=http://alice.example/
e=alice@example.com
p=+8613800000001
c=IN IP4 127.0.0.1
b=AS:64
t=0 0
k=prompt
a=tool:phone 1.2
a=X-nat:10.1.2.3
a=msid-semantic: WMS abc
a=rtcp:5555 IN IP4 198.51.100.9
m=audio 13400 RTP/AVP 0 101
i=media info
c=IN IP4 127.0.0.1
b=TIAS:64000
k=clear:x
a=ssrc:305419896 cname:alice@host.example
a=ssrc:305419896 label:x
a=ssrc-group:FID 1 2
a=msid:abc def
a=label:1
a=path:msrp://a.example:1/x;tcp
a=key-mgmt:mikey AQ
a=X-vendor:13800000001
a=bundle-only
a=group:BUNDLE 0
a=mid:0
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=rtcp:13401
a=rtcp-mux
a=ptime:20
a=end-of-candidates
m=video 0 RTP/AVP 31
""")

BODIES = {**sdp_samples.ALL, "rtpengine_output": RTPENGINE_OUTPUT}


def crossing(body: bytes) -> Counter[tuple[int, str]]:
    """What crosses, by section (0: session, n: the n-th m= line) and line kind, an
    attribute by its name in lower case. c= and t= are left out: the rewrites write their own
    (the relay's c=, t=0 0 when none came) where rtpengine wrote its own before the scrub."""
    found: Counter[tuple[int, str]] = Counter()
    section = 0
    for line in body.decode("utf-8", "surrogateescape").splitlines():
        kind = line[:1]
        if kind == "m":
            section += 1
        if kind in ("c", "t") or not line:
            continue
        found[(section, "a=" + line[2:].partition(":")[0].lower() if kind == "a" else kind)] += 1
    return found


def through_model(body: bytes) -> bytes:
    sd = parse(body)
    ports = [40000 + 2 * i for i in range(relay_ports_needed(sd))]
    return relay_body(sd, address=RELAY, ports=ports,
                      counter=OriginCounter(address=RELAY, sess_id=1000001))


def through_call_path(body: bytes) -> bytes:
    scanned = scan.scan(body)
    ports = [40000 + 2 * i for i in range(scan.relay_ports_needed(scanned))]
    return scan.rewrite(scanned, RELAY, ports, OriginCounter(address=RELAY, sess_id=1000001))


@pytest.mark.parametrize("name", sorted(BODIES))
def test_the_three_let_the_same_lines_cross(name: str) -> None:
    body = BODIES[name]
    model = crossing(through_model(body))
    assert crossing(through_call_path(body)) == model
    # rtpengine drops nothing it does not own, so its output scrubbed must cross no more.
    assert crossing(scrub_identity(body)) == model


def test_the_scrub_drops_what_rtpengine_passed_through() -> None:
    """Every identity line rtpengine 10.5 was seen to pass through, gone after the scrub."""
    out = scrub_identity(RTPENGINE_OUTPUT).decode()
    for leak in ("13800000001", "alice", "example", "10.1.2.3", "198.51.100", "Talk to Bob",
                 "a=tool", "a=msid", "a=ssrc", "a=label", "a=path", "a=key-mgmt",
                 "a=bundle-only", "BUNDLE", "a=end-of-candidates", "\ni=", "\nk="):
        assert leak not in out, leak
    # rtpengine's own addresses and ports stay as it wrote them.
    assert "c=IN IP4 127.0.0.1\r\n" in out
    assert "m=audio 13400 RTP/AVP 0 101\r\n" in out
    assert "a=rtcp:13401\r\n" in out
    assert out.startswith("v=0\r\no=- 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\n")


def test_no_identity_attribute_crosses_in_any_case_or_section() -> None:
    for name in sorted(NEVER_KEPT | {"ice-anything", "x-nat", "label"}):
        for spelled in (name, name.upper(), name.title()):
            for section in Section:
                assert attribute_fate(spelled, section) is Fate.DROP, (spelled, section)


def test_rtcp_points_at_the_relay_on_an_active_stream_and_nowhere_else() -> None:
    """RFC 3605 §2.1: a=rtcp is media-level; a disabled stream has no relay port."""
    assert attribute_fate("RTCP", Section.ACTIVE) is Fate.RELAY
    assert attribute_fate("rtcp", Section.SESSION) is Fate.DROP
    assert attribute_fate("rtcp", Section.DISABLED) is Fate.DROP
    assert [kind for kind in "abcdefghijklmnopqrstuvwxyz"
            if line_fate(kind, Section.SESSION) is not Fate.DROP] == ["b", "c", "r", "t", "z"]
    assert [kind for kind in "abcdefghijklmnopqrstuvwxyz"
            if line_fate(kind, Section.ACTIVE) is not Fate.DROP] == ["b", "c"]


def test_the_scrub_keeps_line_ends_and_groups_other_than_bundle() -> None:
    body = b"v=0\no=bob 1 1 IN IP4 10.0.0.1\ns=x\r\na=group:LS 1 2\na=group:BUNDLE 1\n"
    assert scrub_identity(body) == b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\r\na=group:LS 1 2\n"
