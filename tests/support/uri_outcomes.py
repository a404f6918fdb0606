"""URI, name-addr and Via texts to parse, and what a parse of one comes to, shared by the
tests that compare sipmask/sip/uri.py's parser paths (tests/unit/sip/test_uri_fast.py: fast
patterns against the full parsers; test_uri_speed.py: remembered parses against the code
before the tables).

CORPUS_TEXTS: the URIs of test_uri, every From/To/Contact/Route/Via value and Request-URI
of the RFC 4475 messages and the trunk capture, hand-picked odd shapes (tel:, user=phone,
IPv6, escapes, quoted and flag parameters, LWS) and seeded one-character mutations of all of
those. FRAGMENTS: pieces hypothesis joins into generated texts. `outcome`: everything a
caller can observe of one parse.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from sipmask.errors import ParseError
from sipmask.sip.headers import split_commas
from sipmask.sip.uri import NameAddr, SipUri, Via
from tests.support.paths import CORPUS


def corpus_values() -> list[str]:
    """Header values (comma-split where a list is allowed) and Request-URIs of the corpus."""
    wanted = {"f", "from", "t", "to", "m", "contact", "v", "via", "route", "record-route"}
    out: list[str] = []
    for path in sorted(CORPUS.glob("rfc4475/*/*.dat")) + sorted(CORPUS.glob("trunk/*.sip")):
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
        lines = re.split(r"\r?\n", head)
        parts = lines[0].split(" ")
        if len(parts) >= 3 and not parts[0].startswith("SIP/"):
            out.append(parts[1])
        unfolded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip()
            else:
                unfolded.append(line)
        for line in unfolded:
            name, colon, value = line.partition(":")
            if colon and name.strip().lower() in wanted:
                out.append(value.strip())
                out.extend(split_commas(value))
    return out


HAND_PICKED = [
    # test_uri's round trips
    "sip:13800000001@10.0.0.1", "sips:13800000001@example.com:5061;transport=tls",
    "SIP:Alice@Example.COM;Transport=UDP", "sip:+8613800000001@10.1.2.3:5060;user=phone",
    "sip:+8613800000001;npdi;rn=+8613900000002@10.1.2.3;user=phone",
    "sip:alice:secret@example.com", "sip:alice:@example.com", "sip:%61lice@example.com",
    "sip:example.com", "sip:[2001:db8::10]",
    "sip:13800000001@[2001:db8::10]:5070;maddr=[2001:db8::1]",
    "sip:alice@example.com;lr;ttl=1", "sip:alice@example.com?subject=project%20x&priority=urgent",
    "sip:*21#@10.0.0.1", "tel:+86-138-0000-0001", "tel:+8613800000001;npdi;rn=+8613900000002",
    "tel:7042;phone-context=example.com", "urn:service:sos", "mailto:alice@example.com",
    # name-addr shapes
    '"13800000001" <sip:+8613800000001@10.1.2.3:5060;user=phone>;tag=as6f1c2b3a',
    "<sip:700100000000001@10.20.30.40:5060;user=phone>",
    "<sip:+8613800000001@10.1.2.3:5060;transport=udp>",
    '"张三 \\"Boss\\" \\\\ x" <sip:13800000001@10.0.0.1>;tag=abc', '"a <b>, c" <sip:x@y>',
    "Bob Smith <sip:b@h>", "caller<sip:caller@example.com>;tag=323", "张三 <sip:a@b>",
    "\xa0Bob <sip:a@b>", "Bob\xa0 <sip:a@b>", " <sip:a@b>", "<sip:a@b> ", "<sip:a@b>;tag=1 ",
    "sip:13800000001@10.0.0.1;user=phone;tag=x1", "<sip:13800000001@10.0.0.1;user=phone>;tag=x1",
    "<sip:b@h>", "<sip:b@h>;tag=old", "<tel:+8613800000001>;tag=t", "tel:+8613800000001;tag=t",
    "<sip:a@b>;tagx=1;tag=2", "<sip:a@b>;tag;tag=1", "<sip:a@b>;tag=1;tag=2",
    "<sip:a@b>;ta;tag=3", "SIP/2.0/UDP h;branchx=1;branch=z9hG4bK2", "SIP/2.0/UDP h;rport;branch=z",
    "<sip:a@b;users=x;user=phone>", "<sip:a@b;user;user=phone>",
    "<sip:a@b>;TAG=X;tag=y", "<sip:a@b>;tag", "<sip:a@b>;tag=", "<sip:a@b>;;tag=1", "<sip:a@b>;",
    "<sip:a@b>;tag = 1", "<sip:a@b> ;tag=1", "<sip:a@b>;p=\"q;r\"", "<sip:a@b>;p=\"unterminated",
    "<sip:a@b>;p=a<b", "<sip:a@b>;+sip.instance=\"<urn:uuid:1>\"", "<sip:a@b>;expires=0;q=0.5",
    "<sip:a@b;lr>", "<sip:a@b;lr=>", "<sip:a@b;=x>", "<sip:a@b;x@y=1>", "<sip:host;x=a@b>",
    "<sip:a;b=c@h>", "<sip:a?b@h>", "<sip:a@h?x=y>", "<sip:a:pw@h>", "<sip:@h>", "<sip:a@>",
    "<sip:a@h:>", "<sip:a@h:0>", "<sip:a@h:65535>", "<sip:a@h:65536>", "<sip:a@h:99999>",
    "<sip:a@h:123456>", "<sip:a@[::1]:5060>", "<sip:a@[::1>", "<sip:a@::1>", "<sip:a@h_1.x>",
    "<sips:a@h>", "<SIPS:a@h>", "<sIp:a@h>", "< sip:a@b>", "<sip:a@b >", "<>", "<sip:a@b",
    '"Bob <sip:a@b>', '"Bob"<sip:a@b>', '"Bob"  \t<sip:a@b>', '"Bob" sip:a@b', '"" <sip:a@b>',
    "Bob, Smith <sip:a@b>", "Bob\t\tSmith <sip:a@b>", "*", "sip:a@b,c", "sip:a@b?x",
    "sip:a@b;tag=<x>", "sip:a@b;p=\"1\"", "sip:a@b ;tag=1", "sip:%2B86%20138@example.com",
    "sip:null-%00-null@h", "sip:user;par=u%40example.net@example.com", "sip:a@b;lr;tag=1",
    "<sip:a@b>junk", "<sip:a@b>,<sip:c@d>", "<urn:service:sos>", "<mailto:a@b>",
    "Sip:a@b", "sip:", "sip:a@", "sip:@b", ":a@b", "sip:a@b:5060:5060", "sip:a b@c",
    "sip:a@b\x00", "<sip:a@b>;x=\x00", "<sip:a@b>;x=é", "<sip:é@b>", "<sip:a@b;é=1>",
    # Via shapes
    "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK-524287-1---5c3a8e6f0c1d2b3a;rport",
    "SIP/2.0/UDP 10.1.2.3;branch=z9hG4bK1;rport=5062;received=10.9.9.9",
    "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKx;maddr=[2001:db8::2]",
    "SIP/2.0/TCP host.example.com;branch=z9hG4bKx;ttl=1", "sip/2.0/udp h;branch=z9hG4bKx",
    "SIP/3.0/UDP h;branch=z9hG4bKx", "SIP / 2.0 / UDP h;branch=z9hG4bKx",
    "SIP/2.0/UDP  h;branch=z9hG4bKx", "SIP/2.0/UDP\th;branch=z9hG4bKx",
    "SIP/2.0/UDP h : 5060;branch=z9hG4bKx", "SIP/2.0/UDP h;branch=z9hG4bKx ; rport",
    "SIP/2.0/UDP h;branch=\"z9hG4bK;x\"", "SIP/2.0/UDP h:0;branch=z9hG4bKx",
    "SIP/2.0/UDP h:70000;branch=z9hG4bKx", "SIP/2.0/UDP h;;branch=z9hG4bKx",
    "SIP/2.0/UDP h;branch", "SIP/2.0/UDP h;branch=", "SIP/2.0/UDP h;=x", "SIP/2.0/UDP",
    "SIP/2.0 h;branch=x", " SIP/2.0/UDP h", "SIP/2.0/UDP h ", "SIP/2.0/UDP h;x=<a>",
    "SIP/2.0/UDP [::1;branch=x", "SIP/2.0/UDP h;received=1.2.3.4;rport=1",
]

BASE = HAND_PICKED + corpus_values()
MUTATION_CHARS = ";=@:<>\"' \t,?\\%[]/.a0\x00é"


def mutations(texts: list[str], per_text: int, seed: int) -> list[str]:
    """Seeded one-character deletions, insertions and replacements of each text."""
    rng = random.Random(seed)
    out: list[str] = []
    for text in texts:
        for _ in range(per_text):
            i = rng.randrange(len(text) + 1)
            kind = rng.randrange(3)
            c = rng.choice(MUTATION_CHARS)
            if kind == 0 and i < len(text):
                out.append(text[:i] + text[i + 1:])
            elif kind == 1:
                out.append(text[:i] + c + text[i:])
            else:
                out.append(text[:i] + c + text[i + 1:])
    return out


CORPUS_TEXTS = list(dict.fromkeys(BASE + mutations(BASE, 12, 4475)))


def outcome(parse: Callable[[str], object], text: str) -> tuple[object, ...]:
    """Everything a caller can observe of parsing `text`: the error, or the value's type,
    str (before and after the parameters are split), repr, and the accessors."""
    try:
        value = parse(text)
    except ParseError as e:
        return ("error", type(e).__name__, str(e), e.status)
    # Parameter lookups first: on a fast value they read the unsplit text.
    lookups: list[object] = []
    if isinstance(value, SipUri | Via):
        lookups += [value.param(name) for name in ("user", "Transport", "lr", "maddr", "x")]
    if isinstance(value, Via):
        lookups += [value.branch, value.rport, value.received]
    if isinstance(value, NameAddr):
        lookups.append(value.tag)
    before = str(value)
    # A with_tag copy made before anything else is read keeps a fast value's laziness.
    tagged = str(value.with_tag("t0")) if isinstance(value, NameAddr) else None
    seen: list[object] = [type(value).__name__, lookups, before, tagged, repr(value),
                          str(value)]
    reads: list[Callable[[], object]] = []
    if isinstance(value, SipUri):
        uri = value
        reads += [lambda: uri.params, lambda: uri.user_unescaped, lambda: uri.phone_number,
                  lambda: uri.user_params, lambda: uri.header_pairs,
                  lambda: uri.param("user"), lambda: uri.param("transport")]
    if isinstance(value, NameAddr):
        addr = value
        reads += [lambda: addr.tag, lambda: addr.display_name, lambda: addr.params,
                  lambda: type(addr.uri).__name__, lambda: str(addr.with_tag("t1")),
                  lambda: str(addr.uri), lambda: str(addr.without_tag()),
                  lambda: addr.without_tag().params, lambda: addr.with_tag("t-2").params,
                  lambda: str(addr.with_tag("t3").without_tag()),
                  lambda: addr.with_tag("t4").tag, lambda: str(addr.with_tag(""))]
    if isinstance(value, Via):
        via = value
        reads += [lambda: via.branch, lambda: via.rport, lambda: via.received,
                  lambda: via.params, lambda: via.default_port,
                  lambda: str(via.stamped(("10.0.0.9", 5070))),
                  lambda: via.stamped(("10.0.0.9", 5070)).params,
                  lambda: str(via.stamped((via.host.strip("[]"), 5070))),
                  lambda: via.stamped(("10.0.0.9", 5070)).stamped(("10.0.0.9", 5070)) ==
                  via.stamped(("10.0.0.9", 5070)),
                  lambda: str(via.with_params(rport="1")),
                  lambda: via.response_target(("10.0.0.9", 5070))]
    for read in reads:
        try:
            seen.append(read())
        except (ParseError, ValueError) as e:
            seen.append(("error", type(e).__name__, str(e)))
    return tuple(seen)


FRAGMENTS = ["sip:", "sips:", "SIP:", "tel:", "alice", "+8613800000001", "%2B", "@", "@@",
             "example.com", "10.0.0.1", "[::1]", "[2001:db8::1", ":5060", ":0", ":65536", ":",
             ";tag=abc", ";TAG=x", ";lr", ";user=phone", ";rport", ";branch=z9hG4bK1", ";",
             "=", "<", ">", '"Bob"', '"B\\"b"', "Bob ", "张", " ", "\t", "?h=v", "?", ",",
             '"', "\\", "SIP/2.0/UDP ", "SIP/2.0/TCP", "/", "\x00", "\xa0", "*"]
