"""SDP (RFC 4566): model, parse/serialize, and the rewrite that points a body at sipmask's
relay. Sans-IO: nothing here touches sockets, the event loop or the clock."""

from sipmask.sdp.errors import SdpError
from sipmask.sdp.model import (
    Attribute,
    Bandwidth,
    Connection,
    Line,
    MediaDescription,
    Origin,
    SdpLine,
    SessionDescription,
)
from sipmask.sdp.parser import parse
from sipmask.sdp.privacy import KEPT_ATTRIBUTES, NEVER_KEPT
from sipmask.sdp.rewrite import (
    Direction,
    MediaEndpoint,
    OriginCounter,
    check_relayable,
    direction,
    is_on_hold,
    media_endpoints,
    new_session_id,
    relay_ports_needed,
    rewrite_for_relay,
    uses_ice,
)

__all__ = [
    "KEPT_ATTRIBUTES",
    "NEVER_KEPT",
    "Attribute",
    "Bandwidth",
    "Connection",
    "Direction",
    "Line",
    "MediaDescription",
    "MediaEndpoint",
    "Origin",
    "OriginCounter",
    "SdpError",
    "SdpLine",
    "SessionDescription",
    "check_relayable",
    "direction",
    "is_on_hold",
    "media_endpoints",
    "new_session_id",
    "parse",
    "relay_ports_needed",
    "rewrite_for_relay",
    "uses_ice",
]
