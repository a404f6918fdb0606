from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sipmask.cdr.record import CSV_COLUMNS, Cdr, iso, parse_time


def cdr() -> Cdr:
    return Cdr(call_id="c1", tenant="demo", binding_id="b1", x="700100000000001",
               caller="13800000001", callee="13900000002", direction="a_to_b",
               invite_at=1800000000.0, ring_at=1800000000.5, answer_at=1800000003.0,
               end_at=1800000063.0, duration_s=60.0, release_side="caller", sip_status=200,
               unconnected_cause="none")


def test_contract_fields_in_order() -> None:
    assert CSV_COLUMNS == (
        "call_id", "tenant", "binding_id", "x", "caller", "callee", "direction", "invite_at",
        "ring_at", "answer_at", "end_at", "duration_s", "release_side", "sip_status",
        "unconnected_cause", "recording")


def test_recording_is_null_unless_set_and_survives_the_round_trip() -> None:
    from dataclasses import replace
    assert cdr().recording is None and cdr().to_json()["recording"] is None
    recorded = replace(cdr(), recording="0123abcd.wav")
    assert Cdr.decode(recorded.encode()) == recorded
    assert recorded.to_json()["recording"] == "0123abcd.wav"


def test_the_stored_bytes_are_the_version_then_every_field_in_order() -> None:
    # Cdr.encode reads the instance dict: the bytes must stay those of the fields read one
    # by one, in the contract's order, after "v" (what records already stored hold).
    for record in (cdr(), replace(cdr(), recording="0123abcd.wav", ring_at=None)):
        fields = {name: getattr(record, name) for name in CSV_COLUMNS}
        assert record.encode() == json.dumps({"v": 1, **fields},
                                             separators=(",", ":")).encode()


def test_encode_decode_round_trip_and_tolerates_new_fields() -> None:
    record = cdr()
    assert Cdr.decode(record.encode()) == record
    future = record.encode()[:-1] + b',"new_field":1}'
    assert Cdr.decode(future) == record


def test_json_times_and_masking() -> None:
    out = cdr().to_json()
    assert out["invite_at"] == "2027-01-15T08:00:00.000Z"
    assert out["caller"] == "13800000001"
    masked = cdr().to_json(mask=True)
    assert masked["caller"] == "138****0001" and masked["callee"] == "139****0002"


@pytest.mark.parametrize(("text", "value"), [
    ("1800000000", 1800000000.0), ("2027-01-15T08:00:00Z", 1800000000.0),
    ("2027-01-15T08:00:00", 1800000000.0), ("2027-01-15T16:00:00+08:00", 1800000000.0)])
def test_parse_time(text: str, value: float) -> None:
    assert parse_time(text) == value
    assert iso(value) == "2027-01-15T08:00:00.000Z"
