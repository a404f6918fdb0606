"""What an SDP says about its media, for the relay: where each stream receives (RFC 4566
§5.7, §5.14; RFC 3605 a=rtcp) and which way it flows (RFC 3264 §5.1, for hold). The call
path (sdp/scan.py) and its test oracle (sdp/rewrite.py) both answer in these types."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sipmask.sdp.grammar import MAX_PORT


class Direction(StrEnum):
    """RFC 3264 §5.1 stream direction, from the point of view of the SDP's author."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @classmethod
    def of(cls, sends: bool, receives: bool) -> Direction:
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE

    @property
    def sends(self) -> bool:
        return self in _SENDING

    @property
    def receives(self) -> bool:
        return self in _RECEIVING


DIRECTIONS = {d.value: d for d in Direction}
# Built once, not per read: in Python 3.11 reading a member off its Enum class goes through
# EnumType.__getattr__'s slow attribute hook (as in b2bua/core.py), and `receives` is asked
# of every offer and answer.
_SENDING = (Direction.SENDRECV, Direction.SENDONLY)
_RECEIVING = (Direction.SENDRECV, Direction.RECVONLY)


@dataclass(frozen=True, slots=True)
class MediaEndpoint:
    """Where one active m= line receives media, as its SDP says. `host` may be a name
    (RFC 4566 §5.7 allows an FQDN in c=); the media backend resolves it once per offer."""

    host: str                       # c= address, multicast suffix dropped; 0.0.0.0: hold
    port: int                       # m= port, RTP
    rtcp_port: int | None = None    # RFC 3605 a=rtcp; None: port + 1 (RFC 3550 §11)
    rtcp_host: str | None = None    # the address a=rtcp names, if any; None: host
    secure: bool = False            # an SRTP profile (RFC 3711 SAVP, RFC 5124 SAVPF)


def media_endpoint(host: str, port: int, proto: str, rtcp: str | None) -> MediaEndpoint:
    """The endpoint of one active m= line from its c= host, m= port and proto, and the
    value of its first a=rtcp (None: there is none). One rule for the call path and its oracle."""
    rtcp_port: int | None = None
    rtcp_host: str | None = None
    if rtcp is not None:
        # RFC 3605 §2.1: a=rtcp:<port> [<nettype> <addrtype> <connection-address>]. A value
        # that is not that is ignored, as before: RTCP then goes to port + 1.
        fields = rtcp.split()
        if fields and fields[0].isascii() and fields[0].isdigit() and len(fields[0]) <= 5 \
                and int(fields[0]) <= MAX_PORT:
            rtcp_port = int(fields[0])
            if len(fields) == 4 and fields[1] == "IN":
                rtcp_host = fields[3].split("/", 1)[0]
    # RTP/SAVP, RTP/SAVPF and their UDP/TLS/ (DTLS-SRTP, RFC 5764) and TCP/TLS/ forms.
    secure = proto.upper().endswith(("/SAVP", "/SAVPF"))
    return MediaEndpoint(host, port, rtcp_port, rtcp_host, secure)
