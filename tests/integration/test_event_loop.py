"""The event loop `sipmask serve` runs on (README "Dependencies").

uvloop is a default dependency wherever it can be installed, because it is the fast install:
the same build held 800 calls/s on uvloop and 400 on asyncio's own loop (bench/calls.py).
Where it cannot be installed (Windows, PyPy) sipmask must still run: `server._loop_factory`
falls back to asyncio's loop. Pinned here with a real `sipmask serve` whose interpreter
refuses `import uvloop` (a sitecustomize on its PYTHONPATH), as on a machine without it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.support.net import options_request, udp_exchange
from tests.support.paths import REPO
from tests.support.serve import start_serve

# Imported by the child interpreter before anything else (site.py runs `sitecustomize`
# from the first sys.path entry that has one: PYTHONPATH comes first). Every attempt to
# import uvloop is written to $NO_UVLOOP_LOG and fails as it would were uvloop not installed.
BLOCK_UVLOOP = '''
import importlib.abc
import os
import sys


class NoUvloop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "uvloop":
            return None
        with open(os.environ["NO_UVLOOP_LOG"], "a") as log:
            log.write(name + "\\n")
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NoUvloop())
'''


def uvloop_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    return [r for r in map(Requirement, project["dependencies"]) if r.name == "uvloop"]


def test_a_default_install_brings_uvloop_where_it_can_run() -> None:
    """`pip install .` (and scripts/setup) installs uvloop on this machine, not only with an
    extra; the marker keeps it off Windows and PyPy, where it has no build."""
    found = uvloop_requirements()
    assert len(found) == 1, "uvloop is not one of pyproject.toml's [project] dependencies"
    [uvloop] = found
    assert uvloop.marker is not None
    assert uvloop.marker.evaluate()                                   # here: Linux, CPython
    assert not uvloop.marker.evaluate({"sys_platform": "win32"})
    assert not uvloop.marker.evaluate({"platform_python_implementation": "PyPy"})


def test_serve_runs_on_asyncio_when_uvloop_cannot_be_imported(tmp_path: Path) -> None:
    blocker = tmp_path / "no_uvloop"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_UVLOOP)
    refused = tmp_path / "refused.log"
    server = start_serve(tmp_path / "serve",
                         env={"PYTHONPATH": f"{blocker}:{REPO}", "NO_UVLOOP_LOG": str(refused)})
    try:
        # start_serve returned, so it answered OPTIONS once; and it keeps answering.
        answer = udp_exchange(options_request(server.udp), server.udp)
        assert answer is not None and answer.startswith(b"SIP/2.0 200 "), answer
    finally:
        status = server.stop()
    # sipmask did try uvloop and was refused: the fallback ran, not a skipped import.
    assert "uvloop" in refused.read_text().split(), server.stderr()
    assert status == 0, server.stderr()
