"""URIs (`sip:`, `sips:`, `tel:`), name-addr values and Via, parsed and written back.

`SipUri.parse(text)` and `str(uri)` are symmetric for the forms RFC 3261 §19.1 allows;
parameters keep their order and case. The user part is kept as written (escaped);
`user_unescaped` decodes it (§19.1.2).

We are strict where RFC 4475 §3.1.2 asks for a 400 (whitespace inside `<…>`, unbalanced
quotes, a display name that is not tokens, empty parameters) and liberal elsewhere: a user
part may hold any visible character but `@`, `:`, `<`, `>` and `"`, because trunks send
`*21#` and friends unescaped.

Speed: `NameAddr.parse`, `SipUri.parse`, `parse_uri` and `Via.parse` first try one
precompiled pattern for the common well-formed shapes (ASCII, no quotes inside parameters,
no escapes in a quoted display name, no LWS, no password or `?headers`). A fast pattern only
ever accepts a subset of what the full parser accepts and captures the same pieces; anything
else falls back to the full parser, which has the last word on what is valid and which error
is raised (tests/unit/sip/test_uri_fast.py holds the two to that). What a fast match found
is kept as text until it is read: parameters are split on first access to `params` (every
fast parameter is `;name` or `;name=value` with no whitespace or quote, so the split cannot
fail; `tag`, `branch` and `param()` look into the text without splitting it), and a fast
name-addr builds its SipUri on first access to `uri`. The values are __slots__ classes with
the dataclasses' constructors, equality and repr. The pieces of a fast name-addr or sip: URI
match are remembered by text in a bounded table (`_SEEN_*`), since From, To and Contact come
back on every message of a dialog; each parse still builds a new value
(tests/unit/sip/test_uri_speed.py holds the table to the code before it).
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
    return _find_param(params, name.lower())


def _find_in_text(text: str, low: str) -> str | None:
    """_find_param on a fast match's unsplit parameters. It keeps no list: a list kept by a
    value outlives the young GC generation, and a tag read must not cost that."""
    if not text:
        return None
    if text.startswith(low, 1):
        # The first parameter is the one asked for, as written (From's tag, Via's branch).
        after = len(low) + 1
        c = text[after:after + 1]
        if c == "=":
            end = text.find(";", after)
            return text[after + 1:] if end < 0 else text[after + 1:end]
        if c in ("", ";"):
            return ""
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        if name == low or name.lower() == low:
            return value if eq else ""
    return None


def _find_param(params: Params, low: str) -> str | None:
    """get_param for a name already in lower case."""
    for k, v in params:
        if k == low or k.lower() == low:          # most peers write names in lower case
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

# Pieces of the fast patterns. Classes are positive and ASCII (one bitmap test a character
# in the regex engine) and each a subset of what the full pattern allows at that place; no
# piece holds `@`, so a user part still ends at the only `@`, as in the full pattern.
# Parameters are one run of characters `;` included: _fast_params_ok then refuses the empty
# parameters parse_params refuses. A name is what comes before a parameter's first `=`, so it
# holds only _PARAM_NAME characters; values may hold anything the run allows.
_FAST_PARAMS = r"(;[A-Za-z0-9\-_.!~*'()%&+$`\[\]/:=;]*|)"
_FAST_HOST = r"([A-Za-z0-9\-._]+|\[[0-9A-Fa-f:.]+\])"
# RFC 3261 §25.1 port, 1-65535 without leading zeros (the full parser takes those and 0).
_FAST_PORT = (r"(?::([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|"
              r"655[0-2][0-9]|6553[0-5]))?")
# user / telephone-subscriber characters (§25.1 unreserved, escaped, user-unreserved and
# the `;` of user parameters) plus `#`, which trunks send unescaped (`*21#`).
_FAST_USER = r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/#]"


def _fast_params_ok(text: str) -> bool:
    """The parameter runs of a fast match, joined, hold no empty parameter (`;;`, `;=`, a
    trailing `;`), which parse_params would refuse (RFC 3261 §25.1 generic-param)."""
    return ";;" not in text and ";=" not in text and text[-1:] != ";"


def _split_params(text: str) -> Params:
    """Parameters text a fast pattern matched (`;a=1;b` or ''), as parse_params gives them."""
    out: Params = []
    if not text:
        return out
    append = out.append
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        append((name, value if eq else None))
    return out


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


# The common sip: URI (RFC 3261 §19.1.1): scheme in one case, no password, no `?headers`.
_FAST_SIP = rf"(sips?|SIPS?):(?:({_FAST_USER}+)@)?{_FAST_HOST}{_FAST_PORT}{_FAST_PARAMS}"
_FAST_SIP_URI = re.compile(_FAST_SIP)

_new = object.__new__

# Fast parses remembered by their text. The same From, To and Contact values come back on
# every message of a dialog (the INVITE, its responses, the ACK, the BYE) and are parsed
# again for each, and a dialog parses its stored local and remote URIs for every request it
# builds. What is kept is the pieces a fast match found, never a value: each parse still
# returns a new object, so nothing one caller does to its value can reach another's. Only
# fast matches are kept (whatever the full parser has to decide, it decides each time), so
# a kept text gives exactly what parsing it again would. Bounded: a peer may send endless
# distinct values; at `_SEEN_MAX` entries the table starts again empty (dropping only the
# oldest costs more: a dict walks its deleted slots to find its first key).
_SEEN_MAX = 2048
_SipPieces = tuple[str, str | None, str, str | None, str]
_NameAddrPieces = tuple[tuple[str, str | None, str, str | None, str], str | None, str, bool]
_SEEN_URIS: dict[str, _SipPieces] = {}
_SEEN_NAME_ADDRS: dict[str, _NameAddrPieces] = {}


def _forget_seen() -> None:
    """Drop every remembered parse (tests use it to compare the fast and full parsers)."""
    _SEEN_URIS.clear()
    _SEEN_NAME_ADDRS.clear()


class _LazyParams:
    """What SipUri, NameAddr and Via share: `params` kept as raw text by a fast parse and
    split on first access, and value equality over `_fields()` within one class (mutable,
    so unhashable, as the dataclasses they replaced were)."""

    __slots__ = ("_params", "_ptext")
    _params: Params | None           # None: not split yet, `_ptext` holds them
    _ptext: str

    @property
    def params(self) -> Params:
        params = self._params
        if params is None:
            params = self._params = _split_params(self._ptext)
        return params

    @params.setter
    def params(self, value: Params) -> None:
        self._params = value

    def _fields(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _LazyParams)
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]


class SipUri(_LazyParams):
    """A sip: or sips: URI. `params` of a fast-parsed URI are split on first access."""

    __slots__ = ("headers", "host", "password", "port", "scheme", "user")
    __match_args__ = ("scheme", "user", "host", "port", "password", "params", "headers")

    scheme: str                      # "sip" or "sips", as written
    user: str | None
    host: str                        # IPv6 kept with brackets
    port: int | None
    password: str | None
    headers: str                     # the `?h=v&…` part, without `?`

    def __init__(self, scheme: str, user: str | None, host: str, port: int | None = None,
                 password: str | None = None, params: Params | None = None,
                 headers: str = "") -> None:
        self.scheme = scheme
        self.user = user
        self.host = host
        self.port = port
        self.password = password
        self._params = [] if params is None else params
        self._ptext = ""
        self.headers = headers

    def _fields(self) -> tuple[object, ...]:
        return (self.scheme, self.user, self.host, self.port, self.password, self.params,
                self.headers)

    def __repr__(self) -> str:
        return (f"SipUri(scheme={self.scheme!r}, user={self.user!r}, host={self.host!r}, "
                f"port={self.port!r}, password={self.password!r}, params={self.params!r}, "
                f"headers={self.headers!r})")

    @classmethod
    def parse(cls, text: str) -> SipUri:
        uri = _seen_sip_uri(text)
        return cls._parse_full(text) if uri is None else uri

    @classmethod
    def _parse_full(cls, text: str) -> SipUri:
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

    def _has_params(self) -> bool:
        return bool(self._params) if self._params is not None else bool(self._ptext)

    def __str__(self) -> str:
        out = self.scheme + ":"
        if self.user is not None:
            out += self.user if self.password is None else f"{self.user}:{self.password}"
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        # Unsplit parameters print as they came: _split_params and format_params are inverse.
        out += self._ptext if self._params is None else format_params(self._params)
        if self.headers:
            out += "?" + self.headers
        return out

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
        if self._params is None:
            return _find_in_text(self._ptext, name.lower())
        return get_param(self._params, name)


def _seen_sip_uri(text: str) -> SipUri | None:
    """The SipUri of a text the fast pattern accepts (remembered or matched now), else
    None for the full parser to decide."""
    pieces = _SEEN_URIS.get(text)
    if pieces is None:
        m = _FAST_SIP_URI.fullmatch(text)
        if m is None:
            return None
        scheme, user, host, port, ptext = m.groups()
        if not _fast_params_ok(ptext):
            return None
        pieces = (scheme, user, host, port, ptext)
        if len(_SEEN_URIS) >= _SEEN_MAX:
            _SEEN_URIS.clear()
        _SEEN_URIS[text] = pieces
    return _fast_sip_uri(*pieces)


def _fast_sip_uri(scheme: str, user: str | None, host: str, port: str | None,
                  ptext: str) -> SipUri:
    """The SipUri of a fast match's pieces. Built without __init__: this runs for every
    From, To and Contact whose URI is read."""
    uri: SipUri = _new(SipUri)
    uri.scheme = scheme
    uri.user = user
    uri.host = host
    uri.port = None if port is None else int(port)
    uri.password = None
    uri._params = None
    uri._ptext = ptext
    uri.headers = ""
    return uri


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
    uri = _seen_sip_uri(text)                        # most Request-URIs and Contacts
    if uri is not None:
        return uri
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


# The common name-addr shapes. Bracketed: an optional display name (a quoted string
# without quoted-pairs, or tokens not starting with whitespace, which the full parser would
# strip), `<` a fast sip: URI `>`, header parameters. Bare addr-spec (§20.10): a sip: URI
# whose user has no `;`, `?` or `,` (the full parser splits the header parameters off at the
# first `;`), then header parameters.
_FAST_NAME_ADDR = re.compile(
    rf'(?:("[^"\\]*")[ \t]*|(?!\s)({_DISPLAY_TOKENS.pattern})[ \t]*)?<{_FAST_SIP}>'
    rf"{_FAST_PARAMS}")
_FAST_ADDR_SPEC = re.compile(
    rf"(sips?|SIPS?):(?:([A-Za-z0-9\-_.!~*'()%&=+$/#]+)@)?{_FAST_HOST}{_FAST_PORT}"
    rf"{_FAST_PARAMS}")


class NameAddr(_LazyParams):
    """A From/To/Contact/Route value: `"Name" <uri>;tag=…` or a bare addr-spec.

    For a bare addr-spec, parameters after the URI belong to the header, not the URI
    (RFC 3261 §20.10): `sip:a@b;tag=1` has header param tag=1, and a URI holding `,`, `?`
    or `;` must be in angle brackets.
    """

    __slots__ = ("_uri", "_uri_pieces", "bracketed", "display")
    __match_args__ = ("uri", "display", "params", "bracketed")

    display: str | None              # as written, quotes included
    bracketed: bool
    _uri: Uri | None                 # None: not built yet, `_uri_pieces` hold a fast match's
    _uri_pieces: tuple[str, str | None, str, str | None, str]

    def __init__(self, uri: Uri, display: str | None = None, params: Params | None = None,
                 bracketed: bool = True) -> None:
        self._uri = uri
        self.display = display
        self._params = [] if params is None else params
        self._ptext = ""
        self.bracketed = bracketed

    @property
    def uri(self) -> Uri:
        uri = self._uri
        if uri is None:
            uri = self._uri = _fast_sip_uri(*self._uri_pieces)
        return uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value

    def _fields(self) -> tuple[object, ...]:
        return (self.uri, self.display, self.params, self.bracketed)

    def __repr__(self) -> str:
        return (f"NameAddr(uri={self.uri!r}, display={self.display!r}, "
                f"params={self.params!r}, bracketed={self.bracketed!r})")

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        pieces = _SEEN_NAME_ADDRS.get(text)
        if pieces is None:
            m = _FAST_NAME_ADDR.fullmatch(text)
            if m is not None:
                quoted, words, scheme, user, host, port, uparams, hparams = m.groups()
                if not _fast_params_ok(uparams + hparams):
                    return cls._parse_full(text)
                pieces = ((scheme, user, host, port, uparams),
                          quoted if words is None else words, hparams, True)
            else:
                pieces = _fast_addr_spec_pieces(text)
                if pieces is None:
                    return cls._parse_full(text)
            if len(_SEEN_NAME_ADDRS) >= _SEEN_MAX:
                _SEEN_NAME_ADDRS.clear()
            _SEEN_NAME_ADDRS[text] = pieces
        # Built without __init__, as _fast_sip_uri builds: From and To of every message.
        addr: NameAddr = _new(NameAddr)
        addr._uri = None
        addr._params = None
        addr._uri_pieces, addr.display, addr._ptext, addr.bracketed = pieces
        return addr

    @classmethod
    def _parse_full(cls, text: str) -> NameAddr:
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
        params = self._ptext if self._params is None else format_params(self._params)
        if self._uri is None:
            # A fast match whose URI was never read: printed from its pieces, as
            # SipUri.__str__ would print them, and bracketed on the same conditions.
            scheme, user, host, port, uparams = self._uri_pieces
            text = f"{scheme}:{host}" if user is None else f"{scheme}:{user}@{host}"
            if port is not None:
                text += ":" + port
            if self.bracketed or self.display is not None or uparams:
                prefix = f"{self.display} " if self.display else ""
                return f"{prefix}<{text}{uparams}>{params}"
            return text + params
        uri = self.uri
        if self.bracketed or self.display is not None or not isinstance(uri, SipUri) or \
                uri._has_params() or uri.headers:
            prefix = f"{self.display} " if self.display else ""
            return f"{prefix}<{uri}>{params}"
        return f"{uri}{params}"

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
        # Read for every message by the transaction, dialog and call layers.
        params = self._params
        if params is None:
            return _find_in_text(self._ptext, "tag")
        return _find_param(params, "tag")

    def _same_address(self) -> NameAddr:
        """A NameAddr with this one's URI (built or not), display name and brackets; the
        caller sets its parameters."""
        addr: NameAddr = _new(NameAddr)
        uri = addr._uri = self._uri
        if uri is None:
            addr._uri_pieces = self._uri_pieces  # the URI stays unbuilt (dialog.py's From/To)
        addr.display = self.display
        addr.bracketed = self.bracketed
        return addr

    def with_tag(self, tag: str) -> NameAddr:
        addr = self._same_address()
        ptext = self._ptext
        if self._params is None and tag.isalnum() and tag.isascii() and \
                _find_in_text(ptext, "tag") is None:
            # set_param appends a parameter that is absent; on unsplit text that is
            # `;tag=…` at the end, and a tag of letters and digits keeps the text splittable.
            addr._params = None
            addr._ptext = ptext + ";tag=" + tag
        else:
            addr._params = set_param(self.params, "tag", tag)
            addr._ptext = ""
        return addr

    def without_tag(self) -> NameAddr:
        """This address with no `tag` parameter (a dialog's local and remote URI, §12.1)."""
        addr = self._same_address()
        ptext = self._ptext
        if self._params is None and (not ptext or (ptext.startswith(";tag=")
                                                   and ptext.find(";", 5) < 0)):
            addr._params = None                   # no parameter, or only the tag: none left
            addr._ptext = ""
        else:
            addr._params = [(k, v) for k, v in self.params if k.lower() != "tag"]
            addr._ptext = ""
        return addr


def _fast_addr_spec_pieces(text: str) -> _NameAddrPieces | None:
    """What NameAddr.parse keeps for a bare addr-spec the fast pattern accepts, else None."""
    m = _FAST_ADDR_SPEC.fullmatch(text)
    if m is None:
        return None
    scheme, user, host, port, hparams = m.groups()
    if not _fast_params_ok(hparams):
        return None
    return (scheme, user, host, port, ""), None, hparams, False


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


# The common Via (§20.42): one space before sent-by, no LWS elsewhere, plain parameters.
_VIA_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_FAST_VIA = re.compile(
    rf"({_VIA_TOKEN})/({_VIA_TOKEN})/({_VIA_TOKEN}) {_FAST_HOST}{_FAST_PORT}{_FAST_PARAMS}")


class Via(_LazyParams):
    """One Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK…;rport;received=…`."""

    __slots__ = ("host", "port", "protocol", "transport")
    __match_args__ = ("transport", "host", "port", "params", "protocol")

    transport: str                   # "UDP", "TCP", "TLS", … as written
    host: str
    port: int | None
    protocol: str

    def __init__(self, transport: str, host: str, port: int | None = None,
                 params: Params | None = None, protocol: str = "SIP/2.0") -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self._params = [] if params is None else params
        self._ptext = ""
        self.protocol = protocol

    def _fields(self) -> tuple[object, ...]:
        return (self.transport, self.host, self.port, self.params, self.protocol)

    def __repr__(self) -> str:
        return (f"Via(transport={self.transport!r}, host={self.host!r}, port={self.port!r}, "
                f"params={self.params!r}, protocol={self.protocol!r})")

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _FAST_VIA.fullmatch(text)
        if m is not None:
            name, version, transport, host, port_text, ptext = m.groups()
            if _fast_params_ok(ptext):
                via: Via = _new(Via)
                via.transport = transport
                via.host = host
                via.port = None if port_text is None else int(port_text)
                via._params = None
                via._ptext = ptext
                via.protocol = "SIP/2.0" if name == "SIP" and version == "2.0" else \
                    f"{name}/{version}"
                return via
        return cls._parse_full(text)

    @classmethod
    def _parse_full(cls, text: str) -> Via:
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
        params = self._ptext if self._params is None else format_params(self._params)
        return f"{self.protocol}/{self.transport} {self.host}{port}{params}"

    @property
    def branch(self) -> str | None:
        params = self._params
        if params is None:
            return _find_in_text(self._ptext, "branch")
        return _find_param(params, "branch")

    @property
    def rport(self) -> str | None:
        """'' when the client asked for rport (RFC 3581 §3), the port when filled in."""
        params = self._params
        if params is None:
            return _find_in_text(self._ptext, "rport")
        return _find_param(params, "rport")

    @property
    def received(self) -> str | None:
        params = self._params
        if params is None:
            return _find_in_text(self._ptext, "received")
        return _find_param(params, "received")

    @property
    def default_port(self) -> int:
        """RFC 3261 §18.2.2 / §19.1.2: 5061 for TLS, else 5060."""
        return 5061 if self.transport.upper() == "TLS" else 5060

    def param(self, name: str) -> str | None:
        if self._params is None:
            return _find_in_text(self._ptext, name.lower())
        return get_param(self._params, name)

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
        if self._params is None:
            return self._stamped_text(ip, port)
        params = self.params
        if self.rport == "":
            params = set_param(params, "rport", str(port))
            params = set_param(params, "received", ip)
        elif self.host.strip("[]") != ip.strip("[]"):
            params = set_param(params, "received", ip)
        else:
            return self
        return Via(self.transport, self.host, self.port, params, self.protocol)

    def _stamped_text(self, ip: str, port: int) -> Via:
        """`stamped` for unsplit parameters, on the text: both set_param calls in one pass
        (the first `rport` / `received` takes the value, written name kept, later ones
        dropped, an absent `received` appended), and self when the text comes out the
        same (a Via stamped already). The new values hold no `;`, so the text stays
        splittable."""
        text = self._ptext
        rport = _find_in_text(text, "rport")
        if rport == "":
            fill: str | None = str(port)
        elif self.host.strip("[]") != ip.strip("[]"):
            fill = None
        else:
            return self
        out: list[str] = []
        placed_rport = placed_received = False
        for part in text[1:].split(";") if text else ():
            name = part.partition("=")[0]
            low = name.lower()
            if fill is not None and low == "rport":
                if not placed_rport:
                    out.append(f";{name}={fill}")
                    placed_rport = True
            elif low == "received":
                if not placed_received:
                    out.append(f";{name}={ip}")
                    placed_received = True
            else:
                out.append(";" + part)
        if not placed_received:
            out.append(";received=" + ip)
        stamped_text = "".join(out)
        if stamped_text == text:
            return self
        via: Via = _new(Via)            # this Via with the new unsplit parameters
        via.transport = self.transport
        via.host = self.host
        via.port = self.port
        via._params = None
        via._ptext = stamped_text
        via.protocol = self.protocol
        return via

    def response_target(self, source: tuple[str, int]) -> tuple[str, int]:
        """Where a response to this Via goes over UDP (RFC 3261 §18.2.2, RFC 3581 §4), on a
        public edge: always the IP the request came from, which is what §18.2.2's `received`
        names whenever sent-by differs from it; the source port with `rport`, else
        sent-by's port or the transport's default. `maddr`, and a `received` or `rport`
        value the peer wrote itself, are not followed: they would let anyone point our
        responses (a 100, a 4xx) at a third party."""
        if self.rport is not None:
            return source[0], source[1]
        return source[0], self.port or self.default_port


def _split_ws(text: str) -> tuple[str, str, str]:
    for i, c in enumerate(text):
        if c in " \t":
            return text[:i], c, text[i + 1:]
    return text, "", ""
