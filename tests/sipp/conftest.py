"""Fixtures of the SIPp tests (helpers in tests/support/sipp.py and rtpengine.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipmask.config.schema import HostPort
from tests.support.rtpengine import free_block_in_media_ports, running_daemon
from tests.support.serve import ServeProcess
from tests.support.sipp import Bench


@pytest.fixture
def bench_factory(serve: Callable[..., ServeProcess], tmp_path: Path
                  ) -> Callable[..., Bench]:
    """`bench_factory(*overrides, bind=True)`: a Bench on the `serve` fixture."""
    def make(*overrides: str, bind: bool = True) -> Bench:
        return Bench(serve, tmp_path, *overrides, bind=bind)
    return make


@pytest.fixture(scope="module")
def rtpengine_ng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostPort]:
    """The ng address of an rtpengine relaying inside the benches' media.ports, which the
    scenarios' m= checks name."""
    with running_daemon(tmp_path_factory.mktemp("rtpengine"),
                        free_block_in_media_ports()) as started:
        yield started.ng
