"""RFC 3261 §17 timer values, as pure functions of T1, T2, T4 and the transport.

Everything is in seconds. The transaction layer asks these functions how long to wait (once
per timer and transport when its T1/T2/T4 are set, not on every start); it never reads a
clock (time comes in as `now`). Reliable transports (TCP) need no
retransmissions, so the retransmit timers are not started on them (None) and the timers that
only exist to absorb retransmissions are zero (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sipmask.sip.transports import RELIABLE, Transport

# §17.2.1: a server INVITE transaction sends 100 Trying itself when the TU has not answered
# within 200 ms.
TRYING_DELAY = 0.2

# §17.1.1.2: Timer D is at least 32 s on unreliable transports.
TIMER_D_MIN_UDP = 32.0


@dataclass(frozen=True)
class TimerConfig:
    """T1 (RTT estimate), T2 (cap on non-INVITE retransmit intervals), T4 (how long a message
    may live in the network); RFC 3261 §17.1.1.1 defaults, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @classmethod
    def from_ms(cls, t1_ms: int, t2_ms: int, t4_ms: int) -> TimerConfig:
        """From `config.sip.timers` (milliseconds)."""
        return cls(t1_ms / 1000.0, t2_ms / 1000.0, t4_ms / 1000.0)

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J (on UDP), L, M and the 2xx give-up of §13.3.1.4."""
        return 64 * self.t1


class Timer(Enum):
    """The RFC 3261 §17 timers (A–K), RFC 6026 §8 (L, M), and two the layer adds."""

    # Identity hash: members key the transaction tables on the hot path (Enum's default
    # hashes the name in Python code).
    __hash__ = object.__hash__

    A = "A"            # client INVITE retransmit (§17.1.1.2)
    B = "B"            # client INVITE timeout (§17.1.1.2)
    D = "D"            # client INVITE: absorb retransmitted final responses (§17.1.1.2)
    E = "E"            # client non-INVITE retransmit (§17.1.2.2)
    F = "F"            # client non-INVITE timeout (§17.1.2.2)
    K = "K"            # client non-INVITE: absorb retransmitted responses (§17.1.2.2)
    G = "G"            # server INVITE: retransmit the final non-2xx (§17.2.1)
    H = "H"            # server INVITE: give up waiting for ACK (§17.2.1)
    I = "I"            # noqa: E741  server INVITE: absorb ACK retransmissions (§17.2.1)
    J = "J"            # server non-INVITE: absorb request retransmissions (§17.2.2)
    L = "L"            # server INVITE Accepted: absorb INVITE retransmissions (RFC 6026 §8.7)
    M = "M"            # client INVITE Accepted: take 2xx retransmissions (RFC 6026 §8.4)
    TRYING = "Trying"  # server INVITE: send 100 Trying if the TU is slow (§17.2.1)
    CANCELLED = "Cancelled"  # client INVITE: no final 64*T1 after CANCEL: give up (§9.1)
    RETRANSMIT_2XX = "2xx"  # server INVITE Accepted: 2xx until ACK (§13.3.1.4)


def initial(timer: Timer, config: TimerConfig, transport: Transport) -> float | None:
    """How long `timer` runs when it is started; None when it is not used on `transport`."""
    reliable = transport in RELIABLE
    if timer in (Timer.A, Timer.E, Timer.G):
        # §17.1.1.2 (A), §17.1.2.2 (E), §17.2.1 (G): retransmissions start at T1, and only
        # on an unreliable transport.
        return None if reliable else config.t1
    if timer is Timer.RETRANSMIT_2XX:
        # §13.3.1.4: the UAS core retransmits 2xx from T1 whatever the transport, because a
        # proxy further on may use UDP.
        return config.t1
    if timer in (Timer.B, Timer.F, Timer.H, Timer.L, Timer.M, Timer.CANCELLED):
        # §17.1.1.2 (B), §17.1.2.2 (F), §17.2.1 (H), RFC 6026 §8.4/§8.7 (M, L), §9.1: 64*T1.
        return config.timeout
    if timer is Timer.D:
        # §17.1.1.2: at least 32 s for unreliable transports, zero for reliable ones. The
        # server keeps retransmitting for 64*T1 (Timer H), so cover that too.
        return 0.0 if reliable else max(TIMER_D_MIN_UDP, config.timeout)
    if timer is Timer.J:
        # §17.2.2: 64*T1 for unreliable transports, zero for reliable ones.
        return 0.0 if reliable else config.timeout
    if timer in (Timer.I, Timer.K):
        # §17.2.1 (I), §17.1.2.2 (K): T4 for unreliable transports, zero for reliable ones.
        return 0.0 if reliable else config.t4
    return TRYING_DELAY


def backoff(timer: Timer, interval: float, config: TimerConfig) -> float:
    """The next retransmit interval after one of `interval` fired.

    §17.1.1.2: Timer A doubles without a cap (its schedule is ended by Timer B).
    §17.1.2.2 (E), §17.2.1 (G), §13.3.1.4 (2xx): doubling, capped at T2."""
    if timer is Timer.A:
        return 2 * interval
    return min(2 * interval, config.t2)


def retransmit_offsets(timer: Timer, config: TimerConfig, until: float) -> list[float]:
    """When the retransmissions driven by `timer` happen, in seconds after the first send,
    up to (not including) `until`. For documentation and tests: the layer computes the same
    schedule one step at a time."""
    interval = initial(timer, config, "udp")
    assert interval is not None
    out: list[float] = []
    at = interval
    while at < until:
        out.append(at)
        interval = backoff(timer, interval, config)
        at += interval
    return out
