"""The optional compiled build (README "mypyc: an optional compiled build"): the modules
`scripts/setup --compiled` compiles in place with mypyc, written once here. `python -m
sipmask._compiled` prints the list (one source path a line); `python -m sipmask._compiled
build`, what the script runs, compiles it; `sipmask serve` and `sipmask --version` say how
many of them this process runs compiled.

Left out on purpose: modules of nothing but constants read once at import (`sip/grammar`,
`sdp/grammar`: in one mypyc build with their readers, mypy cannot order their types),
modules of exception classes (`errors`, `b2bua/refusals`, `sdp/errors`: a compiled subclass of
an interpreted exception loses its class attributes, `status` and `cause`), and everything
that does I/O (the asyncio shells gain nothing: their time is in the event loop).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES

MODULES: tuple[str, ...] = (
    # b2bua: the call core (sans-IO) and the rules it applies
    "sipmask.b2bua.core", "sipmask.b2bua.calling", "sipmask.b2bua.relaying",
    "sipmask.b2bua.context", "sipmask.b2bua.actions", "sipmask.b2bua.call",
    "sipmask.b2bua.timers", "sipmask.b2bua.masking", "sipmask.b2bua.routing",
    "sipmask.b2bua.announcing", "sipmask.b2bua.failover",
    # sip: parsing, messages, transactions, dialogs
    "sipmask.sip.transaction", "sipmask.sip.message", "sipmask.sip.dialog",
    "sipmask.sip.parser", "sipmask.sip.headers", "sipmask.sip.uri", "sipmask.sip.methods",
    # sdp: the call path and its test oracle
    "sipmask.sdp.endpoints", "sipmask.sdp.model", "sipmask.sdp.origin", "sipmask.sdp.parser",
    "sipmask.sdp.privacy", "sipmask.sdp.rewrite", "sipmask.sdp.scan",
)


# The build's shared library is `sipmask/_build__mypyc….so`, inside the package: under the
# default name (`<hash>__mypyc….so` at the top of the checkout, what `python -m mypyc` makes)
# an installed `sipmask` command, whose sys.path holds the package but not the checkout,
# fails with "No module named '<hash>__mypyc'".
GROUP = "sipmask._build"


@dataclass(frozen=True)
class BuildState:
    compiled: int       # modules of MODULES that import from a compiled .so
    stale: int          # of those, how many have a .py newer than their .so (edited since)


def source_paths() -> list[str]:
    """MODULES as the paths mypyc takes, relative to the checkout."""
    return [name.replace(".", "/") + ".py" for name in MODULES]


def state(root: str | None = None) -> BuildState:
    """Which of MODULES Python loads from a .so: importlib's file finder tries the extension
    suffixes before .py, so a .so beside a .py wins the import, and an edit to a compiled
    module's .py does nothing until the build is redone or the .so removed (`stale` counts
    those). Read from the files, not `module.__file__`: for a module another compiled
    module initialised, mypyc's shared library sets a wrong one. A module's code lives in
    the group's shared library; its own .so is a shim that a rebuild leaves alone when it
    did not change, so a module counts as built when the later of the two was made.
    `root`: the checkout (default: this one)."""
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    group = os.path.join(root, *GROUP.split("."))
    shared = max((os.path.getmtime(group + "__mypyc" + suffix)
                  for suffix in EXTENSION_SUFFIXES
                  if os.path.exists(group + "__mypyc" + suffix)), default=0.0)
    compiled = stale = 0
    for name in MODULES:
        base = os.path.join(root, *name.split("."))
        built = next((base + suffix for suffix in EXTENSION_SUFFIXES
                      if os.path.exists(base + suffix)), None)
        if built is None:
            continue
        compiled += 1
        if os.path.getmtime(base + ".py") > max(os.path.getmtime(built), shared):
            stale += 1
    return BuildState(compiled, stale)


def describe() -> str:
    """For `sipmask --version`."""
    s = state()
    if not s.compiled:
        return "pure Python"
    stale = f", {s.stale} older than their .py" if s.stale else ""
    return f"compiled with mypyc: {s.compiled} of {len(MODULES)} modules{stale}"


def build() -> None:
    """Compile MODULES in place with mypyc (`scripts/setup --compiled`): a .so beside each
    .py, the shared library in the package, C sources and objects under build/."""
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    setup(name="sipmask-compiled", script_args=["build_ext", "--inplace"],
          ext_modules=mypycify(source_paths(), group_name=GROUP))


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        build()
    else:
        print("\n".join(source_paths()))
