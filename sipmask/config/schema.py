"""The typed configuration. Every key users may write is a field here, with its default.

Scalar types that need parsing (`udp://host:port`, `30000-39999`, CIDR blocks, X ranges)
are small frozen classes with a `parse(str)` classmethod; the loader calls it and turns a
ValueError into a ConfigError naming the key path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from sipmask import numbers
from sipmask.sip import grammar
from sipmask.sip.transports import ALL as TRANSPORTS
from sipmask.sip.transports import Transport


@dataclass(frozen=True)
class Endpoint:
    """`udp://127.0.0.1:5060`, `tcp://[::1]:5060`, `tls://127.0.0.1:5061`."""

    transport: Transport
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in TRANSPORTS:
            raise ValueError("expected udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT")
        host, port = _split_host_port(rest)
        return cls(scheme.lower(), host, port)  # type: ignore[arg-type]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


class _OneOrMany:
    """Marks a tuple key that also takes a single value for a list of one (the loader)."""

    def __repr__(self) -> str:
        return "ONE_OR_MANY"


ONE_OR_MANY = _OneOrMany()
# A host name as RFC 3261 §25.1 `hostname` allows it (letters, digits, '-', '.'): the SIP
# grammar's rule for names sipmask looks up.
_HOSTNAME = re.compile(grammar.STRICT_HOSTNAME)


@dataclass(frozen=True)
class TrunkUri:
    """A trunk's target: `udp://sbc.carrier.example:5060`, `tls://10.0.0.5:5061`,
    `tcp://[2001:db8::5]:5060`. Without a port a host name is looked up by SRV and an
    address takes the transport's default port (RFC 3263 §4.2, sip/locate.py)."""

    transport: Transport
    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> TrunkUri:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in TRANSPORTS:
            raise ValueError("expected udp://HOST[:PORT], tcp://HOST[:PORT] or "
                             "tls://HOST[:PORT]")
        port: int | None = None
        if rest.startswith("[") and "]:" in rest:
            host, port = _split_host_port(rest)
        elif rest.startswith("[") or rest.count(":") > 1:
            host = rest.removeprefix("[").removesuffix("]")      # IPv6, no port
        elif ":" in rest:
            host, port = _split_host_port(rest)
        else:
            host = rest
        if not (_HOSTNAME.fullmatch(host) if ":" not in host else _is_ipv6(host)):
            raise ValueError(f"not an IP address or host name: {host!r}")
        return cls(scheme.lower(), host, port)  # type: ignore[arg-type]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.transport}://{host}{port}"


@dataclass(frozen=True)
class HostPort:
    """`127.0.0.1:8080`."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, port = _split_host_port(text)
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class PortRange:
    """`30000-39999`, inclusive. RTP wants even ports; the allocator takes pairs from it."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        lo, sep, hi = str(text).partition("-")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise ValueError("expected FIRST-LAST, e.g. 30000-39999")
        first, last = int(lo), int(hi)
        if not (1024 <= first < last <= 65535):
            raise ValueError("ports must satisfy 1024 <= first < last <= 65535")
        if last - first < 3:
            raise ValueError("the range must hold at least two RTP/RTCP pairs")
        return cls(first, last)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Network:
    """A CIDR block such as `127.0.0.0/8` or a single address."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    @classmethod
    def parse(cls, text: str) -> Network:
        try:
            return cls(ipaddress.ip_network(str(text), strict=False))
        except ValueError as exc:
            raise ValueError(f"not an address or CIDR block: {exc}") from None

    def __contains__(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        # A dual-stack socket sees IPv4 peers as ::ffff:a.b.c.d.
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return (mapped or ip) in self.network

    def __str__(self) -> str:
        return str(self.network)


@dataclass(frozen=True)
class NumberRange:
    """An inclusive range of X numbers: `700100000000000-700100000009999`."""

    first: str
    last: str

    @classmethod
    def parse(cls, text: str) -> NumberRange:
        lo, sep, hi = str(text).partition("-")
        if not sep:
            lo = hi = str(text)
        lo, hi = lo.strip(), hi.strip()
        for end in (lo, hi):
            if not numbers.is_x(end):
                raise ValueError("pool ends must be 15-digit numbers starting with 700")
        if int(lo) > int(hi):
            raise ValueError("pool range runs backwards")
        return cls(lo, hi)

    def __len__(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, x: str) -> bool:
        return len(x) == numbers.X_LENGTH and self.first <= x <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


_PORT = re.compile(grammar.PORT)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT")
    if not host:
        raise ValueError("host is empty")
    # The SIP grammar's port rule (1-65535, ASCII digits), the one a peer's ports are read by.
    if _PORT.fullmatch(port_text) is None:
        raise ValueError("port must be a number from 1 to 65535")
    return host, int(port_text)


@dataclass(frozen=True)
class TimersConfig:
    """RFC 3261 §17.1.1.1 timer bases, in milliseconds."""

    t1_ms: int = 500
    t2_ms: int = 4000
    t4_ms: int = 5000


@dataclass(frozen=True)
class TlsConfig:
    """SIP over TLS (RFC 3261 §26.2): our certificate chain and key (PEM), and the CA bundle
    that peers are verified against (None: peers are not asked for or checked against one)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


@dataclass(frozen=True)
class SipConfig:
    listen: tuple[Endpoint, ...] = (
        Endpoint("udp", "127.0.0.1", 5060),
        Endpoint("tcp", "127.0.0.1", 5060),
    )
    advertise: str = "127.0.0.1"
    max_message_bytes: int = 65535
    timers: TimersConfig = field(default_factory=TimersConfig)
    ring_timeout_s: int = 60
    send_pai: bool = False
    tcp_idle_timeout_s: int = 300
    drain_timeout_s: int = 30
    tcp_max_connections: int = 4096
    tcp_max_per_ip: int = 64          # inbound TCP/TLS connections one source IP may hold
    tcp_message_timeout_s: int = 10   # a message must be complete this long after its 1st byte
    tls: TlsConfig = field(default_factory=TlsConfig)
    # Names this process in the store's answered-call journal, so nodes sharing one store
    # repair only their own (or a dead peer's) calls. None: the first sip.listen host:port.
    node_id: str | None = None
    # Where `serve` writes its process id, for `sipmask reload` (SIGHUP). None: not written.
    pid_file: Path | None = Path("var/sipmask.pid")

    @property
    def node(self) -> str:
        if self.node_id:
            return self.node_id
        first = self.listen[0]
        return f"{first.host}:{first.port}"


@dataclass(frozen=True)
class TrunkConfig:
    # Where legs to real numbers go: tried in order (issue 14 §4, RFC 3263 §4.3).
    outbound: Annotated[tuple[TrunkUri, ...], ONE_OR_MANY] = (TrunkUri("udp", "127.0.0.1", 5090),)
    inbound_allow: tuple[Network, ...] = (Network.parse("127.0.0.0/8"),)
    trust_pai: bool = False
    # OPTIONS to each target this often when there are two or more; one that does not
    # answer (or answers 503) is tried last until it answers again. 0: off.
    probe_interval_s: float = 30.0
    # A leg-B INVITE with no response at all (not even 100 Trying) this long goes to the
    # next target; also a probe's deadline. 0: Timer B (64*T1) decides.
    failover_timeout_ms: int = 2000
    # Callers on this trunk key the AXE extension with in-band tones too (a trunk that
    # sends neither RFC 4733 nor INFO); the embedded relay only (rtpengine hears no tones).
    inband_dtmf: bool = False


@dataclass(frozen=True)
class StoreConfig:
    # lmdb: embedded, one host (`path`); postgres: shared by many hosts (`dsn`, a libpq URI;
    # several hosts with target_session_attrs=read-write fail over; the password comes
    # from PGPASSWORD or ~/.pgpass, never from a log line).
    backend: Literal["lmdb", "postgres"] = "lmdb"
    path: Path = Path("var/sipmask.lmdb")
    dsn: str | None = None
    map_size_mb: int = 64
    sweep_interval_s: int = 5
    pool_size: int = 10            # postgres: connections per process (threads; +2 the loop's)
    lookup_threads: int = 4        # postgres: lookups the loop's connection does not answer
    lookup_queue: int = 1024       # postgres: lookups waiting beyond this are refused (503)
    # 32 random bytes, mode 0600: real numbers are sealed with it (store/crypto.py). LMDB
    # makes it on first start when missing; PostgreSQL refuses to start without it (every
    # node shares one). Relative paths resolve against the working directory.
    key_file: Path = Path("var/sipmask.key")


@dataclass(frozen=True)
class RtpengineConfig:
    ng: HostPort = HostPort("127.0.0.1", 2223)
    timeout_ms: int = 1000
    # Where sipmask listens, from start-up, for rtpengine's DTMF log: rtpengine must run
    # with --dtmf-log-dest set to this address. None: RFC 4733 keys are not heard (INFO
    # keys still are). Events are taken only from the ng host (media/rtpengine.py).
    dtmf_log: HostPort | None = None
    # rtpengine's --recording-dir (with --recording-method=pcap), on this host: sipmask
    # turns each recorded call's pcap there into its sealed recording and removes the pcap.
    # None: calls through rtpengine are not recorded (the CDR's recording stays null).
    recording_dir: Path | None = None
    # Where sipmask writes each prompt as a WAV for rtpengine's `play media` to read (it runs
    # on this host). None: a private temporary directory, removed on close; set it when
    # rtpengine cannot see sipmask's /tmp (systemd PrivateTmp, another mount namespace).
    prompt_dir: Path | None = None


@dataclass(frozen=True)
class MediaConfig:
    backend: Literal["relay", "rtpengine"] = "relay"
    address: str = "127.0.0.1"
    ports: PortRange = PortRange(30000, 39999)
    timeout_s: int = 60
    # Where a leg's media may come from (RTP Bleed): strict = only the address and port its
    # SDP names; signalled_ip = any port on the SDP's or the leg's SIP source IP; any = the
    # first source to speak (unsafe: a stranger can take the call's audio).
    latching: Literal["strict", "signalled_ip", "any"] = "strict"
    rtpengine: RtpengineConfig = field(default_factory=RtpengineConfig)


@dataclass(frozen=True)
class ApiConfig:
    listen: HostPort | None = HostPort("127.0.0.1", 8080)
    max_connections: int = 256        # open HTTP connections; beyond: closed at once
    header_timeout_s: int = 10        # a request's head must arrive within this
    keepalive_s: int = 15             # an idle keep-alive connection is closed after this


@dataclass(frozen=True)
class CdrConfig:
    # Older CDRs, and the history of bindings ended longer ago (trace), are swept; 0: never.
    retention_days: int = 180


@dataclass(frozen=True)
class OperatorConfig:
    """The platform operator (and through it the regulator): its API token traces any X
    across tenants (GET /v1/trace) and does nothing else. None: no API access."""

    token: str | None = None


@dataclass(frozen=True)
class NumberPrefix:
    """A blacklist entry: a national number or its first digits (`1380000`, `010`);
    separators and a +86/0086 country prefix are dropped, as numbers.normalise does."""

    digits: str

    @classmethod
    def parse(cls, text: str) -> NumberPrefix:
        digits = "".join(ch for ch in str(text) if ch not in " -.()")
        for country in ("+86", "0086"):
            if digits.startswith(country) and len(digits) > len(country):
                digits = digits[len(country):]
        if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
            raise ValueError("a blacklist entry is up to 20 digits (a number or a prefix)")
        return cls(digits)

    def __str__(self) -> str:
        return self.digits


# The announcements (media/prompt.ANNOUNCEMENTS), as keys of `announcements` and of a
# tenant's `announcements` overrides.
ANNOUNCEMENT_KEYS = ("unbound", "callee_notice", "ext_prompt", "recording_notice", "not_allowed")
MAX_EXT_DIGITS = 8        # tenants.<t>.ext_digits is 1..8 (an AXE extension's length)
DEFAULT_EXT_DIGITS = 4


@dataclass(frozen=True)
class AnnouncementsConfig:
    """WAV files (8 kHz mono; checked at load) played as early media; "default" is the
    packaged prompt, null plays none."""

    unbound: str | None = "default"            # to a caller of an X with no binding, then 404
    callee_notice: str | None = None           # to the callee after answer
    ext_prompt: str | None = "default"         # AXE: "enter the extension, then #"
    recording_notice: str | None = "default"   # to both sides before a recorded call bridges
    not_allowed: str | None = None             # to a caller a binding refuses, then 403


@dataclass(frozen=True)
class RecordingConfig:
    """Recorded calls: one stereo WAV per call (caller left, callee right) under
    `dir/<tenant>/`; files older than retention_days are swept (0: kept for ever)."""

    dir: Path = Path("var/recordings")
    retention_days: int = 30


@dataclass(frozen=True)
class TenantConfig:
    token: str
    pools: tuple[NumberRange, ...] = ()
    blacklist: tuple[NumberPrefix, ...] = ()   # callers refused (403) on every X of the tenant
    ext_digits: int = DEFAULT_EXT_DIGITS       # AXE extensions: this many digits (1..8)
    record: bool = False                       # record every call of the tenant's bindings
    # Per-tenant announcement overrides: a key of ANNOUNCEMENT_KEYS -> a WAV file,
    # "default" or null; a key not given takes the top-level `announcements` value.
    announcements: dict[str, str | None] = field(default_factory=dict)

    def announcement(self, key: str, default: AnnouncementsConfig) -> str | None:
        """What `announcements.<key>` is for this tenant: its override, else the default."""
        if key in self.announcements:
            return self.announcements[key]
        value: str | None = getattr(default, key)
        return value


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    mask_numbers: bool = True
    format: Literal["console", "json"] = "console"


@dataclass(frozen=True)
class WebhookConfig:
    url: str | None = None
    secret: str | None = None
    timeout_s: int = 5          # a POST not answered in this long counts as failed
    max_backoff_s: int = 60     # retries back off from 1 s, doubling, up to this


@dataclass(frozen=True)
class EventsConfig:
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    outbox_max: int = 1_000_000   # events kept for a receiver that is down; 0: no cap


@dataclass(frozen=True)
class RateConfig:
    """A token bucket: `rate` attempts per second on average, `burst` at once; rate 0: off."""

    rate: float = 0.0
    burst: int = 0


@dataclass(frozen=True)
class PolicyConfig:
    """Who may call, how often (policy/). Binding fields override the per-X defaults."""

    # Per source IP: a trunk peer sends every call of its trunk from one address, so this
    # only stops a host that floods (503 + Retry-After), never a busy trunk.
    source_flood: RateConfig = RateConfig(2000.0, 4000)
    per_caller: RateConfig = field(default_factory=RateConfig)    # 403, cause rate_limited
    per_x: RateConfig = field(default_factory=RateConfig)
    per_tenant: RateConfig = field(default_factory=RateConfig)
    max_concurrent_per_x: int = 0     # calls in progress on one X; 0: no cap (486 beyond)
    max_duration_s: int = 0           # answered calls end (BYE both ways) after this; 0: never
    overload_lag_ms: int = 200        # smoothed event-loop lag above this: new INVITEs 503
    retry_after_s: int = 5            # Retry-After on 503 refusals
    max_tracked_keys: int = 100_000   # buckets kept per limiter (LRU), so memory is bounded


@dataclass(frozen=True)
class Config:
    sip: SipConfig = field(default_factory=SipConfig)
    trunks: dict[str, TrunkConfig] = field(default_factory=lambda: {"carrier": TrunkConfig()})
    store: StoreConfig = field(default_factory=StoreConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    cdr: CdrConfig = field(default_factory=CdrConfig)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    operators: dict[str, OperatorConfig] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    announcements: AnnouncementsConfig = field(default_factory=AnnouncementsConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
