"""The sans-IO contract (DESIGN.md): sipmask/sip, sipmask/sdp, the call core (b2bua/core.py,
calling.py, relaying.py, failover.py, context.py, actions.py), b2bua/call.py, b2bua/masking.py,
b2bua/routing.py, b2bua/timers.py, media/ports.py and the media services (media/rtp.py,
wav.py, goertzel.py, prompt.py, dtmf.py, recorder.py, sinks.py, early_media.py) import no
asyncio, socket, time, lmdb or uvloop.

Two checks, because each misses something the other sees:
- in a fresh interpreter, importing every module of the packages adds none of the forbidden
  modules to sys.modules beyond what a baseline interpreter already holds (catches an
  indirect import through another sipmask module or a third-party one);
- each module's own source, read with ast, has no import of them, even inside a function
  (`time` is preloaded by the interpreter itself, so only the source can show it).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sipmask

FORBIDDEN = frozenset({"asyncio", "socket", "time", "lmdb", "uvloop"})
PACKAGES = ("sipmask.sip", "sipmask.sdp")
MODULES = ("sipmask.b2bua.core", "sipmask.b2bua.calling", "sipmask.b2bua.relaying",
           "sipmask.b2bua.context", "sipmask.b2bua.failover", "sipmask.b2bua.announcing",
           "sipmask.b2bua.actions",
           "sipmask.b2bua.call", "sipmask.b2bua.masking", "sipmask.b2bua.routing",
           "sipmask.b2bua.refusals",
           "sipmask.b2bua.timers",
           "sipmask.media.ports",
           # Media services: prompts, DTMF in, recording (the file sink does os calls only).
           "sipmask.media.rtp", "sipmask.media.wav", "sipmask.media.goertzel",
           "sipmask.media.prompt", "sipmask.media.dtmf", "sipmask.media.recorder",
           "sipmask.media.sinks", "sipmask.media.early_media")
ROOT = Path(sipmask.__file__).resolve().parent.parent


def sans_io_modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        names.append(package)
        path = ROOT / package.replace(".", "/")
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules([str(path)])]
    return names + list(MODULES)


def loaded_after(imports: list[str]) -> set[str]:
    """Top-level names in sys.modules of a fresh interpreter after importing `imports`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {imports!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True, timeout=60)
    return set(json.loads(done.stdout))


def test_the_module_list_is_not_empty() -> None:
    modules = sans_io_modules()
    assert {"sipmask.sip.transaction", "sipmask.sip.dialog", "sipmask.sip.timers",
            "sipmask.sip.parser"} <= set(modules)


def test_importing_the_sans_io_packages_loads_no_io_module() -> None:
    baseline = loaded_after([])
    after = loaded_after(sans_io_modules())
    assert "sipmask" in after  # the imports did happen
    assert (after - baseline) & FORBIDDEN == set()


def test_the_check_sees_an_io_import() -> None:
    # The baseline must not already hold what we look for, or the check would prove nothing.
    baseline = loaded_after([])
    assert (loaded_after(["asyncio"]) - baseline) & FORBIDDEN >= {"asyncio", "socket"}


def imported_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.add(node.args[0].value.split(".")[0])
    return names


@pytest.mark.parametrize("module", sans_io_modules())
def test_module_source_imports_no_io_module(module: str) -> None:
    path = ROOT / module.replace(".", "/")
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert imported_names(file.read_text(encoding="utf-8")) & FORBIDDEN == set()


def test_the_source_check_sees_imports_anywhere() -> None:
    source = ("import os\n"
              "def f():\n    import time\n    from asyncio import sleep\n"
              "x = __import__('socket')\n")
    assert imported_names(source) & FORBIDDEN == {"time", "asyncio", "socket"}
