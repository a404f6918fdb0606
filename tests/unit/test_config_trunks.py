"""`trunks.<name>`: outbound as one URI or a list (tried in order; host names resolved per
RFC 3263, so a URI may leave out its port for SRV), probe_interval_s and
failover_timeout_ms; errors name the key path; a reload takes them (config/reload.py)."""

from __future__ import annotations

import pytest

from sipmask.config import loader
from sipmask.config.reload import plan
from sipmask.config.schema import TrunkUri
from sipmask.errors import ConfigError


def test_one_uri_is_a_list_of_one_and_the_defaults_are_a_carriers() -> None:
    trunk = loader.loads(loader.default_text()).trunks["carrier"]
    assert trunk.outbound == (TrunkUri("udp", "127.0.0.1", 5090),)
    assert (trunk.probe_interval_s, trunk.failover_timeout_ms) == (30.0, 2000)


def test_a_list_keeps_its_order_and_a_uri_may_leave_out_its_port() -> None:
    config = loader.loads("", ["trunks.carrier.outbound=[udp://sbc1.carrier.example, "
                               "tcp://10.0.0.5:5070, 'tls://[2001:db8::5]', udp://2001:db8::6]"])
    assert config.trunks["carrier"].outbound == (
        TrunkUri("udp", "sbc1.carrier.example", None), TrunkUri("tcp", "10.0.0.5", 5070),
        TrunkUri("tls", "2001:db8::5", None), TrunkUri("udp", "2001:db8::6", None))
    assert [str(u) for u in config.trunks["carrier"].outbound] == [
        "udp://sbc1.carrier.example", "tcp://10.0.0.5:5070", "tls://[2001:db8::5]",
        "udp://[2001:db8::6]"]


@pytest.mark.parametrize(("value", "path", "words"), [
    ("[]", "trunks.carrier.outbound", "at least one"),
    ("http://sbc:5060", "trunks.carrier.outbound", "udp://"),
    ("[udp://10.0.0.1:5060, 'udp://bad host:5060']", "trunks.carrier.outbound[1]",
     "host"),
    ("udp://10.0.0.1:0", "trunks.carrier.outbound", "port"),
    ("{a: b}", "trunks.carrier.outbound", "must be a string"),
])
def test_bad_outbound_values_name_their_key(value: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        loader.loads("", [f"trunks.carrier.outbound={value}"])
    assert path in str(err.value) and words in str(err.value)


def test_probe_and_failover_keys_are_numbers() -> None:
    config = loader.loads("", ["trunks.carrier.probe_interval_s=0.5",
                               "trunks.carrier.failover_timeout_ms=0"])
    assert config.trunks["carrier"].probe_interval_s == 0.5
    assert config.trunks["carrier"].failover_timeout_ms == 0
    with pytest.raises(ConfigError, match=r"trunks\.carrier\.failover_timeout_ms"):
        loader.loads("", ["trunks.carrier.failover_timeout_ms=-1"])


def test_a_reload_takes_the_new_trunk_keys() -> None:
    running = loader.loads("")
    loaded = loader.loads("", ["trunks.carrier.outbound=[udp://127.0.0.3:5090, "
                               "udp://127.0.0.4:5090]",
                               "trunks.carrier.probe_interval_s=5",
                               "trunks.carrier.failover_timeout_ms=500"])
    result = plan(running, loaded)
    assert set(result.applied) == {"trunks.carrier.outbound", "trunks.carrier.probe_interval_s",
                                   "trunks.carrier.failover_timeout_ms"}
    assert result.kept == () and result.config == loaded
