"""Dialog._build keeps the Request-URI, Route, From and To it works out from the dialog's
fields; whatever changes one of those fields (a target refresh, the route set a 2xx brings,
a field set by hand) must show in the next request, exactly as without the cache."""

from __future__ import annotations

import dataclasses

import pytest

from sipmask.errors import ParseError
from sipmask.sip.dialog import Dialog, DialogState
from tests.support import dialogs
from tests.support.dialogs import in_dialog_request, parse_request, response_to, uac_dialog

INVITE = parse_request(dialogs.INVITE)


def _fresh(dialog: Dialog) -> Dialog:
    """The same dialog, built without any cached parts."""
    copy = dataclasses.replace(dialog)
    assert copy._parts is None
    return copy


def _same_request(a: object, b: object) -> None:
    assert a.to_bytes() == b.to_bytes()  # type: ignore[attr-defined]


def test_repeated_requests_match_an_uncached_dialog() -> None:
    _, dialog = uac_dialog()
    for method in ("BYE", "INFO", "UPDATE"):
        fresh = _fresh(dialog)
        _same_request(dialog.new_request(method), fresh.new_request(method))
        _same_request(dialog.ack(10), _fresh(dialog).ack(10))


def test_target_refresh_changes_the_request_uri() -> None:
    _, dialog = uac_dialog(record_route=())
    assert dialog.new_request("INFO").uri == "sip:13900000002@127.0.0.8:5090"
    dialog.receive_request(in_dialog_request("INVITE", 5,
                                             contact="<sip:13900000002@127.0.0.9:5070>"))
    assert dialog.new_request("INFO").uri == "sip:13900000002@127.0.0.9:5070"
    _same_request(dialog.ack(10), _fresh(dialog).ack(10))


def test_route_set_from_the_confirming_2xx_shows_in_routes() -> None:
    dialog = Dialog.as_uac(INVITE, response_to(INVITE, 180, record_route=("<sip:p1.example;lr>",)))
    assert dialog.state is DialogState.EARLY
    first = dialog.new_request("PRACK")
    assert first.headers.get_all("route") == ["<sip:p1.example;lr>"]
    dialog.on_response(response_to(INVITE, 200, record_route=(
        "<sip:p2.example;lr>", "<sip:p3.example;lr>")))
    ack = dialog.ack(10)
    assert ack.headers.get_all("route") == ["<sip:p3.example;lr>", "<sip:p2.example;lr>"]
    _same_request(ack, _fresh(dialog).ack(10))


def test_fields_set_by_hand_are_seen() -> None:
    _, dialog = uac_dialog()
    dialog.new_request("INFO")
    dialog.remote_tag = "other"
    dialog.local_uri = "<sip:700100000000009@127.0.0.1>"
    bye = dialog.new_request("BYE")
    assert bye.to.tag == "other"
    assert str(bye.from_.uri) == "sip:700100000000009@127.0.0.1"
    dialog.route_set = ()
    dialog.remote_target = "sip:b@10.0.0.1:5080"
    assert dialog.new_request("BYE").uri == "sip:b@10.0.0.1:5080"
    assert dialog.new_request("BYE").headers.get_all("route") == []


def test_strict_router_is_unchanged() -> None:
    _, dialog = uac_dialog(record_route=("<sip:strict.example>",))
    for _ in range(2):
        bye = dialog.new_request("BYE")
        assert bye.uri == "sip:strict.example"
        assert bye.headers.get_all("route") == ["<sip:13900000002@127.0.0.8:5090>"]


def test_unroutable_target_fails_every_time_and_then_recovers() -> None:
    _, dialog = uac_dialog(record_route=())
    dialog.remote_target = "not a uri"
    for _ in range(2):
        with pytest.raises(ParseError):
            dialog.new_request("BYE")
    dialog.remote_target = "sip:b@10.0.0.1"
    assert dialog.new_request("BYE").uri == "sip:b@10.0.0.1"


def test_cache_is_not_part_of_equality_or_repr() -> None:
    _, dialog = uac_dialog()
    fresh = _fresh(dialog)
    dialog.ack(10)
    assert dialog == fresh
    assert "_parts" not in repr(dialog)
