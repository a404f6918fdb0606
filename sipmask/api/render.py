"""Response bodies: a binding's JSON written directly, byte for byte what json.dumps writes.

`POST /v1/bindings` answers with the binding it made, and building that answer through
`Binding.to_json()` and `json.dumps` was about a tenth of the API's CPU per bind (two
datetime conversions, a dict, the encoder walking it). A binding's strings are numbers, hex
ids, modes and tenant names, which JSON writes as they are, so the text is put together
with an f-string; the second of a timestamp is rendered once and reused. Anything the fast
path cannot vouch for (a string JSON would escape, a policy field, a non-float time, a
Binding with fields this module does not know, an AXE extension, an AXYB y, a recorded
binding) goes through `to_json` and `json.dumps`,
and tests/unit/test_api_render.py checks the two agree.
"""

from __future__ import annotations

import json
import math

from sipmask.store.base import Binding
from sipmask.times import iso

JSON_TYPE = "application/json; charset=utf-8"   # what aiohttp's json_response sends

# The fields the f-string below knows; a Binding with others falls back to to_json.
_KNOWN_FIELDS = ("id", "mode", "tenant", "x", "a", "b", "created_at", "expires_at",
                 "direction", "max_duration_s", "max_concurrent", "blacklist", "ext", "y",
                 "record")
FAST = Binding._fields == _KNOWN_FIELDS

_seconds: dict[int, str] = {}     # whole Unix second -> its ISO-8601 text


def _iso(ts: float) -> str:
    whole = int(ts)
    # fromtimestamp rounds to microseconds: only a fraction this close to 1 could round
    # into the next second, so every other time shares its whole second's text.
    if ts >= 0 and ts - whole < 0.999:
        text = _seconds.get(whole)
        if text is None:
            if len(_seconds) >= 256:
                _seconds.clear()
            text = _seconds[whole] = iso(float(whole)) or ""
        return text
    return iso(ts) or ""


def _plain(text: str) -> bool:
    """JSON writes these characters as they are (json.dumps escapes ", \\, control
    characters and, with ensure_ascii, everything outside ASCII)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def binding_json(b: Binding) -> bytes:
    """json.dumps(b.to_json()).encode(), faster for the bindings the API makes."""
    created, expires = b.created_at, b.expires_at
    if (FAST and b.direction == "both" and b.max_duration_s is None
            and b.max_concurrent is None and not b.blacklist
            and b.ext is None and b.y is None and not b.record
            and type(created) is float and math.isfinite(created)
            and (expires is None or (type(expires) is float and math.isfinite(expires)))
            and _plain(f"{b.id}{b.mode}{b.tenant}{b.x}{b.a}{b.b or ''}")):
        other = "null" if b.b is None else f'"{b.b}"'
        if expires is None:
            expires_iso = expires_unix = "null"
        else:
            expires_iso, expires_unix = f'"{_iso(expires)}"', repr(expires)
        return (f'{{"id": "{b.id}", "mode": "{b.mode}", "tenant": "{b.tenant}", '
                f'"x": "{b.x}", "a": "{b.a}", "b": {other}, '
                f'"created_at": "{_iso(created)}", "expires_at": {expires_iso}, '
                f'"created_at_unix": {created!r}, "expires_at_unix": {expires_unix}}}'
                ).encode()
    return json.dumps(b.to_json()).encode()


def bindings_json(bindings: list[Binding]) -> bytes:
    """A JSON array of bindings, as json.dumps writes a list (", " between items)."""
    return b"[" + b", ".join(binding_json(b) for b in bindings) + b"]"
