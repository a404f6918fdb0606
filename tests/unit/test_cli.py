"""The command line: config handling, exit codes, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sipmask import cli


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmask", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60)


def test_check_config_ok_on_embedded_default(tmp_path: Path) -> None:
    result = run("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "<embedded default>: ok" in result.stdout


def test_check_config_names_bad_key_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("media:\n  ports: 5-6\n")
    result = run("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sipmask: config error: {bad}: media.ports: ports must satisfy "
        "1024 <= first < last <= 65535 (got '5-6')"]


def test_check_config_reads_the_tls_files_as_serve_does(tmp_path: Path) -> None:
    result = run("check-config", "--set", "sip.listen=[tls://127.0.0.1:5061]",
                 "--set", f"sip.tls.cert={tmp_path / 'missing.pem'}",
                 "--set", f"sip.tls.key={tmp_path / 'missing.key'}", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "sip.tls.cert" in line and "missing.pem" in line


def test_set_after_subcommand(tmp_path: Path) -> None:
    result = run("check-config", "--set", "sip.timers.t1_ms=x", cwd=tmp_path)
    assert result.returncode == 2
    assert "sip.timers.t1_ms: must be an integer" in result.stderr


def test_usage_error_exits_2() -> None:
    assert run("bind", "axb", "--a", "1").returncode == 2
    assert run("frobnicate").returncode == 2


def test_every_handler_is_importable() -> None:
    missing = []
    for command in cli.HANDLERS:
        try:
            cli.resolve(command)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{command}: {exc}")
    if missing:
        pytest.fail("handlers not implemented: " + "; ".join(missing))


def test_help_lists_every_command() -> None:
    text = cli.build_parser().format_help()
    for command in cli.HANDLERS:
        assert command in text
