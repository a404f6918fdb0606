"""From an INVITE and a binding to the real party: who is calling, which X, who answers.

CONTRACT.md "SIP behaviour": the target X is the Request-URI user; the caller is the From
user, or P-Asserted-Identity when the trunk is trusted. Numbers are normalised first.
Refusals are typed errors that carry their SIP status and the CDR's unconnected_cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sipmask import numbers
from sipmask.errors import ForbiddenError, NotFoundError, ParseError
from sipmask.sip.message import Request
from sipmask.sip.uri import AbsoluteUri, NameAddr, SipUri, TelUri, Uri


class RoutableBinding(Protocol):
    """What routing needs of a binding (store.base.Binding satisfies it)."""

    @property
    def mode(self) -> str: ...
    @property
    def a(self) -> str: ...
    @property
    def b(self) -> str | None: ...


@dataclass(frozen=True)
class Route:
    callee: str          # the real number leg B dials
    direction: str       # a_to_b | b_to_a | n_to_a


class Refusal(Exception):
    """Mixin marker: a refusal knows its CDR cause."""

    cause = "not_allowed"


class UnknownX(NotFoundError, Refusal):
    cause = "no_binding"


class NotAllowed(ForbiddenError, Refusal):
    cause = "not_allowed"


def _uri_number(uri: Uri) -> str | None:
    if isinstance(uri, TelUri):
        return uri.phone_number
    if isinstance(uri, SipUri):
        return uri.phone_number
    if isinstance(uri, AbsoluteUri):
        return None
    return None


def target_x(request: Request) -> str:
    """The X dialled: Request-URI user, normalised; anything else is 404 (no such X)."""
    try:
        number = _uri_number(request.parsed_uri)
    except ParseError:
        raise UnknownX("Not Found") from None
    if not number:
        raise UnknownX("Not Found")
    try:
        return numbers.normalise_x(number)
    except numbers.NumberError:
        raise UnknownX("Not Found") from None


def caller_number(request: Request, *, trust_pai: bool) -> str:
    """Who is calling: P-Asserted-Identity on a trusted trunk (RFC 3325 §9.1), else From.

    A caller we cannot read as a real number is refused with 403: number protection must
    know who calls (traceability), and an anonymous caller cannot be matched to a binding.
    """
    candidates: list[str] = []
    if trust_pai:
        candidates.extend(request.headers.get_all("p-asserted-identity"))
    from_value = request.headers.get("from")
    if from_value is not None:
        candidates.append(from_value)
    for value in candidates:
        try:
            number = _uri_number(NameAddr.parse(value).uri)
            if number:
                return numbers.normalise_real(number)
        except (ParseError, numbers.NumberError):
            continue
    raise NotAllowed("Forbidden")


def route(binding: RoutableBinding | None, caller: str) -> Route:
    """Binding + caller → the callee. None (no live binding on X) is 404 (CONTRACT)."""
    if binding is None:
        raise UnknownX("Not Found")
    if binding.mode == "axb":
        if caller == binding.a and binding.b is not None:
            return Route(binding.b, "a_to_b")
        if caller == binding.b:
            return Route(binding.a, "b_to_a")
        raise NotAllowed("Forbidden")
    if binding.mode == "axn":
        if caller == binding.a:
            raise NotAllowed("Forbidden")   # A calling its own X would loop
        return Route(binding.a, "n_to_a")
    raise NotAllowed("Forbidden")            # a mode this version does not route
