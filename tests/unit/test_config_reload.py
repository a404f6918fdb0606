"""config/reload.py: which changed keys a running node takes, and which wait for a restart
(their running values kept)."""

from __future__ import annotations

import dataclasses

from sipmask.config import loader
from sipmask.config.reload import changed_keys, plan


def load(*overrides: str) -> loader.Config:
    return loader.load(None, overrides)


def test_nothing_changed_applies_nothing() -> None:
    result = plan(load(), load())
    assert (result.applied, result.kept, result.changed) == ((), (), False)


def test_tenants_trunks_policy_and_log_level_are_taken_at_once() -> None:
    running = load()
    loaded = load("tenants.demo.token=new-token",
                  "tenants.other={token: other-token, pools: [700200000000000-700200000000099]}",
                  "trunks.carrier.outbound=udp://127.0.0.9:5090",
                  "policy.per_x={rate: 5, burst: 10}",
                  "log.level=debug")
    result = plan(running, loaded)
    assert set(result.applied) == {"tenants.demo.token", "tenants.other",
                                   "trunks.carrier.outbound", "policy.per_x.rate",
                                   "policy.per_x.burst", "log.level"}
    assert result.kept == ()
    assert result.config == loaded


def test_keys_that_need_a_restart_are_named_and_keep_their_running_values() -> None:
    running = load()
    loaded = load("sip.listen=[udp://127.0.0.1:5999]",
                  "store.path=/elsewhere.lmdb", "media.ports=40000-40999",
                  "sip.ring_timeout_s=30", "tenants.demo.token=t2")
    result = plan(running, loaded)
    assert set(result.kept) == {"sip.listen", "store.path", "media.ports"}
    assert set(result.applied) == {"sip.ring_timeout_s", "tenants.demo.token"}
    assert result.config.sip.listen == running.sip.listen
    assert result.config.store == running.store and result.config.media == running.media
    assert result.config.sip.ring_timeout_s == 30
    assert result.config.tenants["demo"].token == "t2"


def test_a_removed_tenant_is_one_changed_key() -> None:
    running = load("tenants.gone={token: g, pools: []}")
    assert changed_keys(running, load()) == ["tenants.gone"]


def test_values_are_compared_whole() -> None:
    running = load()
    loaded = dataclasses.replace(running, api=dataclasses.replace(running.api, listen=None))
    assert changed_keys(running, loaded) == ["api.listen"]
