"""One real SIP endpoint (pjsua2, PJSIP 2.15) for the end-to-end media tests.

Run as a subprocess, one endpoint per process (TESTING.md, pjsua2: one `Endpoint` per process,
and a crash must fail one test, not the suite):

    python3 tests/support/pjsua_endpoint.py --role callee --bind 127.0.0.3:PORT \
        --number 13900000002 --tone-hz 1500 --record b.wav
    python3 tests/support/pjsua_endpoint.py --role caller --bind 127.0.0.2:PORT \
        --from-user 13800000001 --tone-hz 1000 --record a.wav \
        --call sip:700100000000001@127.0.0.1:5060 --duration 3

The callee answers the first INVITE (180, then 200); the caller hangs up after `--duration`
seconds of confirmed call. With `--dtmf KEYS` the caller waits for early media (a 183 with
SDP: an announcement), listens `--dtmf-after` seconds, then keys KEYS as RFC 4733
telephone-events (`Call.dialDtmf`) before it waits for the answer; `dtmf_at` and
`confirmed_at` (seconds from the start of its recording) say which part of the recording
was the early media. Once media is active each side plays a looping sine WAV into the
call and records what the call delivers. At the end the process prints ONE JSON line on
stdout and leaves with `os._exit`, so no `Call` is alive at `libDestroy` (which aborts):

    {"role", "ok": true, "remote_uri", "remote_contact", "state", "last_status",
     "last_reason", "recorded", "rtp_remote", "rtp_local", "media_seconds", "received"}

`received` holds the text of every SIP message the endpoint received for its call, so a test
can check that nothing of the far party crossed. On any failure or timeout the line is
`{"role", "ok": false, "error", ...what was known}` and the exit status is 1. pjsua's own
log goes to `<record>.log`, never to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import os
import signal
import struct
import sys
import time
import traceback
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pjsua2 as pj

RATE = 8000
# PJSIP's conference bridge runs on 20 ms frames; a tone of whole periods per second loops
# without a click, so the looping player adds no energy at other frequencies.
TONE_SECONDS = 1
TONE_AMPLITUDE = 0.3


def write_tone(path: Path, hz: float, seconds: int = TONE_SECONDS) -> Path:
    """An 8 kHz mono 16-bit sine WAV (what PCMU carries without resampling)."""
    frames = bytearray()
    for n in range(RATE * seconds):
        sample = int(TONE_AMPLITUDE * 32767 * math.sin(2 * math.pi * hz * n / RATE))
        frames += struct.pack("<h", sample)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(bytes(frames))
    return path


@dataclass
class Outcome:
    """What the endpoint saw; printed as the one JSON line."""

    role: str
    recorded: str
    state: str = "NULL"
    last_status: int | None = None
    last_reason: str = ""
    remote_uri: str = ""
    remote_contact: str = ""
    rtp_remote: str = ""
    rtp_local: str = ""
    media_seconds: float = 0.0
    dtmf_at: float | None = None          # seconds into the recording
    confirmed_at: float | None = None     # seconds into the recording
    received: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)

    def line(self, **extra: Any) -> str:
        return json.dumps({**self.__dict__, **extra})


Callback = TypeVar("Callback", bound=Callable[..., None])


def guarded(callback: Callback) -> Callback:
    """An exception must not cross a SWIG director back into C++ (it aborts the process):
    keep the first one on the runner, whose polling loop raises it."""
    @functools.wraps(callback)
    def wrapper(self: Any, *args: Any) -> None:
        try:
            callback(self, *args)
        except Exception as exc:
            if self.runner.failure is None:
                self.runner.failure = exc
    return wrapper  # type: ignore[return-value]


class EndpointCall(pj.Call):  # type: ignore[misc]
    """A call that wires tone and recorder once media is active and notes what it sees."""

    def __init__(self, runner: Runner, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.runner = runner
        self.media_wired = False
        self.media_started_at: float | None = None
        self.disconnected = False
        self.confirmed_at: float | None = None

    def note_info(self) -> None:
        info = self.getInfo()
        out = self.runner.outcome
        out.state = info.stateText
        out.last_status = int(info.lastStatusCode)
        out.last_reason = info.lastReason
        # remoteUri is the To (caller) or From (callee) of the dialog; remoteContact is where
        # the far side asked to be reached: together, everything the endpoint knows of it.
        out.remote_uri = info.remoteUri
        out.remote_contact = info.remoteContact

    def note_stream(self) -> None:
        try:
            stream = self.getStreamInfo(0)
            transport = self.getMedTransportInfo(0)
        except pj.Error:
            return
        self.runner.outcome.rtp_remote = stream.remoteRtpAddress
        self.runner.outcome.rtp_local = transport.localRtpName

    @guarded
    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        # A final failure response ends the session before onCallTsxState would see it.
        self.note_received(prm.e)
        self.note_info()
        info = self.getInfo()
        self.runner.outcome.states.append(info.stateText)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True

    def note_received(self, event: pj.SipEvent) -> None:
        """Keep the text of a message received for this call (once, though both the call
        state and the transaction state callbacks may carry it)."""
        if event.type == pj.PJSIP_EVENT_TSX_STATE and \
                event.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG:
            text = event.body.tsxState.src.rdata.wholeMsg
            if text not in self.runner.outcome.received:
                self.runner.outcome.received.append(text)

    @guarded
    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        self.note_received(prm.e)

    @guarded
    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or \
                    media.status != pj.PJSUA_CALL_MEDIA_ACTIVE or self.media_wired:
                continue
            audio = self.getAudioMedia(index)
            self.runner.player.startTransmit(audio)
            audio.startTransmit(self.runner.recorder)
            self.media_wired = True
            self.media_started_at = time.monotonic()
        self.note_stream()


class EndpointAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, runner: Runner):
        super().__init__()
        self.runner = runner

    @guarded
    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = EndpointCall(self.runner, self, prm.callId)
        self.runner.outcome.received.append(prm.rdata.wholeMsg)
        if self.runner.call is not None:
            # One call per endpoint: a second INVITE is a harness error, refuse it loudly.
            busy = pj.CallOpParam()
            busy.statusCode = 486
            call.hangup(busy)
            self.runner.extra_calls.append(call)
            return
        self.runner.call = call
        ringing = pj.CallOpParam()
        ringing.statusCode = 180
        call.answer(ringing)
        self.runner.answer_at = time.monotonic() + self.runner.args.answer_delay


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.outcome = Outcome(role=args.role, recorded=str(Path(args.record).resolve()))
        self.call: EndpointCall | None = None
        self.extra_calls: list[EndpointCall] = []
        self.answer_at: float | None = None
        self.deadline = time.monotonic() + args.timeout
        self.failure: Exception | None = None
        host, _, port = args.bind.rpartition(":")
        self.host, self.port = host, int(port)
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        self.ep.libInit(self.endpoint_config())
        self.ep.audDevManager().setNullDev()
        self.keep_pcmu_only()
        tcfg = pj.TransportConfig()
        tcfg.boundAddress = host
        tcfg.publicAddress = host
        tcfg.port = self.port
        self.transport_id = self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self.ep.libStart()
        record = Path(args.record)
        tone = write_tone(record.with_name(f"{record.stem}.tone-{args.tone_hz:g}.wav"),
                          args.tone_hz)
        self.player = pj.AudioMediaPlayer()
        self.player.createPlayer(str(tone))  # loops by default
        self.recorder = pj.AudioMediaRecorder()
        self.recorder.createRecorder(str(record))
        self.account = EndpointAccount(self)
        self.account.create(self.account_config())

    def endpoint_config(self) -> pj.EpConfig:
        cfg = pj.EpConfig()
        # TESTING.md: no worker threads, callbacks only from libHandleEvents in this thread.
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 4
        cfg.uaConfig.userAgent = f"sipmask-e2e-{self.args.role}"
        cfg.medConfig.clockRate = RATE
        cfg.medConfig.sndClockRate = RATE
        cfg.medConfig.channelCount = 1
        # No VAD (silence suppression would drop frames), no echo canceller: the recording
        # must hold exactly what the far side sent.
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        cfg.logConfig.consoleLevel = 0
        cfg.logConfig.level = 5
        cfg.logConfig.filename = f"{self.args.record}.log"
        cfg.logConfig.msgLogging = 1
        return cfg

    def keep_pcmu_only(self) -> None:
        for codec in self.ep.codecEnum2():
            self.ep.codecSetPriority(codec.codecId, 255 if codec.codecId.startswith("PCMU/") else 0)

    def account_config(self) -> pj.AccountConfig:
        cfg = pj.AccountConfig()
        cfg.idUri = f"sip:{self.args.number}@{self.host}:{self.port}"
        cfg.sipConfig.transportId = self.transport_id
        cfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_DISABLED
        # RTP on the endpoint's own loopback alias, so the far side (or sipmask) sees it there.
        cfg.mediaConfig.transportConfig.boundAddress = self.host
        cfg.mediaConfig.transportConfig.publicAddress = self.host
        cfg.mediaConfig.transportConfig.port = self.args.rtp_port
        cfg.natConfig.iceEnabled = False
        cfg.natConfig.sdpNatRewriteUse = 0
        cfg.natConfig.contactRewriteUse = 0
        cfg.natConfig.viaRewriteUse = 0
        return cfg

    def handle_events(self) -> None:
        self.ep.libHandleEvents(10)
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def poll(self, until: float) -> None:
        while time.monotonic() < until:
            self.handle_events()

    def wait_for(self, what: str, done: Any, limit: float | None = None) -> None:
        """Poll until `done()` or the deadline; a timeout raises with `what` in the text."""
        end = min(self.deadline, time.monotonic() + limit) if limit else self.deadline
        while not done():
            if time.monotonic() >= end:
                raise TimeoutError(f"timed out waiting for {what}")
            self.handle_events()

    def run_caller(self) -> None:
        call = EndpointCall(self, self.account)
        self.call = call
        call.makeCall(self.args.call, pj.CallOpParam(True))
        if self.args.dtmf:
            self.key_in_early_media(call)
        self.wait_for("the call to be answered",
                      lambda: call.confirmed_at is not None or call.disconnected)
        if call.disconnected:
            raise CallFailed("call ended before it was answered")
        self.wait_for("media", lambda: call.media_wired or call.disconnected)
        if call.media_started_at is not None and call.confirmed_at is not None:
            self.outcome.confirmed_at = round(call.confirmed_at - call.media_started_at, 3)
        self.poll(time.monotonic() + self.args.duration)
        if call.disconnected:
            raise CallFailed("call ended before the caller hung up")
        call.note_stream()
        call.note_info()
        call.hangup(pj.CallOpParam(True))
        self.wait_for("the BYE to be answered", lambda: call.disconnected, limit=5)

    def key_in_early_media(self, call: EndpointCall) -> None:
        """Early media first (an announcement's 183), then the keys (RFC 4733)."""
        self.wait_for("early media", lambda: call.media_wired or call.disconnected)
        if call.confirmed_at is not None or call.disconnected:
            raise CallFailed("no early media before the answer")
        self.poll(time.monotonic() + self.args.dtmf_after)
        assert call.media_started_at is not None
        self.outcome.dtmf_at = round(time.monotonic() - call.media_started_at, 3)
        call.dialDtmf(self.args.dtmf)

    def run_callee(self) -> None:
        self.wait_for("an INVITE", lambda: self.call is not None)
        assert self.answer_at is not None
        self.poll(min(self.answer_at, self.deadline))
        call = self.call
        assert call is not None
        if not call.disconnected:
            ok = pj.CallOpParam()
            ok.statusCode = 200
            call.answer(ok)
        self.wait_for("media", lambda: call.media_wired or call.disconnected)
        # Stream info is gone once the call ends; note it now and refresh while it lasts.
        while not call.disconnected:
            call.note_stream()
            if time.monotonic() >= self.deadline:
                raise TimeoutError("timed out waiting for the caller's BYE")
            self.poll(time.monotonic() + 0.2)

    def finish(self) -> None:
        """Close the recorder so its WAV header holds the real length."""
        call = self.call
        if call is not None and call.media_started_at is not None:
            self.outcome.media_seconds = round(time.monotonic() - call.media_started_at, 3)
        if call is not None and not call.disconnected:
            # A terminated session has no info left; onCallState noted the last of it.
            call.note_info()
        del self.recorder
        del self.player
        # PJSIP 2.15 removes conference ports on the media clock's thread ("queued"); the
        # WAV writer flushes and fixes its header only then, so give the clock a few frames.
        self.poll(time.monotonic() + 0.2)


class CallFailed(Exception):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["caller", "callee"], required=True)
    parser.add_argument("--bind", required=True, help="host:port for SIP over UDP")
    parser.add_argument("--rtp-port", type=int, default=0, help="first RTP port (0: any)")
    parser.add_argument("--tone-hz", type=float, required=True)
    parser.add_argument("--record", required=True, help="WAV file for the received audio")
    parser.add_argument("--call", help="Request-URI to call (caller)")
    parser.add_argument("--from-user", "--number", dest="number", required=True,
                        help="this endpoint's number: the user part of its From/Contact")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds of confirmed call before the caller hangs up")
    parser.add_argument("--dtmf", default="", help="caller: keys to send in early media")
    parser.add_argument("--dtmf-after", type=float, default=1.0,
                        help="seconds of early media before the keys")
    parser.add_argument("--answer-delay", type=float, default=0.3,
                        help="seconds between the callee's 180 and its 200")
    parser.add_argument("--timeout", type=float, default=20.0, help="whole-run deadline")
    args = parser.parse_args(argv)
    if args.role == "caller" and not args.call:
        parser.error("--call is required for the caller")
    return args


class Terminated(Exception):
    pass


def on_sigterm(signum: int, frame: object) -> None:
    # Raised between two libHandleEvents polls, so main() still prints what was seen.
    raise Terminated("stopped by SIGTERM")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    # pjlib logs to fd 1 before libInit applies the log config: send the C side's stdout to
    # stderr and keep the real stdout for the one JSON line.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    status = 0
    runner: Runner | None = None
    try:
        runner = Runner(args)
        if args.role == "caller":
            runner.run_caller()
        else:
            runner.run_callee()
        runner.finish()
        line = runner.outcome.line(ok=True)
    except Exception as exc:
        status = 1
        # pj.Error carries its text in info(), not in str().
        detail = exc.info() if isinstance(exc, pj.Error) else str(exc)
        error = f"{type(exc).__name__}: {detail}"
        known = runner.outcome if runner is not None else \
            Outcome(role=args.role, recorded=str(args.record))
        if runner is not None:
            # Best effort: the WAV may still be useful for the report; the error is the news.
            with contextlib.suppress(Exception):
                runner.finish()
        line = known.line(ok=False, error=error, trace=traceback.format_exc(limit=5))
    os.write(result_fd, (line + "\n").encode())
    # pjlib writes its log file through stdio buffers that os._exit would drop.
    ctypes.CDLL(None).fflush(None)
    # A Call alive at libDestroy aborts the process (TESTING.md): leave without it.
    os._exit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
