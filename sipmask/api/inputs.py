"""What an API request may carry, checked for shape before the store checks the rules.

Two kinds of "no": the request's *shape* is wrong (not JSON, a field of the wrong type, a
field we do not know, a required field missing) → 400 here, naming the field; the request
is well formed but a rule refuses it (a bad number, X not in the pool, a ttl out of range)
→ the store raises RefusedError and its `http_status` answers (422 or 409). Keeping the two
apart means a client can tell a bug in its own code from a business refusal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sipmask import numbers
from sipmask.cdr.record import parse_time
from sipmask.errors import RefusedError, SipmaskError
from sipmask.store import rules
from sipmask.store.base import DEFAULT_TTL, BindingRequest

MAX_BODY_BYTES = 64 * 1024
MAX_LIST_LIMIT = 1000
MAX_CDR_LIMIT = 10000

# Binding ids are 16 hex digits today (store/rules.py); anything far from that shape cannot
# name a binding, and LMDB refuses empty keys and keys over 511 bytes, so such ids are
# answered 404 before they reach the store.
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")

_CREATE_FIELDS = ("mode", "a", "b", "x", "ttl", "tenant", "direction", "max_duration_s",
                  "max_concurrent", "blacklist", "ext", "y", "record")
_CREATE_KEYS = frozenset(_CREATE_FIELDS)
_MORE_KEYS = frozenset(("direction", "max_duration_s", "max_concurrent", "blacklist", "ext",
                        "y", "record"))


class ApiError(SipmaskError):
    """An HTTP-level refusal: the status, the input at fault and why (no number echoed)."""

    def __init__(self, status: int, field: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.field = field
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(f"{status} {field}: {message}")


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, field, message)


def parse_json_object(body: bytes) -> dict[str, object]:
    """The request body as a JSON object, or 400 naming `body`."""
    if not body.strip():
        raise bad("body", "a JSON object is required")
    try:
        value = json.loads(body)
    except RecursionError:
        # json recurses per nesting level: 64 KiB of "[" would otherwise surface as a 500.
        raise bad("body", "JSON nested too deeply") from None
    except ValueError as exc:   # JSONDecodeError and UnicodeDecodeError alike
        raise bad("body", f"not valid JSON: {exc.__class__.__name__}") from None
    if not isinstance(value, dict):
        raise bad("body", "must be a JSON object")
    return value


def _unknown(value: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    for key in value:
        if key not in allowed:
            # The key is the client's own text; cut it so an error never carries a payload.
            raise bad(key[:64], "unknown field")


def _string(value: Mapping[str, object], key: str, *, required: bool) -> str | None:
    raw = value.get(key)
    if raw is None:
        if required:
            raise bad(key, "required")
        return None
    if not isinstance(raw, str):
        raise bad(key, "must be a string")
    return raw


def _ttl(raw: object) -> int:
    # bool is an int subclass in Python; JSON true is not a number of seconds.
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise bad("ttl", "must be a whole number of seconds")
    return raw


def create_request(body: bytes, tenant: str) -> BindingRequest:
    """POST /v1/bindings → a BindingRequest for the token's tenant.

    `tenant` in the body is accepted only when it names the caller's own tenant: the token
    decides the tenant, a body never picks another (CONTRACT "a tenant sees and binds only
    its own").
    """
    value = parse_json_object(body)
    if not _CREATE_KEYS.issuperset(value):      # one set test on the usual, clean body
        _unknown(value, _CREATE_FIELDS)
    get = value.get
    mode = _string(value, "mode", required=True)
    a = _string(value, "a", required=True)
    b = _string(value, "b", required=False)
    x = _string(value, "x", required=False)
    raw_ttl = get("ttl")
    ttl = DEFAULT_TTL if raw_ttl is None else _ttl(raw_ttl)
    named = _string(value, "tenant", required=False)
    if named is not None and named != tenant:
        raise ApiError(403, "tenant", "a token acts for its own tenant only")
    assert mode is not None and a is not None
    if _MORE_KEYS.isdisjoint(value):      # no optional field: nothing more to check
        return BindingRequest(mode=mode, a=a, b=b, x=x, ttl=ttl, tenant=tenant)
    ext = _string(value, "ext", required=False)
    y = _string(value, "y", required=False)
    record = get("record")
    if record is None:
        record = False
    elif not isinstance(record, bool):
        raise bad("record", "must be true or false")
    direction = _string(value, "direction", required=False) or "both"
    limits: dict[str, int | None] = {}
    for key in ("max_duration_s", "max_concurrent"):
        raw = get(key)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int)):
            raise bad(key, "must be a whole number")
        limits[key] = raw if isinstance(raw, int) else None
    blacklist = get("blacklist") or []
    if not isinstance(blacklist, list) or not all(isinstance(e, str) for e in blacklist):
        raise bad("blacklist", "must be a list of number strings")
    # The store checks the values themselves (RefusedError names the field: 422).
    return BindingRequest(mode=mode, a=a, b=b, x=x, ttl=ttl, tenant=tenant,
                          direction=direction, max_duration_s=limits["max_duration_s"],
                          max_concurrent=limits["max_concurrent"], blacklist=tuple(blacklist),
                          ext=ext, y=y, record=record)


def patch_ttl(body: bytes) -> int:
    """PATCH /v1/bindings/{id} → the new ttl (0: no expiry; the store checks the range)."""
    value = parse_json_object(body)
    _unknown(value, ("ttl",))
    if value.get("ttl") is None:
        raise bad("ttl", "required")
    return _ttl(value["ttl"])


def binding_id(raw: str) -> str:
    """A path id that cannot name a binding is a 404, like any other unknown id."""
    if not _ID.fullmatch(raw):
        raise ApiError(404, "id", "no such binding")
    return raw


def _query_only(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    for key in query:
        if key not in allowed:
            raise bad(key[:64], "unknown query parameter")


def _limit(query: Mapping[str, str], default: int, most: int) -> int:
    """Not digits: 400; out of 1..most: 422 (store.rules.whole, the range check everything
    shares)."""
    raw = query.get("limit")
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit():
        raise bad("limit", f"must be a whole number from 1 to {most}")
    # int() refuses more than 4,300 digits; a run longer than the bound's own is past it.
    digits = raw.lstrip("0") or "0"
    value = int(digits) if len(digits) <= len(str(most)) else most + 1
    return rules.whole("limit", value, 1, most, f"a whole number from 1 to {most}")


@dataclass(frozen=True, slots=True)
class ListQuery:
    x: str | None
    limit: int


def list_query(query: Mapping[str, str]) -> ListQuery:
    """GET /v1/bindings?x=…&limit=… (both optional; the store normalises and checks x)."""
    _query_only(query, ("x", "limit"))
    x = query.get("x")
    return ListQuery(x=x if x else None, limit=_limit(query, MAX_LIST_LIMIT, MAX_LIST_LIMIT))


@dataclass(frozen=True, slots=True)
class CdrQuery:
    since: float | None
    limit: int


def cdr_query(query: Mapping[str, str]) -> CdrQuery:
    """GET /v1/cdrs?since=…&limit=…; since is Unix seconds or ISO-8601 (UTC by default)."""
    _query_only(query, ("since", "limit"))
    since: float | None = None
    raw = query.get("since")
    if raw:
        try:
            since = parse_time(raw)
        except (ValueError, OverflowError):
            raise bad("since", "must be Unix seconds or an ISO-8601 time") from None
        rules.moment("since", since)     # out of range (NaN, infinities too): 422
    return CdrQuery(since=since, limit=_limit(query, 1000, MAX_CDR_LIMIT))


@dataclass(frozen=True, slots=True)
class TraceQuery:
    x: str
    at: float


def trace_query(query: Mapping[str, str]) -> TraceQuery:
    """GET /v1/trace?x=…&at=… (both required): a bad x or at is a 400 naming it, the
    value never echoed (an operator could paste a real number where X goes)."""
    _query_only(query, ("x", "at"))
    raw_x = query.get("x")
    if not raw_x:
        raise bad("x", "required: the 700 number to trace")
    try:
        x = numbers.normalise_x(raw_x)
    except numbers.NumberError as exc:
        raise bad("x", str(exc)) from None
    raw_at = query.get("at")
    if not raw_at:
        raise bad("at", "required: the moment, as Unix seconds or ISO-8601")
    try:
        at = parse_time(raw_at)
    except (ValueError, OverflowError):
        raise bad("at", "must be Unix seconds or an ISO-8601 time") from None
    try:
        rules.moment("at", at)
    except RefusedError as exc:
        raise bad("at", exc.message) from None
    return TraceQuery(x=x, at=at)
