"""The config loader: defaults, overrides, and errors that name file, key path and value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sipmask.config import loader
from sipmask.config.schema import (
    Config,
    Endpoint,
    NumberRange,
    OperatorConfig,
    PortRange,
    TrunkUri,
)
from sipmask.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_the_embedded_default() -> None:
    assert (ROOT / "configs/sipmask.yaml").read_text() == loader.default_text()


def test_default_config_has_every_contract_key() -> None:
    config = loader.loads(loader.default_text())
    assert config.sip.listen == (Endpoint("udp", "127.0.0.1", 5060),
                                 Endpoint("tcp", "127.0.0.1", 5060))
    assert config.sip.advertise == "127.0.0.1"
    assert config.trunks["carrier"].outbound == (TrunkUri("udp", "127.0.0.1", 5090),)
    assert "10.0.0.1" not in config.trunks["carrier"].inbound_allow[0]
    assert "127.0.0.2" in config.trunks["carrier"].inbound_allow[0]
    assert config.store.path == Path("var/sipmask.lmdb")
    assert config.media.backend == "relay"
    assert config.media.ports == PortRange(30000, 39999)
    assert str(config.api.listen) == "127.0.0.1:8080"
    assert config.tenants["demo"].token == "demo-token"
    assert config.tenants["demo"].pools == (NumberRange("700100000000000", "700100000009999"),)
    assert config.log.mask_numbers is True
    assert config.events.webhook.url is None
    assert config.media.latching == "strict"          # RTP Bleed: only the SDP's address
    assert config.cdr.retention_days == 180
    assert config.store.key_file == Path("var/sipmask.key")     # issue 14 §2
    assert config.operators == {"ops": OperatorConfig(token=None)}  # issue 14 §3: none
    # Issue 15: AXE, recording and the announcements.
    assert config.tenants["demo"].ext_digits == 4 and config.tenants["demo"].record is False
    assert config.recording.dir == Path("var/recordings")
    assert config.recording.retention_days == 30
    assert (config.announcements.unbound, config.announcements.callee_notice,
            config.announcements.ext_prompt, config.announcements.recording_notice) == (
        "default", None, "default", "default")


def test_embedded_default_used_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIPMASK_CONFIG", raising=False)
    assert loader.resolve_source(None) is None
    assert loader.load(None) == loader.loads(loader.default_text())


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("sip: {advertise: 192.0.2.7}\n")
    monkeypatch.setenv("SIPMASK_CONFIG", str(f))
    assert loader.load(None).sip.advertise == "192.0.2.7"


def test_set_overrides_parse_yaml_values() -> None:
    config = loader.loads("", ["store.path=/tmp/s.lmdb", "sip.timers.t1_ms=250",
                               "api.listen=null", "log.mask_numbers=false",
                               "sip.listen=['udp://[::1]:5070']"])
    assert config.store.path == Path("/tmp/s.lmdb")
    assert config.sip.timers.t1_ms == 250
    assert config.api.listen is None
    assert config.log.mask_numbers is False
    assert config.sip.listen == (Endpoint("udp", "::1", 5070),)
    assert str(config.sip.listen[0]) == "udp://[::1]:5070"


def test_missing_sections_take_defaults() -> None:
    assert loader.loads("") == Config()


@pytest.mark.parametrize(("text", "path", "words"), [
    ("sip: {listen: [http://x:1]}", "sip.listen[0]", "udp://"),
    ("sip: {listen: udp://x:1}", "sip.listen", "must be a list"),
    ("sip: {advertize: x}", "sip.advertize", "unknown key"),
    ("media: {ports: 40000-30000}", "media.ports", "1024 <= first < last"),
    ("media: {backend: kamailio}", "media.backend", "one of relay, rtpengine"),
    ("log: {mask_numbers: maybe}", "log.mask_numbers", "true or false"),
    ("sip: {timers: {t1_ms: -5}}", "sip.timers.t1_ms", "negative"),
    ("tenants: {t: {pools: [1-2]}}", "tenants.t.token", "required"),
    ("tenants: {t: {token: a, pools: [800100000000000-800100000000001]}}",
     "tenants.t.pools[0]", "700"),
    ("trunks: {c: {inbound_allow: [300.1.1.1/8]}}", "trunks.c.inbound_allow[0]", "CIDR"),
    ("tenants: {a: {token: t, pools: [700100000000000-700100000000099]},"
     " b: {token: u, pools: [700100000000050-700100000000060]}}",
     "tenants.b.pools[0]", "re-leasing"),
    ("tenants: {a: {token: t}, b: {token: t}}", "tenants.b.token", "same token"),
    ("events: {webhook: {url: 'http://127.0.0.1:9/x'}}", "events.webhook.secret", "required"),
    ("trunks: {}", "trunks", "at least one trunk"),
    ("store: {key_file: ''}", "store.key_file", "must be a path"),
    ("store: {key_file: [a]}", "store.key_file", "must be a path"),
    ("operators: {ops: {token: 5}}", "operators.ops.token", "non-empty string"),
    ("operators: {ops: {tokn: x}}", "operators.ops.tokn", "unknown key"),
    ("operators: [ops]", "operators", "must be a mapping"),
    ("tenants: {a: {token: t}}\noperators: {ops: {token: t}}", "operators.ops.token",
     "same token as tenant a"),
    ("operators: {o: {token: t}, p: {token: t}}", "operators.p.token",
     "same token as operator o"),
    ("tenants: {t: {token: a, ext_digits: 0}}", "tenants.t.ext_digits", "1 to 8"),
    ("tenants: {t: {token: a, ext_digits: 9}}", "tenants.t.ext_digits", "1 to 8"),
    ("tenants: {t: {token: a, record: 1}}", "tenants.t.record", "true or false"),
    ("tenants: {t: {token: a, announcements: {ring: x.wav}}}",
     "tenants.t.announcements.ring", "unknown key (known: unbound, callee_notice"),
    ("tenants: {'../x': {token: a}}", "tenants.../x", "a tenant name is"),
    ("recording: {retention_days: -1}", "recording.retention_days", "negative"),
    ("recording: {dir: ''}", "recording.dir", "must be a path"),
    ("announcements: {ext_prompt: /nonexistent/p.wav}", "announcements.ext_prompt",
     "cannot read"),
    ("announcements: {beep: x}", "announcements.beep", "unknown key"),
])
def test_errors_name_key_path(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        loader.loads(text, name="f.yaml")
    assert err.value.path == path
    assert words in str(err.value)
    assert str(err.value).startswith(f"f.yaml: {path}: ")


def test_error_names_file_and_bad_yaml_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("sip:\n  listen: [udp://127.0.0.1:5060\nlog: {}\n")
    with pytest.raises(ConfigError) as err:
        loader.load(f)
    assert str(f) in str(err.value)
    assert "line" in str(err.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        loader.load(tmp_path / "absent.yaml")


def test_bad_override_names_it() -> None:
    with pytest.raises(ConfigError, match=re.escape("--set: nokey: expected dotted.key=value")):
        loader.loads("", ["nokey"])
    with pytest.raises(ConfigError, match=re.escape("--set: sip.advertise: is not a section")):
        loader.loads("", ["sip.advertise=a", "sip.advertise.x.y=1"])


@pytest.mark.parametrize("override, path", [
    (f"sip.ring_timeout_s={10**400}", "sip.ring_timeout_s"),          # overflowed call_later
    (f"policy.max_duration_s={10**12}", "policy.max_duration_s"),
    ("policy.per_caller.rate=.nan", "policy.per_caller.rate"),         # NaN passed every compare
    ("policy.per_x.rate=.inf", "policy.per_x.rate"),
    ("policy.per_tenant.rate=1e400", "policy.per_tenant.rate"),
])
def test_every_number_is_bounded(override: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        loader.load(None, [override])
    assert info.value.path == path
    assert len(str(info.value)) < 200          # a 401-digit value is shortened in the line


def test_an_integer_too_long_for_python_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "big.yaml"
    config.write_text(f"sip:\n  ring_timeout_s: {'9' * 5000}\n")
    with pytest.raises(ConfigError, match=r"big\.yaml"):
        loader.load(config)
    with pytest.raises(ConfigError, match="ring_timeout_s"):
        loader.load(None, [f"sip.ring_timeout_s={'9' * 5000}"])


def test_tls_endpoints_parse() -> None:
    endpoint = Endpoint.parse("tls://127.0.0.1:5061")
    assert (endpoint.transport, endpoint.port, str(endpoint)) == ("tls", 5061,
                                                                  "tls://127.0.0.1:5061")
    with pytest.raises(ValueError, match="tls://"):
        Endpoint.parse("sctp://127.0.0.1:5061")


def test_a_network_holds_ipv4_peers_seen_through_a_dual_stack_socket() -> None:
    from sipmask.config.schema import Network
    loopback = Network.parse("127.0.0.0/8")
    assert "::ffff:127.0.0.9" in loopback and "127.0.0.9" in loopback
    assert "::ffff:10.0.0.1" not in loopback and "::1" not in loopback
    assert "not-an-ip" not in loopback


def _wav(path: Path, *, channels: int = 1, rate: int = 8000) -> Path:
    import struct
    pcm = bytes(320 * channels)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
        + b"data" + struct.pack("<I", len(pcm)) + pcm)
    return path


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: _wav(p, channels=2), "stereo; want mono"),
    (lambda p: _wav(p, rate=16000), "16000 Hz; want 8000 Hz"),
    (lambda p: p.write_bytes(b"ID3 an mp3"), "not a WAV file"),
])
def test_an_announcement_that_is_not_8khz_mono_wav_stops_the_load_naming_its_key(
        tmp_path: Path, make: object, problem: str) -> None:
    bad = tmp_path / "p.wav"
    make(bad)  # type: ignore[operator]
    for key in ("announcements.unbound", "announcements.ext_prompt",
                "announcements.recording_notice", "announcements.callee_notice",
                "tenants.demo.announcements.ext_prompt"):
        with pytest.raises(ConfigError) as err:
            loader.load(None, [f"{key}={bad}"])
        assert err.value.path == key and problem in str(err.value)
        assert str(bad) in str(err.value)


def test_a_good_announcement_and_tenant_overrides_load(tmp_path: Path) -> None:
    good = _wav(tmp_path / "ok.wav")
    config = loader.load(None, [f"announcements.callee_notice={good}",
                                f"tenants.demo.announcements={{ext_prompt: {good}, "
                                "unbound: null}", "tenants.demo.ext_digits=6",
                                "tenants.demo.record=true"])
    demo, top = config.tenants["demo"], config.announcements
    assert top.callee_notice == str(good)
    assert demo.announcement("ext_prompt", top) == str(good)
    assert demo.announcement("unbound", top) is None            # the tenant's own null
    assert demo.announcement("recording_notice", top) == "default"
    assert (demo.ext_digits, demo.record) == (6, True)


def test_the_announcement_keys_are_the_prompts_module_s() -> None:
    from sipmask.config.schema import ANNOUNCEMENT_KEYS, AnnouncementsConfig
    from sipmask.media.prompt import ANNOUNCEMENTS
    assert ANNOUNCEMENT_KEYS == ANNOUNCEMENTS
    assert tuple(f.name for f in __import__("dataclasses").fields(AnnouncementsConfig)) \
        == ANNOUNCEMENTS


@pytest.mark.parametrize("port", ["1", "5060", "05060", "65535"])
def test_a_listen_or_trunk_port_is_the_sip_grammars_port(port: str) -> None:
    assert Endpoint.parse(f"udp://127.0.0.1:{port}").port == int(port)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "５０６０", "٥٠٦٠", "+5060", " 5060", ""])
def test_a_port_the_sip_grammar_refuses_is_refused_here_too(port: str) -> None:
    # One port rule (sip/grammar.py PORT) for the ports a peer writes and the ones the
    # config names: 1-65535 in ASCII digits (str.isdigit took other scripts' digits).
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        Endpoint.parse(f"udp://127.0.0.1:{port}")
