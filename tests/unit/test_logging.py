"""Logs never show a real number unless the config says so."""

from __future__ import annotations

import io
import json

import structlog

from sipmask.config.schema import LogConfig
from sipmask.observability import logging as obs

MODULE_LOG = obs.get_logger("sipmask.test")     # made at import, as sipmask's modules do


def _log(config: LogConfig, **fields: object) -> str:
    out = io.StringIO()
    obs.setup(config, stream=out)
    try:
        obs.get_logger("test").info("call from 13800000001 to 700100000000001", **fields)
    finally:
        structlog.reset_defaults()
    return out.getvalue()


def test_numbers_masked_in_message_and_fields() -> None:
    text = _log(LogConfig(format="json"), caller="+8613800000001", callee=13900000002,
                uri="sip:13900000002@10.0.0.1;user=phone", nested={"pai": ["tel:0086-138"]},
                fixed="01012345678", port=5060, ts=1800000000.5)
    record = json.loads(text)
    assert "13800000001" not in text and "13900000002" not in text
    assert "01012345678" not in text
    assert record["event"] == "call from 138****0001 to 700100000000001"
    assert record["caller"] == "138****0001"
    assert record["callee"] == "139****0002"
    assert record["uri"] == "sip:139****0002@10.0.0.1;user=phone"
    assert record["fixed"] == "010****5678"
    # Not number-shaped: left alone, types kept.
    assert record["port"] == 5060
    assert record["ts"] == 1800000000.5


def test_console_renderer_is_masked_too() -> None:
    text = _log(LogConfig(format="console"), caller="13800000001")
    assert "13800000001" not in text
    assert "138****0001" in text


def test_mask_numbers_false_shows_them() -> None:
    text = _log(LogConfig(format="json", mask_numbers=False), caller="13800000001")
    assert json.loads(text)["caller"] == "13800000001"


def test_level_filters() -> None:
    out = io.StringIO()
    obs.setup(LogConfig(level="warning"), stream=out)
    try:
        obs.get_logger("t").info("quiet")
        obs.get_logger("t").warning("loud")
    finally:
        structlog.reset_defaults()
    assert "quiet" not in out.getvalue()
    assert "loud" in out.getvalue()


def test_logger_made_before_setup_is_masked_after_it() -> None:
    early = obs.get_logger("made.at.import", component="api")
    out = io.StringIO()
    obs.setup(LogConfig(format="json"), stream=out)
    try:
        early.info("bound", caller="13800000001")
    finally:
        structlog.reset_defaults()
    record = json.loads(out.getvalue())
    assert record["caller"] == "138****0001" and record["component"] == "api"


def test_a_module_logger_follows_each_setup_and_reset() -> None:
    """A logger made at import keeps its bound logger between calls, yet follows every
    change of structlog's configuration: setup (level, stream, masking) and reset."""
    first, second, third = io.StringIO(), io.StringIO(), io.StringIO()
    try:
        obs.setup(LogConfig(level="info", format="json"), stream=first)
        MODULE_LOG.info("call.routing", caller="13800000001")
        MODULE_LOG.debug("hidden")
        obs.setup(LogConfig(level="debug", mask_numbers=False, format="json"), stream=second)
        MODULE_LOG.debug("call.ended", caller="13800000001")
        structlog.reset_defaults()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(third))
        MODULE_LOG.info("after reset")
    finally:
        structlog.reset_defaults()
    [line] = first.getvalue().splitlines()
    assert json.loads(line)["caller"] == "138****0001"
    [line] = second.getvalue().splitlines()
    assert json.loads(line) | {"timestamp": None} == {
        "event": "call.ended", "caller": "13800000001", "level": "debug", "timestamp": None}
    assert "after reset" in third.getvalue()
