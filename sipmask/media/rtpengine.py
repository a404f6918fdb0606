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

Media services (backend.py), as far as rtpengine 10.5 (Debian, userspace, no kernel
module) carries them; measured in tests/integration/test_rtpengine_services.py:
- Early media: `offer` with the caller's SDP, then an `answer` for leg b with a placeholder
  (sipmask's own early answer, media/early_media.py, at 127.0.0.1 port 9, the discard
  port; at 0.0.0.0 rtpengine took it for hold and answered the caller with c=0.0.0.0 and
  sendonly), whose reply is the 183's SDP. An "a=inactive" placeholder does not do: play media
  then fails ("Failed to start media playback from file"). Every later offer and answer of
  such a call carries the "port-latching" flag: without it rtpengine gives the caller's
  side a new port when the callee's real answer replaces the placeholder, and the caller,
  who took the 183's SDP as the answer (RFC 3261 §13.2.1), would send to a dead port.
- Prompts: `play media` with `file=` (rtpengine reads the file: it must run on this host;
  prompts are written as WAV files into `prompt_dir` once each), "repeat-times" for a
  looped prompt (at most LOOP_TIMES), the reply's "duration" for when it ends; `stop media`.
  rtpengine mixes nothing away: while it plays to a leg it still forwards the other
  party's audio to it, so sipmask mutes the call itself with `block media` and `block DTMF`
  on every tag (block media alone still forwards RFC 4733 packets) and unblocks when the
  last prompt ends. The 183's o= is rtpengine's, scrubbed as every SDP is.
- Keys: rtpengine reports each RFC 4733 event once as JSON to its `--dtmf-log-dest`, blocked
  media or not; sipmask listens there (`dtmf_listen`, packets from rtpengine's host only)
  from its first request on: rtpengine sends from a connected socket, and after an event
  sent while nobody listened the next one is lost ("Error sending DTMF event info to UDP
  socket: Connection refused" in its log), so keys typed while sipmask restarts are lost.
  In-band tones are not reported (nor with "always transcode"): collect_digits(inband=True)
  is refused.
- Recording: `start recording` / `stop recording` with rtpengine's `--recording-method=pcap`
  writes a pcap of what the parties sent into `<recording_dir>/pcaps/<call id>-*.pcap` (the
  "proc" method needs the kernel module). When the recording stops (or the call is
  deleted) sipmask reads the pcap (media/pcap.py) in a worker thread, tells the caller's
  packets from the callee's by the rtpengine port they were sent to, feeds CallRecorder and
  writes the same stereo WAV through the same sink as the embedded relay, then removes the
  pcap and its metadata file. The pcap itself is plain and takes rtpengine's umask (0644
  seen) while the call lasts: rtpengine must run with umask 077 and recording_dir must be
  sipmask's and rtpengine's alone. rtpengine's own "output-destination" is ignored by 10.5.
- `play DTMF` (sending keys to a leg) answers ok but only injects into RTP the leg is
  sending at that moment; sipmask does not use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import hashlib
import itertools
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

from sipmask.config.schema import HostPort, MediaConfig
from sipmask.errors import MediaError, ParseError, RtpengineError
from sipmask.media import bencode
from sipmask.media.backend import (
    LEGS,
    CallStats,
    DigitCallback,
    Leg,
    LegStats,
    Playback,
    PlayEnd,
    RecordingOutcome,
    SinkFactory,
    check_media_lines,
    failure_reason,
    other_leg,
)
from sipmask.media.dtmf import event_key
from sipmask.media.early_media import answer_sdp, offered_streams, plan
from sipmask.media.pcap import PcapError, udp_datagrams
from sipmask.media.recorder import CallRecorder, Party
from sipmask.media.relay import ServiceCounters
from sipmask.media.services import LegMedia, leg_media
from sipmask.media.wav import G711, Audio, encode_wav
from sipmask.sdp import scan
from sipmask.sdp.origin import OriginCounter
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
# A call opened by open_early keeps its ports when the placeholder answer is replaced.
EARLY_FLAG = "port-latching"
PLACEHOLDER_ADDRESS = "127.0.0.1"     # open_early's placeholder answer (see there)
# How many times a looped prompt repeats (rtpengine's "repeat-times"; there is no "for ever").
LOOP_TIMES = 1000


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
                 watch_interval_s: float = WATCH_INTERVAL_S,
                 dtmf_listen: HostPort | None = None,
                 recording_dir: str | Path | None = None,
                 prompt_dir: str | Path | None = None) -> None:
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
        # Media services (module docstring).
        self.services = ServiceCounters()
        self._dtmf_listen = dtmf_listen
        self._dtmf: _DtmfLog | None = None
        self._recording_dir = None if recording_dir is None else Path(recording_dir)
        self._prompt_dir = None if prompt_dir is None else Path(prompt_dir)
        self._own_prompt_dir = False         # made by us (a temporary one): removed on close
        self._prompt_files: dict[str, Path] = {}
        self._bodies: dict[str, dict[str, bytes]] = {}      # call -> leg -> its last SDP
        self._ports: dict[str, dict[str, frozenset[int]]] = {}   # call -> side -> RTP ports
        self._tags: dict[str, set[str]] = {}     # call -> tags rtpengine knows
        self._early: set[str] = set()            # calls opened by open_early
        self._bridged: set[str] = set()          # calls whose second leg has answered
        self._playing: dict[tuple[str, str], _Prompt] = {}
        self._blocked: dict[str, set[str]] = {}   # call -> tags whose media is blocked
        self._digits: dict[tuple[str, str], DigitCallback] = {}
        self._recordings: dict[str, SinkFactory] = {}
        self._outcomes: dict[str, RecordingOutcome] = {}
        self._background: set[asyncio.Task[None]] = set()   # unblocks after a prompt ends

    async def client(self) -> NgClient:
        if self._client is None:
            self._connecting = self._connecting or asyncio.Lock()
            async with self._connecting:
                if self._client is None:
                    if self._dtmf_listen is not None and self._dtmf is None:
                        # Listening from the first request on, not from the first call that
                        # wants keys: rtpengine's log socket is connected, and an event sent
                        # while nobody listens leaves an ICMP error that loses the next one.
                        self._dtmf = await _DtmfLog.listen(self._dtmf_listen,
                                                           self.target.host, self._digit)
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
            "call-id": call_id, "from-tag": leg, "sdp": sdp, **self._flags(call_id)}
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
        self._note_sdp(call_id, leg, sdp, body)
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
                         "sdp": sdp, **self._flags(call_id)})
        self._answered.add(call_id)
        self._note_hold(call_id, leg, sdp)
        if self._on_timeout is not None and call_id not in self._due:
            self._due[call_id] = self._clock() + self._media_timeout_s
            if self._watcher is None:
                self._watcher = asyncio.get_running_loop().create_task(self._watch())
        body = scrub_identity(_sdp(reply, "answer"))
        self._note_sdp(call_id, leg, sdp, body)
        if call_id not in self._bridged:
            # The call's second leg: the parties hear each other, prompts stop.
            self._bridged.add(call_id)
            for key in [k for k in self._playing if k[0] == call_id]:
                await self._stop_prompt(key, PlayEnd.BRIDGED)
        return body

    def _flags(self, call_id: str) -> dict[str, bencode.Encodable]:
        if call_id not in self._early:
            return self._ng_flags
        flags = dict(self._ng_flags)
        listed = flags.get("flags")
        flags["flags"] = [*(listed if isinstance(listed, list) else []), EARLY_FLAG]
        return flags

    def _note_sdp(self, call_id: str, leg: str, sdp: bytes, reply: bytes) -> None:
        """`leg`'s own SDP (for its codecs) and the RTP ports rtpengine's reply gives the
        other leg, where that party sends (to tell its packets apart in a recording)."""
        self._bodies.setdefault(call_id, {})[leg] = sdp
        self._tags.setdefault(call_id, set()).update((leg, other_leg(leg)) if
                                                      call_id in self._answered else (leg,))
        try:
            ports = frozenset(part.port for part in scan.scan(reply).media if part.port)
        except ParseError:
            return
        self._ports.setdefault(call_id, {})[other_leg(leg)] = ports

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
        for key in [k for k in self._playing if k[0] == call_id]:
            self._end_prompt(key, PlayEnd.CLOSED)
        for key in [k for k in self._digits if k[0] == call_id]:
            del self._digits[key]
        open_sink = self._recordings.pop(call_id, None)
        client = await self.client()
        try:
            if open_sink is not None:
                with contextlib.suppress(RtpengineError):
                    await client.request("stop recording", **{"call-id": call_id})
            try:
                final = call_stats(call_id,
                                   await client.request("query", **{"call-id": call_id}))
            except RtpengineError as exc:
                if "Unknown call-id" not in str(exc):
                    raise
                final = CallStats(call_id, LegStats(), LegStats())
            # Unknown call-ids answer "ok" with a warning: deleting twice is harmless.
            await client.request("delete", **{"call-id": call_id})
        finally:
            outcome = (await self._convert(call_id, open_sink) if open_sink is not None
                       else self._outcomes.get(call_id))
            self._forget(call_id)
        return final if outcome is None else dataclasses.replace(final, recording=outcome)

    def _forget(self, call_id: str) -> None:
        for table in (self._bodies, self._ports, self._tags, self._blocked, self._outcomes,
                      self._held):
            table.pop(call_id, None)
        self._early.discard(call_id)
        self._bridged.discard(call_id)

    # -- media services (module docstring) ----------------------------------------------
    async def open_early(self, call_id: str, leg: str, offer_sdp: bytes, *,
                         sip_source: str | None = None) -> bytes | None:
        """The 183's SDP from rtpengine (module docstring), or None (nothing asked of
        rtpengine) when no stream of the offer can carry a prompt."""
        _check(offer_sdp)
        streams = offered_streams(scan.scan(offer_sdp))
        chosen = plan(streams)
        if chosen is None:
            return None
        if call_id in self._offered:
            raise MediaError(f"media for call {call_id} is already open")
        self._early.add(call_id)
        try:
            await self.offer(call_id, leg, offer_sdp, sip_source=sip_source)
        except BaseException:
            self._early.discard(call_id)     # offer() deletes what rtpengine may hold
            raise
        try:
            # The placeholder: sipmask's own early answer at 127.0.0.1, port 9 (discard:
            # what rtpengine forwards there before the callee's answer goes nowhere, and a
            # prompt mutes it anyway; rtpengine needs an answer to give the caller's side its
            # ports). Not 0.0.0.0: rtpengine takes that for hold and answers the caller with
            # c=0.0.0.0 and sendonly, so the caller would send no RTP (no RFC 4733 keys).
            placeholder = answer_sdp(streams, chosen, port=9,
                                     origin=OriginCounter(address=PLACEHOLDER_ADDRESS,
                                                          sess_id=1))
            reply = await (await self.client()).request(
                "answer", **{"call-id": call_id, "from-tag": leg, "to-tag": other_leg(leg),
                             "sdp": placeholder, **self._flags(call_id)})
            body = scrub_identity(_sdp(reply, "answer"))
        except BaseException:
            # Nobody else knows this call: give back what rtpengine holds.
            self._offered.discard(call_id)
            self._forget(call_id)
            self._delete_later(call_id)
            raise
        self._answered.add(call_id)
        self._ports.setdefault(call_id, {})[leg] = frozenset(
            part.port for part in scan.scan(body).media if part.port)
        return body

    async def play(self, call_id: str, leg: str, audio: Audio, *,
                   loop: bool = False) -> Playback:
        side = _leg(leg)
        if call_id not in self._offered:
            raise MediaError(f"no media for call {call_id}")
        playback = Playback(call_id, side, asyncio.get_running_loop().create_future())
        media = self._leg_media(call_id, side)
        if media is None or media.prompt is None:
            self.services.prompts_unplayable += 1
            playback.ended.set_result(PlayEnd.UNPLAYABLE)
            return playback
        key = (call_id, side)
        if key in self._playing:
            await self._stop_prompt(key, PlayEnd.REPLACED)
        path = self._prompt_file(audio)
        prompt = self._playing[key] = _Prompt(playback)
        client = await self.client()
        try:
            await self._mute(call_id)
            params: dict[str, bencode.Encodable] = {
                "call-id": call_id, "from-tag": side, "file": str(path)}
            if loop:
                params["repeat-times"] = LOOP_TIMES
            reply = await client.request("play media", **params)
        except RtpengineError:
            if self._playing.get(key) is prompt:
                self._end_prompt(key, PlayEnd.FAILED)
            raise
        if self._playing.get(key) is not prompt:
            return playback          # stopped (bridged, deleted) while rtpengine answered
        duration = reply.get("duration")
        if not loop and isinstance(duration, int):
            prompt.timer = asyncio.get_running_loop().call_later(
                duration / 1000, self._end_prompt, key, PlayEnd.FINISHED)
        return playback

    async def stop_play(self, call_id: str, leg: str) -> None:
        key = (call_id, _leg(leg))
        if key in self._playing:
            await self._stop_prompt(key, PlayEnd.STOPPED)

    async def _stop_prompt(self, key: tuple[str, str], reason: PlayEnd) -> None:
        self._end_prompt(key, reason, unmute=False)
        call_id, leg = key
        with contextlib.suppress(RtpengineError):
            await (await self.client()).request(
                "stop media", **{"call-id": call_id, "from-tag": leg})
        await self._unmute_if_quiet(call_id)

    def _end_prompt(self, key: tuple[str, str], reason: PlayEnd, *,
                    unmute: bool = True) -> None:
        prompt = self._playing.pop(key, None)
        if prompt is None:
            return
        if prompt.timer is not None:
            prompt.timer.cancel()
        if not prompt.playback.ended.done():
            prompt.playback.ended.set_result(reason)
        if unmute and reason is not PlayEnd.CLOSED:
            task = asyncio.get_running_loop().create_task(self._unmute_if_quiet(key[0]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _mute(self, call_id: str) -> None:
        """Block every known tag's media and RFC 4733 events (module docstring)."""
        blocked = self._blocked.setdefault(call_id, set())
        client = await self.client()
        for tag in sorted(self._tags.get(call_id, set()) - blocked):
            for command in ("block media", "block DTMF"):
                await client.request(command, **{"call-id": call_id, "from-tag": tag})
            blocked.add(tag)

    async def _unmute_if_quiet(self, call_id: str) -> None:
        if any(key[0] == call_id for key in self._playing):
            return
        blocked = self._blocked.pop(call_id, set())
        client = await self.client()
        for tag in sorted(blocked):
            for command in ("unblock media", "unblock DTMF"):
                with contextlib.suppress(RtpengineError):
                    await client.request(command, **{"call-id": call_id, "from-tag": tag})

    def _prompt_file(self, audio: Audio) -> Path:
        """A WAV file of `audio` that rtpengine can read, written once per content."""
        digest = hashlib.sha256(audio.pcm).hexdigest()[:32]
        path = self._prompt_files.get(digest)
        if path is not None:
            return path
        if self._prompt_dir is None:
            self._prompt_dir = Path(tempfile.mkdtemp(prefix="sipmask-prompts-"))
            self._own_prompt_dir = True
        # rtpengine runs as its own user: the folder and the files are readable by others
        # (prompts are the operator's announcements, nothing private).
        self._prompt_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._prompt_dir, 0o755)
        path = self._prompt_dir / f"{digest}.wav"
        partial = path.with_suffix(".part")
        partial.write_bytes(encode_wav(audio.pcm))
        os.chmod(partial, 0o644)
        partial.replace(path)
        self._prompt_files[digest] = path
        return path

    def _leg_media(self, call_id: str, leg: Leg) -> LegMedia | None:
        bodies = self._bodies.get(call_id, {})
        own = bodies.get(leg)
        if own is None:
            return None
        other = bodies.get(other_leg(leg))
        return leg_media(scan.scan(own), None if other is None else scan.scan(other))

    async def collect_digits(self, call_id: str, leg: str, on_digit: DigitCallback, *,
                             inband: bool = False) -> None:
        if inband:
            raise RtpengineError("in-band DTMF detection is not available with rtpengine "
                                 "(10.5 reports RFC 4733 events only)")
        if self._dtmf_listen is None:
            raise RtpengineError("digits in media with rtpengine need its --dtmf-log-dest "
                                 "and dtmf_listen set to the same address")
        if call_id not in self._offered:
            raise MediaError(f"no media for call {call_id}")
        self._digits[(call_id, _leg(leg))] = on_digit

    async def stop_digits(self, call_id: str, leg: str) -> None:
        self._digits.pop((call_id, _leg(leg)), None)

    def _digit(self, call_id: str, tag: str, code: int) -> None:
        """One event from rtpengine's DTMF log: to the call's callback, if it listens."""
        key = event_key(code)
        if key is None or tag not in LEGS:
            return
        leg: Leg = "a" if tag == "a" else "b"
        on_digit = self._digits.get((call_id, leg))
        if on_digit is not None:
            self.services.digits += 1
            asyncio.get_running_loop().call_soon(on_digit, call_id, leg, key)

    async def start_recording(self, call_id: str, open_sink: SinkFactory) -> None:
        if self._recording_dir is None:
            raise RtpengineError("recording with rtpengine needs its --recording-dir "
                                 "(--recording-method=pcap) as recording_dir")
        if call_id not in self._offered:
            raise MediaError(f"no media for call {call_id}")
        if call_id in self._recordings:
            raise MediaError(f"call {call_id} is already being recorded")
        self.services.recordings_started += 1
        self._outcomes.pop(call_id, None)
        try:
            await (await self.client()).request("start recording", **{"call-id": call_id})
        except RtpengineError:
            self.services.recordings_failed += 1
            self._outcomes[call_id] = RecordingOutcome(None, "rtpengine refused")
            return
        self._recordings[call_id] = open_sink

    async def stop_recording(self, call_id: str) -> RecordingOutcome | None:
        open_sink = self._recordings.pop(call_id, None)
        if open_sink is None:
            return self._outcomes.get(call_id)
        with contextlib.suppress(RtpengineError):
            await (await self.client()).request("stop recording", **{"call-id": call_id})
        return await self._convert(call_id, open_sink)

    async def _convert(self, call_id: str, open_sink: SinkFactory) -> RecordingOutcome:
        """rtpengine's pcap of the call into the stereo WAV, in a worker thread (a long
        call's pcap is tens of MB); the pcap and its metadata are removed after."""
        assert self._recording_dir is not None
        pcaps = sorted(self._recording_dir.glob(f"pcaps/{glob.escape(call_id)}-*.pcap"))
        sides = self._ports.get(call_id, {})
        codecs: dict[str, dict[int, G711]] = {}
        for leg in LEGS:
            media = self._leg_media(call_id, leg)
            codecs[leg] = {} if media is None else dict(media.codecs)
        outcome = await asyncio.to_thread(pcap_to_wav, pcaps, open_sink,
                                          sides.get("a", frozenset()),
                                          sides.get("b", frozenset()), codecs)
        await asyncio.to_thread(_remove, [*pcaps, *self._recording_dir.glob(
            f"metadata/rtpengine-meta-{glob.escape(call_id)}-*")])
        if outcome.failed:
            self.services.recordings_failed += 1
        self._outcomes[call_id] = outcome
        return outcome

    async def close(self) -> None:
        for key in list(self._playing):
            self._end_prompt(key, PlayEnd.CLOSED)
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._digits.clear()
        if self._dtmf is not None:
            self._dtmf.close()
            self._dtmf = None
        if self._own_prompt_dir and self._prompt_dir is not None:
            shutil.rmtree(self._prompt_dir, ignore_errors=True)
            self._prompt_dir, self._own_prompt_dir = None, False
            self._prompt_files.clear()
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


@dataclasses.dataclass(eq=False)
class _Prompt:
    playback: Playback
    timer: asyncio.TimerHandle | None = None


def _leg(leg: str) -> Leg:
    return "a" if other_leg(leg) == "b" else "b"


class _DtmfLog(asyncio.DatagramProtocol):
    """rtpengine's DTMF log (--dtmf-log-dest): one JSON object per key event,
    {"callid", "source_tag", "event", ...}; datagrams from elsewhere than rtpengine's host
    are ignored (anyone else could type keys into a call)."""

    def __init__(self, rtpengine_host: str,
                 on_event: Callable[[str, str, int], None]) -> None:
        self._from = rtpengine_host
        self._on_event = on_event
        self.transport: asyncio.DatagramTransport | None = None
        self.ignored = 0

    @classmethod
    async def listen(cls, where: HostPort, rtpengine_host: str,
                     on_event: Callable[[str, str, int], None]) -> _DtmfLog:
        log = cls(rtpengine_host, on_event)
        family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: log, local_addr=(where.host, where.port), family=family)
        return log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            event = json.loads(data)
            call_id, tag, code = event["callid"], event["source_tag"], event["event"]
        except (ValueError, KeyError, TypeError):
            self.ignored += 1
            return
        if addr[0] != self._from or event.get("type", "DTMF") != "DTMF" \
                or not isinstance(call_id, str) or not isinstance(tag, str) \
                or not isinstance(code, int):
            self.ignored += 1
            return
        self._on_event(call_id, tag, code)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def pcap_to_wav(pcaps: Sequence[Path], open_sink: SinkFactory, caller_ports: frozenset[int],
                callee_ports: frozenset[int],
                codecs: Mapping[str, Mapping[int, G711]]) -> RecordingOutcome:
    """The stereo WAV of rtpengine's pcaps (module docstring): a packet sent to one of
    `caller_ports` is the caller's (left), to `callee_ports` the callee's (right), placed
    by its capture time; anything else (RTCP, strays) is left out. Blocking: run it in a
    worker thread. Failures are the outcome's, never raised."""
    if not pcaps:
        return RecordingOutcome(None, "ENOENT")
    try:
        sink = open_sink()
    except OSError as exc:
        return RecordingOutcome(None, failure_reason(exc))
    recorder: CallRecorder | None = None
    last = 0.0
    bad = False
    try:
        for path in pcaps:
            with path.open("rb") as stream:
                for datagram in udp_datagrams(stream):
                    port = datagram.destination[1]
                    leg = "a" if port in caller_ports else "b" if port in callee_ports else None
                    if leg is None:
                        continue
                    if recorder is None:
                        recorder = CallRecorder(sink, datagram.at)
                    last = max(last, datagram.at)
                    recorder.feed_rtp(Party.CALLER if leg == "a" else Party.CALLEE,
                                      datagram.at, datagram.payload, codecs[leg])
    except PcapError:
        bad = True
    except OSError as exc:
        if recorder is None:
            recorder = CallRecorder(sink, last)
        recorder.close(last)
        return RecordingOutcome(sink.path.name, failure_reason(exc))
    if recorder is None:
        recorder = CallRecorder(sink, last)
    stats = recorder.close(last)
    reason = stats.error if stats.failed else "bad pcap" if bad else None
    return RecordingOutcome(sink.path.name, reason, stats.data_bytes)


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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
