"""rtpengine as the media backend, over its ng control protocol.

The ng protocol (rtpengine's docs, "ng Control Protocol"): one UDP datagram per message,
`<cookie> <bencoded dictionary>`. The reply carries the same cookie; rtpengine keeps
recent replies by cookie, so a request resent with the same cookie after a lost reply is
answered from that cache and not run twice. We resend on timeout like Kamailio's
rtpengine module (per-try timeout `media.rtpengine.timeout_ms`, a few tries).

Commands used: `ping`, `offer`, `answer`, `delete`, `query`. The offer/answer flags make
rtpengine behave as the privacy contract needs:
- "ICE": "remove" strips candidates, which carry the party's real addresses;
- "replace": ["origin", "session-connection"] rewrites o= and the session c= to
  rtpengine's interface (without it o= keeps the party's address);
- "direction" only when two named interfaces are configured (one-interface setups, the
  Debian default, need none).
Who rtpengine hears (media.latching, against RTP Bleed), on both offer and answer, for the
side whose SDP it is (rtpengine keeps these per stream). Measured on rtpengine 10.5 in
userspace (tests/integration/test_rtpengine.py):
- strict: "endpoint-learning-off" (the endpoint stays the SDP's address and port) and
  "strict-source" (packets from any other address or port are dropped, before the party's
  first packet too): a stranger's packet neither takes the call's audio nor reaches the
  other party;
- signalled_ip: refused with rtpengine at config load. Measured on 10.5 with
  "endpoint-learning-heuristic", "strict-source" and "SIP-source-address"/"received-from":
  for 3 s after signalling rtpengine moves to the best source seen (the advertised address
  and port, then the same IP on another port, then anything) and forwards what it hears,
  so a stranger sending before the party's first packet is taken, and an SDP with ICE
  lines makes it ignore the SIP source. It cannot hold learning to the signalled IPs,
  which the mode promises; the embedded relay can;
- any: nothing added (rtpengine's default learning, then any source is forwarded: unsafe).
"reject-ICE" (strict): sipmask never does ICE (ICE=remove), and an offerer
rtpengine takes for an ICE agent has its address moved by whatever arrives.
In every mode rtpengine forwards whatever reaches a side's ports before that side's own SDP
is known (streams not yet "filled"); the embedded relay hears nobody then.
An SDP is parsed before rtpengine sees it (400 when malformed, 488 over MAX_MEDIA_LINES
m= lines: each line costs rtpengine ports). A first offer that fails after it was sent
(no answer, an answer without SDP) is deleted in rtpengine, in the background: the engine
only deletes media it was given.
rtpengine 10.5 (Debian 12) replaces only the o= address, not its username, and passes every
line it does not own through (s=, i=, e=, p=, a=tool, a=ssrc cname, vendor lines, a
session-level a=rtcp naming the party): `scrub_identity` applies the SDP privacy rule
(sdp/privacy.py, the one the embedded relay's rewrite applies) to the returned SDP.
Media timeout: rtpengine does not call us back, so the backend watches answered calls with
`query`: each call is checked when its newest RTP "last packet" (rtpengine's wall clock,
whole seconds) would be `media.timeout_s` old, so a call with media flowing costs about one
query per timeout period. A call whose RTP is older than that, and that neither side holds
(a=sendonly / a=inactive in its last SDP, as the embedded relay counts hold), or that
rtpengine no longer knows ("Unknown call-id": its own --timeout deleted it), is reported
once through `on_timeout(call_id)`; the engine ends it with BYE both ways. A query that
fails for another reason (rtpengine unreachable) never ends a call: it is retried. The
hosts' clocks must agree (NTP) when rtpengine runs on another machine.
Tags: rtpengine keys a call's sides by SIP tags. We pass our leg names: the leg that offers
is `from-tag`, the other leg `to-tag` (rtpengine's answer uses the offerer's tag as
from-tag and the answerer's as to-tag, as the SIP From/To of the dialog would).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable, Mapping
from typing import cast

from sipmask.config.schema import HostPort, MediaConfig
from sipmask.errors import ParseError, RtpengineError
from sipmask.media import bencode
from sipmask.media.backend import (
    LEGS,
    CallStats,
    DigitCallback,
    LegStats,
    Playback,
    RecordingOutcome,
    SinkFactory,
    check_media_lines,
    other_leg,
)
from sipmask.media.wav import Audio
from sipmask.sdp import scan
from sipmask.sdp.privacy import scrub

ATTEMPTS = 3
WATCH_INTERVAL_S = 1.0   # how often the media-timeout watch looks for calls due a query
WATCH_BATCH = 32         # queries in flight at once
# What offer and answer always ask for (see the module docstring).
PRIVACY_FLAGS: dict[str, bencode.Encodable] = {
    "ICE": "remove",
    "replace": ["origin", "session-connection"],
}
# What offer and answer ask for per media.latching (see the module docstring).
# The learning mode goes in the flags list ("endpoint-learning-<mode>"): rtpengine 10.5
# reads the "endpoint-learning" key only as a list and ignores it as a string.
LATCHING_FLAGS: dict[str, list[str]] = {
    "strict": ["strict-source", "endpoint-learning-off", "reject-ICE"],
    "any": [],
}


class NgClient(asyncio.DatagramProtocol):
    """A request/reply client for the ng protocol over one connected UDP socket."""

    def __init__(self, target: HostPort, *, timeout_s: float, attempts: int = ATTEMPTS) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, asyncio.Future[dict[str, bencode.Value]]] = {}
        # A random prefix per client, so cookies from a restarted sipmask never match
        # replies rtpengine still caches from the previous run.
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self.resends = 0

    @classmethod
    async def connect(cls, target: HostPort, *, timeout_s: float,
                      attempts: int = ATTEMPTS) -> NgClient:
        client = cls(target, timeout_s=timeout_s, attempts=attempts)
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: client, remote_addr=(target.host, target.port))
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        cookie, _, body = data.partition(b" ")
        waiter = self._pending.get(cookie)
        if waiter is None or waiter.done():
            return          # a late reply to a request we resent or gave up on
        try:
            reply = bencode.decode(body)
        except bencode.BencodeError as exc:
            waiter.set_exception(RtpengineError(f"rtpengine sent an unreadable reply: {exc}"))
            return
        if not isinstance(reply, dict):
            waiter.set_exception(RtpengineError("rtpengine reply is not a dictionary"))
            return
        waiter.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: nothing listens at the ng address. Fail fast.
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(RtpengineError(
                    f"rtpengine at {self.target} unreachable: {exc}"))

    async def request(self, command: str, **params: bencode.Encodable) -> dict[str, bencode.Value]:
        """Send `command` with `params`; the reply dictionary, or RtpengineError for a
        reply with result "error" or none after `attempts` tries."""
        if self.transport is None:
            raise RtpengineError("ng client is not connected")
        cookie = f"{self._prefix}_{next(self._counter)}".encode()
        datagram = cookie + b" " + bencode.encode({"command": command, **params})
        waiter: asyncio.Future[dict[str, bencode.Value]] = (
            asyncio.get_running_loop().create_future())
        self._pending[cookie] = waiter
        try:
            for attempt in range(self.attempts):
                if attempt:
                    self.resends += 1
                self.transport.sendto(datagram)
                try:
                    reply = await asyncio.wait_for(asyncio.shield(waiter), self.timeout_s)
                    break
                except TimeoutError:
                    continue
            else:
                raise RtpengineError(f"no answer from rtpengine at {self.target} to "
                                     f"{command} after {self.attempts} tries")
        finally:
            del self._pending[cookie]
            if not waiter.done():
                waiter.cancel()
        result = reply.get("result")
        if result == b"error":
            reason = _text(reply.get("error-reason", b"no reason given"))
            raise RtpengineError(f"rtpengine refused {command}: {reason}")
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class RtpengineBackend:
    """MediaBackend on rtpengine. Connects on first use, so it can be built outside a loop."""

    def __init__(self, config: MediaConfig, *, interfaces: tuple[str, str] | None = None,
                 attempts: int = ATTEMPTS, on_timeout: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 is_hold: Callable[[bytes], bool] | None = None,
                 watch_interval_s: float = WATCH_INTERVAL_S) -> None:
        self.target = config.rtpengine.ng
        self._timeout_s = config.rtpengine.timeout_ms / 1000
        # The same on every offer and answer (the mode is per backend; signalled_ip, the
        # one that needed the leg's SIP source, is refused with rtpengine at config load).
        self._ng_flags = ng_flags(config.latching, interfaces)
        self._attempts = attempts
        self._client: NgClient | None = None
        self._connecting: asyncio.Lock | None = None
        self._offered: set[str] = set()     # calls rtpengine accepted an offer for
        self._answered: set[str] = set()    # calls with a to-tag known to rtpengine
        self._deleting: set[asyncio.Task[None]] = set()   # deletes of failed first offers
        # The media-timeout watch (module docstring); off without on_timeout.
        self._on_timeout = on_timeout
        self._media_timeout_s = float(config.timeout_s)
        self._clock = clock
        self._is_hold = is_hold if is_hold is not None else _sdp_is_hold
        self._watch_interval_s = watch_interval_s
        self._due: dict[str, float] = {}       # answered call -> when to query it next
        self._held: dict[str, set[str]] = {}   # call -> legs whose last SDP was hold
        self._watcher: asyncio.Task[None] | None = None
        self.watch_queries = 0

    async def client(self) -> NgClient:
        if self._client is None:
            self._connecting = self._connecting or asyncio.Lock()
            async with self._connecting:
                if self._client is None:
                    self._client = await NgClient.connect(
                        self.target, timeout_s=self._timeout_s, attempts=self._attempts)
        return self._client

    async def ping(self) -> None:
        reply = await (await self.client()).request("ping")
        if reply.get("result") != b"pong":
            raise RtpengineError(f"rtpengine answered ping with {reply.get('result')!r}")

    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes:
        _check(sdp)
        params: dict[str, bencode.Encodable] = {
            "call-id": call_id, "from-tag": leg, "sdp": sdp, **self._ng_flags}
        if call_id in self._answered:
            # A re-offer in an established call names the other side too.
            params["to-tag"] = other_leg(leg)
        first = call_id not in self._offered
        try:
            reply = await (await self.client()).request("offer", **params)
            body = scrub_identity(_sdp(reply, "offer"))
        except BaseException:
            # rtpengine may hold the call (it answered, or answered too late): nobody else
            # will delete a first offer that failed. A re-offer's call is the engine's.
            if first:
                self._delete_later(call_id)
            raise
        self._offered.add(call_id)
        self._note_hold(call_id, leg, sdp)
        return body

    def _delete_later(self, call_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._delete_quietly(call_id))
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _delete_quietly(self, call_id: str) -> None:
        with contextlib.suppress(RtpengineError):
            await (await self.client()).request("delete", **{"call-id": call_id})

    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes:
        _check(sdp)
        reply = await (await self.client()).request(
            "answer", **{"call-id": call_id, "from-tag": other_leg(leg), "to-tag": leg,
                         "sdp": sdp, **self._ng_flags})
        self._answered.add(call_id)
        self._note_hold(call_id, leg, sdp)
        if self._on_timeout is not None and call_id not in self._due:
            self._due[call_id] = self._clock() + self._media_timeout_s
            if self._watcher is None:
                self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return scrub_identity(_sdp(reply, "answer"))

    def _note_hold(self, call_id: str, leg: str, sdp: bytes) -> None:
        held = self._held.setdefault(call_id, set())
        if self._is_hold(sdp):
            held.add(leg)
        else:
            held.discard(leg)

    async def _watch(self) -> None:
        """The media-timeout watch: every interval, query the calls that are due."""
        while True:
            await asyncio.sleep(self._watch_interval_s)
            now = self._clock()
            due = [call_id for call_id, at in self._due.items() if at <= now]
            for start in range(0, len(due), WATCH_BATCH):
                await asyncio.gather(*(self._check(c) for c in due[start:start + WATCH_BATCH]))

    async def _check(self, call_id: str) -> None:
        if call_id not in self._due:
            return               # deleted while the batch was waiting
        self.watch_queries += 1
        try:
            reply = await (await self.client()).request("query", **{"call-id": call_id})
        except RtpengineError as exc:
            if "Unknown call-id" in str(exc) and call_id in self._due:
                self._timed_out(call_id)
            elif call_id in self._due:
                self._due[call_id] = self._clock() + self._media_timeout_s / 2
            return
        now = self._clock()
        if call_id not in self._due:
            return
        if self._held.get(call_id):
            self._due[call_id] = now + self._media_timeout_s
            return
        last = last_rtp_at(reply)
        if last is None or now - last >= self._media_timeout_s:
            self._timed_out(call_id)
        else:
            # Not before the newest packet would be timeout_s old (rtpengine counts whole
            # seconds, hence the extra second).
            self._due[call_id] = max(now + self._watch_interval_s,
                                     last + self._media_timeout_s + 1)

    def _timed_out(self, call_id: str) -> None:
        del self._due[call_id]
        assert self._on_timeout is not None
        self._on_timeout(call_id)

    async def query(self, call_id: str) -> CallStats:
        reply = await (await self.client()).request("query", **{"call-id": call_id})
        return call_stats(call_id, reply)

    async def delete(self, call_id: str) -> CallStats:
        """Delete the call in rtpengine; its final counters. rtpengine's delete reply holds
        no counters (it keeps the call for --delete-delay), so a query comes first. A call
        rtpengine does not know (deleted already, timed out there) gives empty counters."""
        self._offered.discard(call_id)
        self._answered.discard(call_id)
        self._due.pop(call_id, None)
        self._held.pop(call_id, None)
        client = await self.client()
        try:
            final = call_stats(call_id, await client.request("query", **{"call-id": call_id}))
        except RtpengineError as exc:
            if "Unknown call-id" not in str(exc):
                raise
            final = CallStats(call_id, LegStats(), LegStats())
        # Unknown call-ids answer "ok" with a warning: deleting twice is harmless.
        await client.request("delete", **{"call-id": call_id})
        return final

    # -- media services: not yet on rtpengine -------------------------------------------
    async def open_early(self, call_id: str, leg: str, offer_sdp: bytes, *,
                         sip_source: str | None = None) -> bytes | None:
        raise RtpengineError("early media is not available with rtpengine yet")

    async def play(self, call_id: str, leg: str, audio: Audio, *,
                   loop: bool = False) -> Playback:
        raise RtpengineError("prompts are not available with rtpengine yet")

    async def stop_play(self, call_id: str, leg: str) -> None:
        return None

    async def collect_digits(self, call_id: str, leg: str, on_digit: DigitCallback, *,
                             inband: bool = False) -> None:
        raise RtpengineError("digits in media are not available with rtpengine yet")

    async def stop_digits(self, call_id: str, leg: str) -> None:
        return None

    async def start_recording(self, call_id: str, open_sink: SinkFactory) -> None:
        raise RtpengineError("recording is not available with rtpengine yet")

    async def stop_recording(self, call_id: str) -> RecordingOutcome | None:
        return None

    async def close(self) -> None:
        for task in list(self._deleting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._client is not None:
            self._client.close()
            self._client = None


def ng_flags(latching: str,
             interfaces: tuple[str, str] | None = None) -> dict[str, bencode.Encodable]:
    """What an offer or answer asks of rtpengine besides call-id, tags and SDP: the privacy
    flags, the media.latching flags for the side whose SDP it is (module docstring) and the
    interfaces, if two are named."""
    flags: dict[str, bencode.Encodable] = dict(PRIVACY_FLAGS)
    listed = list(LATCHING_FLAGS[latching])
    if listed:
        flags["flags"] = listed
    if interfaces is not None:
        flags["direction"] = list(interfaces)
    return flags


def call_stats(call_id: str, reply: Mapping[str, bencode.Value]) -> CallStats:
    """Counters from a `delete` or `query` reply: per tag (our legs), per stream, the
    `stats` rtpengine keeps for what it received from that side; what a side was sent is
    what the other side's streams received."""
    received: dict[str, tuple[int, int]] = {leg: (0, 0) for leg in LEGS}
    tags = reply.get("tags")
    if isinstance(tags, dict):
        for tag, monologue in tags.items():
            if tag not in received or not isinstance(monologue, dict):
                continue
            packets = octets = 0
            for stream in _streams(monologue):
                stats = stream.get("stats")
                if isinstance(stats, dict):
                    packets += _int(stats.get("packets"))
                    octets += _int(stats.get("bytes"))
            received[tag] = (packets, octets)
    a_in, b_in = received["a"], received["b"]
    return CallStats(call_id,
                     LegStats(packets_in=a_in[0], bytes_in=a_in[1],
                              packets_out=b_in[0], bytes_out=b_in[1]),
                     LegStats(packets_in=b_in[0], bytes_in=b_in[1],
                              packets_out=a_in[0], bytes_out=a_in[1]))


def last_rtp_at(reply: Mapping[str, bencode.Value]) -> float | None:
    """The newest "last packet" time (rtpengine's wall clock, seconds) of the call's RTP
    streams, RTCP left out (RFC 3550 §6.2 lets it be 5 s apart or more); None without one.
    rtpengine starts the value at the stream's creation, so a call that never had media
    ages from its start."""
    newest: float | None = None
    tags = reply.get("tags")
    if isinstance(tags, dict):
        for monologue in tags.values():
            if not isinstance(monologue, dict):
                continue
            for stream in _streams(monologue):
                flags = stream.get("flags")
                at = stream.get("last packet")
                if isinstance(flags, list) and b"RTP" in flags and isinstance(at, int):
                    newest = at if newest is None else max(newest, at)
    return None if newest is None else float(newest)


def _check(sdp: bytes) -> None:
    """Refuse before rtpengine sees it: a malformed SDP (ParseError, 400) or one with more
    than MAX_MEDIA_LINES m= lines (SdpError, 488)."""
    check_media_lines(len(scan.scan(sdp).media))


def _sdp_is_hold(sdp: bytes) -> bool:
    try:
        return scan.is_on_hold(scan.scan(sdp))
    except ParseError:
        return False   # the engine refuses bad SDP before it gets here


def _streams(monologue: dict[str, bencode.Value]) -> list[dict[str, bencode.Value]]:
    found: list[dict[str, bencode.Value]] = []
    medias = monologue.get("medias")
    if isinstance(medias, list):
        for media in medias:
            streams = media.get("streams") if isinstance(media, dict) else None
            if isinstance(streams, list):
                found += [s for s in streams if isinstance(s, dict)]
    return found


def scrub_identity(sdp: bytes) -> bytes:
    """The SDP rtpengine returned, through the privacy rule (sdp/privacy.py `scrub`):
    rtpengine's c=, m= and a=rtcp stay; o= user and s= become "-"; what the rule drops
    is dropped."""
    return scrub(sdp)


def _sdp(reply: Mapping[str, bencode.Value], command: str) -> bytes:
    sdp = reply.get("sdp")
    if not isinstance(sdp, bytes):
        raise RtpengineError(f"rtpengine answered {command} without an SDP")
    return sdp


def _int(value: bencode.Value | None) -> int:
    return value if isinstance(value, int) else 0


def _text(value: bencode.Value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
