"""URIs (`sip:`, `sips:`, `tel:`), name-addr values and Via, parsed and written back.

`SipUri.parse(text)` and `str(uri)` are symmetric for the forms RFC 3261 §19.1 allows;
parameters keep their order and case. The user part is kept as written (escaped);
`user_unescaped` decodes it (§19.1.2).

We are strict where RFC 4475 §3.1.2 asks for a 400 (whitespace inside `<…>`, unbalanced
quotes, a display name that is not tokens, empty parameters) and liberal elsewhere: a user
part may hold any visible character but `@`, `:`, `<`, `>` and `"`, because trunks send
`*21#` and friends unescaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from sipmask.errors import ParseError

Params = list[tuple[str, str | None]]

_PARAM_NAME = re.compile(r"[^\s;=,?<>\"@]+")


def parse_params(text: str, what: str) -> Params:
    """`;a=1;b;c=x` (leading `;` optional) → ordered pairs; a flag param has value None.

    LWS around `;` and `=` is allowed (RFC 3261 §25.1 SEMI and EQUAL are SWS-wrapped);
    a quoted value may hold `;` (generic-param, §25.1 gen-value)."""
    out: Params = []
    if not text:
        return out
    text = text.strip()
    if text.startswith(";"):
        text = text[1:]
    parts = _split_unquoted(text, ";") if '"' in text else text.split(";")
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name:
            raise ParseError(f"Bad {what}: empty parameter")
        if _PARAM_NAME.fullmatch(name) is None:
            raise ParseError(f"Bad {what}: invalid parameter name")
        if eq:
            value = value.strip()
            if value.startswith('"') and _quoted_end(value, 0) != len(value):
                raise ParseError(f"Bad {what}: unterminated quoted parameter")
            out.append((name, value))
        else:
            out.append((name, None))
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


# RFC 3261 §25.1 host = hostname / IPv4address / IPv6reference. Underscores are tolerated
# in hostnames (seen from real trunks' DNS names).
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)"
_HOSTPORT = re.compile(rf"({_HOST})(?::([0-9]{{1,5}}))?")


def _split_host_port(hostport: str, what: str) -> tuple[str, int | None]:
    m = _HOSTPORT.fullmatch(hostport)
    if m is None:
        if hostport.startswith("[") and "]" not in hostport:
            raise ParseError(f"Bad {what}: unterminated IPv6 reference")
        if hostport.count(":") > 1 and not hostport.startswith("["):
            raise ParseError(f"Bad {what}: IPv6 address must be in brackets")
        if hostport.endswith(":"):
            raise ParseError(f"Bad {what}: empty port")
        if not hostport or hostport.startswith(":"):
            raise ParseError(f"Bad {what}: empty host")
        raise ParseError(f"Bad {what}: invalid host or port")
    host, port_text = m.group(1, 2)
    if port_text is None:
        return host, None
    port = int(port_text)
    if not 0 < port < 65536:
        raise ParseError(f"Bad {what}: invalid port")
    return host, port


def colon_ok(host: str) -> bool:
    """RFC 3261 §25.1 host: hostname, IPv4 or bracketed IPv6."""
    return re.fullmatch(_HOST, host) is not None


# sip:/sips: URI, RFC 3261 §19.1.1. The user part ends at the first `@` (neither user nor
# password may hold a raw `@`), so `?` and `;` before it belong to the user (RFC 4475
# §3.1.1.2 intmeth). Whitespace, `<`, `>` and `"` are never part of a URI.
_SIP_URI = re.compile(
    r"""([sS][iI][pP][sS]?):
        (?:([^\s@:<>"]+)(?::([^\s@<>"]*))?@)?
        ([^\s;?<>"@]*)
        ((?:;[^\s;?<>"]*)*)
        (?:\?([^\s<>"]*))?""",
    re.VERBOSE,
)


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
        m = _SIP_URI.fullmatch(text)
        if m is None:
            if text.partition(":")[0].lower() not in ("sip", "sips"):
                raise ParseError("Bad URI: expected sip: or sips:")
            if any(c in text for c in " \t\r\n<>\""):
                raise ParseError("Bad URI: contains whitespace, quotes or angle brackets")
            raise ParseError("Bad URI: invalid sip URI")
        scheme, user, password, hostport, ptext, headers = m.groups()
        if user is not None and user == "":
            raise ParseError("Bad URI: empty user part")
        host, port = _split_host_port(hostport, "URI")
        params = parse_params(ptext, "URI") if ptext else []
        return cls(scheme, user, host, port, password, params,
                   headers if headers is not None else "")

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
        return None if self.user is None else unquote(self.user, errors="surrogateescape")

    @property
    def phone_number(self) -> str | None:
        """The user part as a phone number: the part before any `;` user parameters
        (`sip:+86<number>;npdi;rn=…@host;user=phone`, RFC 4694 §4), unescaped."""
        if self.user is None:
            return None
        return unquote(self.user).split(";", 1)[0]

    @property
    def user_params(self) -> Params:
        """Parameters inside the user part of a telephone-subscriber user
        (`+86…;npdi;rn=+86…`, RFC 3261 §19.1.6 with RFC 4694), in order."""
        if self.user is None or ";" not in self.user:
            return []
        return parse_params(unquote(self.user).split(";", 1)[1], "user parameters")

    @property
    def header_pairs(self) -> list[tuple[str, str]]:
        """The `?a=b&c=d` headers, names as written and values unescaped (§19.1.1)."""
        if not self.headers:
            return []
        out: list[tuple[str, str]] = []
        for item in self.headers.split("&"):
            name, _, value = item.partition("=")
            out.append((unquote(name), unquote(value)))
        return out

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)


# RFC 3966 §3: telephone-subscriber = global-number / local-number. We keep visual
# separators as written; sipmask.numbers normalises.
_TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")


@dataclass
class TelUri:
    """RFC 3966 `tel:+86-138-0000-0001;npdi;rn=…`."""

    number: str
    params: Params = field(default_factory=list)
    scheme: str = "tel"

    @classmethod
    def parse(cls, text: str) -> TelUri:
        scheme, colon, rest = text.partition(":")
        if not colon or scheme.lower() != "tel":
            raise ParseError("Bad URI: expected tel:")
        number, _, ptext = rest.partition(";")
        if _TEL_NUMBER.fullmatch(number) is None or not any(c.isdigit() for c in number):
            raise ParseError("Bad URI: invalid telephone-subscriber")
        return cls(number, parse_params(ptext, "URI") if ptext else [], scheme)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.number}{format_params(self.params)}"

    @property
    def phone_number(self) -> str:
        return self.number

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")


@dataclass
class AbsoluteUri:
    """Any other scheme (RFC 3261 allows absoluteURI, e.g. `mailto:`, `urn:`); kept as text.
    A request to one is answered 416 by the application (RFC 3261 §8.2.2.1)."""

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
    if _SCHEME.fullmatch(scheme) is None:
        raise ParseError("Bad URI: invalid scheme")
    if any(c in text for c in " \t\r\n<>\""):
        raise ParseError("Bad URI: contains whitespace, quotes or angle brackets")
    return AbsoluteUri(text)


# display-name = *(token LWS) / quoted-string (RFC 3261 §25.1). Unquoted display names
# outside ASCII (UTF-8 names from some CN trunks) are tolerated; ASCII separators such as
# `,` are not (RFC 4475 §3.1.2.15).
_DISPLAY_TOKENS = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\x80-\U0010ffff]+"
                             r"(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~\x80-\U0010ffff]+)*")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: `"Name" <uri>;tag=…` or a bare addr-spec.

    For a bare addr-spec, parameters after the URI belong to the header, not the URI
    (RFC 3261 §20.10): `sip:a@b;tag=1` has header param tag=1, and a URI holding `,`, `?`
    or `;` must be in angle brackets.
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
        if text.startswith('"'):
            end = _quoted_end(text, 0)
            if end < 0:
                raise ParseError("Bad name-addr: unterminated quoted display name")
            display = text[:end]
            lt = end + len(text[end:]) - len(text[end:].lstrip(" \t"))
            if text[lt:lt + 1] != "<":
                raise ParseError("Bad name-addr: display name without <uri>")
        else:
            lt = text.find("<")
            if lt >= 0:
                words = text[:lt].strip(" \t")
                if words:
                    if _DISPLAY_TOKENS.fullmatch(words) is None:
                        raise ParseError("Bad name-addr: display name must be tokens or "
                                         "a quoted string")
                    display = words
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ParseError("Bad name-addr: missing '>'")
            inner = text[lt + 1: gt]
            # RFC 3261 §25.1: LAQUOT = SWS "<" and RAQUOT = ">" SWS: no LWS inside.
            if inner != inner.strip(" \t") or not inner:
                raise ParseError("Bad name-addr: whitespace inside <>")
            rest = text[gt + 1:].strip(" \t")
            if rest and not rest.startswith(";"):
                raise ParseError("Bad name-addr: junk after '>'")
            return cls(parse_uri(inner), display, parse_params(rest, "header parameters"),
                       True)
        addr, _, ptext = text.partition(";")
        addr = addr.rstrip(" \t")
        if "?" in addr or "," in addr:
            raise ParseError("Bad name-addr: URI with '?' or ',' must be in <>")
        return cls(parse_uri(addr), None, parse_params(ptext, "header parameters"), False)

    def __str__(self) -> str:
        if self.bracketed or self.display is not None or not isinstance(self.uri, SipUri) or \
                (isinstance(self.uri, SipUri) and (self.uri.params or self.uri.headers)):
            prefix = f"{self.display} " if self.display else ""
            return f"{prefix}<{self.uri}>{format_params(self.params)}"
        return f"{self.uri}{format_params(self.params)}"

    @property
    def display_name(self) -> str | None:
        """The display name as text: quotes removed and quoted-pairs undone (§25.1)."""
        if self.display is None:
            return None
        if self.display.startswith('"'):
            return _QUOTED_PAIR.sub(r"\1", self.display[1:-1])
        return self.display

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(self.uri, self.display, set_param(self.params, "tag", tag), self.bracketed)


def _quoted_end(text: str, start: int) -> int:
    """Index just past the quoted-string that opens at `start`, or -1 if unterminated."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return -1


def _split_unquoted(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = _quoted_end(text, i)
            if end < 0:
                raise ParseError("Bad parameters: unterminated quoted string")
            i = end
            continue
        if c == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


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


# RFC 3261 §20.42 via-parm = sent-protocol LWS sent-by *( SEMI via-params ), where
# SLASH, COLON and SEMI allow LWS around them (§25.1) — RFC 4475 §3.1.1.1 uses all of it.
_VIA = re.compile(
    r"""\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)
        \s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)
        \s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?:\s*:\s*([0-9]{1,5}))?
        \s*((?:;.*)?)""",
    re.VERBOSE | re.DOTALL,
)


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
        m = _VIA.fullmatch(text)
        if m is None:
            if "/" not in text:
                raise ParseError("Bad Via: sent-protocol")
            raise ParseError("Bad Via: sent-protocol or sent-by")
        name, version, transport, host, port_text, ptext = m.groups()
        port: int | None = None
        if port_text is not None:
            port = int(port_text)
            if not 0 < port < 65536:
                raise ParseError("Bad Via: invalid port")
        params = parse_params(ptext, "Via") if ptext else []
        return cls(transport, host, port, params, f"{name}/{version}")

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

    @property
    def default_port(self) -> int:
        """RFC 3261 §18.2.2 / §19.1.2: 5061 for TLS, else 5060."""
        return 5061 if self.transport.upper() == "TLS" else 5060

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_params(self, **values: str | None) -> Via:
        params = self.params
        for k, v in values.items():
            params = set_param(params, k, v)
        return Via(self.transport, self.host, self.port, params, self.protocol)

    def stamped(self, source: tuple[str, int]) -> Via:
        """The Via a server keeps after receiving a request from `source` (ip, port).

        RFC 3261 §18.2.1: add `received` when sent-by's host differs from the source IP.
        RFC 3581 §4: when `rport` came without a value, fill it with the source port and
        add `received` even when it equals sent-by."""
        ip, port = source
        params = self.params
        if self.rport == "":
            params = set_param(params, "rport", str(port))
            params = set_param(params, "received", ip)
        elif self.host.strip("[]") != ip.strip("[]"):
            params = set_param(params, "received", ip)
        else:
            return self
        return Via(self.transport, self.host, self.port, params, self.protocol)

    def response_target(self, source: tuple[str, int]) -> tuple[str, int]:
        """Where a response to this Via goes over UDP: RFC 3261 §18.2.2 with RFC 3581 §4.

        `maddr` wins; then `rport` (its value, or the request's source port when empty)
        with `received` (or the source IP); then `received` or sent-by's host, with
        sent-by's port or the transport's default."""
        maddr = self.param("maddr")
        if maddr:
            return maddr.strip("[]"), self.port or self.default_port
        rport = self.rport
        received = self.received
        if rport is not None:
            host = received.strip("[]") if received else source[0]
            return host, int(rport) if rport.isdigit() else source[1]
        host = received or self.host
        return host.strip("[]"), self.port or self.default_port


def _split_ws(text: str) -> tuple[str, str, str]:
    for i, c in enumerate(text):
        if c in " \t":
            return text[:i], c, text[i + 1:]
    return text, "", ""
