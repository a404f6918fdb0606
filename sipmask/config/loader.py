"""Load YAML into the typed Config. Every error names the file, the key path and the value.

Where the config comes from, first match wins: `-c FILE`, `$SIPMASK_CONFIG`,
`configs/sipmask.yaml` in the working directory, the default embedded in the package.
`--set dotted.key=value` overrides are applied on top; the value is parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from sipmask.config.schema import ANNOUNCEMENT_KEYS, MAX_EXT_DIGITS, ONE_OR_MANY, Config
from sipmask.errors import ConfigError

EMBEDDED = "<embedded default>"
# Every number a config may hold is bounded: 10**400 seconds would overflow a timer (a float)
# long after the config was accepted. A billion covers any count, size or duration (31 years).
MAX_NUMBER = 1_000_000_000
DEFAULT_PATH = Path("configs/sipmask.yaml")


def default_text() -> str:
    """The embedded default config (same content as configs/sipmask.yaml)."""
    return resources.files("sipmask.config").joinpath("default.yaml").read_text("utf-8")


def resolve_source(path: str | os.PathLike[str] | None) -> Path | None:
    """Which file to read; None means the embedded default."""
    if path is not None:
        return Path(path)
    env = os.environ.get("SIPMASK_CONFIG")
    if env:
        return Path(env)
    if DEFAULT_PATH.is_file():
        return DEFAULT_PATH
    return None


def load(path: str | os.PathLike[str] | None = None,
         overrides: typing.Sequence[str] = ()) -> Config:
    """Read, override and type-check a config. Raises ConfigError."""
    source = resolve_source(path)
    if source is None:
        name, text = EMBEDDED, default_text()
    else:
        name = str(source)
        try:
            text = source.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(name, "", f"cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(name, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except ValueError as exc:   # an integer of more than 4,300 digits (int's own limit)
        raise ConfigError(name, "", f"not a usable value: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, "", "the top level must be a mapping of sections")
    for item in overrides:
        apply_override(data, item)
    return from_data(data, name)


def loads(text: str, overrides: typing.Sequence[str] = (), name: str = "<string>") -> Config:
    data = yaml.safe_load(text) or {}
    for item in overrides:
        apply_override(data, item)
    return from_data(data, name)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `dotted.key=value` to raw config data (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", item, "expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):
        raise ConfigError("--set", key, "value is not valid YAML", raw) from None
    node = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError("--set", ".".join(parts[: i + 1]), "is not a section")
        node = child
    node[parts[-1]] = value


def from_data(data: dict[str, Any], source: str) -> Config:
    config = _build(Config, data, source, "")
    assert isinstance(config, Config)
    _check_whole(config, source)
    return config


def _build(tp: Any, value: Any, source: str, path: str) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *marks = get_args(tp)
        if ONE_OR_MANY in marks and not isinstance(value, list):
            # One value where a list may stand: a list of one (`outbound: udp://…`).
            return (_build(get_args(inner)[0], value, source, path),)
        return _build(inner, value, source, path)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors: list[ConfigError] = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _build(option, value, source, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(source, path, f"must be one of {', '.join(map(str, allowed))}", value)
        return value
    if origin is tuple:
        (item_type, _) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(source, path, "must be a list", value)
        return tuple(_build(item_type, v, source, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _, item_type = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(source, path, "must be a mapping", value)
        return {str(k): _build(item_type, v, source, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if hasattr(tp, "parse"):
            if not isinstance(value, str | int):
                raise ConfigError(source, path, "must be a string", value)
            try:
                return tp.parse(str(value))
            except ValueError as exc:
                raise ConfigError(source, path, str(exc), value) from None
        if not isinstance(value, dict):
            raise ConfigError(source, path, "must be a mapping", value)
        hints = get_type_hints(tp, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(source, _join(path, str(key)), f"unknown key (known: {known})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], source, _join(path, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, _join(path, name), "is required")
        return tp(**kwargs)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, "must be true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, path, "must be an integer", value)
        if value < 0:
            raise ConfigError(source, path, "must not be negative", value)
        if value > MAX_NUMBER:
            raise ConfigError(source, path, f"must be at most {MAX_NUMBER:,}", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, path, "must be a number", value)
        if not 0 <= value <= MAX_NUMBER:   # also refuses NaN and infinities
            raise ConfigError(source, path, f"must be from 0 to {MAX_NUMBER:,}", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(source, path, "must be a non-empty string", value)
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(source, path, "must be a path", value)
        return Path(value)
    raise ConfigError(source, path, f"unsupported type {tp!r}")  # a schema bug, not user error


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_whole(config: Config, source: str) -> None:
    """Rules that span keys: no X range serves two tenants, tokens unique, a trunk exists."""
    if not config.trunks:
        raise ConfigError(source, "trunks", "at least one trunk is needed")
    for name, trunk in config.trunks.items():
        if not trunk.outbound:
            raise ConfigError(source, f"trunks.{name}.outbound", "needs at least one URI")
    seen_tokens: dict[str, str] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, tenant in config.tenants.items():
        if tenant.token in seen_tokens:
            raise ConfigError(source, f"tenants.{name}.token",
                              f"same token as {seen_tokens[tenant.token]}")
        seen_tokens[tenant.token] = f"tenant {name}"
        for i, pool in enumerate(tenant.pools):
            lo, hi = int(pool.first), int(pool.last)
            for olo, ohi, other in ranges:
                if lo <= ohi and olo <= hi:
                    raise ConfigError(source, f"tenants.{name}.pools[{i}]",
                                      f"overlaps a pool of tenant {other} (no re-leasing)",
                                      str(pool))
            ranges.append((lo, hi, name))
    for name, operator in config.operators.items():
        # A token names one party: an operator's must not also act for a tenant (or for
        # another operator), or the tenant's token would trace across tenants.
        if operator.token is None:
            continue
        if operator.token in seen_tokens:
            raise ConfigError(source, f"operators.{name}.token",
                              f"same token as {seen_tokens[operator.token]}")
        seen_tokens[operator.token] = f"operator {name}"
    if config.media.backend == "rtpengine" and config.media.latching == "signalled_ip":
        # No latching mode may ever move a leg to another IP (RTP Bleed). rtpengine's
        # learning cannot be held to the signalled IPs: for its first 3 s it takes the best
        # source it hears, a stranger's included (media/rtpengine.py, measured on 10.5).
        raise ConfigError(source, "media.latching",
                          "signalled_ip cannot be enforced by rtpengine (it learns any "
                          "source for its first seconds): use strict with rtpengine, or "
                          "media.backend: relay for phones behind NAT", "signalled_ip")
    if config.store.backend == "postgres":
        if not config.store.dsn:
            raise ConfigError(source, "store.dsn", "is required when store.backend is postgres")
        threads, queue = config.store.lookup_threads, config.store.lookup_queue
        if threads < 1 or queue < threads:
            raise ConfigError(source, "store.lookup_queue",
                              "needs lookup_threads >= 1 and lookup_queue >= lookup_threads")
    if config.events.webhook.url and not config.events.webhook.secret:
        raise ConfigError(source, "events.webhook.secret", "is required when a webhook url is set")
    _check_tenants(config, source)
    _check_announcements(config, source)


# A tenant's name is a directory under recording.dir and a field of store records: letters,
# digits, "_", "-" and "." (not first), so it never walks out of that directory.
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)


def _check_tenants(config: Config, source: str) -> None:
    for name, tenant in config.tenants.items():
        if not _TENANT_NAME.fullmatch(name):
            raise ConfigError(source, f"tenants.{name}", "a tenant name is 1 to 64 letters, "
                              "digits, '_', '-' or '.' (not first)")
        if not 1 <= tenant.ext_digits <= MAX_EXT_DIGITS:
            raise ConfigError(source, f"tenants.{name}.ext_digits",
                              f"must be 1 to {MAX_EXT_DIGITS}", tenant.ext_digits)
        for key in tenant.announcements:
            if key not in ANNOUNCEMENT_KEYS:
                raise ConfigError(source, f"tenants.{name}.announcements.{key}",
                                  f"unknown key (known: {', '.join(ANNOUNCEMENT_KEYS)})")


def _check_announcements(config: Config, source: str) -> None:
    """Every announcement file is read now, as it will be played (media/prompt.py): one
    that is missing, unreadable or not 8 kHz mono WAV stops start-up naming its key."""
    # Imported here: only a config that names an announcement needs the media modules.
    from sipmask.media.prompt import announcement
    from sipmask.media.wav import WavError

    wanted = [(f"announcements.{key}", key, getattr(config.announcements, key))
              for key in ANNOUNCEMENT_KEYS]
    wanted += [(f"tenants.{name}.announcements.{key}", key, value)
               for name, tenant in config.tenants.items()
               for key, value in tenant.announcements.items()]
    for path, key, value in wanted:
        if value is None or value == "default":
            continue        # no prompt, or the packaged one (tests check those play)
        try:
            announcement(key, value)
        except WavError as exc:
            raise ConfigError(source, path, str(exc)) from None    # "FILE: problem"
