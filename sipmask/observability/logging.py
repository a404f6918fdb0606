"""structlog set-up. The number-masking processor runs before any renderer, so no real
number reaches a log line unless `log.mask_numbers: false` says so."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from sipmask.config.schema import LogConfig
from sipmask.numbers import mask_text

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        text = str(value)
        masked = mask_text(text)
        return value if masked == text else masked
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask_value(v) for v in value]
    if isinstance(value, bytes):
        return mask_text(value.decode("utf-8", "replace"))
    # Anything else is rendered via str(); mask that text so reprs cannot leak either.
    return mask_text(str(value))


def mask_numbers(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
    """structlog processor: mask every real-number-shaped value, keys stay as they are."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _mask_value(value)
    return event_dict


def setup(config: LogConfig, stream: TextIO | None = None) -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if config.mask_numbers:
        processors.append(mask_numbers)
    if config.format == "json":
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def _configuration() -> tuple[Any, ...]:
    """What a bound logger is made of: structlog replaces each of these objects whenever it
    is configured or reset (`setup`, `structlog.reset_defaults`, `capture_logs`)."""
    conf = structlog.get_config()
    return (conf["processors"], conf["wrapper_class"], conf["logger_factory"],
            conf["context_class"])


class _Logger:
    """A lazy logger: it takes the configuration in force when it first logs, so a module-level
    logger made at import time (before `setup`) still goes through the masking processor.

    structlog's own lazy proxy binds afresh on every call (3.8 µs for a filtered-out
    `info`, against 0.3 µs bound); this one keeps its bound logger until structlog's
    configuration changes."""

    __slots__ = ("_bound", "_initial", "_name", "_seen")

    def __init__(self, name: str, initial: dict[str, Any]) -> None:
        self._name = name
        self._initial = initial
        self._bound: Any = None
        self._seen: tuple[Any, ...] | None = None

    def __getattr__(self, method: str) -> Any:
        now = _configuration()
        if now != self._seen:       # the same objects compare equal at once
            self._bound = structlog.get_logger(self._name, **self._initial).bind()
            self._seen = now
        return getattr(self._bound, method)


def get_logger(name: str, **bound: Any) -> Any:
    """A module's logger (see _Logger)."""
    return _Logger(name, bound)
