"""Bearer tokens: each tenant's `config.tenants.*.token` maps to that tenant.

The token alone decides the tenant (RFC 6750 §2.1 header form). Every configured token is
compared with hmac.compare_digest, and all of them on every request, so neither a byte-wise
early exit nor which tenant matched shows in the response time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from sipmask.api.inputs import ApiError
from sipmask.config.schema import TenantConfig

DEMO_TOKEN = "demo-token"

# RFC 6750 §3: a 401 carries the scheme; an invalid token says so with error=invalid_token.
_CHALLENGE = 'Bearer realm="sipmask"'


@dataclass(frozen=True, slots=True)
class TokenTable:
    entries: tuple[tuple[bytes, str], ...]

    @classmethod
    def from_tenants(cls, tenants: Mapping[str, TenantConfig]) -> TokenTable:
        # An empty token would let "Bearer " in; such a tenant can only use the CLI.
        return cls(tuple((t.token.encode(), name) for name, t in tenants.items() if t.token))

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant whose token the Authorization header carries, or ApiError 401."""
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
        found: str | None = None
        for secret, tenant in self.entries:
            if hmac.compare_digest(offered, secret):
                found = tenant
        if found is None:
            raise ApiError(401, "authorization", "unknown token",
                           {"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'})
        return found

    def demo_tokens(self) -> list[str]:
        """Tenants still on the sample config's token."""
        return [tenant for secret, tenant in self.entries if secret == DEMO_TOKEN.encode()]
