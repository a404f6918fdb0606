"""URIs (`sip:`, `sips:`, `tel:`), name-addr values and Via, parsed and written back.

Each value has one parser: a pattern compiled from `sipmask.sip.grammar` decides whether
the text is valid and captures its pieces in one call, and the value is built from those
pieces through its constructor. When the pattern refuses, a `_why_*` function words the
refusal for the 400's reason phrase; those functions only ever raise, so what is valid is
decided by the grammar alone, the same way for a Request-URI, From, To, Contact, Route and
Via.

`str()` writes a value back as it was parsed, with two normalisations: the LWS the grammar
allows around `;` and `=` of header parameters is dropped, and a port is written as a
number (`05060` as `5060`). Parameters keep their order and case; the user part is kept as
written (escaped), `user_unescaped` decodes it (§19.1.2).

We are strict where RFC 4475 §3.1.2 asks for a 400 (whitespace inside `<…>`, unbalanced
quotes, a display name that is not tokens, empty parameters) and liberal where the grammar
module says so (a user part may hold `*21#` unescaped, hostnames `_`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import unquote

from sipmask.errors import ParseError
from sipmask.sip import grammar
from sipmask.sip.headers import split_outside

Params = list[tuple[str, str | None]]


def _compiled(pattern: str, groups: tuple[str, ...]) -> re.Pattern[str]:
    """`pattern` compiled, checked to hold exactly `groups` in this order: the parsers
    unpack `match.groups()` by position."""
    compiled = re.compile(pattern)
    found = tuple(sorted(compiled.groupindex, key=compiled.groupindex.__getitem__))
    if found != groups or compiled.groups != len(groups):
        raise AssertionError(f"grammar groups {found} are not {groups}")
    return compiled


_URI_GROUPS = ("scheme", "user", "password", "host", "port", "uri_params", "uri_headers")
_SIP_URI = _compiled(grammar.SIP_URI, _URI_GROUPS)
_TEL_URI = _compiled(grammar.TEL_URI, ("number", "uri_params"))
_ABSOLUTE_URI = re.compile(grammar.ABSOLUTE_URI)
_NAME_ADDR = _compiled(grammar.NAME_ADDR, ("display", *_URI_GROUPS, "absolute", "params"))
_ADDR_SPEC = _compiled(grammar.ADDR_SPEC, ("scheme", "user", "password", "host", "port",
                                           "absolute", "params"))
_VIA_PARM = _compiled(grammar.VIA_PARM, ("protocol_name", "protocol_version", "transport",
                                         "host", "port", "params"))
_GENERIC_PARAMS = re.compile(grammar.GENERIC_PARAMS)
_GENERIC_PARAM_PARTS = re.compile(grammar.GENERIC_PARAM_PARTS)
_CANONICAL_PARAM_PARTS = re.compile(grammar.CANONICAL_PARAM_PARTS)
_URI_PARAMETER_PARTS = re.compile(grammar.URI_PARAMETER_PARTS)
_QUOTED_PAIR = re.compile(grammar.QUOTED_PAIR)


# -- parameters ------------------------------------------------------------------------------

# A parameter as `findall` gives it: (name, "=" or "" for a flag parameter, value).
_Found = list[tuple[str, str, str]]


def _listed(found: _Found) -> Params:
    """Found parameters as Params: in order, a flag's value None."""
    return [(name, value if eq else None) for name, eq, value in found]


def _header_params(text: str) -> Params:
    """The generic-params of a run GENERIC_PARAMS matched."""
    return _listed(_GENERIC_PARAM_PARTS.findall(text)) if text else []


def _uri_params(text: str) -> Params:
    """The uri-parameters of a run URI_PARAMETERS matched."""
    return _listed(_URI_PARAMETER_PARTS.findall(text)) if text else []


def _canonical(text: str) -> str:
    """Header parameters GENERIC_PARAMS matched, in canonical form: the LWS the grammar
    allows around ";" and "=" (§25.1 SEMI, EQUAL) left out."""
    if " " in text or "\t" in text:
        return format_params(_header_params(text))
    return text


def parse_params(text: str, what: str) -> Params:
    """`;a=1;b;c=x` (leading `;` optional, LWS around `;` and `=` allowed, §25.1 SEMI and
    EQUAL) as ordered pairs, a flag param's value None; ParseError naming `what`."""
    text = text.strip(" \t")
    if not text:
        return []
    if not text.startswith(";"):
        text = ";" + text
    if _GENERIC_PARAMS.fullmatch(text) is None:
        raise ParseError(_why_params(text, what))
    return _header_params(text)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: Params, name: str) -> str | None:
    """Value of a parameter (case-insensitive name); '' for a flag param, None when absent."""
    return _find_param(params, name.lower())


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


# How a parameter of one name is found: grammar.named_param and grammar.found_param of it,
# compiled, and ";name=" (a first parameter that starts so is the one).
_Rules = tuple[re.Pattern[str], re.Pattern[str], str]


def _named(names: tuple[str, ...], *, uri: bool) -> dict[str, _Rules]:
    """The rules of each name (the parameters sipmask reads); a lookup of another name
    compiles its rules then."""
    return {name: _rules_of(name, uri) for name in names}


def _rules_of(low: str, uri: bool) -> _Rules:
    return (re.compile(grammar.named_param(low, uri=uri)),
            re.compile(grammar.found_param(low, uri=uri)), f";{low}=")


# -- URIs ------------------------------------------------------------------------------------

class _WithParams:
    """What SipUri, NameAddr and Via share: their parameters, and equality within one class
    (mutable, so unhashable).

    The parameters are held as text in canonical form (`;name` or `;name=value` each, as
    `format_params` writes them): `str()` writes it, equality compares it, and a lookup
    (`param`, `tag`, `branch`) is one match of the grammar's rule for a parameter of that
    name. `params` lists them anew on each read (most values are never asked for theirs);
    setting `params` writes the text anew."""

    __slots__ = ("_params_text",)
    _params_text: str
    # Class attributes each subclass sets (ClassVar: mypyc would take them for instance
    # attributes' defaults, which it cannot hold).
    _PARTS: ClassVar[re.Pattern[str]]      # the pattern of one parameter, in three groups
    _NAMED: ClassVar[dict[str, _Rules]]    # the rules of the names sipmask reads
    _URI_PARAMS: ClassVar[bool]            # uri-parameters (else header parameters)

    @property
    def params(self) -> Params:
        return _listed(self._PARTS.findall(self._params_text))

    @params.setter
    def params(self, value: Params) -> None:
        self._params_text = format_params(value)
        self._forget()

    def _forget(self) -> None:
        """The parameters changed: what a subclass kept of them is forgotten."""

    def _param(self, low: str) -> str | None:
        """get_param for a name in lower case ('' for a flag, None when absent)."""
        text = self._params_text
        if not text:
            return None
        rules = self._NAMED.get(low)
        if rules is None:
            rules = _rules_of(low, self._URI_PARAMS)
        if '"' in text:
            # A quoted value may hold ";name=": the parameters before are passed over whole.
            found = rules[0].match(text)
        else:
            first = rules[2]
            if text.startswith(first):
                # The first parameter (where tag and branch usually stand) runs to the next
                # ";", which only starts a parameter here.
                end = text.find(";", len(first))
                return text[len(first):] if end < 0 else text[len(first):end]
            found = rules[1].search(text)
        if found is None:
            return None
        value = found.group(1)
        return "" if value is None else value

    def param(self, name: str) -> str | None:
        return self._param(name.lower())

    def _params_with(self, low: str, value: str | None, text: str | None = None) -> str:
        """These parameters (or `text`, parameters of this kind in canonical form) with
        `low` (a name in lower case) set, as set_param sets it: in place (keeping how its
        name was written, dropping any later one of that name), else appended."""
        if text is None:
            text = self._params_text
        if '"' not in text:
            rules = self._NAMED.get(low)
            find = (rules if rules is not None else _rules_of(low, self._URI_PARAMS))[1]
            found = find.search(text)
            if found is None:
                return f"{text};{low}" if value is None else f"{text};{low}={value}"
            start, end = found.span()
            if find.search(text, end) is None:      # the only one: replaced in the text
                name = text[start + 1:start + 1 + len(low)]
                return (text[:start] + (f";{name}" if value is None else f";{name}={value}")
                        + text[end:])
        return format_params(set_param(_listed(self._PARTS.findall(text)), low, value))

    def _fields(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _WithParams)
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]


class SipUri(_WithParams):
    """A sip: or sips: URI (RFC 3261 §19.1.1)."""

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
                 headers: str = "", params_text: str = "") -> None:
        """`params_text`: the uri-parameters in canonical form (`;a=1;b`, as URI_PARAMETERS
        matched them), what the parsers give; `params` wins when both are given."""
        self.scheme = scheme
        self.user = user
        self.host = host
        self.port = port
        self.password = password
        self._params_text = format_params(params) if params is not None else params_text
        self.headers = headers

    _PARTS = _URI_PARAMETER_PARTS
    _NAMED = _named(("transport", "user", "lr", "maddr", "method", "ttl"), uri=True)
    _URI_PARAMS = True

    @classmethod
    def parse(cls, text: str) -> SipUri:
        m = _SIP_URI.fullmatch(text)
        if m is None:
            raise ParseError(_why_sip_uri(text))
        return _sip_uri(m)

    def _fields(self) -> tuple[object, ...]:
        return (self.scheme, self.user, self.host, self.port, self.password, self._params_text,
                self.headers)

    def __repr__(self) -> str:
        return (f"SipUri(scheme={self.scheme!r}, user={self.user!r}, host={self.host!r}, "
                f"port={self.port!r}, password={self.password!r}, params={self.params!r}, "
                f"headers={self.headers!r})")

    def __str__(self) -> str:
        user = self.user
        if user is not None:
            user = f"{user}@" if self.password is None else f"{user}:{self.password}@"
        port = self.port
        return (f"{self.scheme}:{user or ''}{self.host}{'' if port is None else f':{port}'}"
                f"{self._params_text}{f'?{self.headers}' if self.headers else ''}")

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



def _sip_uri(m: re.Match[str]) -> SipUri:
    """The SipUri of a SIP_URI match."""
    return _sip_uri_of(*m.groups())


def _sip_uri_of(scheme: str, user: str | None, password: str | None, host: str,
                port: str | None, params: str, headers: str | None) -> SipUri:
    """The SipUri of the pieces SIP_URI matched, in its groups' order."""
    return SipUri(scheme, user, host, None if port is None else int(port), password, None,
                  headers or "", params)


@dataclass(slots=True)
class TelUri:
    """RFC 3966 `tel:+86-138-0000-0001;npdi;rn=…`."""

    number: str
    params: Params = field(default_factory=list)
    scheme: str = "tel"

    @classmethod
    def parse(cls, text: str) -> TelUri:
        m = _TEL_URI.fullmatch(text)
        if m is None:
            raise ParseError(_why_tel_uri(text))
        number, params = m.groups()
        return cls(number, _uri_params(params), text[:3])

    def __str__(self) -> str:
        return f"{self.scheme}:{self.number}{format_params(self.params)}"

    @property
    def phone_number(self) -> str:
        return self.number

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)


@dataclass(slots=True)
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
# What match_name_addr finds: the NAME_ADDR (bracketed: True) or ADDR_SPEC (False) match.
NameAddrMatch = tuple[re.Match[str], bool]
# A URI a name-addr holds before it is built (NameAddr.uri): the pieces SIP_URI matched
# (scheme, user, password, host, port, uri-parameters, headers), or the text of a URI of
# another scheme, which the grammar has already checked.
UriPieces = tuple[str, str | None, str | None, str, str | None, str, str | None] | str


def parse_uri(text: str) -> Uri:
    m = _SIP_URI.fullmatch(text)
    if m is not None:
        return _sip_uri(m)
    scheme = text.partition(":")[0].lower()
    if scheme in ("sip", "sips"):
        raise ParseError(_why_sip_uri(text))
    if scheme == "tel":
        return TelUri.parse(text)
    if _ABSOLUTE_URI.fullmatch(text) is None:
        raise ParseError(_why_absolute_uri(text))
    return AbsoluteUri(text)


# -- name-addr -------------------------------------------------------------------------------

class NameAddr(_WithParams):
    """A From/To/Contact/Route value: `"Name" <uri>;tag=…` or a bare addr-spec.

    For a bare addr-spec, parameters after the URI belong to the header, not the URI
    (RFC 3261 §20.10): `sip:a@b;tag=1` has header param tag=1, and a URI holding `,`, `?`
    or `;` must be in angle brackets.
    """

    __slots__ = ("_tag", "_tag_read", "_uri", "_uri_pieces", "bracketed", "display")
    __match_args__ = ("uri", "display", "params", "bracketed")

    display: str | None              # as written, quotes included
    bracketed: bool
    _uri: Uri | None                 # None until built from `_uri_pieces`
    _uri_pieces: UriPieces | None
    # The tag, once read (`_tag_read`): every layer asks the From and To of a message for
    # theirs, several times over.
    _tag: str | None
    _tag_read: bool

    def __init__(self, uri: Uri | None, display: str | None = None,
                 params: Params | None = None, bracketed: bool = True,
                 params_text: str = "", uri_pieces: UriPieces | None = None) -> None:
        """`params_text`: the header parameters in canonical form (`_canonical`), what the
        parsers give; `params` wins when both are given. `uri` None: `uri_pieces` are what
        the grammar matched, built into the URI when it is first read (most From and To
        values are asked for their tag only)."""
        if uri is None and uri_pieces is None:
            raise ValueError("a NameAddr needs its URI or the pieces of one")
        self._uri = uri
        self._uri_pieces = uri_pieces
        self.display = display
        self._params_text = format_params(params) if params is not None else params_text
        self.bracketed = bracketed
        self._tag_read = False

    @property
    def uri(self) -> Uri:
        uri = self._uri
        if uri is None:
            pieces = self._uri_pieces
            assert pieces is not None                 # __init__ has one or the other
            uri = self._uri = parse_uri(pieces) if isinstance(pieces, str) else \
                _sip_uri_of(*pieces)
        return uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value

    _PARTS = _CANONICAL_PARAM_PARTS
    _NAMED = _named(("tag", "expires", "q"), uri=False)
    _URI_PARAMS = False

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        return cls.of_match(match_name_addr(text))

    @classmethod
    def of_match(cls, found: NameAddrMatch) -> NameAddr:
        """The value of what match_name_addr found (the parser checks From and To with it;
        Message builds them from it when they are read). The URI is built when read."""
        m, bracketed = found
        if bracketed:
            display, scheme, user, password, host, port, uri_params, uri_headers, absolute, \
                params = m.groups()
        else:
            scheme, user, password, host, port, absolute, params = m.groups()
            display = uri_headers = None
            uri_params = ""
        pieces: UriPieces
        if absolute is not None:
            pieces = absolute
        else:
            # The rules' groups: a sip: URI has its scheme, host and parameters (maybe "").
            assert scheme is not None and host is not None and uri_params is not None
            pieces = (scheme, user, password, host, port, uri_params, uri_headers)
        assert params is not None
        return cls(None, display, None, bracketed, _canonical(params), pieces)

    def _fields(self) -> tuple[object, ...]:
        return (self.uri, self.display, self._params_text, self.bracketed)

    def __repr__(self) -> str:
        return (f"NameAddr(uri={self.uri!r}, display={self.display!r}, "
                f"params={self.params!r}, bracketed={self.bracketed!r})")

    def __str__(self) -> str:
        params = self._params_text
        uri = self.uri
        if self.bracketed or self.display is not None or not isinstance(uri, SipUri) or \
                uri._params_text or uri.headers:
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
        if self._tag_read:
            return self._tag
        tag = self._tag = self._param("tag")
        self._tag_read = True
        return tag

    def _forget(self) -> None:
        self._tag_read = False

    def with_tag(self, tag: str) -> NameAddr:
        """This address with its `tag` parameter set (in place, or appended)."""
        if self.tag is None:
            # Appended: the canonical text gains one parameter, in the form str() writes.
            tagged = NameAddr(self._uri, self.display, None, self.bracketed,
                              f"{self._params_text};tag={tag}", self._uri_pieces)
        else:
            tagged = NameAddr(self._uri, self.display, set_param(self.params, "tag", tag),
                              self.bracketed, "", self._uri_pieces)
        tagged._tag, tagged._tag_read = tag, True
        return tagged

    def without_tag(self) -> NameAddr:
        """This address with no `tag` parameter (a dialog's local and remote URI, §12.1)."""
        text = self._params_text
        if not text or (text.startswith(";tag=") and text.find(";", 5) < 0):
            # No parameters, or the tag alone (the usual From and To): none left.
            bare = NameAddr(self._uri, self.display, None, self.bracketed, "",
                            self._uri_pieces)
        elif '"' not in text:
            # Every ";" starts a parameter: each ";tag" found (found_param) goes.
            bare = NameAddr(self._uri, self.display, None, self.bracketed,
                            self._NAMED["tag"][1].sub("", text), self._uri_pieces)
        else:
            bare = NameAddr(self._uri, self.display,
                            [(k, v) for k, v in self.params if k.lower() != "tag"],
                            self.bracketed, "", self._uri_pieces)
        bare._tag, bare._tag_read = None, True
        return bare


def match_name_addr(text: str) -> NameAddrMatch:
    """The NAME_ADDR (bracketed: True) or ADDR_SPEC (False) match of `text`; ParseError
    when neither matches. What NameAddr.parse builds from, and all the parser needs to
    check a From, To or Contact value without building one: the grammar checks the URI
    too, whatever its scheme."""
    # A bare addr-spec holds no "<" outside a quoted parameter value, so "<" decides which
    # form to try first; the other one is tried before giving up.
    if "<" in text:
        m = _NAME_ADDR.fullmatch(text)
        if m is not None:
            return m, True
    m = _ADDR_SPEC.fullmatch(text)
    if m is None:
        raise ParseError(_why_name_addr(text))
    return m, False


def written_uri(found: NameAddrMatch) -> str | None:
    """The URI of the name-addr `found` as str() of its value writes it, taken from the
    text it was matched in; None when the text says it otherwise (a port with leading
    zeros, an empty `?`), which only the value can tell."""
    m, bracketed = found
    if bracketed:
        if m.group(9) is not None:                    # tel: or another URI: kept as written
            return m.group(9)
        port, headers = m.group(6, 8)
        start, end = m.start(2), m.end(7 if headers is None else 8)
    else:
        if m.group(6) is not None:
            return m.group(6)
        port, headers = m.group(5), None
        start, end = m.start(1), m.end(4 if port is None else 5)
    if (port is not None and port.startswith("0")) or headers == "":
        return None
    return m.string[start:end]


def check_name_addr(text: str) -> None:
    """ParseError unless NameAddr.parse(text) would give a value, without building one."""
    if ("<" not in text or _NAME_ADDR.fullmatch(text) is None) and \
            _ADDR_SPEC.fullmatch(text) is None:
        raise ParseError(_why_name_addr(text))


def check_uri(text: str) -> bool:
    """ParseError unless parse_uri(text) would give a value, without building one; whether
    it is a sip: or sips: URI with `?headers` (§19.1.1: a Request-URI may not have them)."""
    m = _SIP_URI.fullmatch(text)
    if m is None:
        parse_uri(text)                         # a tel: or other URI, or the refusal
        return False
    return bool(m.group("uri_headers"))


def check_via(text: str) -> None:
    """ParseError unless Via.parse(text) would give a value, without building one."""
    if _VIA_PARM.fullmatch(text) is None:
        raise ParseError(_why_via(text))


# -- Via -------------------------------------------------------------------------------------

class Via(_WithParams):
    """One Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK…;rport;received=…`."""

    __slots__ = ("host", "port", "protocol", "transport")
    __match_args__ = ("transport", "host", "port", "params", "protocol")

    transport: str                   # "UDP", "TCP", "TLS", … as written
    host: str
    port: int | None
    protocol: str

    def __init__(self, transport: str, host: str, port: int | None = None,
                 params: Params | None = None, protocol: str = "SIP/2.0",
                 params_text: str = "") -> None:
        """`params_text`: the via-params in canonical form (`_canonical`), what the parsers
        give; `params` wins when both are given."""
        self.transport = transport
        self.host = host
        self.port = port
        self._params_text = format_params(params) if params is not None else params_text
        self.protocol = protocol

    _PARTS = _CANONICAL_PARAM_PARTS
    _NAMED = _named(("branch", "rport", "received", "maddr", "ttl"), uri=False)
    _URI_PARAMS = False

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _VIA_PARM.fullmatch(text)
        if m is None:
            raise ParseError(_why_via(text))
        name, version, transport, host, port, params = m.groups()
        return cls(transport, host, None if port is None else int(port), None,
                   f"{name}/{version}", _canonical(params))

    def _fields(self) -> tuple[object, ...]:
        return (self.transport, self.host, self.port, self._params_text, self.protocol)

    def __repr__(self) -> str:
        return (f"Via(transport={self.transport!r}, host={self.host!r}, port={self.port!r}, "
                f"params={self.params!r}, protocol={self.protocol!r})")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{self._params_text}"

    @property
    def branch(self) -> str | None:
        return self._param("branch")

    @property
    def rport(self) -> str | None:
        """'' when the client asked for rport (RFC 3581 §3), the port when filled in."""
        return self._param("rport")

    @property
    def received(self) -> str | None:
        return self._param("received")

    @property
    def default_port(self) -> int:
        """RFC 3261 §18.2.2 / §19.1.2: 5061 for TLS, else 5060."""
        return 5061 if self.transport.upper() == "TLS" else 5060

    def with_params(self, **values: str | None) -> Via:
        params = self.params
        for k, v in values.items():
            params = set_param(params, k, v)
        return Via(self.transport, self.host, self.port, params, self.protocol)

    def stamped(self, source: tuple[str, int]) -> Via:
        """The Via a server keeps after receiving a request from `source` (ip, port); this
        Via itself when it says so already (a Via stamped before).

        RFC 3261 §18.2.1: add `received` when sent-by's host differs from the source IP.
        RFC 3581 §4: when `rport` came without a value, fill it with the source port and
        add `received` even when it equals sent-by."""
        ip, port = source
        if self.rport == "":
            text = self._params_with("received", ip, self._params_with("rport", str(port)))
        elif self.host.strip("[]") != ip.strip("[]"):
            text = self._params_with("received", ip)
        else:
            return self
        if text == self._params_text:
            return self
        return Via(self.transport, self.host, self.port, None, self.protocol, text)

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


# -- why a text was refused ------------------------------------------------------------------
# These run only after a grammar pattern said no, to name the problem in the 400's reason
# phrase (RFC 4475 §3.1.2 cases first). They look at the text with the grammar's own
# pieces and always raise or return a reason: they never accept anything.

_QUOTED_STRING = re.compile(grammar.QUOTED_STRING)
_DISPLAY_TOKENS = re.compile(grammar.DISPLAY_TOKENS)
_GEN_PNAME = re.compile(grammar.GEN_PNAME)
_URI_PARAMETERS = re.compile(grammar.URI_PARAMETERS)
_HOST = re.compile(grammar.HOST)
_PORT = re.compile(grammar.PORT)
_SCHEME = re.compile(grammar.SCHEME)
_SENT_PROTOCOL = re.compile(grammar.SWS + grammar.SENT_PROTOCOL)
_VIA_HEAD = re.compile(grammar.SWS + grammar.SENT_PROTOCOL + grammar.LWS + grammar.SENT_BY)
_NOT_IN_URI = frozenset(map(chr, [*range(0x21), 0x7F])) | frozenset('<>"')


def _why_params(text: str, what: str) -> str:
    """Why GENERIC_PARAMS refused `text` (`;name[=value]…`)."""
    for part in split_outside(text, ";", angle=False)[1:]:
        name, _, value = part.partition("=")
        name = name.strip(" \t")
        if not name:
            return f"Bad {what}: empty parameter"
        if _GEN_PNAME.fullmatch(name) is None:
            return f"Bad {what}: invalid parameter name"
        value = value.strip(" \t")
        if value.startswith('"') and _QUOTED_STRING.fullmatch(value) is None:
            return f"Bad {what}: unterminated quoted parameter"
    return f"Bad {what}: invalid parameter"


def _why_host_port(hostport: str, what: str) -> str:
    host = _HOST.match(hostport)
    if host is None:
        if hostport.startswith("[") and "]" not in hostport:
            return f"Bad {what}: unterminated IPv6 reference"
        if not hostport or hostport.startswith(":"):
            return f"Bad {what}: empty host"
        return f"Bad {what}: invalid host"
    rest = hostport[host.end():]
    if rest.count(":") > 1 or (rest.startswith(":") and ":" in rest[1:]):
        return f"Bad {what}: IPv6 address must be in brackets"
    if rest == ":":
        return f"Bad {what}: empty port"
    if rest.startswith(":") and _PORT.fullmatch(rest[1:]) is None:
        return f"Bad {what}: invalid port"
    return f"Bad {what}: invalid host or port"


def _why_sip_uri(text: str) -> str:
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        return "Bad URI: expected sip: or sips:"
    if any(c in _NOT_IN_URI for c in rest):
        return "Bad URI: contains whitespace, controls, quotes or angle brackets"
    if rest.count("@") > 1:
        return "Bad URI: more than one '@'"
    userinfo, at, rest = rest.rpartition("@")
    if at and not userinfo.partition(":")[0]:
        return "Bad URI: empty user part"
    rest = rest.partition("?")[0]
    hostport, semi, params = rest.partition(";")
    if _HOST.fullmatch(hostport) is None and not (
            ":" in hostport and _HOST.fullmatch(hostport.rpartition(":")[0])
            and _PORT.fullmatch(hostport.rpartition(":")[2])):
        return _why_host_port(hostport, "URI")
    if semi and _URI_PARAMETERS.fullmatch(";" + params) is None:
        return "Bad URI: empty or invalid parameter"
    return "Bad URI: invalid sip URI"


def _why_tel_uri(text: str) -> str:
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() != "tel":
        return "Bad URI: expected tel:"
    number = rest.partition(";")[0]
    if not number or not any(c.isdigit() for c in number) or \
            _TEL_URI.fullmatch(f"tel:{number}") is None:
        return "Bad URI: invalid telephone-subscriber"
    return "Bad URI: empty or invalid parameter"


def _why_absolute_uri(text: str) -> str:
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not rest:
        return "Bad URI: no scheme"
    if _SCHEME.fullmatch(scheme) is None:
        return "Bad URI: invalid scheme"
    return "Bad URI: contains whitespace, controls, quotes or angle brackets"


def _why_name_addr(text: str) -> str:
    """Why NAME_ADDR and ADDR_SPEC both refused `text`, in the order RFC 4475 §3.1.2 names
    the problems; the reason of the URI or parameters inside when those are at fault."""
    text = text.strip(" \t")
    if text == "*":
        return "Bad name-addr: '*' is not an address"
    lt = -1
    if text.startswith('"'):
        quoted = _QUOTED_STRING.match(text)
        if quoted is None:
            return "Bad name-addr: unterminated quoted display name"
        after = text[quoted.end():]
        lt = quoted.end() + len(after) - len(after.lstrip(" \t"))
        if text[lt:lt + 1] != "<":
            return "Bad name-addr: display name without <uri>"
    elif "<" in text:
        lt = text.index("<")
        words = text[:lt].strip(" \t")
        if words and _DISPLAY_TOKENS.fullmatch(words) is None:
            return "Bad name-addr: display name must be tokens or a quoted string"
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            return "Bad name-addr: missing '>'"
        inner = text[lt + 1: gt]
        # RFC 3261 §25.1: LAQUOT = SWS "<" and RAQUOT = ">" SWS: no LWS inside.
        if not inner or inner != inner.strip(" \t"):
            return "Bad name-addr: whitespace inside <>"
        rest = text[gt + 1:].strip(" \t")
        if rest and not rest.startswith(";"):
            return "Bad name-addr: junk after '>'"
        return _why_inside(inner, rest)
    addr, semi, params = text.partition(";")
    addr = addr.rstrip(" \t")
    if "?" in addr or "," in addr:
        return "Bad name-addr: URI with '?' or ',' must be in <>"
    return _why_inside(addr, semi + params)


def _why_inside(uri: str, params: str) -> str:
    """The reason of the URI or of the header parameters of a refused name-addr."""
    try:
        parse_uri(uri)
        parse_params(params, "header parameters")
    except ParseError as refused:
        return refused.reason
    return "Bad name-addr"


def _why_via(text: str) -> str:
    head = _VIA_HEAD.match(text)
    if head is None:
        if _SENT_PROTOCOL.match(text) is None:
            return "Bad Via: sent-protocol"
        return "Bad Via: sent-protocol or sent-by"
    rest = text[head.end():].strip(" \t")
    if rest.startswith(":"):
        return "Bad Via: invalid port"
    if not rest.startswith(";"):
        return "Bad Via: junk after sent-by"
    return _why_params(rest, "Via")
