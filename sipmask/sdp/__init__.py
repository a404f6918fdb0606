"""SDP (RFC 4566) for the relay: read a body, tell where its media goes, and write the body
for the other leg. Sans-IO: nothing here touches sockets, the event loop or the clock.

The call path (what sipmask runs):
  grammar.py    lines, their RFC 4566 §5 order, port numbers, the 400 a bad line gets
  privacy.py    what of an SDP may leave sipmask: the one rule, for every path
  scan.py       scan → check_relayable / media_endpoints / is_on_hold → rewrite, on text
                (import the module: `from sipmask.sdp import scan`)
  endpoints.py  MediaEndpoint, Direction: the answers
  origin.py     sipmask's o= per leg (OriginCounter)
The test oracle (imported by tests only, never by the call path):
  model.py, parser.py, rewrite.py   the same work on a typed data model: parse into
                dataclasses, rewrite, render. It is the readable statement of what the call
                path must do; the call path does it on the lines as text, without an object
                per line: 2.4x less SDP work and about 6 % of a call's CPU (bench/sdp.py,
                which alternates the two in bench/call_cpu.py's server; DESIGN.md rule 14).
                tests/unit/sdp/test_sdp_oracle.py and tests/property/test_sdp_roundtrip.py
                hold the two to the same endpoints, hold answers, bytes and refusals.
"""

from sipmask.sdp.endpoints import Direction, MediaEndpoint
from sipmask.sdp.errors import SdpError
from sipmask.sdp.origin import OriginCounter, new_session_id
from sipmask.sdp.privacy import KEPT_ATTRIBUTES, NEVER_KEPT

__all__ = [
    "KEPT_ATTRIBUTES",
    "NEVER_KEPT",
    "Direction",
    "MediaEndpoint",
    "OriginCounter",
    "SdpError",
    "new_session_id",
]
