"""Parse + serialize throughput of the SIP message layer, on one core.

The message is a trunk INVITE with SDP (tests/corpus/trunk/invite_sdp.sip, ~1 kB, 15
headers). 1,000 variants differing in Via branch, From tag and Call-ID are cycled so
nothing can be served from a cache of whole values.

Six figures, each the median (and best) of several interleaved timed runs in this process:
  parse + to_bytes (unchanged)        what a relay of an untouched message costs
  parse + set Max-Forwards + to_bytes what a forwarded request costs
  parse + typed reads + to_bytes      Call-ID, CSeq, top Via, From and To read as the
                                      transaction and dialog layers do, then relayed
  ... + tags and branch               the same, and the From and To tags and the Via
                                      branch looked up (what server_key and the dialog
                                      ids read); the URIs' own parameters stay unread
  baseline (dict)                     a straightforward parser measured in the same run:
                                      decode, split lines, unfold, a dict of lists per
                                      header name, required headers checked, serialize by
                                      joining "Name: value" lines; no syntax checks at all
  baseline (email)                    the stdlib email.parser on the header block
and the ratios to both. sipmask also checks the syntax of the start line, From, To, Via,
Contact, CSeq, Max-Forwards and Content-Length (RFC 4475 §3.1.2); the dict baseline does not.

The parser keeps no state between messages (sipmask/sip/parser.py), so every message takes
the same path whatever came before it; the warm-up only warms the interpreter and `re`'s
cache of compiled patterns. Issue 3's target is 100,000 msg/s for the first sipmask line.

Run: python3 bench/parse.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipmask.sip.parser import parse_message  # noqa: E402

SAMPLE = ROOT / "tests" / "corpus" / "trunk" / "invite_sdp.sip"


def variants(template: bytes, n: int) -> list[bytes]:
    """`n` copies of the message with a distinct branch, tag and Call-ID each (same lengths,
    so Content-Length stays right)."""
    out = []
    for i in range(n):
        tag = f"{i:06d}".encode()
        out.append(template.replace(b"5c3a8e6f0c1d2b3a", b"5c3a8e6f0c" + tag)
                   .replace(b"tag=as6f1c2b3a", b"tag=as6f" + tag)
                   .replace(b"3c26700857e0-", b"3c2670" + tag + b"-"))
    return out


def baseline_parse(data: bytes) -> tuple[str, dict[str, list[str]], list[tuple[str, str]],
                                         bytes]:
    """A plain parser: the kind of code one writes first."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8").split("\r\n")
    start = lines[0]
    ordered: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and ordered:
            name, value = ordered[-1]
            ordered[-1] = (name, value + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        ordered.append((name.strip(), value.strip()))
    by_name: dict[str, list[str]] = {}
    for name, value in ordered:
        by_name.setdefault(name.lower(), []).append(value)
    for required in ("via", "from", "to", "call-id", "cseq"):
        if required not in by_name:
            raise ValueError(required)
    length = int(by_name.get("content-length", ["0"])[0])
    return start, by_name, ordered, body[:length]


def baseline_serialize(start: str, ordered: list[tuple[str, str]], body: bytes) -> bytes:
    text = start + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in ordered) + "\r\n"
    return text.encode("utf-8") + body


_EMAIL = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def run_email_baseline(data: bytes) -> bytes:
    """The stdlib way (what http.client does for HTTP headers): email.parser on the header
    block after the start line, serialized back with as_bytes()."""
    head, _, body = data.partition(b"\r\n\r\n")
    start, _, fields = head.partition(b"\r\n")
    message = _EMAIL.parsebytes(fields + b"\r\n\r\n")
    for required in ("via", "from", "to", "call-id", "cseq"):
        if message[required] is None:
            raise ValueError(required)
    length = int(message.get("content-length", "0"))
    out = start + b"\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in message.items())
    return out + b"\r\n" + body[:length]


def run_baseline(data: bytes) -> bytes:
    start, _by_name, ordered, body = baseline_parse(data)
    return baseline_serialize(start, ordered, body)


def run_unchanged(data: bytes) -> bytes:
    return parse_message(data).to_bytes()


def run_modified(data: bytes) -> bytes:
    msg = parse_message(data)
    msg.headers.set("Max-Forwards", "68")
    return msg.to_bytes()


def run_read(data: bytes) -> bytes:
    msg = parse_message(data)
    _ = msg.call_id, msg.cseq, msg.top_via, msg.from_, msg.to
    return msg.to_bytes()


def run_read_tags(data: bytes) -> bytes:
    msg = parse_message(data)
    _ = msg.call_id, msg.cseq.number, msg.top_via.branch, msg.from_.tag, msg.to.tag
    return msg.to_bytes()


def measure(fns: list[Callable[[bytes], bytes]], messages: list[bytes], seconds: float,
            rounds: int = 7) -> list[tuple[float, float]]:
    """Messages per second for each function, (median, best) over `rounds` rounds, each
    round timing every function once for about `seconds`. Interleaving the functions within
    a round spreads this VM's bursts of noise over all of them alike."""
    for fn in fns:
        for data in messages[:200]:
            fn(data)                                  # warm-up
    rates: list[list[float]] = [[] for _ in fns]
    n = len(messages)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            done = 0
            started = time.perf_counter()
            deadline = started + seconds
            while True:
                for data in messages:
                    fn(data)
                done += n
                now = time.perf_counter()
                if now >= deadline:
                    break
            rates[i].append(done / (now - started))
    return [(statistics.median(r), max(r)) for r in rates]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--seconds", type=float, default=0.5, help="length of each timed run")
    args.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    opts = args.parse_args()
    template = SAMPLE.read_bytes()
    messages = variants(template, 1000)
    for data in messages[:3]:
        assert run_unchanged(data) == data
        assert parse_message(run_modified(data)).headers.get("max-forwards") == "68"
        assert run_read(data) == data
        assert run_read_tags(data) == data
        assert run_baseline(data) == data                       # same bytes, fair comparison
        assert run_email_baseline(data) == data

    load = os.getloadavg()
    (stdlib, _), (base, base_best), (unchanged, best), (modified, _), (read, read_best), \
        (tags, tags_best) = measure([run_email_baseline, run_baseline, run_unchanged,
                                     run_modified, run_read, run_read_tags], messages,
                                    opts.seconds, opts.rounds)
    headers = template.count(b"\r\n", 0, template.index(b"\r\n\r\n"))
    print(f"message: {SAMPLE.relative_to(ROOT)} ({len(template)} bytes, {headers} headers); "
          f"load average {load[0]:.2f} {load[1]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':42s}{'median':>10s}  {'per msg':>9s}   ratios to the same-run baselines")

    def line(label: str, rate: float) -> None:
        print(f"{label:42s}{rate:10,.0f}  {1e6 / rate:6.1f} us   x{rate / base:.2f} dict, "
              f"x{rate / stdlib:.2f} email")

    print(f"{'baseline email.parser + as text':42s}{stdlib:10,.0f}  {1e6 / stdlib:6.1f} us")
    print(f"{'baseline (dict-per-header parse + join)':42s}{base:10,.0f}  {1e6 / base:6.1f} us"
          f"   best {base_best:,.0f}")
    line("sipmask parse + to_bytes (unchanged)", unchanged)
    line("sipmask parse + set 1 header + to_bytes", modified)
    line("sipmask parse + typed reads + to_bytes", read)
    line("  ... + tags and branch", tags)
    print(f"typed reads best round {read_best:,.0f} msg/s, + tags and branch {tags_best:,.0f}")
    verdict = "met" if unchanged >= 100_000 else "not met"
    print(f"target 100,000 msg/s (unchanged): {verdict} at the median; best round "
          f"{best:,.0f} msg/s (x{best / base_best:.2f} the best dict round)")


if __name__ == "__main__":
    main()
