"""Where the repository's files are, for tests that run sipmask or read its data."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"            # real captured messages, RFC 4475 included
SIPP_SCENARIOS = REPO / "sipp-scenarios"
