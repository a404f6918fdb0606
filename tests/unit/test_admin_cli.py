"""Admin commands through the real entry point (`python3 -m sipmask`), store in tmp_path."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

A, B, C = "13800000001", "13900000002", "13700000003"
X = "700100000000001"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def sipmask(tmp_path: Path) -> Run:
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sipmask", *args, "--set", f"store.path={tmp_path / 's'}"],
            capture_output=True, text=True, cwd=tmp_path, timeout=60, input=stdin)
    return run


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def test_bind_show_list_unbind(sipmask: Run) -> None:
    made = ok_json(sipmask("bind", "axb", "--a", "+86 138-0000-0001", "--b", B, "--x", X,
                           "--ttl", "60"))
    assert (made["mode"], made["tenant"], made["x"], made["a"], made["b"]) == (
        "axb", "demo", X, A, B)
    assert str(made["created_at"]).endswith("Z") and made["expires_at"] is not None
    assert ok_json(sipmask("show", str(made["id"]))) == made
    axn = ok_json(sipmask("bind", "axn", "--a", C, "--ttl", "0"))
    assert axn["b"] is None and axn["expires_at"] is None
    assert str(axn["x"]).startswith("7001000000") and axn["x"] != X
    listed = sipmask("list")
    assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == {
        made["id"], axn["id"]}
    assert [json.loads(ln)["id"] for ln in sipmask("list", "--x", X).stdout.splitlines()] == [
        made["id"]]
    assert ok_json(sipmask("unbind", str(made["id"]))) == {"id": made["id"], "deleted": True}
    gone = sipmask("show", str(made["id"]))
    assert gone.returncode == 1 and "not found" in gone.stderr


@pytest.mark.parametrize(("args", "line"), [
    (("bind", "axb", "--a", "1234", "--b", B),
     "sipmask: a: not a valid mobile or fixed-line number"),
    (("bind", "axb", "--a", A, "--b", A), "sipmask: b: must differ from a"),
    (("bind", "axb", "--a", A, "--b", B, "--x", "700900000000001"),
     "sipmask: x: not in tenant demo's pool"),
    (("bind", "axb", "--a", A, "--b", B, "--tenant", "acme"),
     "sipmask: tenant: unknown tenant 'acme'"),
    (("bind", "axn", "--a", A, "--ttl", "-3"), "sipmask: ttl: must be 0 (no expiry)"),
    (("bind", "axn", "--a", A, "--ttl", "1" + "0" * 400), "sipmask: ttl: must be 0 (no expiry)"),
    (("bind", "axn", "--a", A, "--max-duration", "1" + "0" * 400),
     "sipmask: max_duration_s: must be"),
    (("bind", "axn", "--a", A, "--max-concurrent", "1" + "0" * 30),
     "sipmask: max_concurrent: must be"),
    (("list", "--limit", "0"), "sipmask: limit: must be"),
    (("audit", "--limit", "-1"), "sipmask: limit: must be"),
    (("audit", "--since", "1e300"), "sipmask: since: must be"),
])
def test_refusals_exit_1_naming_the_field(sipmask: Run, args: tuple[str, ...],
                                          line: str) -> None:
    result = sipmask(*args)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(line), result.stderr


def test_pair_already_bound_and_pool_exhausted(sipmask: Run, tmp_path: Path) -> None:
    ok_json(sipmask("bind", "axb", "--a", A, "--b", B, "--x", X))
    again = sipmask("bind", "axb", "--a", A, "--b", C, "--x", X)
    assert again.returncode == 1 and again.stderr == "sipmask: a: already bound on this X\n"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("tenants:\n  t1: {token: a, pools: [700500000000000]}\n")
    tiny = ["-c", str(cfg), "--set", f"store.path={tmp_path / 'tiny'}"]
    ok_json(sipmask("bind", "axn", "--a", A, *tiny))
    full = sipmask("bind", "axn", "--a", B, *tiny)
    assert full.returncode == 1 and full.stderr.startswith("sipmask: x: no free X in tenant t1")


def test_usage_errors_exit_2(sipmask: Run) -> None:
    assert sipmask("bind", "axb", "--a", A).returncode == 2          # --b missing
    assert sipmask("bind", "axb", "--a", A, "--b", B, "--ttl", "x").returncode == 2
    assert sipmask("audit", "--since", "yesterday").returncode == 2


def test_two_tenants_need_tenant(sipmask: Run, tmp_path: Path) -> None:
    cfg = tmp_path / "two.yaml"
    cfg.write_text("tenants:\n  t1: {token: a, pools: [700500000000000-700500000000009]}\n"
                   "  t2: {token: b, pools: [700600000000000-700600000000009]}\n")
    result = sipmask("-c", str(cfg), "bind", "axn", "--a", A)
    assert result.returncode == 1 and result.stderr.startswith("sipmask: tenant: required")
    made = ok_json(sipmask("-c", str(cfg), "bind", "axn", "--a", A, "--tenant", "t2"))
    assert str(made["x"]).startswith("7006")


def test_a_config_pool_over_a_store_pool_is_a_config_error(sipmask: Run, tmp_path: Path) -> None:
    ok_json(sipmask("pool", "add", "700500000000000-700500000000009"))   # demo's, in the store
    cfg = tmp_path / "clash.yaml"
    cfg.write_text("tenants:\n  demo: {token: a, pools: [700100000000000-700100000009999]}\n"
                   "  t2: {token: b, pools: [700500000000005]}\n")
    result = sipmask("-c", str(cfg), "list")
    assert result.returncode == 2
    assert "tenants.t2.pools: overlaps tenant demo's range" in result.stderr


def test_pool_add_list_remove(sipmask: Run) -> None:
    added = ok_json(sipmask("pool", "add", "700300000000000-700300000000099"))
    assert added == {"tenant": "demo", "range": "700300000000000-700300000000099",
                     "source": "store", "size": 100}
    ok_json(sipmask("bind", "axn", "--a", A, "--x", "700300000000007"))
    pools = [json.loads(ln) for ln in sipmask("pool", "list").stdout.splitlines()]
    assert [(p["range"], p["source"], p["bindings"]) for p in pools] == [
        ("700100000000000-700100000009999", "config", 0),
        ("700300000000000-700300000000099", "store", 1)]
    busy = sipmask("pool", "remove", "700300000000000-700300000000099")
    assert busy.returncode == 1 and busy.stderr.startswith("sipmask: range: 1 binding")
    overlap = sipmask("pool", "add", "700100000000050-700100000000060")
    assert overlap.returncode == 1 and "range: overlaps" in overlap.stderr
    bad = sipmask("pool", "add", "800100000000050-800100000000060")
    assert bad.returncode == 1 and bad.stderr.startswith("sipmask: range: pool ends must be")


def test_audit_shows_changes_with_numbers_masked(sipmask: Run) -> None:
    made = ok_json(sipmask("bind", "axb", "--a", A, "--b", B, "--x", X))
    sipmask("unbind", str(made["id"]))
    result = sipmask("audit", "--since", "2000-01-01T00:00:00Z")
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("pool_add", "config"), ("create", "cli"), ("delete", "cli")]
    assert A not in result.stdout and B not in result.stdout
    assert "138****0001" in result.stdout and X in result.stdout
    assert len(sipmask("audit", "--limit", "1").stdout.splitlines()) == 1


def test_import_jsonl_and_csv_with_rejects(sipmask: Run, tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"mode": "axb", "a": A, "b": B, "x": X}),
        "not json",
        json.dumps({"mode": "axb", "a": A, "b": C, "x": X}),     # A already on X
        "",
        json.dumps({"mode": "axn", "a": C, "ttl": 0}),
        json.dumps({"mode": "axn", "a": "555", "ttl": "abc"}),
    ]) + "\n")
    result = sipmask("import", str(jsonl), "--rejects", str(tmp_path / "rej.jsonl"))
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert (summary["imported"], summary["rejected"]) == (2, 3)
    assert "line 2: line: not a JSON object" in result.stderr
    assert "line 3: a: already bound on this X" in result.stderr
    assert "line 6: ttl: must be a whole number of seconds" in result.stderr
    rejects = [json.loads(ln) for ln in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, "line"), (3, "a"), (6, "ttl")]
    assert "import:" in result.stderr          # a progress line (stderr is not a tty)

    csv_file = tmp_path / "in.csv"
    csv_file.write_text("mode,a,b,x,ttl,tenant\naxb,13600000004,13500000005,,60,\n"
                        "axb,13600000004,13600000004,,,\naxn,13400000006,,,0,demo\n")
    result = sipmask("import", str(csv_file))
    assert result.returncode == 1
    assert json.loads(result.stdout)["imported"] == 2
    assert "line 3: b: must differ from a" in result.stderr
    headerless = sipmask("import", "-", "--format", "csv",
                         stdin="axb,13300000007,13200000008,,,\n")
    assert json.loads(headerless.stdout)["imported"] == 1 and headerless.returncode == 0
    listed = sipmask("list").stdout.splitlines()
    assert len(listed) == 5
    audit = sipmask("audit").stdout
    assert audit.count('"actor": "import"') == 5


def test_import_draws_a_bar_on_a_terminal(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"mode": "axn", "a": A}) + "\n")
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sipmask", "import", str(data),
             "--set", f"store.path={tmp_path / 's'}"],
            stdout=subprocess.PIPE, stderr=secondary, text=True, cwd=tmp_path, timeout=60)
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:   # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert result.returncode == 0 and json.loads(result.stdout)["imported"] == 1
    assert b"\r[" in shown and b"100%" in shown and b"import:" not in shown


def test_import_of_text_that_is_not_utf8_stops_with_a_reason(sipmask: Run,
                                                             tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_bytes(b"axn,13800000001,,,,\n\xff\xfe\n")
    result = sipmask("import", str(data))
    assert result.returncode == 1
    assert result.stderr.startswith("sipmask: file: not UTF-8 text")


# -- AXE, AXYB, recording (issue 15) ----------------------------------------------------------
Y = "700100000000009"


def test_bind_axe_and_axyb(sipmask: Run) -> None:
    axe = ok_json(sipmask("bind", "axe", "--a", A, "--b", B, "--x", X, "--ext", "0042",
                          "--record"))
    assert (axe["mode"], axe["ext"], axe["b"], axe["record"]) == ("axe", "0042", B, True)
    other = ok_json(sipmask("bind", "axe", "--a", C, "--x", X))
    assert str(other["ext"]).isdigit() and len(str(other["ext"])) == 4 and other["b"] is None
    assert "record" not in other
    axyb = ok_json(sipmask("bind", "axyb", "--a", A, "--b", B, "--x", "700100000000002",
                           "--y", Y))
    assert (axyb["x"], axyb["y"]) == ("700100000000002", Y)
    allocated = ok_json(sipmask("bind", "axyb", "--a", C, "--b", B))
    assert allocated["y"] not in (None, allocated["x"])
    assert [json.loads(ln)["id"] for ln in sipmask("list", "--x", Y).stdout.splitlines()] == [
        axyb["id"]]
    assert {json.loads(ln)["id"] for ln in sipmask("list", "--x", X).stdout.splitlines()} == {
        axe["id"], other["id"]}


@pytest.mark.parametrize(("args", "line"), [
    (("bind", "axe", "--a", A, "--ext", "12"),
     "sipmask: ext: must be 4 digits (tenants.demo.ext_digits)"),
    (("bind", "axyb", "--a", A, "--b", B, "--x", X, "--y", X), "sipmask: y: must differ from x"),
    (("bind", "axyb", "--a", A, "--b", B, "--y", "700900000000001"),
     "sipmask: y: not in tenant demo's pool"),
])
def test_new_mode_refusals_exit_1_naming_the_field(sipmask: Run, args: tuple[str, ...],
                                                   line: str) -> None:
    result = sipmask(*args)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(line), result.stderr


def test_axe_extension_taken_and_usage(sipmask: Run) -> None:
    ok_json(sipmask("bind", "axe", "--a", A, "--x", X, "--ext", "1234"))
    again = sipmask("bind", "axe", "--a", C, "--x", X, "--ext", "1234")
    assert again.returncode == 1 and again.stderr == "sipmask: ext: already bound on this X\n"
    assert sipmask("bind", "axyb", "--a", A).returncode == 2               # --b missing
    assert sipmask("bind", "axb", "--a", A, "--b", B, "--ext", "1").returncode == 2


def test_import_lines_of_axe_and_axyb(sipmask: Run, tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"mode": "axe", "a": A, "x": X, "ext": "0001", "record": True}),
        json.dumps({"mode": "axe", "a": C, "x": X, "ext": "0001"}),       # taken
        json.dumps({"mode": "axyb", "a": A, "b": B, "y": Y}),
        json.dumps({"mode": "axn", "a": C, "record": "maybe"}),
    ]) + "\n")
    result = sipmask("import", str(jsonl))
    assert result.returncode == 1 and json.loads(result.stdout)["imported"] == 2
    assert "line 2: ext: already bound on this X" in result.stderr
    assert "line 4: record: must be true or false" in result.stderr
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("mode,a,b,x,ext,y,record\naxe,13600000004,,700100000000003,,,yes\n"
                        "axyb,13600000004,13500000005,,,700100000000008,\n")
    done = sipmask("import", str(csv_file))
    assert done.returncode == 0 and json.loads(done.stdout)["imported"] == 2, done.stderr
    headerless = sipmask("import", "-", "--format", "csv",
                         stdin="axe,13300000007,,700100000000004,,,0099,,true\n")
    assert headerless.returncode == 0, headerless.stderr
    made = {json.loads(ln)["a"]: json.loads(ln) for ln in sipmask("list").stdout.splitlines()
            if json.loads(ln)["mode"] == "axe"}
    assert made["13600000004"]["record"] is True and made["13300000007"]["ext"] == "0099"
    assert made["13300000007"]["record"] is True


def test_a_sealed_recording_exports_as_a_wav_and_follows_a_rekey(sipmask: Run,
                                                                  tmp_path: Path) -> None:
    from sipmask.config.schema import RecordingConfig
    from sipmask.media.wav import wav_header
    from sipmask.store import recordings
    from sipmask.store.crypto import Keyring, read_key_file
    assert sipmask("list").returncode == 0              # the store and its key are made
    keys = Keyring(read_key_file(tmp_path / "var/sipmask.key"))
    folder = RecordingConfig(dir=tmp_path / "var/recordings")
    audio = bytes(range(256)) * 125
    sink = recordings.open_sink(folder, "demo", "0badc0de@127.0.0.1", keys)
    sink.write(audio)
    sink.close()
    cut = recordings.open_sink(folder, "demo", "0cut@127.0.0.1", keys)
    cut.write(audio)
    cut._file.close()                 # the file released without a final chunk (a crash)
    out = tmp_path / "out.wav"
    done = ok_json(sipmask("recording", "export", "0badc0de", "--out", str(out)))
    assert (done["state"], done["bytes"]) == ("complete", 44 + len(audio))
    assert out.read_bytes() == wav_header(2, len(audio)) + audio
    truncated = sipmask("recording", "export", "0cut", "--out", str(tmp_path / "cut.wav"))
    assert truncated.returncode == 0 and json.loads(truncated.stdout)["state"] == "truncated"
    assert "0cut.wav: truncated: no final chunk" in truncated.stderr
    # Rekey: the store and this node's recordings move to the new key.
    rekeyed = ok_json(sipmask("store", "rekey", "--new-key", str(tmp_path / "new.key")))
    assert rekeyed["rekeyed"] is True and rekeyed["recordings"] == {
        "rewrapped": 2, "current": 0, "plain": 0, "other_key": 0, "unreadable": 0}
    stale = sipmask("recording", "export", "0badc0de", "--out", str(tmp_path / "o2.wav"))
    assert stale.returncode == 1 and "sealed with key" in stale.stderr
    again = tmp_path / "o3.wav"
    ok_json(sipmask("recording", "export", "0badc0de", "--out", str(again),
                    "--set", f"store.key_file={tmp_path / 'new.key'}"))
    assert again.read_bytes() == out.read_bytes()
    # Run again before store.key_file moved: nothing left, said so, exit 0.
    twice = ok_json(sipmask("store", "rekey", "--new-key", str(tmp_path / "new.key")))
    assert twice["rekeyed"] is False and twice["recordings"]["current"] == 2


def test_recording_export_and_sweep(sipmask: Run, tmp_path: Path) -> None:
    folder = tmp_path / "var/recordings/demo"
    folder.mkdir(parents=True)
    wav = folder / "0123abcd.wav"
    wav.write_bytes(b"RIFF....WAVE" + bytes(range(256)) * 300)
    out = tmp_path / "out.wav"
    done = ok_json(sipmask("recording", "export", "0123abcd@127.0.0.1", "--out", str(out)))
    assert (done["recording"], done["tenant"], done["bytes"]) == ("0123abcd.wav", "demo",
                                                                  wav.stat().st_size)
    assert out.read_bytes() == wav.read_bytes() and out.stat().st_mode & 0o777 == 0o600
    again = sipmask("recording", "export", "0123abcd", "--out", str(out))
    assert again.returncode == 1 and again.stderr.startswith("sipmask: out: File exists")
    for unknown in (("ffff",), ("../demo/0123abcd",), ("0123abcd", "--tenant", "acme")):
        missing = sipmask("recording", "export", *unknown, "--out", str(tmp_path / "n.wav"))
        assert missing.returncode == 1
        assert missing.stderr == "sipmask: cdr_id: no recording of this call\n"
    piped = subprocess.run([sys.executable, "-m", "sipmask", "recording", "export",
                            "0123abcd", "--out", "-"], capture_output=True, cwd=tmp_path,
                           timeout=60)
    assert piped.returncode == 0 and piped.stdout == wav.read_bytes()
    old = folder / "00ff.wav"
    old.write_bytes(b"x")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    assert ok_json(sipmask("recording", "sweep")) == {"swept": 1}
    assert not old.exists() and wav.exists()
