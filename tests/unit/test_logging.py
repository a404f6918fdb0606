"""Logs never show a real number unless the config says so."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import structlog

from sipmask.config.schema import Config, EventsConfig, LogConfig, TenantConfig, WebhookConfig
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


# -- the standard library's loggers (aiohttp, asyncio, anything) -----------------------------
# aiohttp logs a request it cannot parse with the parser's exception, whose text quotes the
# raw line: the query string's numbers and the Authorization header with it.
_RAW_LINE = ("Invalid header value char:\n\n  b'GET /v1/bindings?a=13812345678 HTTP/1.1\\r\\n"
             "Authorization: Bearer demo-token\\x01'\n")


def _stdlib(config: LogConfig, emit: object, secrets: tuple[str, ...] = ()) -> str:
    out = io.StringIO()
    obs.setup(config, stream=out, secrets=secrets)
    try:
        assert callable(emit)
        emit()
    finally:
        obs.reset()
    return out.getvalue()


def _aiohttp_error() -> None:
    try:
        raise ValueError(_RAW_LINE)
    except ValueError:
        logging.getLogger("aiohttp.server").exception(
            "Error handling request from %s", "127.0.0.1")


def test_stdlib_records_go_through_the_same_masking() -> None:
    text = _stdlib(LogConfig(format="json"), _aiohttp_error)
    assert "Error handling request from 127.0.0.1" in text     # the line is there...
    assert "13812345678" not in text and "demo-token" not in text   # ...masked
    assert "138****5678" in text
    record = json.loads(text)
    assert record["level"] == "error" and record["logger"] == "aiohttp.server"
    assert "ValueError" in record["exception"]                 # the traceback, masked too


def test_console_stdlib_records_are_masked_too() -> None:
    def emit() -> None:
        logging.getLogger("asyncio").warning("peer said %s", "Authorization: Basic c2VjcmV0")
        _aiohttp_error()
    text = _stdlib(LogConfig(format="console"), emit)
    assert "peer said" in text and "Error handling request" in text
    assert "c2VjcmV0" not in text and "13812345678" not in text and "demo-token" not in text


def test_configured_tokens_are_masked_wherever_they_appear() -> None:
    def emit() -> None:
        logging.getLogger("anything").error("token=%s;", "tenant-secret-1")
        obs.get_logger("sipmask.api").error("api.failed", note="got tenant-secret-1 in a body",
                                            header="Bearer xyz.abc-123")
    text = _stdlib(LogConfig(format="json", mask_numbers=False), emit,
                   secrets=("tenant-secret-1",))
    assert "tenant-secret-1" not in text and "xyz.abc-123" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "token=***;"
    assert lines[1]["note"] == "got *** in a body" and lines[1]["header"] == "Bearer ***"


def test_stdlib_levels_follow_the_config() -> None:
    def emit() -> None:
        logging.getLogger("aiohttp.access").info("quiet")
        logging.getLogger("aiohttp.server").warning("loud")
    text = _stdlib(LogConfig(level="warning", format="json"), emit)
    assert "quiet" not in text and "loud" in text


def test_reset_leaves_the_root_logger_as_it_found_it() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    _stdlib(LogConfig(), lambda: None)
    assert (list(root.handlers), root.level) == before


def test_config_secrets_are_the_tokens_and_the_webhook_secret() -> None:
    config = Config(tenants={"a": TenantConfig("tok-a"), "b": TenantConfig("tok-b")},
                    events=EventsConfig(WebhookConfig(url="http://127.0.0.1:1/", secret="wh")))
    assert sorted(obs.config_secrets(config)) == ["tok-a", "tok-b", "wh"]
    assert obs.config_secrets(Config()) == ()


def test_a_record_that_cannot_be_formatted_leaks_nothing(capsys: Any) -> None:
    root = logging.getLogger()

    def emit() -> None:
        # pytest's capture handlers raise on such a record (to fail the test that logs it);
        # this test is about sipmask's handler alone.
        theirs = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
        for handler in theirs:
            root.removeHandler(handler)
        try:
            logging.getLogger("lib").error("caller %s and %s", "13812345678")   # arg short
        finally:
            for handler in theirs:
                root.addHandler(handler)
    text = _stdlib(LogConfig(format="json"), emit)
    captured = capsys.readouterr()
    assert "13812345678" not in text + captured.err + captured.out
