"""sipmask's own SDP answer for early media: the 183 that carries a prompt (pure).

An announcement or the AXE extension prompt reaches the caller as early media (RFC 3960
§3.1, the gateway model): sipmask answers the caller's offer in a 183 Session Progress with
a description of its own, which names only the relay (`c=`, `o=` with username "-", RFC
4566 §5.2), plays the prompt there, and listens there for the caller's digits. Nothing of
the callee's side exists yet, so nothing crosses.

RFC 3264 §6 shapes the answer: the same number of m= lines as the offer, in order; the
first audio stream on RTP/AVP or RTP/AVPF that offers PCMU or PCMA is accepted with that
codec (the offerer's first choice, sipmask does not transcode) and, when the offer has
`telephone-event/8000`, with that event type under the offer's payload type number, so
RFC 4733 digits come (§7.1.1: events 0-15 are the DTMF keys); every other stream is refused
with port 0. The direction mirrors the offer's (§6.1): an offer that will not receive
(sendonly, inactive) gets no prompt. An offer with no usable stream gets no early media: no
SRTP (RTP/SAVP) prompt is made, and the README says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sipmask.media.prompt import choose_codec, telephone_event_type
from sipmask.media.wav import G711
from sipmask.sdp.origin import OriginCounter
from sipmask.sdp.privacy import SESSION_NAME, relay_connection
from sipmask.sdp.scan import Scan

PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")
_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "recvonly": "sendonly",
                     "sendonly": "recvonly", "inactive": "inactive"}


@dataclass(frozen=True, slots=True)
class OfferedStream:
    """One m= section of the caller's offer, as far as early media cares."""

    media: str                       # "audio", "video", ...
    port: int
    proto: str
    formats: tuple[str, ...]
    rtpmaps: tuple[str, ...]         # a=rtpmap values: "101 telephone-event/8000"
    direction: str = "sendrecv"


@dataclass(frozen=True, slots=True)
class EarlyMediaPlan:
    """What the early-media answer accepts: the stream index, its codec and payload type,
    the telephone-event payload type (None when the caller offered none: then only INFO
    or in-band digits can come), and whether a prompt may be sent at all."""

    index: int
    codec: G711
    payload_type: int
    event_payload_type: int | None
    direction: str

    @property
    def plays(self) -> bool:
        """The caller receives on this stream (RFC 3264 §6.1): a prompt can be played."""
        return self.direction in ("sendrecv", "sendonly")


def offered_streams(offer: Scan) -> list[OfferedStream]:
    """The offer's m= sections, read from the scan the call already made of it."""
    session_direction = offer.session.direction
    streams = []
    for part in offer.media:
        fields = part.m_rest.split()
        rtpmaps = tuple(line[len("a=rtpmap:"):] for line in part.lines
                        if line[:9].lower() == "a=rtpmap:")
        direction = part.direction or session_direction or "sendrecv"
        streams.append(OfferedStream(part.m_kind[2:].strip(), part.port, part.proto,
                                     tuple(fields[1:]), rtpmaps, direction))
    return streams


def plan(streams: Sequence[OfferedStream]) -> EarlyMediaPlan | None:
    """The stream and formats the answer accepts, or None when no stream can carry a
    prompt (no plain-RTP audio with PCMU or PCMA)."""
    for index, stream in enumerate(streams):
        if stream.media != "audio" or stream.port == 0 or stream.proto not in PLAIN_RTP:
            continue
        chosen = choose_codec(stream.formats, stream.rtpmaps)
        if chosen is None:
            continue
        codec, payload_type = chosen
        return EarlyMediaPlan(index, codec, payload_type,
                              telephone_event_type(stream.formats, stream.rtpmaps),
                              _ANSWER_DIRECTION.get(stream.direction, "sendrecv"))
    return None


def answer_sdp(streams: Sequence[OfferedStream], chosen: EarlyMediaPlan, *, port: int,
               origin: OriginCounter) -> bytes:
    """The 183's body: `port` is the relay port of the caller's leg, where the prompt is
    sent from and digits arrive; `origin` the leg's o= counter, so the 200's answer later
    keeps the sess-id and moves the version (RFC 3264 §8)."""
    address = origin.address
    media: list[str] = []
    for index, stream in enumerate(streams):
        if index != chosen.index:
            # RFC 3264 §6: a refused stream keeps its m= line with port 0.
            formats = " ".join(stream.formats[:1]) or "0"
            media.append(f"m={stream.media} 0 {stream.proto} {formats}")
            continue
        types = [chosen.payload_type]
        attributes = [f"a=rtpmap:{chosen.payload_type} {chosen.codec.value}/8000"]
        if chosen.event_payload_type is not None:
            types.append(chosen.event_payload_type)
            attributes += [f"a=rtpmap:{chosen.event_payload_type} telephone-event/8000",
                      f"a=fmtp:{chosen.event_payload_type} 0-15"]
        media.append(f"m=audio {port} {stream.proto} {' '.join(map(str, types))}")
        media += [*attributes, "a=ptime:20", f"a={chosen.direction}"]
    rest = [f"s={SESSION_NAME}", f"c={relay_connection(address)}", "t=0 0", *media]
    lines = ["v=0", f"o={origin.advance(tuple(rest))}", *rest]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
