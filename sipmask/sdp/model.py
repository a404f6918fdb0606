"""The SDP data model (RFC 4566 §5) and its serializer: with sdp/parser.py and
sdp/rewrite.py, the test oracle of the call path (sdp/scan.py). No production code imports
it (sdp/__init__.py says why).

A session description is the three fixed lines v=, o=, s= and then two ordered lists of
lines: the session section and one list per m= section. The lines sipmask reads or rewrites
are typed (Connection, Bandwidth, Attribute); every other line (t=, r=, z=, i=, u=, e=, p=,
k=, unknown letters) is a `Line` holding its raw value. Attributes keep their raw text, so
a description parsed and serialized unchanged gives the same bytes.

`to_bytes` writes CRLF line ends (RFC 4566 §5: "<type>=<value>" lines ended by CRLF) and
the RFC 4566 §5 order: v, o, s, i, u, e, p, c, b, (t, r)*, z, k, a, then each media section
as m, i, c, b, k, a. The sort is stable and a line type the RFC does not list stays behind
the line it followed, so a description already in order keeps its bytes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sipmask.sdp.grammar import MEDIA_ORDER, SESSION_ORDER
from sipmask.sdp.privacy import HOLD_HOSTS, addrtype_of


@dataclass(frozen=True, slots=True)
class Origin:
    """o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address> (§5.2).

    sess-id and sess-version stay text: RFC 4566 only asks for digits, and some stacks send
    values wider than 64 bits or with leading zeros that must round-trip unchanged."""

    username: str
    sess_id: str
    sess_version: str
    nettype: str
    addrtype: str
    address: str

    @classmethod
    def for_address(cls, address: str, sess_id: int, sess_version: int,
                    username: str = "-") -> Origin:
        return cls(username, str(sess_id), str(sess_version), "IN", addrtype_of(address),
                   address)

    def value(self) -> str:
        return (f"{self.username} {self.sess_id} {self.sess_version} "
                f"{self.nettype} {self.addrtype} {self.address}")


@dataclass(frozen=True, slots=True)
class Connection:
    """c=<nettype> <addrtype> <connection-address> (§5.7). The address keeps any multicast
    /ttl/count suffix; `host` drops it."""

    nettype: str
    addrtype: str
    address: str

    @classmethod
    def for_address(cls, address: str) -> Connection:
        return cls("IN", addrtype_of(address), address)

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def is_unspecified(self) -> bool:
        """RFC 3264 §8.4: c=0.0.0.0 (or ::) is the old way to put a stream on hold."""
        return self.host in HOLD_HOSTS

    def value(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """b=<bwtype>:<bandwidth> (§5.8)."""

    bwtype: str
    bandwidth: str

    def value(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass(frozen=True, slots=True)
class Attribute:
    """a=<name> or a=<name>:<value> (§5.13). `value` is None for a property attribute
    (a=sendrecv) and "" for a=name: with nothing after the colon; both round-trip."""

    name: str
    value: str | None = None

    @property
    def key(self) -> str:
        """The name for comparisons. RFC 4566 does not say attribute names are
        case-insensitive, but stacks differ (silenceSupp), so lookups ignore case."""
        return self.name.lower()

    def text(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class Line:
    """Any line sipmask does not model, kept as `<kind>=<value>` exactly as received."""

    kind: str
    value: str


SdpLine = Connection | Bandwidth | Attribute | Line


def kind_of(line: SdpLine) -> str:
    """The one-letter type of a line (RFC 4566 §5)."""
    if isinstance(line, Attribute):
        return "a"
    if isinstance(line, Connection):
        return "c"
    if isinstance(line, Bandwidth):
        return "b"
    return line.kind


def render(line: SdpLine) -> str:
    if isinstance(line, Attribute):
        return "a=" + line.text()
    if isinstance(line, Line):
        return f"{line.kind}={line.value}"
    return f"{kind_of(line)}={line.value()}"


def in_rfc_order(lines: Sequence[SdpLine], ranks: dict[str, int]) -> list[SdpLine]:
    """Stable sort into RFC 4566 §5 order; an unlisted type keeps the rank of the line
    before it. Lines already in order come back in the same order."""
    keyed: list[tuple[int, int, SdpLine]] = []
    rank = 0
    ordered = True
    for index, line in enumerate(lines):
        new_rank = ranks.get(kind_of(line), rank)
        ordered = ordered and new_rank >= rank
        rank = new_rank
        keyed.append((rank, index, line))
    if ordered:
        return list(lines)
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [line for _, _, line in keyed]


@dataclass(slots=True)
class MediaDescription:
    """One m= section (§5.14): m=<media> <port>[/<count>] <proto> <fmt> ... and its lines.

    `lines` holds i=, c=, b=, k=, a= and anything else after the m= line, in order; the
    properties below read the typed ones."""

    kind: str
    port: int
    proto: str
    formats: list[str] = field(default_factory=list)
    port_count: int | None = None
    lines: list[SdpLine] = field(default_factory=list)

    @property
    def connections(self) -> list[Connection]:
        return [line for line in self.lines if isinstance(line, Connection)]

    @property
    def connection(self) -> Connection | None:
        for line in self.lines:
            if isinstance(line, Connection):
                return line
        return None

    @property
    def bandwidths(self) -> list[Bandwidth]:
        return [line for line in self.lines if isinstance(line, Bandwidth)]

    @property
    def attributes(self) -> list[Attribute]:
        return [line for line in self.lines if isinstance(line, Attribute)]

    def attribute(self, name: str) -> Attribute | None:
        """The first attribute called `name` (case ignored), or None."""
        return _first_attribute(self.lines, name)

    def m_line_value(self) -> str:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join((self.kind, port, self.proto, *self.formats))

    def render_lines(self) -> Iterator[str]:
        yield "m=" + self.m_line_value()
        for line in in_rfc_order(self.lines, MEDIA_ORDER):
            yield render(line)


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP body. `lines` is the session section after v=, o=, s= in order: c=, b=,
    t=, a= and every other session-level line. `session_name` is None only when a
    (non-conforming) input had no s= line; it is then left out on output too."""

    origin: Origin
    session_name: str | None = "-"
    lines: list[SdpLine] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    version: int = 0

    @property
    def connection(self) -> Connection | None:
        for line in self.lines:
            if isinstance(line, Connection):
                return line
        return None

    @property
    def bandwidths(self) -> list[Bandwidth]:
        return [line for line in self.lines if isinstance(line, Bandwidth)]

    @property
    def attributes(self) -> list[Attribute]:
        return [line for line in self.lines if isinstance(line, Attribute)]

    def attribute(self, name: str) -> Attribute | None:
        return _first_attribute(self.lines, name)

    def render_lines(self) -> Iterator[str]:
        yield f"v={self.version}"
        yield "o=" + self.origin.value()
        if self.session_name is not None:
            yield "s=" + self.session_name
        for line in in_rfc_order(self.lines, SESSION_ORDER):
            yield render(line)
        for media in self.media:
            yield from media.render_lines()

    def to_bytes(self) -> bytes:
        """The body on the wire: CRLF after every line, the last one included (§5).
        surrogateescape gives back any non-UTF-8 byte the parser let through."""
        text = "\r\n".join(self.render_lines()) + "\r\n"
        return text.encode("utf-8", "surrogateescape")

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _first_attribute(lines: Sequence[SdpLine], name: str) -> Attribute | None:
    wanted = name.lower()
    for line in lines:
        if isinstance(line, Attribute) and line.key == wanted:
            return line
    return None
