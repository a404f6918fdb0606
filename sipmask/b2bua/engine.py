"""The asyncio shell around the call core: it performs what b2bua/core.py decides.

`Engine` is the SIP server's handler (server.RequestHandler). Each event goes to
`CallCore.handle` with the injected clock's time; then the shell performs the core's actions
(b2bua/actions.py) in order: SIP sends through the server's transaction layer, the store
lookup, media offers and answers, CDR commits, webhook events and metrics. Results come back
to the core as events, never from inside `handle` nor while another action runs (DESIGN
rule 15): a lookup LMDB answers at once and a request the transaction layer refuses at
once are fed in after the batch; a lookup on PostgreSQL's lookup threads and every media step
go on in a task, a CDR commit on the group commit's writer thread in its future (no task
around it); either's result starts a batch of its own. (A media step the embedded relay
answers from memory was once stepped on the spot to save the task: about 0.4 % of a call's
instructions, under DESIGN rule 14's 5 %, so it went.) The server's sends leave once per
batch, and one loop timer is kept armed for the core's earliest call timer.

What the shell still decides, because only it can know: whether a TCP/TLS connection a
request could reuse is still open (SipPort.connected), and which port a transport listens on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

from sipmask.b2bua.actions import (
    CallFinished,
    Cancel,
    CdrCommitted,
    CollectDigits,
    CommitCdr,
    CoreAction,
    CoreEvent,
    DigitHeard,
    EarlyOpened,
    Emit,
    EndAll,
    JournalDone,
    JournalUp,
    Lookup,
    LookupDone,
    MediaAnswer,
    MediaDelete,
    MediaDone,
    MediaOffer,
    MediaTimeout,
    OpenEarly,
    PlayPrompt,
    PromptEnded,
    RecordingStopped,
    Refused,
    Respond,
    SendAck,
    SendFailed,
    SendRequest,
    StartRecording,
    StopDigits,
    StopPrompt,
    StopRecording,
)
from sipmask.b2bua.call import Call, Leg
from sipmask.b2bua.context import CallContext
from sipmask.b2bua.core import CallCore, Policy
from sipmask.b2bua.timers import CallTimers
from sipmask.b2bua.trunks import TrunkMonitor
from sipmask.cdr.group import CdrGroupCommit
from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrSink
from sipmask.clock import Clock
from sipmask.config.schema import Config
from sipmask.errors import MediaError, SipError, StoreError, TransactionError
from sipmask.media.backend import DigitCallback, Playback, PlayEnd, RecordingOutcome, SinkFactory
from sipmask.media.prompt import announcement
from sipmask.media.wav import Audio, WavError
from sipmask.observability import logging as sm_logging
from sipmask.sip.message import Request, Response
from sipmask.sip.transports import ALL, Address, Transport
from sipmask.store import offload, recordings
from sipmask.store.base import Binding, BindingStore
from sipmask.transport.resolver import Dns

log = sm_logging.get_logger("sipmask.b2bua")
R = TypeVar("R")

# A prompt's end is the backend's to report (Playback.ended); rtpengine reports it only when
# its `play media` answer named the duration. So the shell waits at most the prompt's length
# and this much more, then stops it and tells the core it finished.
PROMPT_GRACE_S = 2.0


class SipPort(Protocol):
    """What the engine needs of the SIP server around it (SipServer implements it). Sends
    go out once per batch: inside the server's drain (`delivering`) the drain sends them
    when the engine returns; any other batch holds them and flushes at its end."""

    delivering: bool

    def respond(self, txn_id: str, response: Response) -> None: ...
    def send_request(self, request: Request, dest: Address, transport: Transport, *,
                     branch: str | None = None) -> str: ...
    def cancel(self, invite_txn_id: str) -> str | None: ...
    def send_ack(self, invite_txn_id: str | None, ack: Request, dest: Address,
                 transport: Transport) -> None: ...
    def hold(self) -> None: ...
    def flush(self) -> None: ...
    def local_port(self, transport: Transport) -> int: ...
    def connected(self, dest: Address, transport: Transport) -> bool: ...


class MediaPort(Protocol):
    """The media backend, rtpengine-shaped (media/backend.py's MediaBackend fits)."""

    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes: ...
    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes: ...
    async def delete(self, call_id: str) -> Any: ...
    async def start_recording(self, call_id: str, open_sink: SinkFactory) -> None: ...
    async def stop_recording(self, call_id: str) -> RecordingOutcome | None: ...
    async def open_early(self, call_id: str, leg: str, offer_sdp: bytes, *,
                         sip_source: str | None = None) -> bytes | None: ...
    async def play(self, call_id: str, leg: str, audio: Audio, *,
                   loop: bool = False) -> Playback: ...
    async def stop_play(self, call_id: str, leg: str) -> None: ...
    async def collect_digits(self, call_id: str, leg: str, on_digit: DigitCallback, *,
                             inband: bool = False) -> None: ...
    async def stop_digits(self, call_id: str, leg: str) -> None: ...


class EventSink(Protocol):
    """Call events for webhooks (events/outbox.py); optional."""

    def call_event(self, kind: str, call: Call, at: float, cdr: Cdr | None = None) -> None: ...


class CallMetrics(Protocol):
    """observability/metrics.Metrics fits."""

    def call_finished(self, call: Call) -> None: ...
    def refused(self, reason: str) -> None: ...


class _ListenPorts(Mapping[str, int]):
    """The port sipmask listens on per transport (for Contacts), read from the server: a
    listener's port is known only once it is open."""

    def __init__(self, sip: SipPort) -> None:
        self._sip = sip

    def __getitem__(self, transport: str) -> int:
        for known in ALL:
            if known == transport:
                return self._sip.local_port(known)
        raise KeyError(transport)

    def __iter__(self) -> Iterator[str]:
        return iter(ALL)

    def __len__(self) -> int:
        return len(ALL)


def _lookup_done(op: int, future: asyncio.Future[Binding | None]) -> LookupDone:
    if future.cancelled():
        # The store's lookup threads gave it up (the store closing): the call still gets
        # its answer (503), never waits for ever.
        return LookupDone(op, None, StoreError("the store gave up the lookup"))
    exc = future.exception()
    if exc is None:
        return LookupDone(op, future.result())
    return _lookup_failed(op, exc if isinstance(exc, Exception) else RuntimeError(exc))


def _lookup_failed(op: int, exc: Exception) -> LookupDone:
    if not isinstance(exc, StoreError):
        log.error("store.route_failed", error=repr(exc))
    return LookupDone(op, None, exc)


class Engine:
    def __init__(self, sip: SipPort, *, config: Config, store: BindingStore, media: MediaPort,
                 cdrs: CdrSink, clock: Clock, events: EventSink | None = None,
                 policy: Policy | None = None, metrics: CallMetrics | None = None,
                 dns: Dns | None = None) -> None:
        self.sip = sip
        self.config = config
        self.store = store
        self.media = media
        self.cdrs = cdrs
        self._cdr_group = CdrGroupCommit(cdrs)
        self.clock = clock
        self.events = events
        self.metrics = metrics
        self.core = CallCore(config, listen_ports=_ListenPorts(sip), policy=policy, log=log)
        # Results ready while a batch runs: fed to the core after it, in order.
        self._results: collections.deque[CoreEvent] = collections.deque()
        self._batch = False
        # Tasks and futures in flight (each result starts a batch of its own when done).
        self._tasks: set[asyncio.Future[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._starts_seen = -1          # CallTimers.starts when the loop timer was checked
        # The trunks' targets (DNS, OPTIONS probes): fed to the core as events. No `dns`:
        # a trunk named by host name has no server (its calls get 503).
        self.trunks = TrunkMonitor(sip, clock, config, dns, feed=self._run,
                                   stats=self.core.stats)
        # Announcements read once per (key, configured value); a reload empties it.
        self._prompts: dict[tuple[str, str], Audio] = {}

    # -- what the server and the services call ---------------------------------------------
    def media_timeout(self, call_id: str) -> None:
        """The media backend saw no RTP for media.timeout_s: BYE both ways."""
        self._run(MediaTimeout(call_id))

    def reconfigure(self, config: Config) -> None:
        """`sipmask reload`: new calls see `config` (trunks, timers, tenants); calls in
        progress keep what they were placed with."""
        self.config = config
        self._prompts.clear()           # an announcement file may have been replaced
        self.core.reconfigure(config)
        self.trunks.configure(config)
        self.trunks.feed_changes()      # what is known of the trunks kept, at once

    def start_drain(self) -> None:
        """SIGTERM: refuse new calls (503), let running ones finish."""
        self.core.draining = True

    def end_all(self) -> None:
        """Drain timeout: hang up what is left (BYE both ways / CANCEL)."""
        self._run(EndAll())

    @property
    def calls(self) -> dict[str, CallContext]:
        return self.core.calls

    @property
    def active_calls(self) -> int:
        return self.core.active_calls

    @property
    def stats(self) -> collections.Counter[str]:
        return self.core.stats

    @property
    def timers(self) -> CallTimers:
        return self.core.timers

    @property
    def draining(self) -> bool:
        return self.core.draining

    # -- batches ---------------------------------------------------------------------------
    def _run(self, event: CoreEvent | None) -> None:
        """One batch: the core takes `event` (None: its due timers), the shell performs its
        actions, then each result that was ready at once goes in the same way. An exception
        from the first event reaches the caller (the server answers a request 500) once the
        batch is done; one from a result is counted and logged."""
        if self._batch:
            if event is not None:
                self._results.append(event)     # from a callback inside a batch: after it
            return
        self._batch = True
        sip = self.sip
        own = not sip.delivering        # a batch the server's drain does not flush
        if own:
            sip.hold()
        core, results = self.core, self._results
        # One reading of the clock for the batch: its results are microseconds later.
        now, wall = self.clock.monotonic(), self.clock.wall()
        failed: Exception | None = None
        first = True
        try:
            while True:
                try:
                    if event is None:
                        core.handle_timer(now, wall)
                    else:
                        core.handle(event, now, wall)
                except Exception as exc:
                    if first:
                        failed = exc
                    else:
                        self.stats["internal_errors"] += 1
                        log.exception("call.internal_error")
                finally:
                    for action in core.actions():
                        _PERFORM[type(action)](self, action)
                if not results:
                    break
                event, first = results.popleft(), False
        finally:
            self._batch = False
            if own:
                sip.flush()
            # Only a timer started in the batch can be earlier than the one armed.
            if core.timers.starts != self._starts_seen:
                self._arm_timer()
        if failed is not None:
            raise failed

    # server.RequestHandler: each TU event of the transaction layer is one batch; the
    # trunk monitor's probes' are its own.
    handle_request = _run

    def handle_event(self, event: CoreEvent) -> None:
        if not self.trunks.take(event):
            self._run(event)

    handle_response = handle_event

    # -- the actions -----------------------------------------------------------------------
    def _respond(self, action: Respond) -> None:
        try:
            self.sip.respond(action.txn_id, action.response)
        except TransactionError as exc:
            # The transaction ended under us (e.g. Timer H): nothing left to answer.
            log.debug("call.response_dropped", status=action.response.status, error=str(exc))

    def _send_request(self, action: SendRequest) -> None:
        dest, transport, reuse = action.dest, action.transport, action.reuse
        if reuse is not None and self.sip.connected(*reuse):
            dest, transport = reuse     # core.next_hop: the connection is still open
        try:
            self.sip.send_request(action.request, dest, transport, branch=action.branch)
        except (TransactionError, OSError) as exc:
            log.warning("call.send_failed", error=str(exc))
            self._results.append(SendFailed(action.txn_id))

    def _cancel(self, action: Cancel) -> None:
        # A final response may have raced the CANCEL; then there is nothing to cancel.
        with contextlib.suppress(TransactionError):
            self.sip.cancel(action.invite_txn_id)

    def _send_ack(self, action: SendAck) -> None:
        dest, transport, reuse = action.dest, action.transport, action.reuse
        if reuse is not None and self.sip.connected(*reuse):
            dest, transport = reuse     # core.next_hop: the connection is still open
        self.sip.send_ack(action.invite_txn_id, action.ack, dest, transport)

    def _lookup(self, action: Lookup) -> None:
        # LMDB answers in microseconds on this thread; PostgreSQL on this loop's own
        # connection or its lookup threads, never blocking the loop. Either way the answer
        # reaches the core as an event after this batch. The one here is taken as it is,
        # not through a done future: a concurrent Future takes its lock five times, dearer
        # than the read.
        if offload.in_place(self.store):
            try:
                binding = offload.route_here(self.store, action.x, action.caller, action.at,
                                             action.ext)
            except Exception as exc:
                self._results.append(_lookup_failed(action.id, exc))
            else:
                self._results.append(LookupDone(action.id, binding))
            return
        # PostgreSQL: asked and answered on this loop where it can, else on the store's
        # threads (offload.ask). A full queue (StoreBusy) is a 503 now.
        try:
            answer = offload.ask(self.store, action.x, action.caller, action.at, action.ext)
        except Exception as exc:
            self._results.append(_lookup_failed(action.id, exc))
            return
        self._when_done(answer, partial(self._looked_up, action.id))

    def _looked_up(self, op: int, future: asyncio.Future[Binding | None]) -> None:
        self._run(_lookup_done(op, future))

    def _media(self, action: MediaOffer | MediaAnswer) -> None:
        ask = self.media.offer if type(action) is MediaOffer else self.media.answer
        self._spawn(self._media_op(action.id, ask(action.call_id, action.leg, action.sdp,
                                                  sip_source=action.sip_source)))

    async def _media_op(self, op: int, work: Awaitable[bytes]) -> None:
        try:
            sdp = await work
        except Exception as exc:
            if not isinstance(exc, MediaError | SipError | ValueError):
                self.stats["internal_errors"] += 1
                log.exception("media.failed")
            self._run(MediaDone(op, error=exc))
            return
        self._run(MediaDone(op, sdp))

    def _delete_media(self, action: MediaDelete) -> None:
        self._spawn(self._media_delete(action.call_id))

    async def _media_delete(self, call_id: str) -> None:
        try:
            await self.media.delete(call_id)
        except MediaError as exc:
            log.warning("call.media_delete_failed", call_id=call_id, error=str(exc))

    def _start_recording(self, action: StartRecording) -> None:
        open_sink = partial(recordings.open_sink, self.config.recording, action.tenant,
                            action.call_id, self.store.keys)
        self._spawn(self._recording_started(action.call_id, open_sink))

    async def _recording_started(self, call_id: str, open_sink: SinkFactory) -> None:
        # The backend never raises for the file (its outcome at stop says why); a call it
        # no longer knows (ended meanwhile) is nothing to record.
        try:
            await self.media.start_recording(call_id, open_sink)
        except MediaError as exc:
            log.warning("call.recording_not_started", call_id=call_id, error=str(exc))

    def _stop_recording(self, action: StopRecording) -> None:
        self._spawn(self._recording_stopped(action.id, action.call_id))

    async def _recording_stopped(self, op: int, call_id: str) -> None:
        file: str | None = None
        try:
            outcome = await self.media.stop_recording(call_id)
        except MediaError as exc:
            log.warning("call.recording_stop_failed", call_id=call_id, error=str(exc))
        else:
            if outcome is not None and not outcome.failed:
                file = outcome.file
            elif outcome is not None:
                log.warning("call.recording_failed", call_id=call_id,
                            reason=outcome.failed_reason)
        self._run(RecordingStopped(op, file))

    # -- media services (issue 15): early media, prompts, digits ---------------------------
    def _open_early(self, action: OpenEarly) -> None:
        self._spawn(self._early(action))

    async def _early(self, action: OpenEarly) -> None:
        try:
            sdp = await self.media.open_early(action.call_id, action.leg, action.sdp,
                                              sip_source=action.sip_source)
        except Exception as exc:
            if not isinstance(exc, MediaError | SipError | ValueError):
                self.stats["internal_errors"] += 1
                log.exception("media.early_failed")
            self._run(EarlyOpened(action.id, error=exc))
            return
        self._run(EarlyOpened(action.id, sdp))

    def _play_prompt(self, action: PlayPrompt) -> None:
        self._spawn(self._play(action))

    async def _play(self, action: PlayPrompt) -> None:
        audio = self._audio(action.key, action.file)
        reason = PlayEnd.FAILED
        if audio is not None:
            try:
                playback = await self.media.play(action.call_id, action.leg, audio)
                reason = await self._prompt_end(action, playback, audio.duration_s)
            except MediaError as exc:
                log.warning("media.prompt_failed", call_id=action.call_id, error=str(exc))
            except Exception:
                # The core waits for this prompt's end (a call may be held in NOTICE by
                # it): a fault must still end it.
                self.stats["internal_errors"] += 1
                log.exception("media.prompt_failed", call_id=action.call_id)
        self._run(PromptEnded(action.id, reason))

    async def _prompt_end(self, action: PlayPrompt, playback: Playback,
                          duration_s: float) -> PlayEnd:
        try:
            return await asyncio.wait_for(asyncio.shield(playback.ended),
                                          duration_s + PROMPT_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(MediaError):
                await self.media.stop_play(action.call_id, action.leg)
            return PlayEnd.FINISHED

    def _audio(self, key: str, file: str) -> Audio | None:
        """The announcement's audio, read once (the loader checked it at start; a file
        replaced since and broken now is logged, and that prompt is not played)."""
        audio = self._prompts.get((key, file))
        if audio is None:
            try:
                audio = announcement(key, file)
            except (WavError, OSError, ValueError) as exc:
                log.warning("media.announcement_unreadable", key=key, error=str(exc))
                return None
            if audio is not None:
                self._prompts[(key, file)] = audio
        return audio

    def _stop_prompt(self, action: StopPrompt) -> None:
        self._spawn(self._media_quietly(self.media.stop_play(action.call_id, action.leg)))

    def _collect_digits(self, action: CollectDigits) -> None:
        self._spawn(self._media_quietly(self.media.collect_digits(
            action.call_id, action.leg, self._on_digit, inband=action.inband)))

    def _stop_digits(self, action: StopDigits) -> None:
        self._spawn(self._media_quietly(self.media.stop_digits(action.call_id, action.leg)))

    def _on_digit(self, call_id: str, leg: str, key: str) -> None:
        """MediaBackend's on_digit: from the event loop, never inside a backend call."""
        self._run(DigitHeard(call_id, Leg(leg), key))

    async def _media_quietly(self, work: Awaitable[None]) -> None:
        """A media service step nothing waits for: a call whose media ended meanwhile, or
        a backend without it (rtpengine with no DTMF log), is logged; INFO digits and the
        rest of the call go on."""
        try:
            await work
        except MediaError as exc:
            log.warning("media.service_failed", error=str(exc))

    def _commit_cdr(self, action: CommitCdr) -> None:
        # Group commit (cdr/group.py): on the writer thread, not on the loop. It always
        # waits; its future's callback starts the batch that takes the result (no task).
        self._when_done(self._cdr_group.write(action.record),
                        partial(self._committed, action.id, action.record, CdrCommitted))

    def _journal_up(self, action: JournalUp) -> None:
        self._when_done(self._cdr_group.call_up(action.record),
                        partial(self._committed, action.id, action.record, JournalDone))

    def _committed(self, op: int, record: Cdr, done: type[CdrCommitted] | type[JournalDone],
                   future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return                      # the loop is closing: nobody is left to answer
        exc = future.exception()
        if exc is None:
            self._run(done(op))
            return
        log.error("cdr.write_failed", record=record.to_json(), exc_info=exc)
        self._run(done(op, exc if isinstance(exc, Exception) else RuntimeError(exc)))

    def _emit(self, action: Emit) -> None:
        if self.events is None:
            return
        try:
            self.events.call_event(action.kind, action.call, action.at, action.cdr)
        except Exception:
            log.exception("events.enqueue_failed", kind=action.kind,
                          call_id=action.call.call_id)

    def _call_finished(self, action: CallFinished) -> None:
        if self.metrics is not None:
            self.metrics.call_finished(action.call)

    def _refused(self, action: Refused) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.refused(action.reason)
        except ValueError:
            # A reason the metrics do not know (their labels are a fixed set): the refusal
            # is still answered; the gap shows in stats, and once in the log (a flood must
            # not become a flood of log lines).
            key = f"refusal_metric_unknown_{action.reason}"
            self.stats[key] += 1
            if self.stats[key] == 1:
                log.warning("metrics.refusal_unknown", reason=action.reason)

    def _when_done(self, future: asyncio.Future[R],
                   then: Callable[[asyncio.Future[R]], None]) -> None:
        """`then` takes `future` once it is done (from the loop, after this batch); until
        then it is in flight, as the tasks are."""
        future.add_done_callback(then)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # The running loop's create_task, not asyncio.ensure_future: `work` is always a
        # coroutine, and ensure_future's checks were four Python calls per task (five
        # tasks a call).
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- call timers (DESIGN rule 2) -------------------------------------------------------
    def next_timer(self) -> float | None:
        return self.core.next_timer()

    def _arm_timer(self) -> None:
        """Keep one loop timer armed no later than the core's earliest deadline; lazily, as
        SipServer._arm_timer: a deadline that moved later wakes it once for nothing."""
        self._starts_seen = self.core.timers.starts
        when = self.core.next_timer()
        armed = self._timer_at
        if when is None or (armed is not None and armed <= when):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return      # no loop: nothing can wait
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - self.clock.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._starts_seen = -1          # check again: the next deadline needs a timer
        self._run(None)


_PERFORM: dict[type, Callable[[Engine, Any], None]] = {
    Respond: Engine._respond,
    SendRequest: Engine._send_request,
    Cancel: Engine._cancel,
    SendAck: Engine._send_ack,
    Lookup: Engine._lookup,
    MediaOffer: Engine._media,
    MediaAnswer: Engine._media,
    MediaDelete: Engine._delete_media,
    StartRecording: Engine._start_recording,
    StopRecording: Engine._stop_recording,
    CommitCdr: Engine._commit_cdr,
    JournalUp: Engine._journal_up,
    Emit: Engine._emit,
    CallFinished: Engine._call_finished,
    Refused: Engine._refused,
    OpenEarly: Engine._open_early,
    PlayPrompt: Engine._play_prompt,
    StopPrompt: Engine._stop_prompt,
    CollectDigits: Engine._collect_digits,
    StopDigits: Engine._stop_digits,
}
if set(_PERFORM) != set(CoreAction.__args__):
    raise ValueError("an action of the core the shell does not perform")
