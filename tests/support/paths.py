"""Where the repository's files are, for tests that run sipmask or read its data."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"            # real captured messages, RFC 4475 included
SIPP_SCENARIOS = REPO / "sipp-scenarios"


def source_of(module: ModuleType) -> Path:
    """A sipmask module's .py file, also when the optional compiled build (README "mypyc")
    loaded it from a .so: its `__file__` then names the .so, or for a module another
    compiled module initialised, a path that does not exist."""
    return REPO.joinpath(*module.__name__.split(".")).with_suffix(".py")


def is_compiled(module: ModuleType) -> bool:
    """Whether the module was loaded from the compiled build's .so (README "mypyc")."""
    return not str(module.__file__).endswith(".py")
