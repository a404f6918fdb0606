"""The command line: config handling, exit codes, help."""

from __future__ import annotations

import json
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


# -- issue 14: the store key, trace, rekey ------------------------------------------------
X = "700100000000001"


def with_store(tmp_path: Path, *args: str, key: str = "k") -> subprocess.CompletedProcess[str]:
    return run(*args, "--set", f"store.path={tmp_path / 's'}",
               "--set", f"store.key_file={tmp_path / key}", cwd=tmp_path)


def test_trace_prints_the_binding_that_held_x_and_empty_lists_otherwise(
        tmp_path: Path) -> None:
    made = json.loads(with_store(tmp_path, "bind", "axb", "--a", "13800000001",
                                 "--b", "13900000002", "--x", X).stdout)
    assert with_store(tmp_path, "unbind", made["id"]).returncode == 0
    during = with_store(tmp_path, "trace", X, "--at", str(made["created_at_unix"]))
    assert during.returncode == 0, during.stderr
    found = json.loads(during.stdout)
    assert set(found) == {"bindings", "cdrs"} and found["cdrs"] == []
    [held] = found["bindings"]
    assert (held["id"], held["a"], held["b"], held["tenant"]) == (
        made["id"], "13800000001", "13900000002", "demo")
    assert (held["created_by"], held["ended_by"], held["end_reason"]) == ("cli", "cli",
                                                                         "unbind")
    before = with_store(tmp_path, "trace", X, "--at", str(made["created_at_unix"] - 60))
    assert before.returncode == 0 and json.loads(before.stdout) == {"bindings": [],
                                                                    "cdrs": []}
    other = with_store(tmp_path, "trace", "700100000000002", "--at", "2030-01-01T00:00:00")
    assert json.loads(other.stdout) == {"bindings": [], "cdrs": []}


def test_trace_names_a_bad_x_or_time(tmp_path: Path) -> None:
    bad_x = with_store(tmp_path, "trace", "13800000001", "--at", "0")
    assert bad_x.returncode == 1 and bad_x.stderr.startswith("sipmask: x: ")
    assert "13800000001" not in bad_x.stderr
    bad_at = with_store(tmp_path, "trace", X, "--at", "yesterday")
    assert bad_at.returncode == 2 and "at:" in bad_at.stderr
    assert run("trace", X).returncode == 2                  # --at is required


def test_a_key_file_open_to_others_stops_a_command_naming_it(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(bytes(32))
    (tmp_path / "k").chmod(0o644)
    done = with_store(tmp_path, "list")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("sipmask: store.key_file: ") and "0644" in done.stderr


def test_store_rekey_moves_the_store_to_the_new_key(tmp_path: Path) -> None:
    made = json.loads(with_store(tmp_path, "bind", "axn", "--a", "13800000001",
                                 "--x", X).stdout)
    done = with_store(tmp_path, "store", "rekey", "--new-key", str(tmp_path / "k2"))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["rekeyed"] is True and answer["fingerprint"] != answer["was"]
    assert "store.key_file" in done.stderr and (tmp_path / "k2").stat().st_mode & 0o777 == 0o600
    old = with_store(tmp_path, "show", made["id"])
    assert old.returncode == 1 and "does not match this store" in old.stderr
    new = with_store(tmp_path, "show", made["id"], key="k2")
    assert new.returncode == 0 and json.loads(new.stdout)["a"] == "13800000001"
    again = with_store(tmp_path, "store", "rekey", "--new-key", str(tmp_path / "k2"))
    assert again.returncode == 0 and json.loads(again.stdout)["rekeyed"] is False
    (tmp_path / "k3").write_bytes(b"short")
    (tmp_path / "k3").chmod(0o600)
    short = with_store(tmp_path, "store", "rekey", "--new-key", str(tmp_path / "k3"), key="k2")
    assert short.returncode == 1 and short.stderr.startswith("sipmask: new-key: ")
