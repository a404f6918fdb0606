"""The scenarios' privacy checks can fail: SIPp's caller and callee talking straight to each
other (no sipmask between them) see each other's number, address and media port, and both
fail the call. Without this, a regexp SIPp cannot match (a typo, a syntax its regcomp does
not take) would pass every masked call in tests/sipp for the wrong reason."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.paths import SIPP_SCENARIOS
from tests.support.sipp import A, X

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]


def test_an_unmasked_call_fails_both_sides_privacy_checks(tmp_path: Path) -> None:
    port = free_port("127.0.0.3")
    callee = subprocess.Popen(
        ["sipp", "-sf", str(SIPP_SCENARIOS / "callee.xml"), "-i", "127.0.0.3",
         "-mi", "127.0.0.3", "-mp", "18000", "-p", str(port), "-m", "1", "-nostdin",
         "-timeout", "15s", "-trace_err"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        caller = subprocess.run(
            ["sipp", f"127.0.0.3:{port}", "-sf", str(SIPP_SCENARIOS / "caller.xml"),
             "-i", "127.0.0.2", "-mi", "127.0.0.2", "-mp", "16000", "-p", "0",
             "-key", "caller", A, "-key", "x", X, "-m", "1", "-nostdin", "-timeout", "15s",
             "-trace_err"],
            cwd=tmp_path, capture_output=True, text=True, timeout=40)
    finally:
        try:
            callee.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            callee.kill()
            callee.communicate()
    errors = "\n".join(p.read_text("utf-8", "replace") for p in tmp_path.glob("*_errors.log"))
    assert caller.returncode != 0, caller.stdout[-1500:]
    assert callee.returncode != 0, errors
    # Each side names what it saw: the caller the callee's media port (the check that the
    # o= sess-id once matched by chance), the callee the caller's number.
    assert "Regexp matched but should not" in errors, errors
    assert "m=audio 18000" in errors and A in errors, errors


# The checks' regexps, read from every scenario (POSIX extended; these use nothing Python's
# re reads differently).
_LEAK_CHECKS = sorted({(m[1], m[0]) for path in SIPP_SCENARIOS.glob("*.xml")
                       for m in re.findall(r'<ereg regexp="([^"]*(1[68]000)[^"]*)"[^>]*'
                                           r'check_it_inverse="true"', path.read_text())})


@pytest.mark.parametrize(("port", "regexp"), _LEAK_CHECKS)
def test_a_media_port_check_names_the_port_and_not_digits_inside_a_session_id(
        port: str, regexp: str) -> None:
    assert re.search(regexp, f"m=audio {port} RTP/AVP 0 101\r\n")
    assert re.search(regexp, f"a=rtcp:{port}\r\n")
    # sipmask's o= sess-id is ten random digits: once it held 18000 and failed a masked call.
    assert not re.search(regexp, f"o=- {port}2846 {port}2846 IN IP4 127.0.0.1\r\n")
