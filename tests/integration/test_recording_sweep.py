"""A running `sipmask serve` deletes recordings past recording.retention_days with its
periodic sweep (store.sweep_interval_s), and keeps the newer ones."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.serve import ServeProcess


def test_the_servers_sweep_deletes_old_recordings_only(
        serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    tenant_dir = tmp_path / "recordings" / "demo"
    tenant_dir.mkdir(parents=True)
    old, new = tenant_dir / "old-call.wav", tenant_dir / "new-call.wav"
    for path in (old, new):
        path.write_bytes(b"RIFF")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    server = serve("--set", f"recording.dir={tmp_path / 'recordings'}",
                   "--set", "recording.retention_days=1", "--set", "store.sweep_interval_s=1")
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not old.exists(), server.stderr()[-2000:]
    assert new.exists()
