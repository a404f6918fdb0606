"""kill -9: every event whose enqueue returned is in the outbox after a reopen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from sipmask.events.outbox import Outbox
from sipmask.store.lmdb import LmdbStore

REPO = Path(__file__).resolve().parents[3]

# The child enqueues without end and prints each id once `enqueue` has returned; the parent
# kills it mid-stream, so the kill lands while it is writing.
CHILD = textwrap.dedent("""
    import sys
    from sipmask.events.outbox import Outbox, new_event
    from sipmask.store.lmdb import LmdbStore
    outbox = Outbox(LmdbStore(sys.argv[1]))
    i = 0
    while True:
        event = new_event("ring", call_id=f"c{i}", binding_id="b", tenant="demo",
                          x="700100000000001", at=1800000000.0 + i)
        outbox.enqueue(event)
        print("enqueued", event.id, flush=True)
        i += 1
""")


def test_enqueued_events_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "s"
    wanted = 200
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, text=True)
    assert child.stdout is not None
    printed: list[str] = []
    try:
        for line in child.stdout:
            word, _, event_id = line.strip().partition(" ")
            assert word == "enqueued"
            printed.append(event_id)
            if len(printed) == wanted:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(printed) == wanted

    store = LmdbStore(path)
    outbox = Outbox(store)
    stored = [e.id for _, e in outbox.peek(100_000)]
    # Every acknowledged enqueue is there, in order; the one in flight may or may not be.
    assert stored[:wanted] == printed
    assert outbox.backlog() == len(stored) >= wanted
    store.close()
