"""A binding's policy rules go in through store.create and come back out of route()."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sipmask.api.inputs import ApiError, create_request
from sipmask.config import loader
from sipmask.errors import RefusedError
from sipmask.store.memory import MemoryStore
from tests.support.api import TOKENS, ApiThread, call, create

A, B = "13800000001", "13900000002"
X = "700100000000001"


def store() -> MemoryStore:
    return MemoryStore(tenants=loader.loads(loader.default_text()).tenants)


def test_policy_fields_are_kept_and_normalised() -> None:
    s = store()
    made = s.create(mode="axb", tenant="demo", a=A, b=B, x=X, direction="b_to_a",
                    max_duration_s=60, max_concurrent=2, blacklist=("+86 137", "0086010"))
    routed = s.route(X, A, made.created_at + 1)
    assert routed is not None
    assert (routed.direction, routed.max_duration_s, routed.max_concurrent, routed.blacklist) \
        == ("b_to_a", 60, 2, ("010", "137"))
    assert made.to_json()["blacklist"] == ["010", "137"]


def test_without_policy_fields_a_binding_has_no_rules() -> None:
    made = store().create(mode="axn", tenant="demo", a=A, x=X)
    assert (made.direction, made.max_duration_s, made.max_concurrent, made.blacklist) == \
        ("both", None, None, ())


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"direction": "sideways"}, "direction"),
    ({"max_duration_s": -1}, "max_duration_s"),
    ({"max_concurrent": -2}, "max_concurrent"),
    ({"blacklist": ("13x",)}, "blacklist"),
])
def test_bad_policy_fields_are_refused_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(RefusedError) as exc:
        store().create(mode="axb", tenant="demo", a=A, b=B, x=X, **kwargs)  # type: ignore[arg-type]
    assert exc.value.field == field


def test_an_axn_binding_has_no_direction_rule() -> None:
    with pytest.raises(RefusedError) as exc:
        store().create(mode="axn", tenant="demo", a=A, x=X, direction="a_to_b")
    assert exc.value.field == "direction"


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipmask", *args, "--set", f"store.path={tmp_path / 's'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60)


def test_cli_bind_sets_policy_fields(tmp_path: Path) -> None:
    made = run_cli(tmp_path, "bind", "axb", "--a", A, "--b", B, "--x", X, "--direction",
                   "a_to_b", "--max-duration", "300", "--max-concurrent", "1",
                   "--blacklist", "137", "--blacklist", "+86 150")
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout)
    assert (out["direction"], out["max_duration_s"], out["max_concurrent"], out["blacklist"]) \
        == ("a_to_b", 300, 1, ["137", "150"])
    shown = run_cli(tmp_path, "show", out["id"])
    assert json.loads(shown.stdout) == out
    refused = run_cli(tmp_path, "bind", "axn", "--a", B, "--blacklist", "13x")
    assert refused.returncode == 1 and "blacklist" in refused.stderr


def test_api_input_carries_policy_fields() -> None:
    req = create_request(json.dumps({"mode": "axb", "a": A, "b": B, "direction": "b_to_a",
                                     "max_duration_s": 60, "max_concurrent": 2,
                                     "blacklist": ["137"]}).encode(), "demo")
    assert (req.direction, req.max_duration_s, req.max_concurrent, req.blacklist) == (
        "b_to_a", 60, 2, ("137",))
    for bad in ({"max_concurrent": True}, {"blacklist": "137"}, {"max_duration_s": "60"}):
        with pytest.raises(ApiError) as exc:
            create_request(json.dumps({"mode": "axn", "a": A, **bad}).encode(), "demo")
        assert exc.value.field == next(iter(bad))


def test_http_api_creates_a_binding_with_policy_fields(api: ApiThread) -> None:
    """Through a real API server on loopback and its LMDB store."""
    made = create(api, {"mode": "axb", "a": A, "b": "13900000009", "direction": "a_to_b",
                        "max_concurrent": 3, "blacklist": ["+86 137"]})
    assert (made["direction"], made["max_concurrent"], made["blacklist"]) == (
        "a_to_b", 3, ["137"])
    refused = call(api, "POST", "/v1/bindings", {"mode": "axn", "a": "13900000008",
                                                 "direction": "a_to_b"}, token=TOKENS["demo"])
    assert refused.status == 422 and refused.body["error"]["field"] == "direction"
