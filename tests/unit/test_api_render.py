"""api/render.py writes a binding's JSON exactly as json.dumps(binding.to_json()) does."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from sipmask.api import render
from sipmask.store.base import Binding

plain = st.text(st.characters(min_codepoint=0x30, max_codepoint=0x7a), min_size=1,
                max_size=16)
anything = st.text(max_size=8)
times = st.floats(min_value=0, max_value=4e9) | st.just(1_700_000_000.9999996) \
    | st.integers(0, 4_000_000_000).map(float)


def _binding(draw: st.DrawFn, strings: st.SearchStrategy[str]) -> Binding:
    created = draw(times)
    return Binding(
        id=draw(strings), mode=draw(strings), tenant=draw(strings), x=draw(strings),
        a=draw(strings), b=draw(st.none() | strings), created_at=created,
        expires_at=draw(st.none() | times | st.sampled_from([-1.5, 0.9995, 86399.9991])),
        direction=draw(st.sampled_from(["both", "both", "a_to_b"])),
        max_duration_s=draw(st.none() | st.none() | st.integers(1, 99)),
        max_concurrent=draw(st.none() | st.none() | st.integers(1, 9)),
        blacklist=draw(st.just(()) | st.just(()) | st.tuples(strings)))


@st.composite
def bindings(draw: st.DrawFn) -> Binding:
    return _binding(draw, draw(st.sampled_from([plain, anything])))


@given(bindings())
def test_the_fast_text_is_json_dumps_of_to_json(b: Binding) -> None:
    assert render.binding_json(b) == json.dumps(b.to_json()).encode()


@given(st.lists(bindings(), max_size=4))
def test_a_list_is_json_dumps_of_the_list(found: list[Binding]) -> None:
    assert render.bindings_json(found) == json.dumps([b.to_json() for b in found]).encode()


def test_the_fast_path_knows_every_binding_field() -> None:
    # A new Binding field turns the fast path off (correct but slow) until render.py and
    # this list learn it.
    assert render.FAST, Binding._fields
