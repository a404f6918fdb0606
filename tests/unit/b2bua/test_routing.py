"""Routing: X from the Request-URI, the caller from From or trusted PAI, binding → callee."""

from __future__ import annotations

import pytest

from sipmask.b2bua import refusals, routing
from sipmask.errors import SipError
from sipmask.sip.headers import Headers
from sipmask.sip.message import Request
from sipmask.sip.uri import NameAddr
from sipmask.store.base import Binding, Target

X = "700100000000001"


def B(mode: str, a: str, b: str | None = None) -> Binding:
    return Binding("id1", mode, "demo", X, a, b, 0.0, None)


def invite(uri: str, from_: str, pai: str | None = None) -> Request:
    pairs = [("From", from_ + ";tag=1"), ("To", f"<{uri}>")]
    if pai:
        pairs.append(("P-Asserted-Identity", pai))
    return Request("INVITE", uri, Headers.of(*pairs))


@pytest.mark.parametrize("uri", [
    "sip:700100000000001@10.0.0.1",
    "sip:+86700100000000001@10.0.0.1;user=phone",
    "sip:86700100000000001@10.0.0.1",
    "sip:0086700100000000001@10.0.0.1:5060;transport=udp",
    "tel:+86-700-1000-0000-0001",
    "sip:+86700100000000001;npdi;rn=+8613300000000@10.0.0.1;user=phone",
    "sip:700%20100000000001@10.0.0.1",
])
def test_target_x_normalises(uri: str) -> None:
    assert routing.target_x(invite(uri, "<sip:13800000001@h>")) == "700100000000001"


@pytest.mark.parametrize("uri", ["sip:13900000002@h", "sip:h", "mailto:x@y",
                                 "sip:700100000000001123456789@h"])
def test_not_an_x_is_404(uri: str) -> None:
    with pytest.raises(refusals.UnknownX) as err:
        routing.target_x(invite(uri, "<sip:13800000001@h>"))
    assert err.value.status == 404 and err.value.cause == "no_binding"


def test_caller_from_from_header() -> None:
    req = invite("sip:700100000000001@h", '"x" <sip:+86-138-0000-0001@h;user=phone>',
                 pai="<tel:+8613700000003>")
    assert routing.caller_number(req, trust_pai=False) == "13800000001"
    assert routing.caller_number(req, trust_pai=True) == "13700000003"


def test_untrusted_or_anonymous_caller_is_403() -> None:
    req = invite("sip:700100000000001@h", '"Anonymous" <sip:anonymous@anonymous.invalid>')
    with pytest.raises(refusals.NotAllowed) as err:
        routing.caller_number(req, trust_pai=False)
    assert err.value.status == 403


def test_axb_both_directions_and_strangers() -> None:
    binding = B("axb", "13800000001", "13900000002")
    assert routing.route(binding, X, "13800000001") == Target("13900000002", X, "a_to_b")
    assert routing.route(binding, X, "13900000002") == Target("13800000001", X, "b_to_a")
    with pytest.raises(refusals.NotAllowed):
        routing.route(binding, X, "13700000003")


def test_axn() -> None:
    binding = B("axn", "13800000001")
    assert routing.route(binding, X, "13700000003") == Target("13800000001", X, "n_to_a")
    with pytest.raises(refusals.NotAllowed):
        routing.route(binding, X, "13800000001")


def test_no_binding_is_404_and_an_axe_number_without_its_extension_too() -> None:
    with pytest.raises(refusals.UnknownX):
        routing.route(None, X, "13800000001")
    axe = B("axe", "13800000001")._replace(ext="12")
    with pytest.raises(refusals.NeedsExtension) as err:
        routing.route(axe, X, "13700000003")
    assert (err.value.status, err.value.cause) == (404, "no_binding")
    assert routing.route(axe, X, "13700000003", "12") == Target("13800000001", X, "n_to_a")


def test_an_x_followed_by_an_extension_is_read_as_both() -> None:
    assert routing.dialled(invite(f"sip:{X}1234@h", "<sip:13800000001@h>")) == (X, "1234")
    assert routing.dialled(invite(f"tel:+86{X}", "<sip:13800000001@h>")) == (X, None)
    with pytest.raises(refusals.UnknownX):
        routing.dialled(invite(f"sip:{X}123456789@h", "<sip:13800000001@h>"))


@pytest.mark.parametrize(("uri", "hop"), [
    ("sip:b@10.0.0.1:5080", (("10.0.0.1", 5080), "udp")),
    ("sip:b@10.0.0.1;transport=TCP", (("10.0.0.1", 5060), "tcp")),
    ("sip:b@[2001:db8::1]:5070", (("2001:db8::1", 5070), "udp")),
    # RFC 3261 §19.1.2: TLS by sips or transport=tls, default port 5061
    ("sip:b@10.0.0.1;transport=tls", (("10.0.0.1", 5061), "tls")),
    ("sips:b@10.0.0.1", (("10.0.0.1", 5061), "tls")),
    ("sips:b@10.0.0.1:5071;transport=tcp", (("10.0.0.1", 5071), "tls")),
    ("sip:b@pbx.example", None),
    ("not a uri", None),
    ("tel:+8613800000001", None),
])
def test_hop_of(uri: str, hop: object) -> None:
    assert routing.hop_of(uri) == hop


@pytest.mark.parametrize(("uri", "require", "status"), [
    ("sip:700100000000001@h", None, None),
    ("tel:+86700100000000001", None, None),
    ("SIPS:700100000000001@h", None, None),
    ("nobodyKnowsThisScheme:totallyopaquecontent", None, 416),
    ("soap.beep://192.0.2.103:3002", None, 416),
    ("sip:700100000000001@h", "100rel", 420),
    ("sip:700100000000001@h", " , ", None),
    ("im:x@h", "100rel", 416),           # the scheme is checked first (§8.2.2.1)
])
def test_check_request(uri: str, require: str | None, status: int | None) -> None:
    request = invite(uri, "<sip:13800000001@h>")
    if require is not None:
        request.headers.add("Require", require)
    if status is None:
        routing.check_request(request)
        return
    with pytest.raises(SipError) as err:
        routing.check_request(request)
    assert err.value.status == status
    if status == 420:
        assert isinstance(err.value, refusals.BadExtension) and err.value.unsupported == "100rel"


def test_the_caller_is_the_from_the_parser_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # From was parsed when the message was (request.from_ keeps it): reading the caller
    # does not parse it again. PAI, read only on a trusted trunk, is parsed when read.
    req = invite("sip:700100000000001@h", '"x" <sip:13800000001@h>',
                 pai="<tel:+8613700000003>")
    assert req.from_.tag == "1"

    def parsed_again(text: str) -> NameAddr:
        raise AssertionError(f"parsed again: {text}")

    monkeypatch.setattr(NameAddr, "parse", parsed_again)
    assert routing.caller_number(req, trust_pai=False) == "13800000001"
