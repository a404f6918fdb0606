"""SIP header fields: an ordered list that keeps each field's original text.

Header names are matched case-insensitively and compact forms (RFC 3261 §7.3.3, §20) are
equal to their long forms, but a field we do not touch is written back exactly as it came,
folding and case included, so a relayed message keeps its bytes.

Each field is a tuple (key, name, value, raw): `key` the canonical name (lower case, compact
form expanded), `name` as written (without the whitespace some senders put before the
colon), `value` with folding joined and outer whitespace removed, `raw` the text the field
arrived as, or None for a field we set. A parallel list of keys lets lookups run as C-level
`list.index` / `list.count` calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING

from sipmask.sip import grammar

if TYPE_CHECKING:
    from sipmask.sip.message import CSeq
    from sipmask.sip.uri import NameAddr, NameAddrMatch, Via

Field = tuple[str, str, str, str | None]
# A parsed header block before its fields are made (Headers.parsed): the names as written,
# the text after each colon (not stripped) and the raw lines (None: not to be reused).
Split = tuple[tuple[str, ...], list[str], list[str | None] | None]

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

_TOKEN = re.compile(grammar.TOKEN)

# Header names as the RFCs that define them write them (RFC 3261 §20, 3262, 3265, 3311,
# 3323, 3325, 3326, 3515, 3891, 3892, 4028, 4244, 5806): with their lower-case forms and the
# compact letters in both cases, the table every name lookup starts from.
_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Diversion", "Error-Info", "Event", "Expires", "From",
    "History-Info", "Identity", "Identity-Info", "In-Reply-To", "Join", "Max-Forwards",
    "MIME-Version", "Min-Expires", "Min-SE", "Organization", "P-Asserted-Identity",
    "P-Preferred-Identity", "Path", "Priority", "Privacy", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Reject-Contact", "Remote-Party-ID", "Replaces", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server",
    "Service-Route", "Session-Expires", "Subject", "Subscription-State", "Supported",
    "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)


class _Keys(dict[str, str]):
    """Header name (any spelling) → canonical key. The table is fixed: a name it does not
    hold is worked out each time and not added, so a lookup never depends on the names
    seen before. Callers pass both wire spellings ("Call-ID", "i") and keys ("call-id")
    hundreds of times a call; the table makes those one C-level dict lookup."""

    __slots__ = ()

    def __missing__(self, name: str) -> str:
        low = name.lower()
        return COMPACT.get(low, low)


_KEYS = _Keys({
    **{name: name.lower() for name in _NAMES},
    **{name.lower(): name.lower() for name in _NAMES},
    **{key: key for key in _UNSPLITTABLE},
    **COMPACT, **{letter.upper(): key for letter, key in COMPACT.items()},
})

# The key a header is matched by: lower case, compact form expanded.
canonical: Callable[[str], str] = _KEYS.__getitem__


def is_token(text: str) -> bool:
    """RFC 3261 §25.1 token."""
    return _TOKEN.fullmatch(text) is not None


# The spellings the table holds, every one a token (checked here): a header name among
# them needs no other check (the parser checks the others against the grammar).
KNOWN_NAMES = frozenset(_KEYS)
if not all(map(is_token, KNOWN_NAMES)):
    raise ValueError("a header name in the table is not a token")


def split_outside(text: str, sep: str, *, angle: bool) -> list[str]:
    """`text` split at each `sep` outside quoted-strings (an unterminated one runs to the
    end) and, with `angle`, outside `<...>` (§7.3.1, §25.1). The one splitter: header
    values on commas, parameters on semicolons (uri's explanations)."""
    parts: list[str] = []
    depth = 0
    quoted = escaped = False
    start = 0
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif angle and ch == "<":
            depth += 1
        elif angle and ch == ">":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets (§7.3.1)."""
    if "," not in value:
        value = value.strip(" \t")
        return [value] if value else []
    return [p for p in (part.strip(" \t") for part in split_outside(value, ",", angle=True))
            if p]


def fields_of(pairs: Iterable[tuple[str, str]]) -> list[Field]:
    """(name, value) pairs as fields we set (raw None), keys looked up in `_KEYS`, which
    holds every name sipmask writes (one dict hit each)."""
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

    A parsed block keeps its lines as the parser split them (`parsed`) and makes the
    fields on first use: `get`, `select`, iteration and `set_first` (stamping the top Via)
    read or change the split lines in place, so a message most of whose fields are never
    read never pays for them (RFC 3261 §7.3.1: a value is the text after the colon, its
    outer whitespace taken off).

    The `_p_*` slots hold what was parsed from these fields (From, To, CSeq, the top Via):
    `Message` parses them when first read and keeps them here for the transaction layer,
    the dialogs and the engine; the parser keeps what it parsed to check the message
    (`keep_parsed`). Every method that changes a field clears what was parsed from the
    fields of that name (`_changed`), so a value read after a change is parsed from the
    new text, and the others stay (stamping the top Via of a request leaves its From, To
    and CSeq parsed)."""

    __slots__ = ("_fields", "_keys", "_m_contact", "_m_from", "_m_to", "_p_contact", "_p_cseq",
                 "_p_from", "_p_to", "_p_via", "_split", "modified")

    _fields: list[Field] | None     # None while the fields are still `_split`
    _split: Split | None

    _p_from: NameAddr | None
    _p_to: NameAddr | None
    _p_cseq: CSeq | None
    _p_via: Via | None
    _m_from: NameAddrMatch | None   # From and To as the parser matched them, to build from
    _m_to: NameAddrMatch | None
    _p_contact: NameAddr | None     # the first Contact value, and the parser's match of it
    _m_contact: NameAddrMatch | None

    def __init__(self, fields: list[Field] | None = None, keys: list[str] | None = None,
                 *, split: Split | None = None) -> None:
        """`fields` are kept (not copied); `keys`, when the caller has them, must be the
        list of their keys in order (the parser's). `split`: a parsed block the fields are
        made from when first needed (`fields` None; `keys` its names' keys)."""
        if split is not None:
            if keys is None or fields is not None:
                raise ValueError("a split header block comes with its keys and no fields")
            self._fields = None
            self._keys = keys
        else:
            self._fields = fields if fields is not None else []
            self._keys = keys if keys is not None else list(map(_FIRST, self._fields))
        self._split = split
        self.modified = False
        self._p_from = self._p_to = self._p_cseq = self._p_via = self._p_contact = None
        self._m_from = self._m_to = self._m_contact = None

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        """Headers we build ourselves, in the order given."""
        return cls(fields_of(pairs))

    @classmethod
    def parsed(cls, keys: list[str], names: tuple[str, ...], values: list[str],
               raws: list[str] | None) -> Headers:
        """A parsed header block: each line's key, its name as written, the text after its
        colon (`values`, whitespace not yet taken off) and its raw text (None: the lines
        may not be reused). The lists are kept, not copied."""
        # The raw lines become None one by one as `set_first` replaces them: the list is
        # handed over, so typing it anew is sound (not typing.cast: a call per message).
        return cls(None, keys, split=(names, values, raws))  # type: ignore[arg-type]

    def _all(self) -> list[Field]:
        """The fields, made from the split block on first use."""
        fields = self._fields
        if fields is None:
            assert self._split is not None
            names, values, raws = self._split
            fields = self._fields = list(zip(
                self._keys, names, map(str.strip, values, repeat(" \t")),
                repeat(None) if raws is None else raws, strict=False))
            self._split = None
        return fields

    @classmethod
    def built(cls, fields: list[Field]) -> Headers:
        """Headers we build ourselves from fields whose keys the caller knows (each key
        `canonical(name)`, raw None): the builders of masking and message skip the
        (name, value) pairs and the key lookups of `of`."""
        return cls(fields)

    def keep_parsed(self, cseq: CSeq, top_via: Via, from_: NameAddrMatch,
                    to: NameAddrMatch, contact: NameAddrMatch | None) -> None:
        """What the parser read from these fields while checking them: the CSeq and top
        Via, which every later layer reads (the transaction layer matches on both), and
        the matches of From, To and the first Contact, which `Message` builds its values
        from when read."""
        self._p_cseq, self._p_via, self._m_from, self._m_to = cseq, top_via, from_, to
        self._m_contact = contact

    def keep_values(self, *, cseq: CSeq | None = None, top_via: Via | None = None,
                    from_: NameAddr | None = None, to: NameAddr | None = None) -> None:
        """Values the caller wrote into these fields (each field's text is the value's
        `str()`, or the text it was parsed from): kept as what `Message` reads, so a
        message we build or change is not parsed again for them."""
        if cseq is not None:
            self._p_cseq = cseq
        if top_via is not None:
            self._p_via = top_via
        if from_ is not None:
            self._p_from = from_
        if to is not None:
            self._p_to = to

    def share_parsed(self, source: Headers, *, to: NameAddr | None = None,
                     to_changed: bool = False) -> None:
        """These fields echo `source`'s Via lines, From, CSeq and, unless `to` is given or
        `to_changed`, To (a response, §8.2.6.2): what was parsed from those in `source` is
        kept here too (values are shared, never changed in place). `to`: the value of the
        To written instead (None with `to_changed`: read from its text when asked)."""
        self._p_cseq, self._p_via = source._p_cseq, source._p_via
        self._p_from, self._m_from = source._p_from, source._m_from
        if to is None and not to_changed:
            self._p_to, self._m_to = source._p_to, source._m_to
        else:
            self._p_to = to

    def _changed(self, key: str) -> None:
        """A field with this key changed: the original bytes no longer say it, and what was
        parsed from the old text of that field is forgotten."""
        self.modified = True
        if key == "via":
            self._p_via = None
        elif key == "from":
            self._p_from = self._m_from = None
        elif key == "to":
            self._p_to = self._m_to = None
        elif key == "cseq":
            self._p_cseq = None
        elif key == "contact":
            self._p_contact = self._m_contact = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name as written, value) in order."""
        split = self._split
        if split is not None:
            return zip(split[0], map(str.strip, split[1], repeat(" \t")), strict=False)
        return map(_NAME_VALUE, self._all())

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
        split = self._split
        if split is not None:
            return split[1][keys.index(key)].strip(" \t")
        fields = self._fields
        assert fields is not None                 # one of the two is always there
        return fields[keys.index(key)][2]

    def _value(self, i: int) -> str:
        """The value of field `i`."""
        split = self._split
        if split is not None:
            return split[1][i].strip(" \t")
        return self._all()[i][2]

    def get_fields(self, name: str) -> list[str]:
        """Every field line with this name, unsplit."""
        return self._values_of(_KEYS[name])

    def get_all(self, name: str) -> list[str]:
        """Every value with this name, comma-separated values split (§7.3.1) where allowed."""
        key = _KEYS[name]
        if key not in self._keys:
            return []                   # the usual answer for Route, Record-Route, Require
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
        None): what iterating and keeping those would give."""
        if keys.isdisjoint(self._keys):
            return []
        split = self._split
        if split is not None:
            names, values, _raws = split
            return [(key, names[i], values[i].strip(" \t"), None)
                    for i, key in enumerate(self._keys) if key in keys]
        return [(f[0], f[1], f[2], None) for f in self._all() if f[0] in keys]

    def _values_of(self, key: str) -> list[str]:
        keys = self._keys
        n = keys.count(key)
        if n == 1:
            # One line (the common case for Via, Contact, Route).
            split = self._split
            if split is not None:
                return [split[1][keys.index(key)].strip(" \t")]
            return [self._all()[keys.index(key)][2]]
        if n == 0:
            return []
        return [self._value(i) for i, k in enumerate(keys) if k == key]

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        key = _KEYS[name]
        entry = (key, name, value, None)
        fields = self._all()
        if first:
            fields.insert(0, entry)
            self._keys.insert(0, key)
        else:
            fields.append(entry)
            self._keys.append(key)
        self._changed(key)

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
        self._changed(key)

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
        split = self._split
        if split is not None and split[2] is not None and value == value.strip(" \t"):
            # The split block stays: this line's value and raw text are replaced.
            split[1][i] = value
            split[2][i] = None
        else:
            fields = self._all()
            fields[i] = (key, fields[i][1], value, None)
        self._changed(key)

    def remove(self, name: str) -> int:
        """Drop every field with this name; returns how many went."""
        key = _KEYS[name]
        removed = self._keys.count(key)
        if removed:
            self._replace([f for f in self._all() if f[0] != key])
            self._changed(key)
        return removed

    def pop_first(self, name: str) -> str | None:
        """Remove the first field with this name and return its value (e.g. the top Via)."""
        key = _KEYS[name]
        if key not in self._keys:
            return None
        i = self._keys.index(key)
        fields = self._all()
        value = fields[i][2]
        del fields[i]
        del self._keys[i]
        self._changed(key)
        return value

    def copy(self) -> Headers:
        clone = Headers(list(self._all()), list(self._keys))
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
        """The fields, with their keys (the caller says what changed: `_changed`)."""
        self._fields = fields
        self._keys = list(map(_FIRST, fields))
