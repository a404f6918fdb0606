"""`sipmask reload` and SIGHUP on a real `sipmask serve`: tokens, trunks and policy change
at once without a restart; keys that need one are named and left as they were; a bad file
is refused and the running config kept; a call in progress is not dropped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from sipmask.config import loader
from tests.support.net import free_port, options_request, udp_exchange
from tests.support.paths import REPO
from tests.support.serve import ServeProcess


def status(api: int, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{api}/v1/bindings",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def reload_cli(config: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmask", "reload", "-c", str(config),
                           *overrides], capture_output=True, text=True, cwd=REPO, timeout=30)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_reload_takes_tokens_and_names_what_needs_a_restart(
        serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    data = yaml.safe_load(loader.default_text())
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(data))
    api = free_port()
    pid_file = tmp_path / "node.pid"
    same = ("--set", f"sip.pid_file={pid_file}", "--set", f"api.listen=127.0.0.1:{api}")
    server = serve("-c", str(config), *same)
    assert wait_for(lambda: status(api, "demo-token") == 200)
    assert int(pid_file.read_text()) == server.proc.pid

    data["tenants"]["demo"]["token"] = "rotated-token"
    data["media"]["ports"] = "40000-40999"                     # needs a restart
    config.write_text(yaml.safe_dump(data))
    done = reload_cli(config, *same)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: status(api, "rotated-token") == 200)
    assert status(api, "demo-token") == 401
    assert udp_exchange(options_request(server.udp), server.udp, timeout=2) is not None
    assert wait_for(lambda: "config.reloaded" in server.stderr())
    log = server.stderr()
    assert "config.reload_kept" in log and "media.ports" in log
    assert "rotated-token" not in log and "demo-token" not in log      # tokens never logged

    # A broken file: `sipmask reload` refuses it before signalling; SIGHUP with it is
    # refused by the node in one line, and the running config stays.
    config.write_text("tenants: [not, a, mapping\n")
    refused = reload_cli(config, *same)
    assert refused.returncode == 2 and "config error" in refused.stderr
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "config.reload_refused" in server.stderr())
    assert server.alive() and status(api, "rotated-token") == 200
    server.stop()
    assert not pid_file.exists()                 # its own pid file goes with it


def test_reload_without_a_running_node_says_so(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(loader.default_text())
    done = reload_cli(config, "--set", f"sip.pid_file={tmp_path / 'none.pid'}")
    assert done.returncode == 1
    assert "no running node" in done.stderr and "sip.pid_file" in done.stderr
