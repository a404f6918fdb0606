"""Announcements and the AXE extension prompt: the call core's part of issue 15 (pure).

CONTRACT "SIP behaviour": announcements reach the caller as early media (183 with SDP)
before the final response; an INVITE to an AXE X alone gets `ext_prompt` and the caller
keys the extension; a recorded call plays `recording_notice` to both sides before they
hear each other. Part of the call core (b2bua/core.py), with its rules: events in, actions
out, timers on the injected clock, results of actions back as events.

Before any call exists. b2bua/calling.py found no binding (`unbound`, then 404), a binding
that refuses the caller (`not_allowed`, optional, then 403), or an AXE number dialled
without its extension (`ext_prompt`). The attempt becomes a `Prompting`: sipmask answers
the caller's offer itself (OpenEarly: the media backend's own SDP, RFC 3960 §3.1's
gateway model; it offers telephone-event when the caller did) in a 183 that makes an early
dialog (RFC 3261 §13.3.1.1), and plays the announcement there (PlayPrompt). Then
- a refusal is answered once the announcement ends, in the same dialog (same To tag);
- the extension is keyed: RFC 4733 events heard in the media (CollectDigits, DigitHeard)
  or INFO `application/dtmf-relay` / `application/dtmf` in the early dialog, until `#` or
  the tenant's `ext_digits`. The first key stops the prompt (barge-in); `*` and A-D are
  not digits and are ignored (they keep the entry alive). The extension is looked up
  (Lookup with it); a right one hands the attempt to calling.route_setup exactly as X+E
  dialled at once would go, with this attempt's call id and To tag, so the call keeps the
  early dialog and uses the early media session as the caller's media (the callee's offer
  and answer join it: no re-INVITE). A wrong one (or none) plays the prompt again; after
  MAX_TRIES, 404 (CDR no_binding).
Time limits, as a carrier's IVR has them: the first key within FIRST_DIGIT_S of the
prompt's end; each next key within INTER_DIGIT_S, else what was keyed is complete; the
whole prompting within PROMPTING_S of its start, else 404.

After B answered (the call's table, b2bua/call.py state NOTICE): `callee_notice` to the
callee, then `recording_notice` to both sides of a recorded call (to the caller as early
media: a 183 carrying the answer the 200 will carry, when the caller made the offer), and
only then does A get the 200 (calling._journal_answer), and the recording starts. A's
CANCEL or BYE, B's BYE, a drain meanwhile are the table's.

Every path gives back what it opened (DESIGN rule 13): a CANCEL or a BYE in the early
dialog, the time limits, the drain, a media error (no early media: the refusal at once; a
prompt that cannot play on the leg's codec, UNPLAYABLE: no prompt, the attempt goes on).
The early media session is deleted unless a call takes it; a session that opens after the
attempt ended is deleted when it comes; result waits left behind are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING

from sipmask.b2bua import calling, masking, refusals, relaying, routing
from sipmask.b2bua.actions import (
    CollectDigits,
    DigitHeard,
    EarlyOpened,
    Lookup,
    LookupDone,
    MediaDelete,
    OpenEarly,
    PlayPrompt,
    PromptEnded,
    StopDigits,
    StopPrompt,
)
from sipmask.b2bua.call import CallEvent, CallState, Leg
from sipmask.b2bua.calling import Setup
from sipmask.b2bua.context import CallContext, Notice
from sipmask.b2bua.timers import CallTimer
from sipmask.config.schema import DEFAULT_EXT_DIGITS
from sipmask.errors import ParseError, SipError, StoreError
from sipmask.media import dtmf
from sipmask.media.backend import PlayEnd
from sipmask.sip.dialog import Dialog, new_call_id, new_tag
from sipmask.sip.message import Request, build_response
from sipmask.sip.methods import ALLOW
from sipmask.sip.transaction import RequestReceived

if TYPE_CHECKING:
    from sipmask.b2bua.core import CallCore
    from sipmask.store.base import Binding

SDP = masking.SDP
FIRST_DIGIT_S = 10.0     # from the prompt's end to the first key
INTER_DIGIT_S = 5.0      # between keys: then what was keyed is the extension
PROMPTING_S = 60.0       # the whole prompting, every try (then 404)
MAX_TRIES = 3            # wrong or missing extensions before the 404 (CONTRACT)
# 403s an announcement may precede: a binding's refusal of this caller. Not rate limits:
# a refusal under load must stay cheap (no media).
_ANNOUNCED_403 = frozenset({"not_allowed", "blacklist"})
# RFC 3261 §21.4.13: a 415 lists what would have been accepted.
_DTMF_ACCEPT = (("Accept", ", ".join(dtmf.DTMF_INFO_TYPES)),)


class Kind(Enum):
    REFUSAL = "refusal"          # an announcement, then the refusal
    EXTENSION = "extension"      # ext_prompt, digits, the call


class Phase(Enum):
    OPENING = "opening"          # OpenEarly is out
    PLAYING = "playing"          # the prompt plays (keys are heard: barge-in)
    COLLECTING = "collecting"    # waiting for keys
    LOOKING_UP = "looking_up"    # the keyed extension's Lookup is out


@dataclass(eq=False)
class Prompting:
    """One attempt an announcement holds before any call exists (module docstring)."""

    setup: Setup
    kind: Kind
    key: str                     # the announcement (prompt.ANNOUNCEMENTS)
    file: str                    # its configured value: "default" or a WAV path
    refusal: SipError            # the answer after a REFUSAL's announcement
    cause: str                   # the CDR cause if the caller ends it (REFUSAL: its own)
    call_id: str                 # the attempt's id: media session, timers, CDR, the call
    a_tag: str                   # our To tag: the 183, the early dialog, the final answer
    ext_digits: int = DEFAULT_EXT_DIGITS
    phase: Phase = Phase.OPENING
    dialog: Dialog | None = None     # the early dialog our 183 made
    media_open: bool = False
    collecting: bool = False
    digits: str = ""
    tries: int = 0
    wait: int | None = None      # the result id of the OpenEarly, Lookup or PlayPrompt out
    done: bool = False


class Announcer:
    """Every attempt an announcement holds, for one CallCore (module docstring). The core
    calls it from its dispatch: `refused` (calling.py's routing), `cancel`, `request`,
    `digit`, `on_timer`, `shutdown`, and `notices_first` at B's answer."""

    def __init__(self, core: CallCore) -> None:
        self.core = core
        self._by_txn: dict[str, Prompting] = {}                 # A's INVITE transaction
        self._by_dialog: dict[tuple[str, str], Prompting] = {}  # (A's Call-ID, From tag)
        self._by_call: dict[str, Prompting] = {}                # our call id

    def __len__(self) -> int:
        return len(self._by_txn)

    # -- which announcement, if any -------------------------------------------------------
    def file(self, tenant: str, key: str) -> str | None:
        """`announcements.<key>` for `tenant` (its override, else the top level's)."""
        config = self.core.config
        found = config.tenants.get(tenant)
        if found is not None:
            return found.announcement(key, config.announcements)
        value: str | None = getattr(config.announcements, key)
        return value

    def refused(self, setup: Setup, exc: SipError, binding: Binding | None) -> bool:
        """calling.route_setup refuses `setup` with `exc`: True when the announcer answers
        it (now, or after an announcement), False for calling.refuse's bare answer."""
        if setup.prompted is not None:
            # Keyed at the prompt, refused after all (a policy rule): its early dialog and
            # media are ours to close.
            self._refuse_prompted(setup, exc)
            return True
        if setup.ending is not None or setup.a_body.kind is not masking.BodyKind.SDP:
            return False        # the caller has gone (or the node drains); or no offer
        if isinstance(exc, refusals.NeedsExtension):
            kind, key = Kind.EXTENSION, "ext_prompt"
        elif isinstance(exc, refusals.UnknownX):
            kind, key = Kind.REFUSAL, "unbound"
        elif exc.status == 403 and exc.cause in _ANNOUNCED_403:
            kind, key = Kind.REFUSAL, "not_allowed"
        else:
            return False
        core = self.core
        tenant = binding.tenant if binding is not None else core.tenant_of_x(setup.x)
        file = self.file(tenant, key)
        if file is None:
            return False
        tenant_config = core.config.tenants.get(tenant)
        p = Prompting(
            setup=setup, kind=kind, key=key, file=file, refusal=exc,
            cause=calling.count_refusal(core, exc) if kind is Kind.REFUSAL else "none",
            call_id=new_call_id(host=core.config.sip.advertise), a_tag=new_tag(),
            ext_digits=tenant_config.ext_digits if tenant_config else DEFAULT_EXT_DIGITS)
        request = setup.event.request
        self._by_txn[setup.event.txn_id] = p
        self._by_dialog[(request.call_id, request.from_.tag or "")] = p
        self._by_call[p.call_id] = p
        core.stats[f"prompts_{key}"] += 1
        p.wait = core.wait(None, partial(self._opened, p))
        core.add(OpenEarly(p.wait, p.call_id, Leg.A, setup.a_body.content,
                           setup.event.source[0]))
        if kind is Kind.EXTENSION:
            core.timers.start(p.call_id, CallTimer.PROMPTING, core.now + PROMPTING_S)
        return True

    # -- early media and the prompt -------------------------------------------------------
    def _opened(self, p: Prompting, done: EarlyOpened) -> None:
        core = self.core
        p.wait = None
        opened = done.error is None and done.sdp is not None
        if p.done:
            if opened:      # the caller left while it opened: give it back now
                core.add(MediaDelete(p.call_id))
            return
        if not opened or done.sdp is None:
            # No stream the prompt could use (no PCMU/PCMA, SRTP only) or the backend
            # refused: no announcement, the attempt is answered as it would be without.
            core.stats["prompts_without_media"] += 1
            core.log.info("call.prompt_without_media", call_id=p.call_id,
                          error=None if done.error is None else str(done.error))
            self._end_refused(p, p.refusal)
            return
        p.media_open = True
        request = p.setup.event.request
        contact = core.contact_for(p.setup.x, p.setup.event.transport,
                                   secure=request.uri[:5].lower() == "sips:")
        p.dialog = Dialog.as_uas(request, p.a_tag, local_contact=contact)
        send_early(core, p.setup.event.txn_id, request, p.a_tag, contact, done.sdp)
        if p.kind is Kind.EXTENSION:
            p.collecting = True
            # A trunk that sends neither RFC 4733 nor INFO keys by tones (its config says).
            core.add(CollectDigits(p.call_id, Leg.A, inband=p.setup.trunk.inband_dtmf))
        self._play(p)

    def _play(self, p: Prompting) -> None:
        core = self.core
        core.timers.stop(p.call_id, CallTimer.DIGITS)
        p.phase = Phase.PLAYING
        p.wait = core.wait(None, partial(self._prompt_ended, p))
        core.add(PlayPrompt(p.wait, p.call_id, Leg.A, p.key, p.file))

    def _prompt_ended(self, p: Prompting, done: PromptEnded) -> None:
        if p.done or done.id != p.wait:
            return
        p.wait = None
        if done.reason in (PlayEnd.UNPLAYABLE, PlayEnd.FAILED):
            # The leg's codec is neither PCMU nor PCMA, or the file could not be read: no
            # prompt, and the attempt goes on as if it had played.
            self.core.stats["prompts_unplayable"] += 1
        if p.kind is Kind.REFUSAL:
            self._end_refused(p, p.refusal)
            return
        p.phase = Phase.COLLECTING
        self._arm(p, FIRST_DIGIT_S)

    # -- keys -----------------------------------------------------------------------------
    def digit(self, event: DigitHeard) -> None:
        """A key the caller pressed in its media (the backend's RFC 4733 events)."""
        p = self._by_call.get(event.call_id)
        if p is not None and event.leg is Leg.A:
            self._key(p, event.key)

    def _key(self, p: Prompting, key: str) -> None:
        if p.kind is not Kind.EXTENSION or p.phase not in (Phase.PLAYING, Phase.COLLECTING):
            return
        core = self.core
        if p.phase is Phase.PLAYING:
            # Barge-in: the caller knows what to do; the prompt stops at the first key.
            core.drop_wait(p.wait)
            p.wait = None
            core.add(StopPrompt(p.call_id, Leg.A))
            p.phase = Phase.COLLECTING
        if key == "#":
            self._complete(p)
            return
        if key.isdigit():
            p.digits += key
            if len(p.digits) >= p.ext_digits:
                self._complete(p)
                return
        self._arm(p, INTER_DIGIT_S)

    def _arm(self, p: Prompting, seconds: float) -> None:
        self.core.timers.start(p.call_id, CallTimer.DIGITS, self.core.now + seconds)

    def _complete(self, p: Prompting) -> None:
        """The extension is keyed (or the caller went quiet): look it up."""
        core = self.core
        core.timers.stop(p.call_id, CallTimer.DIGITS)
        ext, p.digits = p.digits, ""
        if not ext:
            self._wrong(p)
            return
        p.phase = Phase.LOOKING_UP
        setup = p.setup
        p.wait = core.wait(None, partial(self._looked_up, p, ext))
        core.add(Lookup(p.wait, setup.x, setup.caller, core.wall, ext))

    def _looked_up(self, p: Prompting, ext: str, done: LookupDone) -> None:
        if p.done:
            return
        p.wait = None
        core = self.core
        if done.error is not None:
            # As calling.route_setup: the store's trouble (503, try again) or a fault (500).
            core.stats["lookup_failed"] += 1
            core.log.warning("call.lookup_failed", error=str(done.error))
            if isinstance(done.error, StoreError):
                self._end(p, 503, "none", "sipmask", extra=(
                    ("Retry-After", str(core.config.policy.retry_after_s)),))
            else:
                self._end(p, 500, "none", "sipmask")
            return
        try:
            routing.route(done.binding, p.setup.x, p.setup.caller, ext)
        except refusals.UnknownX:
            self._wrong(p)          # no binding has this extension
            return
        except SipError as exc:
            self._end_refused(p, exc)
            return
        self._hand_over(p, ext, done)

    def _wrong(self, p: Prompting) -> None:
        p.tries += 1
        if p.tries >= MAX_TRIES:
            self._end_refused(p, p.refusal)     # NeedsExtension: 404, no_binding
            return
        self._play(p)

    def _hand_over(self, p: Prompting, ext: str, done: LookupDone) -> None:
        """The right extension: the attempt goes on as X+E dialled at once (module
        docstring); the call takes the early dialog and media."""
        core = self.core
        self._close(p)
        setup = dataclasses.replace(p.setup, ext=ext, prompted=(p.call_id, p.a_tag))
        try:
            calling.route_setup(core, setup, done)
        except Exception:
            # As calling._routed; the media is the call's if one was made.
            if p.call_id not in core.calls:
                core.add(MediaDelete(p.call_id))
            core.reply(setup.event.txn_id, setup.event.request, 500, to_tag=p.a_tag)
            raise

    def _refuse_prompted(self, setup: Setup, exc: SipError) -> None:
        assert setup.prompted is not None
        call_id, a_tag = setup.prompted
        core = self.core
        core.add(MediaDelete(call_id))
        calling.record_refusal(core, setup.event, exc.status, calling.count_refusal(core, exc),
                               setup.invite_at, extra=calling.refusal_headers(exc),
                               call_id=call_id, to_tag=a_tag)

    # -- the caller, the clock, the drain -------------------------------------------------
    def cancel(self, invite_txn: str) -> bool:
        """A CANCEL of an INVITE an announcement holds: 487 now (RFC 3261 §9.2)."""
        p = self._by_txn.get(invite_txn)
        if p is None:
            return False
        self._end(p, 487, p.cause, "caller")
        return True

    def request(self, event: RequestReceived) -> bool:
        """A request inside an announcement's early dialog: True when it was one."""
        request = event.request
        try:
            key = (request.call_id, request.from_.tag or "")
            to_tag = request.to.tag
        except ParseError:
            return False
        p = self._by_dialog.get(key)
        if p is None or p.dialog is None or to_tag != p.a_tag:
            return False
        core = self.core
        if not relaying.in_cseq_order(core, p.dialog, event):
            return True
        method = request.method
        if method == "BYE":
            # §15: the caller may hang up an early dialog; §15.1.2: the INVITE gets 487.
            core.reply(event.txn_id, request, 200)
            self._end(p, 487, p.cause, "caller")
        elif method == "INFO":
            self._info(p, event)
        elif method == "PRACK":
            core.reply(event.txn_id, request, 481)    # our 183 is not reliable (RFC 3262)
        else:
            core.reply(event.txn_id, request, 405, extra=relaying.ALLOW_HEADER)
        return True

    def _info(self, p: Prompting, event: RequestReceived) -> None:
        """INFO with a key (media/dtmf.parse_info: 400 for a bad body, 415 for another
        type); an INFO without a body (a keep-alive) gets its 200."""
        request, core = event.request, self.core
        key = None
        if request.body:
            try:
                key = dtmf.parse_info(request.headers.get("content-type") or "", request.body)
            except SipError as exc:
                core.reply(event.txn_id, request, exc.status,
                           extra=_DTMF_ACCEPT if exc.status == 415 else ())
                return
        core.reply(event.txn_id, request, 200)
        if key is not None:
            self._key(p, key)

    def on_timer(self, call_id: str, timer: CallTimer) -> None:
        p = self._by_call.get(call_id)
        if p is None:
            return
        if timer is CallTimer.PROMPTING:
            self._end_refused(p, p.refusal)
        elif timer is CallTimer.DIGITS and p.phase is Phase.COLLECTING:
            self._complete(p)

    def shutdown(self) -> None:
        """Drain timeout: a refusal is answered now, an extension prompt gets 503."""
        for p in list(self._by_txn.values()):
            if p.kind is Kind.REFUSAL:
                self._end_refused(p, p.refusal)
            else:
                self._end(p, 503, "none", "sipmask")

    # -- the end --------------------------------------------------------------------------
    def _end_refused(self, p: Prompting, exc: SipError) -> None:
        cause = p.cause if p.kind is Kind.REFUSAL else calling.count_refusal(self.core, exc)
        self._end(p, exc.status, cause, "sipmask", extra=calling.refusal_headers(exc))

    def _end(self, p: Prompting, status: int, cause: str, release_side: str, *,
             extra: tuple[tuple[str, str], ...] = ()) -> None:
        """The attempt ends with `status`: what it opened is given back, its CDR written,
        then the final response leaves in the early dialog."""
        self._close(p)
        if p.media_open:
            self.core.add(MediaDelete(p.call_id))     # ends the prompt and the keys too
        setup = p.setup
        calling.record_refusal(self.core, setup.event, status, cause, setup.invite_at,
                               extra=extra, call_id=p.call_id, to_tag=p.a_tag,
                               release_side=release_side)

    def _close(self, p: Prompting) -> None:
        """Forget the attempt: its timers, its keys, the result it waits for. An OpenEarly
        still out is kept: `_opened` gives back what it opened."""
        core = self.core
        p.done = True
        request = p.setup.event.request
        self._by_txn.pop(p.setup.event.txn_id, None)
        self._by_dialog.pop((request.call_id, request.from_.tag or ""), None)
        self._by_call.pop(p.call_id, None)
        core.timers.stop(p.call_id, CallTimer.DIGITS)
        core.timers.stop(p.call_id, CallTimer.PROMPTING)
        if p.phase is Phase.PLAYING and p.wait is not None:
            core.add(StopPrompt(p.call_id, Leg.A))
        if p.collecting:
            p.collecting = False
            core.add(StopDigits(p.call_id, Leg.A))
        if p.phase is not Phase.OPENING:
            core.drop_wait(p.wait)
            p.wait = None

    # -- notices after the answer (issue 15 §4) -------------------------------------------
    def notices_first(self, ctx: CallContext, body: bytes, content_type: str | None,
                      then: Callable[[], None]) -> bool:
        """Asked once per call by calling._journal_answer before A hears B's answer (`body`
        for A): True when notices play first, and `then` (that answer) runs when they
        are done. The call waits in state NOTICE meanwhile."""
        if ctx.notice is not None:
            return False
        steps = self._notice_steps(ctx, content_type == SDP)
        ctx.notice = Notice(steps, then, body if content_type == SDP else None)
        if not steps:
            return False
        self.core.transition(ctx, CallEvent.NOTICE_STARTED)
        self._next_notice(ctx)
        return True

    def _notice_steps(self, ctx: CallContext, sdp_for_a: bool
                      ) -> list[tuple[str, str, tuple[Leg, ...]]]:
        if not ctx.media_open:
            return []
        tenant = ctx.call.tenant
        steps: list[tuple[str, str, tuple[Leg, ...]]] = []
        callee = self.file(tenant, "callee_notice")
        if callee is not None:
            steps.append(("callee_notice", callee, (Leg.B,)))
        recording = self.file(tenant, "recording_notice") if ctx.record else None
        if recording is not None:
            # The caller hears it as early media when the 183 can carry an answer: A made
            # the offer (an offer in an unreliable 18x is not allowed, RFC 3261 §13.2.1).
            caller_hears = sdp_for_a and ctx.a_body.kind is masking.BodyKind.SDP
            steps.append(("recording_notice", recording,
                          (Leg.A, Leg.B) if caller_hears else (Leg.B,)))
        return steps

    def _next_notice(self, ctx: CallContext) -> None:
        notice, core = ctx.notice, self.core
        assert notice is not None
        if not notice.steps:
            core.transition(ctx, CallEvent.NOTICE_DONE)
            notice.then()
            return
        key, file, legs = notice.steps.pop(0)
        if Leg.A in legs and not notice.early_sent and notice.early_body is not None:
            notice.early_sent = True
            send_early(core, ctx.a_txn, ctx.a_invite, ctx.a_tag, core.contact_of(ctx, Leg.A),
                       notice.early_body)
        for leg in legs:
            op = core.wait(None, partial(self._notice_ended, ctx))
            notice.playing.add(op)
            core.add(PlayPrompt(op, ctx.call.call_id, leg, key, file))

    def _notice_ended(self, ctx: CallContext, done: PromptEnded) -> None:
        if done.reason in (PlayEnd.UNPLAYABLE, PlayEnd.FAILED):
            self.core.stats["prompts_unplayable"] += 1
        self.core.submit(ctx, partial(self._notice_played, ctx, done.id))

    def _notice_played(self, ctx: CallContext, op: int) -> None:
        notice = ctx.notice
        if ctx.call.state is not CallState.NOTICE or notice is None:
            return          # the call ended meanwhile (its media delete ended the prompt)
        notice.playing.discard(op)
        if not notice.playing:
            self._next_notice(ctx)


def send_early(core: CallCore, txn_id: str, request: Request, to_tag: str, contact: str,
               sdp: bytes) -> None:
    """183 Session Progress with `sdp`: early media for an announcement (RFC 3960 §3.1)."""
    core.send_response(txn_id, build_response(
        request, 183, to_tag=to_tag, extra=(("Contact", contact), ("Allow", ALLOW)),
        body=sdp, content_type=SDP))
