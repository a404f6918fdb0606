"""Round-trip properties of the SIP message layer (DESIGN.md §5: parse and serialize are
symmetric). Generated messages — random header order, name case, compact forms, LWS before
the colon, folding, UTF-8 values, bodies with and without Content-Length — come back from
`parse_message(...).to_bytes()` byte for byte; a change to one header leaves every other
header's text as it was; generated URIs print back as written."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sip.parser import StreamFramer, parse_message
from sipmask.sip.uri import NameAddr, parse_uri

# Per test, not a global profile: other modules' property tests keep their own settings.
SETTINGS = settings(deadline=None, max_examples=80)

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
digits = st.integers(min_value=0, max_value=2**31 - 1)


def cases(name: str) -> st.SearchStrategy[str]:
    """The same header name in a random letter case."""
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda ups: "".join(c.upper() if u else c.lower() for c, u in zip(name, ups,
                                                                          strict=True)))


@st.composite
def hostnames(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["name", "ipv4", "ipv6"]))
    if kind == "ipv4":
        return ".".join(str(draw(st.integers(0, 255))) for _ in range(4))
    if kind == "ipv6":
        groups = draw(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=8))
        text = ":".join(f"{g:x}" for g in groups)
        return f"[{text if len(groups) == 8 else text + '::1'}]"
    labels = draw(st.lists(st.text(string.ascii_letters + string.digits + "-", min_size=1,
                                   max_size=8), min_size=1, max_size=4))
    return ".".join(labels)


USER_CHARS = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/"
PASSWORD_CHARS = string.ascii_letters + string.digits + "-_.!~*'()&=+$,"
PARAM_CHARS = string.ascii_letters + string.digits + "-_.!~*'()[]/:&+$"
HEADER_CHARS = string.ascii_letters + string.digits + "-_.!~*'()[]/?:+$"


def escaped(alphabet: str) -> st.SearchStrategy[str]:
    """Text from `alphabet` with %XX escapes mixed in (RFC 3261 §25.1 escaped)."""
    piece = st.one_of(st.text(alphabet, min_size=1, max_size=6),
                      st.integers(0, 255).map(lambda b: f"%{b:02X}"))
    return st.lists(piece, min_size=1, max_size=4).map("".join)


@st.composite
def sip_uris(draw: st.DrawFn, with_headers: bool = True) -> str:
    out = draw(st.sampled_from(["sip", "sips", "SIP", "Sip"])) + ":"
    if draw(st.booleans()):
        out += draw(escaped(USER_CHARS))
        if draw(st.booleans()):
            out += ":" + draw(st.text(PASSWORD_CHARS, max_size=6))
        out += "@"
    out += draw(hostnames())
    if draw(st.booleans()):
        out += f":{draw(st.integers(1, 65535))}"
    for _ in range(draw(st.integers(0, 3))):
        out += ";" + draw(escaped(PARAM_CHARS))
        if draw(st.booleans()):
            out += "=" + draw(escaped(PARAM_CHARS))
    if with_headers and draw(st.booleans()):
        out += "?" + "&".join(f"{draw(escaped(HEADER_CHARS))}={draw(escaped(HEADER_CHARS))}"
                              for _ in range(draw(st.integers(1, 2))))
    return out


@st.composite
def tel_uris(draw: st.DrawFn) -> str:
    number = "+" + draw(st.text(string.digits + "-.()", min_size=1, max_size=15)) + "1"
    params = "".join(";" + draw(tokens) + draw(st.sampled_from(["", "=x", "=+86138"]))
                     for _ in range(draw(st.integers(0, 2))))
    return draw(st.sampled_from(["tel", "TEL"])) + ":" + number + params


@SETTINGS
@given(st.one_of(sip_uris(), tel_uris()))
def test_str_of_a_parsed_uri_is_its_text(text: str) -> None:
    assert str(parse_uri(text)) == text


# -- messages ---------------------------------------------------------------------------------

# Printable UTF-8 text without CR/LF, starting and ending with a non-space (values are read
# with outer whitespace removed).
value_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), min_size=1,
    max_size=20,
).flatmap(lambda core: st.text(" \t" + string.ascii_letters + "张三:;,<>\"", max_size=8).map(
    lambda middle: core + middle + core))


@st.composite
def display_names(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["none", "token", "quoted"]))
    if kind == "token":
        return draw(tokens) + " "
    if kind == "quoted":
        inner = draw(st.text(st.characters(blacklist_categories=("Cc", "Cs"),
                                           blacklist_characters='"\\'), max_size=10))
        if draw(st.booleans()):
            inner += '\\"' + draw(st.sampled_from(["", "\\\\", "张三"]))
        return f'"{inner}"' + draw(st.sampled_from(["", " "]))
    return ""


@st.composite
def name_addrs(draw: st.DrawFn, tag: bool) -> str:
    value = draw(display_names()) + "<" + draw(sip_uris(with_headers=False)) + ">"
    if tag:
        value += ";tag=" + draw(tokens)
    return value


@dataclass
class Line:
    key: str
    text: str          # the header line(s) as sent, CRLF inside when folded
    value: str         # the value as the parser reads it


@st.composite
def header_lines(draw: st.DrawFn, key: str, name_forms: list[str], value: str) -> Line:
    name = draw(st.sampled_from(name_forms).flatmap(cases))
    before = draw(st.sampled_from(["", "", " ", "\t "]))
    after = draw(st.sampled_from(["", " ", " ", "  "]))
    body = value
    # §7.3.1 folding at one of the value's single spaces (one with no SP/HT either side:
    # the parser reads the whitespace around a fold as one SP).
    spaces = [i for i, c in enumerate(value) if c == " " and 0 < i < len(value) - 1
              and value[i - 1] not in " \t" and value[i + 1] not in " \t"]
    if spaces and draw(st.booleans()):
        at = draw(st.sampled_from(spaces))
        body = value[:at] + "\r\n" + draw(st.sampled_from([" ", "\t", "   "])) + value[at + 1:]
    return Line(key, f"{name}{before}:{after}{body}", value)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[Line], bytes]:
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "MESSAGE", "INFO"]))
    required = [
        draw(header_lines("via", ["Via", "v"],
                          f"SIP/2.0/UDP {draw(hostnames())};branch=z9hG4bK{draw(tokens)}")),
        draw(header_lines("from", ["From", "f"], draw(name_addrs(tag=True)))),
        draw(header_lines("to", ["To", "t"], draw(name_addrs(tag=draw(st.booleans()))))),
        draw(header_lines("call-id", ["Call-ID", "i"], draw(tokens) + "@" + draw(tokens))),
        draw(header_lines("cseq", ["CSeq"], f"{draw(digits)} {method}")),
        draw(header_lines("max-forwards", ["Max-Forwards"], str(draw(st.integers(0, 255))))),
    ]
    extra = []
    for _ in range(draw(st.integers(0, 5))):
        name = "X-" + draw(tokens)
        extra.append(draw(header_lines(name.lower(), [name], draw(value_text))))
    extra += [draw(header_lines("contact", ["Contact", "m"], draw(name_addrs(tag=False))))
              for _ in range(draw(st.integers(0, 1)))]
    extra += [draw(header_lines("subject", ["Subject", "s"], draw(value_text)))
              for _ in range(draw(st.integers(0, 1)))]
    lines = draw(st.permutations(required + extra))
    body = draw(st.binary(max_size=200))
    if body or draw(st.booleans()):
        lines.append(draw(header_lines("content-length", ["Content-Length", "l"],
                                       str(len(body)))))
    if draw(st.booleans()):
        start = f"{method} {draw(sip_uris(with_headers=False))} SIP/2.0"
    else:
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {draw(value_text)}"
    head = start + "\r\n" + "".join(line.text + "\r\n" for line in lines) + "\r\n"
    return head.encode(), lines, body


@SETTINGS
@given(messages())
def test_parse_then_to_bytes_is_identity(generated: tuple[bytes, list[Line], bytes]) -> None:
    head, lines, body = generated
    data = head + body
    msg = parse_message(data)
    assert msg.to_bytes() == data
    assert msg.body == body
    assert msg.headers.keys() == [line.key for line in lines]
    assert [v for _n, v in msg.headers] == [line.value for line in lines]


REQUIRED = frozenset({"via", "from", "to", "call-id", "cseq", "content-length"})


@SETTINGS
@given(messages(), st.data())
def test_a_change_keeps_every_other_header_text(
        generated: tuple[bytes, list[Line], bytes], data: st.DataObject) -> None:
    head, lines, body = generated
    msg = parse_message(head + body)
    # The five headers every message needs (§8.1.1) stay, so the result still parses.
    changeable = [i for i, line in enumerate(lines) if line.key not in REQUIRED]
    action = data.draw(st.sampled_from(["set", "remove", "add"]))
    target = lines[data.draw(st.sampled_from(changeable))]
    new_value = "42" if target.key == "max-forwards" else "<sip:changed@127.0.0.1>"
    if action == "set":
        msg.headers.set(target.key, new_value)
        kept = [line for line in lines if line.key != target.key]
    elif action == "remove":
        msg.headers.remove(target.key)
        kept = [line for line in lines if line.key != target.key]
    else:
        msg.headers.add("X-Added", "1")
        kept = lines
    out = msg.to_bytes()
    assert out.endswith(b"\r\n\r\n" + body)
    position = 0
    for line in kept:
        # Untouched lines come out as they came in, in their order.
        found = out.find(b"\r\n" + line.text.encode() + b"\r\n", position)
        assert found >= 0, line.text
        position = found + 1
    again = parse_message(out)
    assert again.body == body
    if action == "set":
        assert again.headers.get(target.key) == new_value
    elif action == "remove":
        assert target.key not in again.headers


# -- hostile input: only ParseError ever leaves the parser ----------------------------------

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
SEEDS = sorted(p.read_bytes() for p in CORPUS.rglob("*") if p.suffix in (".dat", ".sip"))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus message with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 34, 44, 58, 59, 60, 62, 64, 0xFF]))
        if op == "replace" and data:
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif data:
            del data[at]
    return bytes(data)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated()))
def test_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ParseError:
        return
    # Whatever parsed can be written again, and the typed reads the transaction and dialog
    # layers make on every message cannot fail after the parser said yes.
    assert parse_message(msg.to_bytes()).body == msg.body
    for _name, value in msg.headers:
        assert "\r" not in value and "\n" not in value
    assert msg.from_ and msg.to and msg.vias and msg.cseq and msg.call_id
    for contact in msg.headers.get_all("contact"):
        assert contact == "*" or NameAddr.parse(contact)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated()), st.integers(1, 64))
def test_framer_raises_only_parse_error(data: bytes, chunk: int) -> None:
    framer = StreamFramer(max_bytes=2048)
    try:
        for i in range(0, len(data), chunk):
            for message in framer.feed(data[i:i + chunk]):
                assert len(message) <= 2048
    except ParseError:
        return


# -- parsing depends on the bytes given, never on the messages parsed before --------------

def _outcome(data: bytes, stream: bool) -> tuple[object, ...]:
    try:
        msg = parse_message(data, stream=stream)
    except ParseError as exc:
        return ("refused", type(exc).__name__, exc.status, str(exc))
    return (type(msg).__name__, msg.start_line(), msg.headers.keys(), msg.headers.fields(),
            msg.body, msg.raw, msg.to_bytes())


@st.composite
def edited(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A generated message and a copy with a few characters of its header block edited."""
    head, _lines, body = draw(messages())
    text = bytearray(head)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(head) - 5))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        char = draw(st.sampled_from(b' \t"<>;=,:@\\*/?%[]aZ09.-\x0b\x00\r\n\xc3'))
        if op == "replace":
            text[at] = char
        elif op == "insert":
            text.insert(at, char)
        else:
            del text[at]
    return head + body, bytes(text) + body


@SETTINGS
@given(edited(), st.booleans())
def test_parsing_does_not_depend_on_what_came_before(pair: tuple[bytes, bytes],
                                                     stream: bool) -> None:
    template, data = pair
    alone = _outcome(data, stream)
    for _ in range(3):                            # a peer's earlier messages, same layout
        _outcome(template, stream)
    assert _outcome(data, stream) == alone
