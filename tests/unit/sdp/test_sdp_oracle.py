"""The call path's SDP (sipmask.sdp.scan, behind EmbeddedBackend's `_SipmaskSdp`) against its
test oracle, the data model (parse → check_relayable / media_endpoints / is_on_hold →
rewrite_for_relay → stamp → to_bytes): the same endpoints, hold answers, bytes, o= versions
and refusals (400, 488, and the same reason), for the samples, the SDP bodies of the SIP
corpus, and generated and mutated bodies, as sequences on a call's legs."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

import pytest
import sdp_samples
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmask.media.embedded import _SipmaskSdp
from sipmask.sdp import scan
from sipmask.sdp.endpoints import MediaEndpoint
from sipmask.sdp.origin import OriginCounter
from sipmask.sdp.parser import parse
from sipmask.sdp.rewrite import check_relayable, is_on_hold, media_endpoints, relay_body

RELAY = "192.0.2.200"
RELAY6 = "2001:db8::200"

SIPP = (b"v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.2\r\ns=call from caller\r\n"
        b"c=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 16000 RTP/AVP 0 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
        b"a=sendrecv\r\n")
SAMPLES = {**sdp_samples.ALL, "sipp": SIPP}

CORPUS = Path(__file__).resolve().parents[2] / "corpus"


def _corpus_bodies() -> dict[str, bytes]:
    """The SDP body of every message in tests/corpus that carries one (RFC 4475 torture
    tests, the trunk capture), as received."""
    found = {}
    for path in sorted(CORPUS.rglob("*")):
        if path.suffix not in (".dat", ".sip"):
            continue
        data = path.read_bytes()
        end = data.find(b"\r\n\r\n")
        body = data[end + 4:] if end >= 0 else b""
        if body.startswith(b"v=0"):
            found[str(path.relative_to(CORPUS))] = body
    return found


CORPUS_BODIES = _corpus_bodies()

Step = tuple[bytes, str, str, int]   # body, leg key, relay address, ports given - needed
Outcome = tuple[object, ...]


class ModelPath:
    """The oracle: what `_SipmaskSdp` answers, on the data model, with one OriginCounter
    per leg kept as `_SipmaskSdp` keeps them (a new one when the relay address changes)."""

    def __init__(self, session_ids: Callable[[], int]) -> None:
        self.session_ids = session_ids
        self.origins: dict[str, OriginCounter] = {}

    def parse_endpoints(self, body: bytes) -> list[MediaEndpoint | None]:
        sd = parse(body)
        check_relayable(sd)
        return media_endpoints(sd)

    def is_hold(self, body: bytes) -> bool:
        return is_on_hold(parse(body))

    def rewrite(self, body: bytes, address: str, ports: list[int], leg_key: str) -> bytes:
        counter = self.origins.get(leg_key)
        if counter is None or counter.address != address:
            counter = self.origins[leg_key] = OriginCounter(address=address,
                                                            sess_id=self.session_ids())
        return relay_body(parse(body), address=address, ports=ports, counter=counter)


def _call(function: Callable[[], object]) -> Outcome:
    try:
        return ("ok", function())
    except Exception as error:   # the error itself is what is compared
        return ("error", type(error), str(error), getattr(error, "status", None))


@contextmanager
def _session_ids() -> Iterator[Callable[[], int]]:
    """Session ids from 1000001 up, on the call path and for the oracle alike."""
    ids = itertools.count(1000001)
    with patch("sipmask.media.embedded.new_session_id", lambda: next(ids)):
        yield lambda: next(ids)


def run(steps: list[Step], *, oracle: bool) -> list[Outcome]:
    """What EmbeddedBackend would see for each step: endpoints, hold, rewritten body."""
    outcomes: list[Outcome] = []
    with _session_ids() as ids:
        sdp: _SipmaskSdp | ModelPath = ModelPath(ids) if oracle else _SipmaskSdp()
        for body, leg_key, address, extra in steps:
            endpoints = _call(lambda body=body: sdp.parse_endpoints(body))
            outcomes.append(endpoints)
            outcomes.append(_call(lambda body=body: sdp.is_hold(body)))
            enabled = (len([e for e in endpoints[1] if e is not None])   # type: ignore[attr-defined]
                       if endpoints[0] == "ok" else 0)
            ports = [40000 + 2 * i for i in range(max(0, enabled + extra))]
            outcomes.append(_call(lambda body=body, address=address, ports=ports, key=leg_key:
                                  sdp.rewrite(body, address, ports, key)))
    return outcomes


def assert_same(steps: list[Step]) -> None:
    assert run(steps, oracle=False) == run(steps, oracle=True)


def test_the_oracle_sees_what_the_call_path_does() -> None:
    """Else the tests below would compare nothing: the oracle fails when the call path's
    answer is changed (a rewritten body one byte off, an endpoint moved)."""
    steps: list[Step] = [(sdp_samples.CARRIER, "c1:b", RELAY, 0)]
    same = run(steps, oracle=False)
    with patch.object(scan, "SESSION_NAME", "x"):
        assert run(steps, oracle=False) != same
    assert same == run(steps, oracle=True)


def test_samples_give_the_same_answers_and_bytes() -> None:
    for name, body in SAMPLES.items():
        for address in (RELAY, RELAY6):
            steps = [(body, "c1:b", address, 0), (body, "c1:b", address, 0)]
            out = run(steps, oracle=False)
            assert out == run(steps, oracle=True), name
            assert out[2][0] == "ok", name


@pytest.mark.parametrize("name", sorted(CORPUS_BODIES))
def test_corpus_bodies_give_the_same_answers_bytes_and_refusals(name: str) -> None:
    body = CORPUS_BODIES[name]
    assert_same([(body, "c1:a", RELAY, 0), (body, "c1:a", RELAY6, 0), (body, "c1:b", RELAY, 1)])


def test_the_corpus_has_sdp_bodies() -> None:
    assert len(CORPUS_BODIES) >= 10
    assert "trunk/invite_sdp.sip" in CORPUS_BODIES


def test_version_bumps_match_across_a_sequence() -> None:
    """Same body: same version; a changed body (hold, resume): version + 1 (RFC 3264 §8)."""
    order = ["carrier", "carrier", "hold", "hold", "carrier", "ipv6", "sipp", "sipp"]
    steps = [(SAMPLES[name], "c1:a", RELAY, 0) for name in order]
    assert_same(steps)
    versions = [out[1].split(b"\r\n")[1].split()[2] for out in run(steps, oracle=False)[2::3]]
    assert versions == [b"1000001", b"1000001", b"1000002", b"1000002", b"1000003",
                        b"1000004", b"1000005", b"1000005"]


def test_each_rule_on_a_small_body() -> None:
    """Hand-picked bodies for rules the generator reaches rarely."""
    media = "m=audio 5000 RTP/AVP 0\r\n"
    bodies = [
        SIPP.replace(b"c=IN IP4 127.0.0.2", b"c=IN  IP4 0.0.0.0 "),       # hold, odd blanks
        SIPP.replace(b"a=sendrecv", b"c=IN IP6\t::"),
        SIPP.replace(b"t=0 0", b"t=0 0\r\na=ice-lite").replace(b"127.0.0.2\r\nt", b"0.0.0.0\r\nt"),
        SIPP.replace(b"a=sendrecv", b"c=IN IP4 0.0.0.0").replace(b"t=0 0", b"t=0 0\r\na=ice-pwd:x"),
        SIPP.replace(b"t=0 0", b"a=sendonly\r\nt=0 0"),                 # session direction, order
        SIPP.replace(b"a=sendrecv", b"a=recvonly\r\na=sendonly\r\nb=AS:1"),  # first wins, order
        SIPP.replace(b"c=IN IP4 127.0.0.2\r\nt=0 0\r\n", b"") + b"c=IN IP4 198.51.100.1\r\n",
        SIPP + media.encode() + b"a=rtcp:5001\r\n" + media.replace("5000", "0").encode(),
    ]
    for body in bodies:
        scan.scan(body)
        assert_same([(body, "c1:b", RELAY, 0), (body, "c1:b", RELAY6, 0)])


def test_errors_are_the_full_paths() -> None:
    bodies = [b"", b"\r\n", b"v=1\r\n", b"v=0\r\ns=x\r\n", b"v=0\r\no=a b\r\n",
              SIPP.replace(b"c=IN IP4 127.0.0.2\r\n", b""),            # no c= (488)
              SIPP.replace(b"c=IN", b"c=ATM"),                          # nettype (488)
              SIPP.replace(b"16000 ", b"16000/2 "),                     # layered (488)
              SIPP.replace(b"16000 ", b"65536 "), SIPP.replace(b"a=fmtp", b"a\x00fmtp"),
              SIPP.replace(b"\r\nt=", b"\rt=")]
    for body in bodies:
        for extra in (0, 1, -1):
            assert_same([(body, "c1:b", RELAY, extra)])


# Lines that exercise each rule: direction, hold addresses, ICE, a=rtcp, BUNDLE, ports,
# odd spacing, unmodelled kinds; then malformed lines the parser refuses.
_VALID = [
    "a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv", "a=SENDONLY", "a=Inactive",
    "a=sendonly:", "a=inactive:x", "c=IN IP4 0.0.0.0", "c=IN IP6 ::", "c=IN IP4 198.51.100.1",
    "c=IN  IP4\t198.51.100.2 ", "c=IN IP4 224.2.1.1/127/3", "c=IN IP4 0.0.0.0/127",
    "c=IN  IP4 0.0.0.0 ", "c=IN IP6\t::", "c=IN IP6 2001:db8::9", "c=ATM NSAP 47.0091",
    "a=ice-lite", "a=ICE-UFRAG:x", "a=candidate:1 1 UDP 1 198.51.100.1 5000 typ host",
    "a=ice-pwd:y", "a=rtcp:5001", "a=RTCP:5001 IN IP4 198.51.100.1", "a=rtcp",
    "a=group:BUNDLE 0 1", "a=group:bundle 0", "a=group:LS 0 1", "a=group", "a=group:",
    "a=mid:0", "a=ptime:20", "a=rtcp-mux", "a=X-nat:0", "a=tool:phone", "a=ssrc:1 cname:x@y",
    "a=msid:a b", "a=crypto:1 AES x", "a=:x", "b=AS:64", "b=TIAS:", "t=0 0", "t=1 2",
    "r=7d 1h 0 25h", "z=0 0", "k=prompt", "i=info", "u=http://x", "e=a@b", "p=+1",
    "y=unknown", "", "a=T38FaxVersion:0", "a=rtpmap:0 PCMU/8000", "a=fmtp:101 0-15",
    "a=label:\udcff", "a=\u00e9t\u00e9", "m=audio 0 RTP/AVP 0", "m=audio 5000 RTP/AVP 0 8",
    "m=audio 5002/1 RTP/AVP 0", "m=video 5004/2 RTP/AVP 31", "m=audio 0/2 RTP/AVP 0",
    "m=audio 00080 RTP/AVP 0", "m=audio 5006 RTP/AVP", "m=image 5010 udptl t38",
]
_BAD = [
    "a=", "a", "x", "=x", "b=:5", "b=AS", "c=IN IP4", "v=0", "s=again",
    "o=- 1 1 IN IP4 198.51.100.1", "o=- 1 1 ATM NSAP 47.0091", "m=audio 65536 RTP/AVP 0",
    "m=audio 5008", "m=audio x RTP/AVP 0", "m=audio \uff15 RTP/AVP 0", "a=sendrecv\x00",
    "c=IN IP4 198.51.100.3\r",
]
_LINES = st.sampled_from(_VALID) | st.sampled_from(_BAD)

_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A sample or a body built from _LINES, then mutated: lines dropped, repeated, moved,
    inserted from _LINES or random text, and line ends varied."""
    if draw(st.booleans()):
        base = draw(st.sampled_from(sorted(SAMPLES)))
        lines = SAMPLES[base].decode("utf-8", "surrogateescape").split("\r\n")[:-1]
    else:
        lines = ["v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-"]
        lines += draw(st.lists(st.sampled_from(_VALID), max_size=8))
        for _ in range(draw(st.integers(0, 3))):
            lines.append(draw(st.sampled_from(["m=audio 5000 RTP/AVP 0", "m=audio 0 RTP/AVP 0",
                                               "m=video 6000 RTP/AVP 31"])))
            lines += draw(st.lists(st.sampled_from(_VALID), max_size=6))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(lines)))
        action = draw(st.sampled_from(["drop", "repeat", "move", "insert", "text"]))
        if action == "insert":
            lines.insert(at, draw(_LINES))
        elif action == "text":
            lines.insert(at, draw(st.sampled_from("abcimtx")) + "=" + draw(_TEXT))
        elif lines and at < len(lines):
            line = lines.pop(at) if action != "repeat" else lines[at]
            if action != "drop":
                lines.insert(draw(st.integers(0, len(lines))), line)
    end = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    tail = draw(st.sampled_from([end, "", end + end]))
    return (end.join(lines) + tail).encode("utf-8", "surrogateescape")


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(mutated(), st.sampled_from(["c1:a", "c1:b"]),
                          st.sampled_from([RELAY, RELAY, RELAY6]),
                          st.sampled_from([0, 0, 0, 1, -1])), min_size=1, max_size=4))
def test_mutated_bodies_give_the_same_answers_bytes_and_errors(steps: list[Step]) -> None:
    assert_same(steps)


def test_the_call_path_never_loads_the_oracle() -> None:
    """sipmask serve's modules and a call's SDP work load no part of the model: it is test
    code, kept beside the call path as its oracle (sipmask/sdp/__init__.py)."""
    script = (
        "import sys\n"
        "import sipmask.cli, sipmask.server, sipmask.media.rtpengine as r\n"
        "from sipmask.media.embedded import sipmask_sdp\n"
        f"body = {sdp_samples.CARRIER!r}\n"
        "sdp = sipmask_sdp()\n"
        "sdp.parse_endpoints(body); sdp.is_hold(body)\n"
        "sdp.rewrite(body, '192.0.2.200', [40000], 'c1:b')\n"
        "r._check(body); r._sdp_is_hold(body); r.scrub_identity(body)\n"
        "print(sorted(m for m in sys.modules if m.startswith('sipmask.sdp')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    loaded = ast.literal_eval(done.stdout.strip())
    assert "sipmask.sdp.scan" in loaded
    assert not {"sipmask.sdp.model", "sipmask.sdp.parser", "sipmask.sdp.rewrite"} & set(loaded)
