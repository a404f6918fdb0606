"""From an INVITE and a binding to the real party: who is calling, which X, who answers.

CONTRACT.md "SIP behaviour": the target X is the Request-URI user; the caller is the From
user, or P-Asserted-Identity when the trunk is trusted. Numbers are normalised first.
Refusals are typed errors that carry their SIP status and the CDR's unconnected_cause.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sipmask import numbers
from sipmask.b2bua.refusals import (
    BadExtension,
    NeedsExtension,
    NotAllowed,
    UnknownX,
    UnsupportedScheme,
)
from sipmask.config.schema import TrunkConfig
from sipmask.errors import ParseError
from sipmask.sip.message import Request
from sipmask.sip.transports import Address, Transport
from sipmask.sip.uri import AbsoluteUri, NameAddr, SipUri, TelUri, Uri, parse_uri

if TYPE_CHECKING:       # the store package opens LMDB on import (see route)
    from sipmask.store.base import Binding, Target


# The Request-URI schemes sipmask serves: a number is reached through sip, sips or tel.
URI_SCHEMES = frozenset({"sip", "sips", "tel"})
# Option tags a caller may require of sipmask on its own leg: none (reliable provisionals,
# session timers and the rest are handled per leg on leg B, or end to end).
SUPPORTED_ON_A: frozenset[str] = frozenset()


def trunk_for(trunks: Mapping[str, TrunkConfig], host: str
              ) -> tuple[str | None, TrunkConfig | None]:
    """The trunk whose `inbound_allow` holds `host` (the first, in config order), or
    (None, None): the one rule for who may send INVITEs and open SIP connections."""
    for name, trunk in trunks.items():
        if any(host in net for net in trunk.inbound_allow):
            return name, trunk
    return None, None


def check_request(request: Request) -> None:
    """RFC 3261 §8.2.2, for a request outside a dialog that sipmask answers itself (INVITE,
    OPTIONS): first the Request-URI scheme (§8.2.2.1: 416), then Require (§8.2.2.3: 420
    with the tags sipmask does not support). RFC 4475 §3.3.2, §3.3.3 and §3.3.5 test it."""
    if request.uri.partition(":")[0].lower() not in URI_SCHEMES:
        raise UnsupportedScheme()
    required = [t.strip() for t in request.headers.get_all("require") if t.strip()]
    unsupported = [t for t in required if t.lower() not in SUPPORTED_ON_A]
    if unsupported:
        raise BadExtension(unsupported)


def uri_host(host: str) -> str:
    """A host as a URI names it: an IPv6 address in brackets (RFC 3261 §25.1 IPv6reference)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def hop_of(uri_text: str) -> tuple[Address, Transport] | None:
    """Where a request to the URI goes when it names an IP address (None: it does not; no
    DNS in the call path). RFC 3261 §19.1.2 and RFC 3263 §4.1/§4.2: a sips URI is TLS, else
    the transport parameter (tcp, tls; anything else UDP); the default port is 5061 for TLS
    and 5060 otherwise."""
    try:
        uri = parse_uri(uri_text)
    except ParseError:
        return None
    if not isinstance(uri, SipUri) or not _is_ip(uri.host):
        return None
    param = (uri.param("transport") or "").lower()
    transport: Transport
    if uri.scheme.lower() == "sips" or param == "tls":
        transport = "tls"
    elif param == "tcp":
        transport = "tcp"
    else:
        transport = "udp"
    default_port = 5061 if transport == "tls" else 5060
    return (uri.host.strip("[]"), uri.port or default_port), transport


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _uri_number(uri: Uri) -> str | None:
    if isinstance(uri, TelUri):
        return uri.phone_number
    if isinstance(uri, SipUri):
        return uri.phone_number
    if isinstance(uri, AbsoluteUri):
        return None
    return None


def dialled(request: Request) -> tuple[str, str | None]:
    """The 700 number dialled and the AXE extension keyed after it, if any: the
    Request-URI user, normalised (CONTRACT: "a Request-URI user of X followed directly by
    E's digits reaches the binding at once"); anything else is 404 (no such X)."""
    try:
        number = _uri_number(request.parsed_uri)
    except ParseError:
        raise UnknownX("Not Found") from None
    if not number:
        raise UnknownX("Not Found")
    try:
        return numbers.normalise_x_ext(number)
    except numbers.NumberError:
        raise UnknownX("Not Found") from None


def target_x(request: Request) -> str:
    """The 700 number dialled, without an extension (what a CDR and a rate count)."""
    return dialled(request)[0]


def caller_number(request: Request, *, trust_pai: bool) -> str:
    """Who is calling: P-Asserted-Identity on a trusted trunk (RFC 3325 §9.1), else From.

    A caller we cannot read as a real number is refused with 403: number protection must
    know who calls (traceability), and an anonymous caller cannot be matched to a binding.
    """
    if trust_pai:
        for value in request.headers.get_all("p-asserted-identity"):
            try:
                number = _real_number(NameAddr.parse(value))
            except ParseError:
                continue
            if number is not None:
                return number
    try:
        number = _real_number(request.from_)      # From as the parser read it, not again
    except ParseError:
        number = None
    if number is not None:
        return number
    raise NotAllowed("Forbidden")


def _real_number(addr: NameAddr) -> str | None:
    """The real number `addr` names, normalised; None when it names none (no number, or
    not a real one)."""
    try:
        number = _uri_number(addr.uri)
        return numbers.normalise_real(number) if number else None
    except (ParseError, numbers.NumberError):
        return None


def route(binding: Binding | None, number: str, caller: str,
          ext: str | None = None) -> Target:
    """Binding + the number dialled + caller (+ the extension given) -> the new leg, by
    store.base.target (the one place the modes' rules live), with its refusals as SIP
    errors: no live binding 404 (CONTRACT), not this caller's 403, an AXE number without
    its extension NeedsExtension (404 unless the caller is asked for it)."""
    # Imported here: the rule is pure, but sipmask.store's package imports LMDB, which the
    # sans-IO core must not (tests/unit/test_import_contract.py); the shell has it loaded.
    from sipmask.store.base import Refusal, Target, target
    if binding is None:
        raise UnknownX("Not Found")
    found = target(binding, number, caller, ext)
    if isinstance(found, Target):
        return found
    if found is Refusal.ASK_EXT:
        raise NeedsExtension("Not Found")
    raise NotAllowed("Forbidden")
