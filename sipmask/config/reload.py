"""What a config reload may change in a running node, and what waits for a restart.

`sipmask reload` (or SIGHUP) reads the config again; `plan(running, loaded)` compares the
two key by key and returns the config to run from now on: every changed key that a running
node can take (tenants and their tokens, pools and blacklists, trunks, policy, log level and
masking, the call timers that are read per call), and for every other changed key the
running value, named in `kept` so the operator learns a restart is needed (listen
addresses, TLS files, the store, the media backend and ports, the API listener, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sipmask.config.schema import (
    Config,
    Endpoint,
    HostPort,
    Network,
    NumberPrefix,
    NumberRange,
    PortRange,
    TrunkUri,
)

# Dataclasses that are one config value, compared whole, not sections to walk into.
_VALUES = (Endpoint, HostPort, PortRange, Network, NumberRange, NumberPrefix, TrunkUri)

# Dotted prefixes a running node applies at once. A key is live when it is, or lies under,
# one of these; everything else needs a restart.
LIVE: tuple[str, ...] = (
    "tenants",                 # tokens, pools, blacklists: the store's tenants are synced
    "operators",               # operator tokens (trace)
    "trunks",                  # outbound targets (their probes and DNS too), inbound_allow
                               # (also the TCP accept ACL), probe and failover timing
    "policy",                  # rates, caps, max duration, overload threshold
    "log.level",
    "log.mask_numbers",
    "sip.ring_timeout_s",      # read when a call is placed
    "sip.send_pai",
    "sip.drain_timeout_s",
    "cdr.retention_days",      # read by the next sweep
    "announcements",           # read when a prompt is played
)


@dataclass(frozen=True)
class ReloadPlan:
    config: Config                  # what the node runs with from now on
    applied: tuple[str, ...]        # changed keys taken
    kept: tuple[str, ...]           # changed keys left as they were (restart needed)

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def plan(running: Config, loaded: Config) -> ReloadPlan:
    applied: list[str] = []
    kept: list[str] = []
    for path in changed_keys(running, loaded):
        (applied if is_live(path) else kept).append(path)
    config = loaded
    for path in kept:
        config = _with(config, path.split("."), _get(running, path.split(".")))
    return ReloadPlan(config, tuple(applied), tuple(kept))


def is_live(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in LIVE)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves that differ (a dict's added or removed key is a leaf of
    its own; a tenant or trunk that is new or gone shows as `tenants.NAME`)."""
    if old == new:
        return []
    if dataclasses.is_dataclass(old) and type(old) is type(new) \
            and not isinstance(old, _VALUES):
        out: list[str] = []
        for f in dataclasses.fields(old):
            out += changed_keys(getattr(old, f.name), getattr(new, f.name),
                                f"{prefix}{f.name}.")
        return out
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if key not in old or key not in new:
                out.append(f"{prefix}{key}")
            else:
                out += changed_keys(old[key], new[key], f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")]


_MISSING = object()


def _get(obj: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(obj, dict):
            if part not in obj:
                return _MISSING
            obj = obj[part]
        else:
            obj = getattr(obj, part)
    return obj


def _with(obj: Any, path: list[str], value: Any) -> Any:
    """`obj` with the value at `path` replaced (frozen dataclasses and dicts are copied)."""
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        copy = dict(obj)
        if rest:
            copy[head] = _with(copy[head], rest, value)
        elif value is _MISSING:
            copy.pop(head, None)
        else:
            copy[head] = value
        return copy
    current = getattr(obj, head)
    return dataclasses.replace(obj, **{head: _with(current, rest, value) if rest else value})
