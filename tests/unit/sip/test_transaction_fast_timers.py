"""The transaction layer's shortcuts on the timer path do what the plain versions did:
next_timer answers from a cached earliest entry (it must move when that entry is stopped,
restarted, fired or its transaction ends, and when an earlier one is pushed), and each
transition runs from tuples compiled at import out of the tables (the specification)."""

from __future__ import annotations

import random

import pytest

from sipmask.sip.timers import Timer
from sipmask.sip.transaction import (
    _INITIAL_RULES,
    _RULES,
    INITIAL_ACTIONS,
    INITIAL_STATE,
    STEPS,
    TABLES,
    Backoff,
    RestartAtT2,
    Start,
    Step,
    Stop,
    TransactionLayer,
)
from tests.support import txn_client as client
from tests.support import txn_server as server


def truth(tl: TransactionLayer) -> float | None:
    """The earliest live timer, from the heap and the transactions (no cache)."""
    live = [at for at, seq, txn_id, timer in tl._heap
            if (txn := tl._txns.get(txn_id)) is not None and txn.timers.get(timer) == seq]
    return min(live, default=None)


def client_request(method: str, n: int) -> object:
    req = client.request(method)
    req.headers.set("Call-ID", f"leg-b-{n}@127.0.0.1")
    return req


# -- the compiled rules -------------------------------------------------------------------
def test_every_rule_is_its_table_row_compiled() -> None:
    for table in TABLES.values():
        for (state, event), transition in table.items():
            rule = _RULES[state][event]
            assert rule.next is transition.next
            assert rule.stops == tuple(a.timer for a in transition.actions
                                       if isinstance(a, Stop))
            assert rule.steps == tuple(STEPS[a] for a in transition.actions
                                       if isinstance(a, Step))
            expected = tuple((a.timer, type(a)) for a in transition.actions
                             if isinstance(a, Start | Backoff | RestartAtT2))
            assert tuple(timer for timer, _ in rule.starts) == tuple(t for t, _ in expected)
    assert sum(map(len, _RULES.values())) == sum(map(len, TABLES.values()))
    for kind, actions in INITIAL_ACTIONS.items():
        rule = _INITIAL_RULES[kind]
        assert rule.next is INITIAL_STATE[kind] and not rule.stops
        assert len(rule.steps) + len(rule.starts) == len(actions)


# -- the cached earliest timer ------------------------------------------------------------
def test_a_timer_earlier_than_the_cached_one_is_the_next() -> None:
    tl = server.layer(trying_delay=0.2)
    tl.send_request(client.request("OPTIONS"), client.PEER, "udp", 0.0)   # E at 0.5
    assert tl.next_timer() == pytest.approx(0.5)
    server.start(tl, server.incoming(), now=0.0)                         # Trying at 0.2
    assert tl.next_timer() == pytest.approx(0.2)
    tl.send_request(client_request("INVITE", 2), client.PEER, "udp", 0.1)  # A at 0.6
    assert tl.next_timer() == pytest.approx(0.2)


def test_stopping_the_earliest_timer_moves_the_deadline() -> None:
    tl = server.layer(trying_delay=0.2)
    tl.send_request(client.request("OPTIONS"), client.PEER, "udp", 0.0)   # E at 0.5
    invite = server.incoming()
    event = server.start(tl, invite, now=0.0)                            # Trying at 0.2
    assert tl.next_timer() == pytest.approx(0.2)
    tl.send_response(event.txn_id, server.answer(invite, 180), 0.05)     # stops Trying
    assert tl.next_timer() == pytest.approx(0.5)


def test_ending_the_transaction_of_the_earliest_timer_moves_the_deadline() -> None:
    tl = server.layer(trying_delay=None)
    tl.send_request(client.request("OPTIONS"), ("127.0.0.1", 5999), "udp", 0.0)  # E at 0.5
    tl.send_request(client_request("INVITE", 2), client.PEER, "udp", 0.2)        # A at 0.7
    assert tl.next_timer() == pytest.approx(0.5)
    tl.transport_error(("127.0.0.1", 5999), "udp", 0.3)   # the OPTIONS ends (§17.1.4)
    assert tl.next_timer() == pytest.approx(0.7)


def test_a_fired_timer_restarts_and_the_deadline_follows_it() -> None:
    tl = client.layer()
    tl.send_request(client.request(), client.PEER, "udp", 0.0)           # A 0.5, B 32
    assert tl.next_timer() == pytest.approx(0.5)
    tl.handle_timer(0.5)
    assert tl.next_timer() == pytest.approx(1.5)                         # A doubled
    tl.handle_timer(1.5)
    assert tl.next_timer() == pytest.approx(3.5)


def test_a_response_that_ends_every_timer_leaves_none() -> None:
    tl = client.layer()
    req = client.request("OPTIONS")
    tl.send_request(req, client.PEER, "tcp", 0.0)                        # F only on TCP
    assert tl.next_timer() == pytest.approx(32.0)
    tl.receive(client.reply(req, 200), client.PEER, "tcp", 0.1)          # K is zero: ends
    assert tl.next_timer() is None and len(tl) == 0


@pytest.mark.parametrize("seed", range(12))
def test_next_timer_always_equals_the_earliest_live_entry(seed: int) -> None:
    """Random interleavings of every kind of transaction, answers, failures and timers;
    after each operation the cached answer equals the one read from the heap."""
    rng = random.Random(seed)
    tl = server.layer(trying_delay=rng.choice([0.2, None]))
    now = 0.0
    servers: list[tuple[str, object]] = []
    clients: list[object] = []
    for n in range(300):
        now += rng.choice([0.0, 0.01, 0.1, 0.5, 2.0])
        op = rng.randrange(7)
        transport = rng.choice(["udp", "udp", "tcp"])
        if op == 0:
            method = rng.choice(["INVITE", "BYE", "OPTIONS"])
            req = server.incoming(method, branch=f"z9hG4bKs{n}", cseq=n)
            tl.receive(req, server.PEER, transport, now)  # type: ignore[arg-type]
            for event in tl.events():
                txn_id = getattr(event, "txn_id", None)
                if type(event).__name__ == "RequestReceived" and txn_id is not None:
                    servers.append((txn_id, req))
        elif op == 1 and servers:
            txn_id, req = servers.pop(rng.randrange(len(servers)))
            status = rng.choice([180, 200, 486])
            tl.send_response(txn_id, server.answer(req, status), now)  # type: ignore[arg-type]
            if status == 180:
                servers.append((txn_id, req))
        elif op == 2:
            req = client_request(rng.choice(["INVITE", "OPTIONS"]), n)
            tl.send_request(req, client.PEER, transport, now)  # type: ignore[arg-type]
            clients.append(req)
        elif op == 3 and clients:
            req = clients.pop(rng.randrange(len(clients)))
            status = rng.choice([100, 180, 200, 486])
            tl.receive(client.reply(req, status), client.PEER, "udp", now)  # type: ignore[arg-type]
            if status < 200:
                clients.append(req)
        elif op == 4 and rng.random() < 0.2:
            tl.transport_error(client.PEER, transport, now)  # type: ignore[arg-type]
        elif op == 5:
            at = tl.next_timer()
            if at is not None:
                tl.handle_timer(max(now, at))
                now = max(now, at)
        else:
            tl.handle_timer(now)
        tl.outgoing()
        tl.events()
        assert tl.next_timer() == truth(tl), (seed, n, op)
    # Winding down: every timer fires where the heap says.
    while (at := tl.next_timer()) is not None:
        assert at == truth(tl)
        tl.handle_timer(at)
    assert truth(tl) is None


def test_timers_of_a_restarted_kind_are_not_cached_stale() -> None:
    """Timer E in Proceeding restarts at T2 (§17.1.2.2): the old entry is stale at once."""
    tl = client.layer()
    req = client.request("OPTIONS")
    tl.send_request(req, client.PEER, "udp", 0.0)
    tl.receive(client.reply(req, 180), client.PEER, "udp", 0.1)
    tl.handle_timer(0.5)                                                 # E fires: T2
    assert tl.next_timer() == pytest.approx(4.5) == truth(tl)
    assert tl._txns[next(iter(tl._txns))].timers.keys() == {Timer.E, Timer.F}
