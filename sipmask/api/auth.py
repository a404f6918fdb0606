"""Bearer tokens: each tenant's `config.tenants.*.token` maps to that tenant, each
operator's `config.operators.*.token` to that operator.

The token alone decides who asks (RFC 6750 §2.1 header form). Every configured token is
compared with hmac.compare_digest, and all of them on every request, so neither a byte-wise
early exit nor which token matched shows in the response time. An operator token traces
across tenants (GET /v1/trace) and does nothing else; a tenant token does everything else
and never traces (403 either way: the token is valid, the request is not its to make).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from sipmask.api.inputs import ApiError
from sipmask.config.schema import Config, OperatorConfig, TenantConfig

DEMO_TOKEN = "demo-token"

# RFC 6750 §3: a 401 carries the scheme; an invalid token says so with error=invalid_token.
_CHALLENGE = 'Bearer realm="sipmask"'


TENANT, OPERATOR = "tenant", "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str                      # TENANT | OPERATOR
    name: str


@dataclass(frozen=True, slots=True)
class TokenTable:
    entries: tuple[tuple[bytes, Principal], ...]

    @classmethod
    def from_tenants(cls, tenants: Mapping[str, TenantConfig],
                     operators: Mapping[str, OperatorConfig] | None = None) -> TokenTable:
        # An empty token would let "Bearer " in; such a tenant can only use the CLI.
        entries = [(t.token.encode(), Principal(TENANT, name))
                   for name, t in tenants.items() if t.token]
        entries += [(o.token.encode(), Principal(OPERATOR, name))
                    for name, o in (operators or {}).items() if o.token]
        return cls(tuple(entries))

    @classmethod
    def from_config(cls, config: Config) -> TokenTable:
        return cls.from_tenants(config.tenants, config.operators)

    def identify(self, authorization: str | None) -> Principal:
        """Who the Authorization header's token names, or ApiError 401."""
        if not authorization:
            raise ApiError(401, "authorization", "a bearer token is required",
                           {"WWW-Authenticate": _CHALLENGE})
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "authorization", "expected: Authorization: Bearer <token>",
                           {"WWW-Authenticate": _CHALLENGE})
        # Non-ASCII text cannot be a configured token's bytes in a header; utf-8 keeps the
        # comparison total instead of raising on it.
        offered = token.strip().encode("utf-8", "surrogateescape")
        found: Principal | None = None
        for secret, principal in self.entries:
            if hmac.compare_digest(offered, secret):
                found = principal
        if found is None:
            raise ApiError(401, "authorization", "unknown token",
                           {"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'})
        return found

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant whose token the header carries; 401 unknown, 403 an operator's."""
        who = self.identify(authorization)
        if who.kind != TENANT:
            raise ApiError(403, "authorization", "an operator token only traces "
                                                 "(GET /v1/trace); use a tenant's token")
        return who.name

    def operator_for(self, authorization: str | None) -> str:
        """The operator whose token the header carries; 401 unknown, 403 a tenant's."""
        who = self.identify(authorization)
        if who.kind != OPERATOR:
            raise ApiError(403, "authorization", "tracing needs an operator token "
                                                 "(operators.<name>.token)")
        return who.name

    def demo_tokens(self) -> list[str]:
        """Tenants still on the sample config's token."""
        return [p.name for secret, p in self.entries
                if p.kind == TENANT and secret == DEMO_TOKEN.encode()]
