"""Fixtures the whole suite shares; the helpers behind them live in tests/support/.

    def test_x(serve):
        server = serve("--set", "sip.ring_timeout_s=5")   # extra overrides, optional
        server.udp            # ("127.0.0.1", port) where it listens for SIP over UDP
        server.stop()         # SIGTERM, returns the exit status

- `serve`: factory of real `sipmask serve` processes (tests/support/serve.py), each on a
  free port with its store in the test's tmp_path, stopped at teardown.
- `api`: one HTTP admin API server per module, in a thread (tests/support/api.py).
- `daemon`: one real rtpengine per module on a free UDP block clear of SIPp's media ports
  (tests/support/rtpengine.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.api import ApiThread, make_config, running_api
from tests.support.rtpengine import Daemon, free_udp_range, running_daemon
from tests.support.serve import ServeProcess, start_serve


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: `serve(*overrides, port=None)` starts `sipmask serve`; stopped at teardown."""
    started: list[ServeProcess] = []

    def factory(*overrides: str, port: int | None = None) -> ServeProcess:
        server = start_serve(tmp_path / f"serve{len(started)}", *overrides, port=port)
        started.append(server)
        return server

    yield factory
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiThread]:
    with running_api(make_config(tmp_path_factory.mktemp("api") / "store.lmdb")) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("rtpengine"), free_udp_range()) as started:
        yield started
