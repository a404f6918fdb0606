"""SIP header fields: an ordered list that keeps each field's original text.

Header names are matched case-insensitively and compact forms (RFC 3261 §7.3.3, §20) are
equal to their long forms, but a field we do not touch is written back exactly as it came,
folding and case included, so a relayed message keeps its bytes.

Each field is a tuple (key, name, value, raw): `key` the canonical name (lower case, compact
form expanded), `name` as written (without the whitespace some senders put before the
colon), `value` with folding joined and outer whitespace removed, `raw` the text the field
arrived as, or None for a field we set. A parallel list of keys lets lookups run as C-level
`list.index` / `list.count` calls: the parser's hot path depends on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING

from sipmask.errors import ParseError

if TYPE_CHECKING:
    from sipmask.sip.message import CSeq
    from sipmask.sip.uri import NameAddr, Via

Field = tuple[str, str, str, str | None]
# A parsed block not yet turned into fields: names as written, unstripped values (None when
# they are still inside the raw lines), the raw lines (None when they may not be reused; a
# str when the parser handed over the block unsplit, start line first) and, with values
# None, where in each raw line its value starts (`line[cut]` is the value). With values
# given, a raw line may be None: a field set since (`set_first`), written as `name: value`.
_Lazy = tuple[tuple[str, ...], Sequence[str] | None, list[str] | list[str | None] | str | None,
              tuple[slice, ...] | None]

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

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")

# Name as written → canonical key, for names already checked to be tokens. The vocabulary
# of header names on a link is small, so after warm-up the parser never validates a name
# twice; the bound keeps a peer that invents names from growing it without limit.
_NAME_KEYS: dict[str, str] = {}
_NAME_KEYS_MAX = 4096


class _Keys(dict[str, str]):
    """Any header name asked about → its canonical key. A hit is one C-level dict lookup:
    callers pass both wire spellings ("Call-ID", "i") and keys ("call-id"), hundreds of
    times a call. A miss computes the key and remembers it; the bound (and the length
    limit) keep names a peer invents from growing it without limit."""

    __slots__ = ()

    def __missing__(self, name: str) -> str:
        low = name.lower()
        key = COMPACT.get(low, low)
        if len(name) <= _KEYS_NAME_MAX:
            if len(self) >= _KEYS_MAX:
                self.clear()
                self.update(_KEYS_SEED)
            self[name] = key
        return key


_KEYS_MAX = 4096
_KEYS_NAME_MAX = 64
# Seeded with every key and compact letter we know, in both cases, so the lookups the
# code itself makes never miss.
_KEYS_SEED: dict[str, str] = {
    **{key: key for key in (*COMPACT.values(), *_UNSPLITTABLE)},
    **COMPACT, **{letter.upper(): key for letter, key in COMPACT.items()},
}
_KEYS = _Keys(_KEYS_SEED)

# The key a header is matched by: lower case, compact form expanded (`_Keys`).
canonical: Callable[[str], str] = _KEYS.__getitem__


def is_token(text: str) -> bool:
    """RFC 3261 §25.1 token."""
    return _TOKEN.fullmatch(text) is not None


def key_of_wire_name(name: str) -> str:
    """Canonical key of a header name as it arrived, which must be a token once trailing
    whitespace is dropped (§7.3.1 allows LWS before the colon). Raises ParseError."""
    key = _NAME_KEYS.get(name)
    if key is not None:
        return key
    clean = name.rstrip(" \t")
    if _TOKEN.fullmatch(clean) is None:
        raise ParseError(f"Bad header name {clean[:32]!r}")
    low = clean.lower()
    key = COMPACT.get(low, low)
    if clean == name:
        # Only names without trailing whitespace are remembered, so a cache hit also
        # means "this name is already clean" to the parser's fast path.
        if len(_NAME_KEYS) >= _NAME_KEYS_MAX:
            _NAME_KEYS.clear()
        _NAME_KEYS[name] = key
    return key


def known_wire_keys(names: Sequence[str]) -> list[str] | None:
    """Keys of header names all seen before (valid tokens, no trailing whitespace), in one
    C-level pass; None when any name is new, so the caller takes the careful path."""
    keys = list(map(_NAME_KEYS.get, names))
    if None in keys:
        return None
    return keys  # type: ignore[return-value]  # no None left: every lookup hit


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets (§7.3.1)."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
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


def fields_of(pairs: Iterable[tuple[str, str]]) -> list[Field]:
    """(name, value) pairs as fields we set (raw None), keys looked up in `_KEYS`, which is
    seeded with every name sipmask writes (one dict hit each)."""
    keys = _KEYS
    return [(keys[name], name, value, None) for name, value in pairs]


_NAME_VALUE = itemgetter(1, 2)
# Joined with CRLF after the last field: its CRLF and the empty line.
_END_OF_HEAD = ("", "")
_FIRST = itemgetter(0)


class Headers:
    """Ordered header fields. Each field is (key, name, value, raw) where `raw` is the text the
    field arrived as (None for fields set by us); `modified` tells the serializer whether the
    original bytes can still be sent as they are.

    A parsed message's fields are built on first use: the parser hands over the keys and
    either the lines split at their colon or (`_from_lines`) only the raw lines and the
    names they start with, and `get` reads a value without building the rest, so a message
    relayed unchanged never pays for tuples nobody reads.

    The `_p_*` slots hold what `Message` parsed from these fields (From, To, CSeq, the top
    Via): the transaction layer, the dialogs and the engine each read those of a message
    several times. Every method that changes a field clears them (`_changed`), so a value
    read after a change is parsed from the new text."""

    __slots__ = ("_fields", "_keys", "_lazy", "_p_cseq", "_p_from", "_p_to", "_p_via",
                 "modified")

    _p_from: NameAddr | None
    _p_to: NameAddr | None
    _p_cseq: CSeq | None
    _p_via: Via | None

    def __init__(self, fields: list[Field] | None = None) -> None:
        self._fields: list[Field] | None = fields if fields is not None else []
        self._keys: list[str] = [f[0] for f in fields] if fields else []
        self._lazy: _Lazy | None = None
        self.modified = False
        self._p_from = self._p_to = self._p_cseq = self._p_via = None

    @classmethod
    def _made(cls, fields: list[Field] | None, keys: list[str], lazy: _Lazy | None
              ) -> Headers:
        """Every constructor but __init__: `keys` is already the list of the fields' keys."""
        self = cls.__new__(cls)
        self._fields = fields
        self._keys = keys
        self._lazy = lazy
        self.modified = False
        self._p_from = self._p_to = self._p_cseq = self._p_via = None
        return self

    @classmethod
    def _trusted(cls, fields: list[Field], keys: list[str]) -> Headers:
        """The parser's constructor: `keys` is already the list of fields' keys."""
        return cls._made(fields, keys, None)

    @classmethod
    def _deferred(cls, keys: list[str], names: tuple[str, ...], values: tuple[str, ...],
                  raws: list[str] | None) -> Headers:
        """The parser's constructor: names as written (clean), values not yet stripped, and
        the raw lines (None when they may not be reused)."""
        return cls._made(None, keys, (names, values, raws, None))

    @classmethod
    def _from_lines(cls, keys: list[str], names: tuple[str, ...], lines: list[str] | str,
                    cuts: tuple[slice, ...]) -> Headers:
        """The parser's fast constructor: each raw line is `name:value` with `name` exactly
        as given (no folding, no whitespace before the colon), so a value is `line[cut]`
        with `cut` = slice(len(name) + 1, None), and nothing is sliced until someone asks.
        `lines` may also be the whole CRLF header block, start line first, split on first
        use."""
        return cls._made(None, keys, (names, None, lines, cuts))

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        """Headers we build ourselves, in the order given."""
        return cls.built(fields_of(pairs))

    @classmethod
    def built(cls, fields: list[Field]) -> Headers:
        """Headers we build ourselves from fields whose keys the caller knows (each key
        `canonical(name)`, raw None): the builders of masking and message skip the
        (name, value) pairs and the key lookups of `of`."""
        return cls._trusted(fields, list(map(_FIRST, fields)))

    def _all(self) -> list[Field]:
        fields = self._fields
        if fields is None:
            assert self._lazy is not None
            names, values, _raws, cuts = self._lazy
            raws = self._raw_lines()
            if values is None:
                assert raws is not None and cuts is not None
                values = list(map(str.__getitem__, raws, cuts))  # type: ignore[arg-type]  # values None: all raw
            stripped = map(str.strip, values)
            if raws is None:
                fields = list(zip(self._keys, names, stripped, repeat(None)))
            else:
                fields = list(zip(self._keys, names, stripped, raws, strict=True))
            self._fields = fields
            self._lazy = None
        return fields

    def _changed(self) -> None:
        """A field changed: the original bytes no longer say it, and what was parsed from
        the old text is forgotten."""
        self.modified = True
        self._p_from = self._p_to = self._p_cseq = self._p_via = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name as written, value) in order."""
        fields = self._fields
        if fields is None:
            # The lazy form, read without building the fields (the engine only iterates
            # the messages it receives).
            assert self._lazy is not None
            names, given, _raws, cuts = self._lazy
            values: Iterable[str]
            if given is None:
                raws = self._raw_lines()
                assert raws is not None and cuts is not None
                values = map(str.__getitem__, raws, cuts)  # type: ignore[arg-type]  # values None: all raw
            else:
                values = given
            return zip(names, map(str.strip, values), strict=True)
        return map(_NAME_VALUE, fields)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: str) -> bool:
        return _KEYS[name] in self._keys

    def __repr__(self) -> str:
        return f"<Headers {self._keys}>"

    def fields(self) -> list[Field]:
        return list(self._all())

    def keys(self) -> list[str]:
        """Canonical keys in order (one per field line)."""
        return list(self._keys)

    def count(self, name: str) -> int:
        """How many field lines carry this name."""
        return self._keys.count(_KEYS[name])

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first field with this name (whole field, not comma-split)."""
        key = _KEYS[name]
        keys = self._keys
        if key not in keys:
            return default
        return self._value(keys.index(key))

    def _value(self, i: int) -> str:
        """The value of field `i`, read from the lazy form without building the fields."""
        if self._fields is None:
            assert self._lazy is not None
            _names, values, _raws, cuts = self._lazy
            if values is None:
                raws = self._raw_lines()
                assert raws is not None and cuts is not None
                return raws[i][cuts[i]].strip()  # type: ignore[index]  # values None: all raw
            return values[i].strip()
        return self._fields[i][2]

    def _raw_lines(self) -> list[str] | list[str | None] | None:
        """The lazy form's raw lines, splitting a block handed over whole."""
        assert self._lazy is not None
        names, values, raws, cuts = self._lazy
        if isinstance(raws, str):
            raws = raws.split("\r\n")
            del raws[0]                               # the start line
            self._lazy = (names, values, raws, cuts)
        return raws

    def get_fields(self, name: str) -> list[str]:
        """Every field line with this name, unsplit."""
        return self._values_of(_KEYS[name])

    def get_all(self, name: str) -> list[str]:
        """Every value with this name, comma-separated values split (§7.3.1) where allowed."""
        key = _KEYS[name]
        values = self._values_of(key)
        if key in _UNSPLITTABLE:
            return values
        if len(values) == 1:
            return split_commas(values[0])
        out: list[str] = []
        for value in values:
            out.extend(split_commas(value))
        return out

    def select(self, keys: frozenset[str]) -> list[Field]:
        """The fields whose key is in `keys`, in order, as (key, name as written, value,
        None): what iterating and keeping those would give, without building the fields of
        a parsed message or reading the values of the others."""
        own = self._keys
        if keys.isdisjoint(own):
            return []
        fields = self._fields
        if fields is not None:
            return [(f[0], f[1], f[2], None) for f in fields if f[0] in keys]
        assert self._lazy is not None
        names = self._lazy[0]
        value = self._value
        return [(key, names[i], value(i), None) for i, key in enumerate(own) if key in keys]

    def _values_of(self, key: str) -> list[str]:
        keys = self._keys
        n = keys.count(key)
        if n == 1:
            # One line (the common case for Via, Contact, Route): no fields built.
            return [self._value(keys.index(key))]
        if n == 0:
            return []
        return [f[2] for f in self._all() if f[0] == key]

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        fields = self._all()
        key = _KEYS[name]
        entry = (key, name, value, None)
        if first:
            fields.insert(0, entry)
            self._keys.insert(0, key)
        else:
            fields.append(entry)
            self._keys.append(key)
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Replace the first field with this name in place (others removed), or append."""
        key = _KEYS[name]
        fields = self._all()
        keys = self._keys
        if key not in keys:
            fields.append((key, name, value, None))
            keys.append(key)
        else:
            i = keys.index(key)
            # Keep the name as it was written (case, compact form) where it existed.
            fields[i] = (key, fields[i][1], value, None)
            if keys.count(key) > 1:
                self._replace([f for j, f in enumerate(fields) if j <= i or f[0] != key])
        self._changed()

    def set_first(self, name: str, value: str) -> None:
        """Replace the value of the first field with this name in place, keeping the name
        as written and every later field with this name (e.g. the top Via line); append
        when there is none."""
        key = _KEYS[name]
        keys = self._keys
        if key not in keys:
            self.add(name, value)
            return
        i = keys.index(key)
        if self._fields is None and value == value.strip():
            # Without building the fields (a received request's Via, stamped): the lazy form
            # with its values listed, and line i no longer raw.
            assert self._lazy is not None
            names, given, _raws, cuts = self._lazy
            raws = self._raw_lines()
            values: list[str]
            if given is None:
                assert raws is not None and cuts is not None
                values = list(map(str.__getitem__, raws, cuts))  # type: ignore[arg-type]  # values None: all raw
            else:
                values = list(given)
            values[i] = value
            lines: list[str | None] | None = None
            if raws is not None:
                lines = list(raws)
                lines[i] = None
            self._lazy = (names, values, lines, None)
            self._changed()
            return
        fields = self._all()
        fields[i] = (key, fields[i][1], value, None)
        self._changed()

    def remove(self, name: str) -> int:
        """Drop every field with this name; returns how many went."""
        key = _KEYS[name]
        removed = self._keys.count(key)
        if removed:
            self._replace([f for f in self._all() if f[0] != key])
        return removed

    def pop_first(self, name: str) -> str | None:
        """Remove the first field with this name and return its value (e.g. the top Via)."""
        key = _KEYS[name]
        if key not in self._keys:
            return None
        fields = self._all()
        i = self._keys.index(key)
        value = fields[i][2]
        del fields[i]
        del self._keys[i]
        self._changed()
        return value

    def copy(self) -> Headers:
        clone = Headers._trusted(list(self._all()), list(self._keys))
        clone.modified = self.modified
        return clone

    def _lines(self) -> list[str]:
        """One line per field: untouched fields keep their text."""
        return [raw if raw is not None else f"{name}: {value}"
                for _key, name, value, raw in self._all()]

    def serialize(self) -> str:
        """The header block, each line ending in CRLF; untouched fields keep their text."""
        lines = self._lines()
        lines.append("")
        return "\r\n".join(lines)

    def render(self, start_line: str) -> str:
        """`start_line`, the header block (as `serialize`) and the empty line ending the
        head, made in one join (the message's head without its body)."""
        lines = self._lines()
        lines.insert(0, start_line)
        lines += _END_OF_HEAD
        return "\r\n".join(lines)

    def _replace(self, fields: list[Field]) -> None:
        self._fields = fields
        self._keys = [f[0] for f in fields]
        self._changed()
