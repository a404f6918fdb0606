"""Realistic SDP bodies, as the stacks that send them write them (addresses from the
RFC 5737 / RFC 3849 documentation ranges). Each is CRLF-terminated and in RFC 4566 order,
so a parse and serialize must give back the same bytes."""

# Real candidate and fingerprint lines are longer than the house line length.
# ruff: noqa: E501

from __future__ import annotations


def crlf(text: str) -> bytes:
    return "".join(line + "\r\n" for line in text.strip("\n").split("\n")).encode()


# PJSIP 2.x (pjsua) offer with ICE, as sent from behind NAT.
PJSIP_ICE = crlf("""
v=0
o=- 3916404426 3916404426 IN IP4 192.168.1.23
s=pjmedia
b=AS:84
t=0 0
a=X-nat:0
m=audio 4000 RTP/AVP 96 9 8 0 101 102
c=IN IP4 192.168.1.23
b=TIAS:64000
a=rtcp:4001 IN IP4 192.168.1.23
a=sendrecv
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:9 G722/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/48000
a=fmtp:101 0-16
a=rtpmap:102 telephone-event/8000
a=fmtp:102 0-16
a=ice-ufrag:5a1b6c7d
a=ice-pwd:2e3f4a5b6c7d8e9f
a=candidate:Hc0a80117 1 UDP 2130706431 192.168.1.23 4000 typ host
a=candidate:S71a2b3c4 1 UDP 1694498815 203.0.113.7 51234 typ srflx raddr 192.168.1.23 rport 4000
a=candidate:Hc0a80117 2 UDP 2130706430 192.168.1.23 4001 typ host
a=candidate:S71a2b3c4 2 UDP 1694498814 203.0.113.7 51235 typ srflx raddr 192.168.1.23 rport 4001
a=ssrc:1873245123 cname:6b7a1c2d3e4f5a6b
""")

# Browser (WebRTC) offer after gathering: BUNDLE, msid, ssrc with cname, DTLS.
WEBRTC = crlf("""
v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS 3f2a9c1e-8d7b-4c6a-9e5f-0a1b2c3d4e5f
m=audio 54400 UDP/TLS/RTP/SAVPF 111 63 9 0 8 126
c=IN IP4 203.0.113.9
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:842163049 1 udp 1677729535 203.0.113.9 54400 typ srflx raddr 10.0.0.5 rport 54400 generation 0 network-cost 999
a=candidate:1467250027 1 udp 2122260223 10.0.0.5 54400 typ host generation 0 network-cost 999
a=end-of-candidates
a=ice-ufrag:zk9P
a=ice-pwd:q1wGmMbn6mK7x3cA4nZ0Yd2e
a=ice-options:trickle
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=sendrecv
a=msid:3f2a9c1e-8d7b-4c6a-9e5f-0a1b2c3d4e5f 9b1c2d3e-audio-track
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:126 telephone-event/8000
a=ssrc:2875320437 cname:alice.smith@example.com
a=ssrc:2875320437 msid:3f2a9c1e-8d7b-4c6a-9e5f-0a1b2c3d4e5f 9b1c2d3e-audio-track
m=video 54401 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 203.0.113.9
a=candidate:842163049 1 udp 1677729535 203.0.113.9 54401 typ srflx raddr 10.0.0.5 rport 54401 generation 0
a=ice-ufrag:zk9P
a=ice-pwd:q1wGmMbn6mK7x3cA4nZ0Yd2e
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08
a=setup:actpass
a=mid:1
a=sendrecv
a=msid:3f2a9c1e-8d7b-4c6a-9e5f-0a1b2c3d4e5f 7c6d5e4f-video-track
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=ssrc-group:FID 1190581431 3011259573
a=ssrc:1190581431 cname:alice.smith@example.com
a=ssrc:3011259573 cname:alice.smith@example.com
""")

# A carrier SBC offer (tests/corpus/trunk/invite_sdp.sip): G.711, G.729, RFC 4733 DTMF.
CARRIER = crlf("""
v=0
o=- 1837 1837 IN IP4 10.1.2.3
s=SBC call
c=IN IP4 10.1.2.3
t=0 0
m=audio 31274 RTP/AVP 8 0 18 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
""")

# Every identity-bearing session line RFC 4566 defines, plus a vendor attribute and tool.
CHATTY = crlf("""
v=0
o=alice.smith 2890844526 2890844526 IN IP4 198.51.100.7
s=Call from Alice Smith
i=Alice's desk phone, ext 4711
u=http://alice.example.com/contact
e=alice.smith@example.com (Alice Smith)
p=+86 138 0000 0001
c=IN IP4 198.51.100.7
b=CT:128
t=0 0
k=uri:https://keys.example.com/alice
a=tool:Linphone 5.2.0 (alice-laptop)
a=X-relay-addr:198.51.100.7:40002
m=audio 40000 RTP/AVP 0 8 101
i=Alice's microphone
c=IN IP4 198.51.100.7
k=prompt
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=label:alice.smith
a=path:msrp://198.51.100.7:2855/abc;tcp
""")

IPV6 = crlf("""
v=0
o=bob 2890844730 2890844731 IN IP6 2001:db8::2
s=\x20
c=IN IP6 2001:db8::2
t=0 0
m=audio 49172 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=rtcp:49173 IN IP6 2001:db8::2
""")

# RFC 3264 §8.4 old-style hold (c=0.0.0.0) together with a=sendonly.
HOLD = crlf("""
v=0
o=alice 2890844526 2890844527 IN IP4 198.51.100.7
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 49170 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=sendonly
""")

# RFC 3264 §6: an answer that rejects video with port 0.
AUDIO_AND_REJECTED_VIDEO = crlf("""
v=0
o=carol 2890844526 2890844526 IN IP4 198.51.100.20
s=-
t=0 0
m=audio 49170 RTP/AVP 0 8 101
c=IN IP4 198.51.100.20
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=rtcp:49171
m=video 0 RTP/AVP 31
c=IN IP4 198.51.100.20
a=rtpmap:31 H261/90000
a=rtcp:49181 IN IP4 198.51.100.20
""")

ALL = {
    "pjsip_ice": PJSIP_ICE,
    "webrtc": WEBRTC,
    "carrier": CARRIER,
    "chatty": CHATTY,
    "ipv6": IPV6,
    "hold": HOLD,
    "audio_and_rejected_video": AUDIO_AND_REJECTED_VIDEO,
}
