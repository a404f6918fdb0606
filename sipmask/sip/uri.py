"""URIs (`sip:`, `sips:`, `tel:`), name-addr values and Via, parsed and written back.

`SipUri.parse(text)` and `str(uri)` are symmetric for the forms RFC 3261 §19.1 allows;
parameters keep their order and case. The user part is kept as written (escaped);
`user_unescaped` decodes it (§19.1.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

from sipmask.errors import ParseError

Params = list[tuple[str, str | None]]


def parse_params(text: str, what: str) -> Params:
    """`;a=1;b;c=x` (leading `;` optional) → ordered pairs; a flag param has value None."""
    out: Params = []
    if not text:
        return out
    for part in text.lstrip(";").split(";"):
        part = part.strip()
        if not part:
            raise ParseError(f"Bad {what}: empty parameter")
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name:
            raise ParseError(f"Bad {what}: parameter without a name")
        out.append((name, value.strip() if eq else None))
    return out


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: Params, name: str) -> str | None:
    """Value of a parameter (case-insensitive name); '' for a flag param, None when absent."""
    low = name.lower()
    for k, v in params:
        if k.lower() == low:
            return "" if v is None else v
    return None


def has_param(params: Params, name: str) -> bool:
    low = name.lower()
    return any(k.lower() == low for k, _ in params)


def set_param(params: Params, name: str, value: str | None) -> Params:
    """A copy with `name` set (in place if present, else appended)."""
    low = name.lower()
    out: Params = []
    placed = False
    for k, v in params:
        if k.lower() == low:
            if not placed:
                out.append((k, value))
                placed = True
        else:
            out.append((k, v))
    if not placed:
        out.append((name, value))
    return out


def _split_host_port(hostport: str, what: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ParseError(f"Bad {what}: unterminated IPv6 reference")
        host = hostport[: end + 1]
        rest = hostport[end + 1:]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ParseError(f"Bad {what}: junk after IPv6 reference")
        port_text = rest[1:]
    else:
        host, colon, port_text = hostport.partition(":")
        if not colon:
            port_text = ""
        if ":" in port_text:
            raise ParseError(f"Bad {what}: IPv6 address must be in brackets")
    if not host:
        raise ParseError(f"Bad {what}: empty host")
    if not colon_ok(host):
        raise ParseError(f"Bad {what}: invalid host")
    if port_text == "" and hostport.endswith(":"):
        raise ParseError(f"Bad {what}: empty port")
    if port_text:
        if not port_text.isdigit() or not (0 < int(port_text) < 65536):
            raise ParseError(f"Bad {what}: invalid port")
        return host, int(port_text)
    return host, None


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def colon_ok(host: str) -> bool:
    """RFC 3261 §25.1 host: hostname, IPv4 or bracketed IPv6."""
    if host.startswith("["):
        inner = host[1:-1]
        return host.endswith("]") and bool(inner) and all(
            c in "0123456789abcdefABCDEF:." for c in inner)
    return all(c in _HOST_CHARS for c in host)


@dataclass
class SipUri:
    scheme: str                      # "sip" or "sips", as written
    user: str | None
    host: str                        # IPv6 kept with brackets
    port: int | None = None
    password: str | None = None
    params: Params = field(default_factory=list)
    headers: str = ""                # the `?h=v&…` part, without `?`

    @classmethod
    def parse(cls, text: str) -> SipUri:
        scheme, colon, rest = text.partition(":")
        if not colon or scheme.lower() not in ("sip", "sips"):
            raise ParseError("Bad URI: expected sip: or sips:")
        if not rest or any(c in rest for c in " \t\r\n<>"):
            raise ParseError("Bad URI: contains whitespace or angle brackets")
        rest, qmark, headers = rest.partition("?")
        user: str | None = None
        password: str | None = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            user, pcolon, pw = userinfo.partition(":")
            password = pw if pcolon else None
            if not user:
                raise ParseError("Bad URI: empty user part")
        hostport, _, ptext = rest.partition(";")
        host, port = _split_host_port(hostport, "URI")
        params = parse_params(ptext, "URI") if ptext else []
        return cls(scheme, user, host, port, password, params, headers if qmark else "")

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user)

    @property
    def phone_number(self) -> str | None:
        """The user part as a phone number: the part before any `;` user parameters
        (`sip:+8613800000001;npdi;rn=…@host;user=phone`), unescaped."""
        if self.user is None:
            return None
        return unquote(self.user).split(";", 1)[0]

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)


@dataclass
class TelUri:
    """RFC 3966 `tel:+86-138-0000-0001;npdi;rn=…`."""

    number: str
    params: Params = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> TelUri:
        scheme, colon, rest = text.partition(":")
        if not colon or scheme.lower() != "tel":
            raise ParseError("Bad URI: expected tel:")
        number, _, ptext = rest.partition(";")
        if not number or any(c in number for c in " \t<>@"):
            raise ParseError("Bad URI: invalid telephone-subscriber")
        return cls(number, parse_params(ptext, "URI") if ptext else [])

    def __str__(self) -> str:
        return f"tel:{self.number}{format_params(self.params)}"

    @property
    def phone_number(self) -> str:
        return self.number

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)


@dataclass
class AbsoluteUri:
    """Any other scheme (RFC 3261 allows absoluteURI, e.g. `mailto:`, `urn:`); kept as text."""

    text: str

    @property
    def scheme(self) -> str:
        return self.text.partition(":")[0]

    def __str__(self) -> str:
        return self.text


Uri = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not rest:
        raise ParseError("Bad URI: no scheme")
    low = scheme.lower()
    if low in ("sip", "sips"):
        return SipUri.parse(text)
    if low == "tel":
        return TelUri.parse(text)
    if not (scheme[0].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)):
        raise ParseError("Bad URI: invalid scheme")
    if any(c in text for c in " \t<>"):
        raise ParseError("Bad URI: contains whitespace or angle brackets")
    return AbsoluteUri(text)


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: `"Name" <uri>;tag=…` or a bare addr-spec.

    For a bare addr-spec, parameters after the URI belong to the header, not the URI
    (RFC 3261 §20.10): `sip:a@b;tag=1` has header param tag=1.
    """

    uri: Uri
    display: str | None = None       # as written, quotes included
    params: Params = field(default_factory=list)
    bracketed: bool = True

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if text == "*":
            raise ParseError("Bad name-addr: '*' is not an address")
        display: str | None = None
        if "<" in text:
            lt = _find_unquoted(text, "<")
            if lt < 0:
                raise ParseError("Bad name-addr: '<' inside quotes only")
            display = text[:lt].strip() or None
            if display is not None and display.startswith('"'):
                if not display.endswith('"') or len(display) < 2:
                    raise ParseError("Bad name-addr: unterminated quoted display name")
            gt = text.find(">", lt)
            if gt < 0:
                raise ParseError("Bad name-addr: missing '>'")
            uri = parse_uri(text[lt + 1: gt].strip())
            params = parse_params(text[gt + 1:].strip(), "header parameters")
            return cls(uri, display, params, True)
        if text.startswith('"'):
            raise ParseError("Bad name-addr: display name without <uri>")
        addr, _, ptext = text.partition(";")
        return cls(parse_uri(addr.strip()), None, parse_params(ptext, "header parameters"), False)

    def __str__(self) -> str:
        if self.bracketed or self.display is not None or not isinstance(self.uri, SipUri) or \
                (isinstance(self.uri, SipUri) and (self.uri.params or self.uri.headers)):
            prefix = f"{self.display} " if self.display else ""
            return f"{prefix}<{self.uri}>{format_params(self.params)}"
        return f"{self.uri}{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(self.uri, self.display, set_param(self.params, "tag", tag), self.bracketed)


def _find_unquoted(text: str, ch: str) -> int:
    quoted = False
    escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
    return -1


@dataclass
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK…;rport;received=…`."""

    transport: str                   # "UDP", "TCP", "TLS", … as written
    host: str
    port: int | None = None
    params: Params = field(default_factory=list)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        text = text.strip()
        sent_protocol, _, rest = _split_ws(text)
        parts = [p.strip() for p in sent_protocol.split("/")]
        if len(parts) != 3 or not all(parts):
            # Tolerate LWS around the slashes (RFC 3261 §25.1 SLASH = SWS "/" SWS).
            joined = text.replace(" / ", "/").replace(" /", "/").replace("/ ", "/")
            sent_protocol, _, rest = _split_ws(joined)
            parts = [p.strip() for p in sent_protocol.split("/")]
            if len(parts) != 3 or not all(parts):
                raise ParseError("Bad Via: sent-protocol")
        rest = rest.strip()
        if not rest:
            raise ParseError("Bad Via: no sent-by")
        hostport, _, ptext = rest.partition(";")
        host, port = _split_host_port(hostport.strip().replace(" ", ""), "Via")
        params = parse_params(ptext, "Via") if ptext else []
        return cls(parts[2], host, port, params, f"{parts[0]}/{parts[1]}")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    @property
    def rport(self) -> str | None:
        """'' when the client asked for rport (RFC 3581 §3), the port when filled in."""
        return get_param(self.params, "rport")

    @property
    def received(self) -> str | None:
        return get_param(self.params, "received")

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_params(self, **values: str | None) -> Via:
        params = self.params
        for k, v in values.items():
            params = set_param(params, k, v)
        return Via(self.transport, self.host, self.port, params, self.protocol)

    def response_target(self, source: tuple[str, int]) -> tuple[str, int]:
        """Where a response to this Via goes over UDP: RFC 3261 §18.2.2 with RFC 3581 §4
        (rport: back to the source address and port the request came from)."""
        if self.rport is not None:
            return source
        host = self.received or self.host.strip("[]")
        return host, self.port or 5060


def _split_ws(text: str) -> tuple[str, str, str]:
    for i, c in enumerate(text):
        if c in " \t":
            return text[:i], c, text[i + 1:]
    return text, "", ""
