"""SIP header fields: an ordered list that keeps each field's original text.

Header names are matched case-insensitively and compact forms (RFC 3261 §7.3.3, §20) are
equal to their long forms, but a field we do not touch is written back exactly as it came,
folding and case included, so a relayed message keeps its bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

# RFC 3261 §7.3.3 and the RFCs that registered further compact forms (3265, 3515, 3841,
# 3892, 4028, 4474). The key is the lower-case compact letter, the value the canonical key.
COMPACT: dict[str, str] = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "n": "identity-info",
    "o": "event", "r": "refer-to", "s": "subject", "t": "to", "u": "allow-events",
    "v": "via", "x": "session-expires", "y": "identity",
}

# Headers whose values may not be split on commas (RFC 3261 §7.3.1: they carry commas of
# their own grammar), so get_all() returns each field whole.
_UNSPLITTABLE = frozenset({
    "www-authenticate", "authorization", "proxy-authenticate", "proxy-authorization",
    "date", "authentication-info", "user-agent", "server", "subject", "organization",
    "call-id", "cseq", "content-length", "content-type", "from", "to", "max-forwards",
    "retry-after", "timestamp", "identity", "warning",
})

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


def canonical(name: str) -> str:
    """The key a header is matched by: lower case, compact form expanded."""
    low = name.lower()
    return COMPACT.get(low, low)


def is_token(text: str) -> bool:
    """RFC 3261 §25.1 token."""
    return bool(text) and all(ch in _TOKEN_CHARS for ch in text)


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets (§7.3.1)."""
    if "," not in value:
        return [value.strip()]
    parts: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


class Headers:
    """Ordered header fields. Each field is (key, name, value, raw) where `raw` is the text the
    field arrived as (None for fields set by us); `modified` tells the serializer whether the
    original bytes can still be sent as they are."""

    __slots__ = ("_fields", "modified")

    def __init__(self, fields: list[tuple[str, str, str, str | None]] | None = None) -> None:
        self._fields: list[tuple[str, str, str, str | None]] = fields if fields is not None else []
        self.modified = False

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        """Headers we build ourselves, in the order given."""
        return cls([(canonical(n), n, v, None) for n, v in pairs])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name as written, value) in order."""
        for _key, name, value, _raw in self._fields:
            yield name, value

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: str) -> bool:
        key = canonical(name)
        return any(f[0] == key for f in self._fields)

    def fields(self) -> list[tuple[str, str, str, str | None]]:
        return list(self._fields)

    def keys(self) -> list[str]:
        """Canonical keys in order (one per field line)."""
        return [f[0] for f in self._fields]

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first field with this name (whole field, not comma-split)."""
        key = canonical(name)
        for f in self._fields:
            if f[0] == key:
                return f[2]
        return default

    def get_fields(self, name: str) -> list[str]:
        """Every field line with this name, unsplit."""
        key = canonical(name)
        return [f[2] for f in self._fields if f[0] == key]

    def get_all(self, name: str) -> list[str]:
        """Every value with this name, comma-separated values split (§7.3.1) where allowed."""
        key = canonical(name)
        out: list[str] = []
        for f in self._fields:
            if f[0] == key:
                if key in _UNSPLITTABLE:
                    out.append(f[2])
                else:
                    out.extend(split_commas(f[2]))
        return out

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        entry = (canonical(name), name, value, None)
        if first:
            self._fields.insert(0, entry)
        else:
            self._fields.append(entry)
        self.modified = True

    def set(self, name: str, value: str) -> None:
        """Replace the first field with this name in place (others removed), or append."""
        key = canonical(name)
        out: list[tuple[str, str, str, str | None]] = []
        placed = False
        for f in self._fields:
            if f[0] == key:
                if not placed:
                    # Keep the name as it was written (case, compact form) where it existed.
                    out.append((key, f[1], value, None))
                    placed = True
                continue
            out.append(f)
        if not placed:
            out.append((key, name, value, None))
        self._fields = out
        self.modified = True

    def remove(self, name: str) -> int:
        """Drop every field with this name; returns how many went."""
        key = canonical(name)
        before = len(self._fields)
        self._fields = [f for f in self._fields if f[0] != key]
        removed = before - len(self._fields)
        if removed:
            self.modified = True
        return removed

    def pop_first(self, name: str) -> str | None:
        """Remove the first field with this name and return its value (e.g. the top Via)."""
        key = canonical(name)
        for i, f in enumerate(self._fields):
            if f[0] == key:
                del self._fields[i]
                self.modified = True
                return f[2]
        return None

    def copy(self) -> Headers:
        clone = Headers(list(self._fields))
        clone.modified = self.modified
        return clone

    def serialize(self) -> str:
        """The header block, each line ending in CRLF; untouched fields keep their text."""
        return "".join(
            (raw if raw is not None else f"{name}: {value}") + "\r\n"
            for _key, name, value, raw in self._fields
        )
