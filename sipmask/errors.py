"""The exception tree. Each error knows how it is answered.

    SipmaskError
    ├── ConfigError            bad config: names file, key path, value; stops start-up
    ├── SipError               answered on the wire with `status` and `reason`
    │   ├── ParseError         malformed message (400, or dropped when no Via is readable)
    │   ├── MessageTooLarge    over the size limit (400 on UDP, 413-ish; see parser)
    │   ├── NotFoundError      unknown or expired X (404)
    │   ├── ForbiddenError     caller not allowed on X (403)
    │   └── OverloadError      overload / flood (503 with Retry-After)
    ├── TransactionError       an event a transaction state machine cannot take
    ├── CallStateError         an event a call leg state machine cannot take
    ├── StoreError             the bindings store
    │   ├── RefusedError       a rule refuses the write; `field` names the input at fault
    │   │   ├── PoolExhausted  no free X in the tenant's pool
    │   │   └── ConflictError  the pair / number is already bound on X
    │   └── RecordNotFound     no such binding / pool / record (for this tenant)
    └── MediaError             relay / rtpengine failures
        ├── PortsExhausted     no free RTP/RTCP port pair in media.ports
        └── RtpengineError     rtpengine refused a command or did not answer

A SipError that refuses a call also carries `cause` (the CDR's unconnected_cause, CONTRACT
"Call detail records") and `metric` (the sipmask_refusals_total reason), as typed fields:
class defaults a refusal class sets (b2bua.refusals.UnknownX, policy.rules.Blacklisted…) or
values given to the constructor; None leaves the choice to the engine (by status).

`field` on RefusedError feeds the CLI (exit 1, "a: …") and the API
(`{"error": {"field": …, "message": …}}`).
"""

from __future__ import annotations


class SipmaskError(Exception):
    """Root of every error sipmask raises on purpose."""


class ConfigError(SipmaskError):
    """A config file or override that cannot be used. str() is the one line users see."""

    def __init__(self, source: str, path: str, problem: str, value: object = None) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        self.value = value
        shown = "" if value is None else f" (got {_shorten(repr(value))})"
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}{shown}")


def _shorten(text: str, limit: int = 60) -> str:
    """A value echoed in an error line stays one readable line (10**400 is 401 digits)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class SipError(SipmaskError):
    """An error that is answered with a SIP status. h11-style: the error carries its answer."""

    status: int = 500
    default_reason: str = "Server Internal Error"
    cause: str | None = None          # the CDR's unconnected_cause when it refuses a call
    metric: str | None = None         # the refusals metric's reason

    def __init__(self, reason: str | None = None, *, status: int | None = None,
                 retry_after: int | None = None, cause: str | None = None,
                 metric: str | None = None) -> None:
        if status is not None:
            self.status = status
        if cause is not None:
            self.cause = cause
        if metric is not None:
            self.metric = metric
        self.reason = reason or self.default_reason
        self.retry_after = retry_after
        super().__init__(f"{self.status} {self.reason}")


class ParseError(SipError):
    status = 400
    default_reason = "Bad Request"


class MessageTooLarge(ParseError):
    status = 513
    default_reason = "Message Too Large"


class NotFoundError(SipError):
    status = 404
    default_reason = "Not Found"


class ForbiddenError(SipError):
    status = 403
    default_reason = "Forbidden"


class OverloadError(SipError):
    status = 503
    default_reason = "Service Unavailable"


class TransactionError(SipmaskError):
    """A transaction got an event its state does not allow (a programming error upstream)."""


class CallStateError(SipmaskError):
    """A call leg got an event its state does not allow."""


class StoreError(SipmaskError):
    """The bindings store could not do what was asked."""


class RefusedError(StoreError):
    """A rule refuses the request. `field` names the input at fault (a, b, x, ttl, tenant…)."""

    http_status = 422

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class PoolExhausted(RefusedError):
    http_status = 409


class ConflictError(RefusedError):
    http_status = 409


class RecordNotFound(StoreError):
    """No such record, or not this tenant's (which looks the same from outside)."""

    def __init__(self, what: str, key: str) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} {key} not found")


class MediaError(SipmaskError):
    """The media relay or rtpengine failed."""


class PortsExhausted(MediaError):
    """Every RTP/RTCP pair in media.ports is in use (or failed to bind)."""


class RtpengineError(MediaError):
    """rtpengine answered `error` to an ng command, or did not answer in time."""
