"""The optional compiled build (README "mypyc: an optional compiled build"): one list of
modules, sipmask/_compiled.py, that scripts/setup --compiled reads and names nothing beside;
no compiled module defines an exception class; `sipmask --version` says which build runs.
These hold on the pure tree (CI) and on a compiled one alike."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from sipmask import _compiled
from tests.support.paths import REPO


def test_the_script_compiles_the_modules_the_list_names_and_no_other() -> None:
    listed = subprocess.run([sys.executable, "-m", "sipmask._compiled"], cwd=REPO, check=True,
                            capture_output=True, text=True, timeout=60).stdout.split()
    assert listed == _compiled.source_paths()
    assert len(listed) == len(set(listed)) == len(_compiled.MODULES)
    assert all((REPO / path).is_file() for path in listed)
    setup = (REPO / "scripts" / "setup").read_text()
    assert "-m sipmask._compiled" in setup
    # The list lives in one place: the script names none of the modules itself.
    assert [path for path in listed if path in setup or path[:-3] in setup] == []


def exception_classes(name: str) -> list[str]:
    module = importlib.import_module(name)
    return [value.__name__ for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == name
            and issubclass(value, BaseException)]


def test_no_compiled_module_defines_an_exception_class() -> None:
    # A class mypyc compiles from an interpreted exception base (errors.SipError) loses its
    # class attributes: a 416 goes out as 500 (README "mypyc"). Such classes live in
    # modules left interpreted (errors, b2bua.refusals, sdp.errors).
    assert "UnsupportedScheme" in exception_classes("sipmask.b2bua.refusals")  # the check sees
    for name in _compiled.MODULES:
        assert exception_classes(name) == [], name


def test_version_says_which_build_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "sipmask", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    out = done.stdout + done.stderr
    state = _compiled.state()
    assert state.compiled in (0, len(_compiled.MODULES))       # all or nothing: one build
    expected = "pure Python" if not state.compiled else \
        f"compiled with mypyc: {state.compiled} of {len(_compiled.MODULES)} modules"
    assert expected in out


def test_a_module_rebuilt_into_the_shared_library_is_not_stale(tmp_path: Path) -> None:
    # mypyc puts a group's code in one shared library; each module's own .so is a shim a
    # rebuild leaves untouched when it did not change. After an edit and a rebuild the
    # shim is older than the .py, but the code it loads is not: counted stale before.
    from importlib.machinery import EXTENSION_SUFFIXES
    name = _compiled.MODULES[0]
    base = tmp_path.joinpath(*name.split("."))
    base.parent.mkdir(parents=True)
    shim = base.with_name(base.name + EXTENSION_SUFFIXES[0])
    shim.write_bytes(b"")
    os.utime(shim, (1_000, 1_000))
    source = base.with_name(base.name + ".py")
    source.write_text("")
    os.utime(source, (2_000, 2_000))
    assert _compiled.state(str(tmp_path)) == _compiled.BuildState(compiled=1, stale=1)
    shared = tmp_path.joinpath(*_compiled.GROUP.split("."))
    library = shared.with_name(shared.name + "__mypyc" + EXTENSION_SUFFIXES[0])
    library.write_bytes(b"")
    os.utime(library, (3_000, 3_000))
    assert _compiled.state(str(tmp_path)) == _compiled.BuildState(compiled=1, stale=0)
