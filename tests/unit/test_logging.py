"""sipmask's module loggers: made at import, they follow every `setup` (level, stream,
masking), including one that comes after they first logged."""

from __future__ import annotations

import io
import json

from sipmask.config.schema import LogConfig
from sipmask.observability import logging as sm_logging

log = sm_logging.get_logger("sipmask.test")


def test_a_logger_used_before_setup_follows_each_setup() -> None:
    first, second = io.StringIO(), io.StringIO()
    sm_logging.setup(LogConfig(level="info", format="json"), stream=first)
    log.info("call.routing", caller="13800000001")
    log.debug("hidden")
    sm_logging.setup(LogConfig(level="debug", mask_numbers=False, format="json"),
                     stream=second)
    log.debug("call.ended", caller="13800000001")
    [line] = first.getvalue().splitlines()
    assert json.loads(line)["caller"] == "138****0001"
    [line] = second.getvalue().splitlines()
    assert json.loads(line) | {"timestamp": None} == {
        "event": "call.ended", "caller": "13800000001", "level": "debug", "timestamp": None}
    sm_logging.setup(LogConfig())       # back to stderr for the tests after this one
