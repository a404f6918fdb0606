"""Where the repository's files are, for tests that run sipmask or read its data."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"            # real captured messages, RFC 4475 included
SIPP_SCENARIOS = REPO / "sipp-scenarios"


def source_of(module: ModuleType) -> Path:
    """A module's .py file, also when the optional compiled build (README "mypyc") loaded it
    from the .so beside it: `module.__file__` then names the .so."""
    return Path(str(module.__file__)).with_name(module.__name__.rpartition(".")[2] + ".py")


def is_compiled(module: ModuleType) -> bool:
    """Whether the module was loaded from the compiled build's .so (README "mypyc")."""
    return not str(module.__file__).endswith(".py")
