"""URIs, name-addr values and Via (RFC 3261 §19.1, §20.10, §20.42, §18.2; RFC 3581; RFC 3966)."""

from __future__ import annotations

import pytest

from sipmask.errors import ParseError
from sipmask.sip.uri import (
    AbsoluteUri,
    NameAddr,
    SipUri,
    TelUri,
    Via,
    get_param,
    parse_params,
    parse_uri,
    set_param,
)

ROUND_TRIP = [
    "sip:13800000001@10.0.0.1",
    "sips:13800000001@example.com:5061;transport=tls",
    "SIP:Alice@Example.COM;Transport=UDP",
    "sip:+8613800000001@10.1.2.3:5060;user=phone",
    "sip:+8613800000001;npdi;rn=+8613900000002@10.1.2.3;user=phone",
    "sip:alice:secret@example.com",
    "sip:alice:@example.com",
    "sip:%61lice@example.com",
    "sip:example.com",
    "sip:[2001:db8::10]",
    "sip:13800000001@[2001:db8::10]:5070;maddr=[2001:db8::1]",
    "sip:alice@example.com;lr;ttl=1",
    "sip:alice@example.com?subject=project%20x&priority=urgent",
    "sip:*21#@10.0.0.1",
    "tel:+86-138-0000-0001",
    "tel:+8613800000001;npdi;rn=+8613900000002",
    "tel:7042;phone-context=example.com",
    "urn:service:sos",
    "mailto:alice@example.com",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_str_of_parse_is_the_text(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_sip_uri_fields() -> None:
    uri = SipUri.parse("sips:alice:pw@[2001:db8::10]:5061;transport=tls;lr?h=v")
    assert (uri.scheme, uri.user, uri.password) == ("sips", "alice", "pw")
    assert (uri.host, uri.port) == ("[2001:db8::10]", 5061)
    assert uri.params == [("transport", "tls"), ("lr", None)]
    assert uri.param("TRANSPORT") == "tls" and uri.param("lr") == ""
    assert uri.param("maddr") is None
    assert uri.header_pairs == [("h", "v")]


def test_ipv6_host_without_port_and_ipv4_with_port() -> None:
    assert SipUri.parse("sip:a@[::1]").port is None
    assert SipUri.parse("sip:a@[::1]").host == "[::1]"
    assert (SipUri.parse("sip:a@127.0.0.1:5090").host, SipUri.parse("sip:a@127.0.0.1:5090").port) \
        == ("127.0.0.1", 5090)


def test_phone_user_with_npdi_and_rn() -> None:
    # RFC 4694 §4: number portability parameters live inside the user part.
    uri = SipUri.parse("sip:+8613800000001;npdi;rn=+8613900000002@10.1.2.3;user=phone")
    assert uri.param("user") == "phone"
    assert uri.phone_number == "+8613800000001"
    assert uri.user_params == [("npdi", None), ("rn", "+8613900000002")]
    tel = TelUri.parse("tel:+8613800000001;npdi;rn=+8613900000002")
    assert tel.phone_number == "+8613800000001"
    assert tel.param("npdi") == "" and tel.param("rn") == "+8613900000002"


def test_escaped_user_is_kept_and_decoded_on_request() -> None:
    uri = SipUri.parse("sip:%2B86%20138@example.com")
    assert uri.user == "%2B86%20138"
    assert uri.user_unescaped == "+86 138"
    assert uri.phone_number == "+86 138"


def test_uri_headers_unescaped() -> None:
    uri = SipUri.parse("sip:b@example.com?Replaces=abc%40h%3Bto-tag%3D1&Subject=hi")
    assert uri.header_pairs == [("Replaces", "abc@h;to-tag=1"), ("Subject", "hi")]


@pytest.mark.parametrize("text", [
    "sip:", "sip:@example.com", "sip:a@", "sip:a@b:0", "sip:a@b:65536", "sip:a@b:",
    "sip:a@2001:db8::1", "sip:a@[2001:db8::1", "sip:a b@example.com", "sip:<a>@example.com",
    "sip:a@b;;x", "sip:a@b;=x", "tel:", "tel:abc@x", "tel:+86 138", "1sip:a@b", "nocolon",
    "sip:a@b@c",
])
def test_bad_uris_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_unknown_schemes_are_absolute_uris() -> None:
    uri = parse_uri("soap.beep://192.0.2.103:3002")
    assert isinstance(uri, AbsoluteUri) and uri.scheme == "soap.beep"


def test_params_helpers() -> None:
    params = parse_params(" ; a = 1 ;B; c=\"x;y\"", "test")
    assert params == [("a", "1"), ("B", None), ("c", '"x;y"')]
    assert get_param(params, "b") == ""
    assert set_param(params, "a", "2")[0] == ("a", "2")
    assert set_param(params, "d", None)[-1] == ("d", None)
    assert params[0] == ("a", "1")                     # set_param copies


# -- name-addr -------------------------------------------------------------------------------

def test_quoted_display_name_with_escapes_and_utf8() -> None:
    addr = NameAddr.parse('"张三 \\"Boss\\" \\\\ x" <sip:13800000001@10.0.0.1>;tag=abc')
    assert addr.display == '"张三 \\"Boss\\" \\\\ x"'
    assert addr.display_name == '张三 "Boss" \\ x'
    assert addr.tag == "abc"
    assert str(addr) == '"张三 \\"Boss\\" \\\\ x" <sip:13800000001@10.0.0.1>;tag=abc'


def test_quoted_display_name_may_hold_angle_brackets_and_commas() -> None:
    addr = NameAddr.parse('"a <b>, c" <sip:x@y>')
    assert addr.display_name == "a <b>, c"
    assert isinstance(addr.uri, SipUri) and addr.uri.user == "x"


def test_token_display_name_and_no_space_before_angle() -> None:
    assert NameAddr.parse("Bob Smith <sip:b@h>").display == "Bob Smith"
    assert NameAddr.parse("caller<sip:caller@example.com>;tag=323").display == "caller"


def test_bare_addr_spec_params_belong_to_the_header() -> None:
    # RFC 3261 §20.10.
    addr = NameAddr.parse("sip:13800000001@10.0.0.1;user=phone;tag=x1")
    assert not addr.bracketed
    assert isinstance(addr.uri, SipUri) and addr.uri.params == []
    assert addr.params == [("user", "phone"), ("tag", "x1")]
    assert addr.tag == "x1"
    assert str(addr) == "sip:13800000001@10.0.0.1;user=phone;tag=x1"


def test_bracketed_uri_params_stay_on_the_uri() -> None:
    addr = NameAddr.parse("<sip:13800000001@10.0.0.1;user=phone>;tag=x1")
    assert isinstance(addr.uri, SipUri) and addr.uri.params == [("user", "phone")]
    assert addr.params == [("tag", "x1")]


def test_with_tag_adds_or_replaces() -> None:
    addr = NameAddr.parse("<sip:b@h>")
    assert addr.with_tag("t1").tag == "t1"
    assert str(addr.with_tag("t1")) == "<sip:b@h>;tag=t1"
    assert NameAddr.parse("<sip:b@h>;tag=old").with_tag("new").tag == "new"


def test_tel_and_absolute_uris_in_name_addr() -> None:
    assert isinstance(NameAddr.parse("<tel:+8613800000001>").uri, TelUri)
    bare = NameAddr.parse("tel:+8613800000001;tag=9")
    assert isinstance(bare.uri, TelUri) and bare.tag == "9"
    assert isinstance(NameAddr.parse("<urn:x:y>").uri, AbsoluteUri)


@pytest.mark.parametrize("text", [
    '"unterminated <sip:a@b>',        # RFC 4475 §3.1.2.6
    "< sip:a@b >",                    # §3.1.2.14
    "Bell, Alexander <sip:a@b>",     # §3.1.2.15
    "sip:a@b?Route=x",               # §3.1.2.13: ? needs <>
    "sip:a,b@c",
    '"name" sip:a@b',
    "<sip:a@b",
    "<sip:a@b> junk",
    "<sip:a@b>;tag=1;;x",
    "*",
    "<>",
])
def test_bad_name_addrs_raise(text: str) -> None:
    with pytest.raises(ParseError):
        NameAddr.parse(text)


# -- Via --------------------------------------------------------------------------------------

def test_via_fields() -> None:
    via = Via.parse("SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK776;rport;received=10.9.9.9")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "UDP", "10.1.2.3",
                                                                 5060)
    assert via.branch == "z9hG4bK776" and via.rport == "" and via.received == "10.9.9.9"
    assert str(via) == "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK776;rport;received=10.9.9.9"


def test_via_with_lws_and_ipv6() -> None:
    via = Via.parse("SIP  /   2.0 /UDP  [2001:db8::9] : 5070 ; branch = z9hG4bK1")
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "[2001:db8::9]", 5070,
                                                               "z9hG4bK1")


@pytest.mark.parametrize("text", ["SIP/2.0/UDP", "SIP/2.0 host", "SIP/2.0/UDP host;;",
                                  "SIP/2.0/UDP host:0", "SIP/2.0/UDP :5060", "garbage"])
def test_bad_vias_raise(text: str) -> None:
    with pytest.raises(ParseError):
        Via.parse(text)


def test_stamped_fills_rport_and_received() -> None:
    # RFC 3581 §4: rport without a value gets the source port, and received is added even
    # when it equals sent-by.
    via = Via.parse("SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK1;rport")
    stamped = via.stamped(("10.1.2.3", 40000))
    assert stamped.rport == "40000" and stamped.received == "10.1.2.3"
    assert str(stamped) == "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK1;rport=40000;received=10.1.2.3"


def test_stamped_adds_received_only_when_source_differs() -> None:
    # RFC 3261 §18.2.1.
    via = Via.parse("SIP/2.0/UDP pbx.example.com;branch=z9hG4bK2")
    assert via.stamped(("192.0.2.7", 5060)).received == "192.0.2.7"
    same = Via.parse("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK2")
    assert same.stamped(("192.0.2.7", 5060)) is same


def test_response_target() -> None:
    source = ("192.0.2.7", 40000)
    # RFC 3581 §4: rport empty → the request's source.
    assert Via.parse("SIP/2.0/UDP 10.0.0.1:5060;rport").response_target(source) == source
    # rport with values the peer wrote itself: still the source (no reflection).
    filled = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;rport=40001;received=192.0.2.8")
    assert filled.response_target(source) == source
    # §18.2.2: without rport, the source IP (what `received` names) and sent-by's port,
    # whatever `received` the peer put there.
    assert Via.parse("SIP/2.0/UDP h:5070;received=192.0.2.9").response_target(source) == (
        source[0], 5070)
    # Neither: the source IP, sent-by's port or the transport's default.
    assert Via.parse("SIP/2.0/UDP h").response_target(source) == (source[0], 5060)
    assert Via.parse("SIP/2.0/TLS h").response_target(source) == (source[0], 5061)
    # maddr is not followed: a peer must not point our responses at someone else.
    assert Via.parse("SIP/2.0/UDP h:5080;maddr=239.1.1.1").response_target(source) == (
        source[0], 5080)
    assert Via.parse("SIP/2.0/UDP [::1]:5062").response_target(source) == (source[0], 5062)


def test_with_params_sets_in_place() -> None:
    via = Via.parse("SIP/2.0/UDP h;branch=z9hG4bK1;rport")
    assert str(via.with_params(rport="5999", received="1.2.3.4")) == \
        "SIP/2.0/UDP h;branch=z9hG4bK1;rport=5999;received=1.2.3.4"


@pytest.mark.parametrize(("text", "last_param"), [
    ('<sip:a@127.0.0.1:5060;transport=tcp;ob>;reg-id=1;'
     '+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"',
     ("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"')),
    ('"Name" <sip:a@b>;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"',
     ("+g.3gpp.icsi-ref", '"urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"')),
    ('<sip:13800000001@10.0.0.1;user=phone>;q=0.5;expires=600', ("expires", "600")),
    ('<sip:b@h>;p="semi;colon"', ("p", '"semi;colon"')),
])
def test_contacts_seen_on_real_links(text: str, last_param: tuple[str, str]) -> None:
    # RFC 5626 instance ids and 3GPP feature tags: quoted values holding <, >, ; and :.
    assert NameAddr.parse(text).params[-1] == last_param


def test_via_received_ipv6_without_brackets() -> None:
    via = Via.parse("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK1;received=2001:db8::1;"
                    "rport=5070")
    assert via.response_target(("2001:db8::1", 5999)) == ("2001:db8::1", 5999)
