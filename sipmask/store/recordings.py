"""Recorded calls at rest (issue 15 §4): whether a call is recorded, where its file goes,
how it is read back, and the retention sweep.

Layout: `recording.dir/<tenant>/<name>`, `name` = the local part of sipmask's call id (128
random bits in hex, media/sinks.py's `<id>.wav`); the CDR's `recording` field holds the
name. Each tenant's files are in its own directory (config/loader.py keeps tenant names
safe for that), so a tenant's request is answered from its own directory and no other: a
call id of another tenant's call finds nothing (404), as an unknown one does.

Files are sealed with the store key (store/recording_file.py: a key per file, wrapped with
the store key; the audio in authenticated chunks). Every read goes through `open_recording`,
which gives the WAV: the API (`GET /v1/recordings/{cdr_id}`) and `sipmask recording
export`. `rewrap` moves every file's key to a new store key (`sipmask store rekey`).

The sweep deletes files whose last write is older than `recording.retention_days`; a call
still being recorded writes every second, so it is never swept under itself.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sipmask.config.schema import RecordingConfig, TenantConfig
from sipmask.errors import RecordNotFound
from sipmask.store.base import Binding
from sipmask.store.crypto import Keyring
from sipmask.store.recording_file import (
    KeySource,
    Rewrap,
    SealedWriter,
    State,
    open_sealed,
    rewrap,
)

# media/sinks.py's rule for a recording's file name, on the call id's local part.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
SUFFIX = ".wav"
_DAY_S = 86400.0


class RecordingNotFound(RecordNotFound):
    """No recording for this call id (or not this tenant's, which looks the same)."""

    def __init__(self, cdr_id: str) -> None:
        super().__init__("recording", cdr_id[:80])


def should_record(binding: Binding, tenants: Mapping[str, TenantConfig]) -> bool:
    """A binding's calls are recorded when the binding says so (`record: true`) or its
    tenant records every call (`tenants.<t>.record`); read per call, so a reload of the
    tenant's flag applies to the next call."""
    if binding.record:
        return True
    tenant = tenants.get(binding.tenant)
    return tenant is not None and tenant.record


def recording_name(cdr_id: str) -> str:
    """The file name of a call's recording: its call id's local part (before "@") plus
    ".wav". ValueError for an id that cannot be one of sipmask's (nothing a path could
    be made of)."""
    local = cdr_id.partition("@")[0]
    if not _NAME.fullmatch(local):
        raise ValueError("not a call id of sipmask's")
    return local + SUFFIX


def tenant_dir(config: RecordingConfig, tenant: str) -> Path:
    return config.dir / tenant


def open_sink(config: RecordingConfig, tenant: str, call_id: str, keys: Keyring
              ) -> SealedWriter:
    """A new recording file for a call, sealed with `keys` (0600, in a 0700 directory;
    never overwrites): the engine's CallRecorder writes into it, and the CDR's `recording`
    is `recording_name(call_id)`. OSError when the file cannot be made."""
    return SealedWriter.create(tenant_dir(config, tenant), recording_name(call_id), keys,
                               tenant)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class Recording:
    """An open recording: read `stream` (a WAV file's bytes, `size` of them), then close
    it. `state` says how whole the file was: complete, truncated (cut short: a crash, a
    full disk, or still being written), damaged (served up to the damage) or plain (a WAV
    from before recordings were sealed)."""

    tenant: str
    name: str
    stream: Readable
    size: int
    state: State

    def close(self) -> None:
        self.stream.close()


def open_recording(config: RecordingConfig, cdr_id: str, tenant: str | None = None, *,
                   keys: KeySource) -> Recording:
    """The recording of call `cdr_id` (the CDR's call_id, or its local part): the
    tenant's own when `tenant` is given, any tenant's when it is None (an operator, the
    CLI). RecordingNotFound when there is none; RecordingUnreadable when `keys` (the
    Keyring, or what reads it when a sealed file needs it) cannot open it
    (store/recording_file.py). The caller closes it."""
    try:
        name = recording_name(cdr_id)
    except ValueError:
        raise RecordingNotFound(cdr_id) from None
    owners = [tenant] if tenant is not None else _tenants(config)
    for owner in owners:
        fd = _open_file(tenant_dir(config, owner) / name, os.O_RDONLY)
        if fd is None:
            continue
        opened = open_sealed(fd, keys, owner, name)
        return Recording(owner, name, opened.stream, opened.size, opened.state)
    raise RecordingNotFound(cdr_id)


def _open_file(path: Path, mode: int) -> int | None:
    """A descriptor on a recording file, None when there is none there. O_NOFOLLOW: a link
    planted in the directory is not followed out of it."""
    try:
        return os.open(path, mode | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:          # a link: not a recording of ours
            return None
        raise


def rewrap_all(config: RecordingConfig, old: Keyring, new: Keyring) -> dict[str, int]:
    """Every recording's file key moved from `old` to `new` (store/recording_file.rewrap),
    in place; how many files ended each way (Rewrap's values). Run again, it finishes
    what a crash left: files already on `new` count as current."""
    done: Counter[str] = Counter({outcome.value: 0 for outcome in Rewrap})
    for entry in _files(config):
        tenant = Path(entry.path).parent.name
        fd = _open_file(Path(entry.path), os.O_RDWR)
        if fd is None:
            continue
        try:
            done[rewrap(fd, tenant, entry.name, old, new).value] += 1
        finally:
            os.close(fd)
    return dict(done)


def _tenants(config: RecordingConfig) -> list[str]:
    try:
        with os.scandir(config.dir) as found:
            return sorted(e.name for e in found if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _files(config: RecordingConfig) -> Iterator[os.DirEntry[str]]:
    for tenant in _tenants(config):
        try:
            with os.scandir(tenant_dir(config, tenant)) as found:
                for entry in found:
                    name = entry.name
                    if (name.endswith(SUFFIX) and _NAME.fullmatch(name[:-len(SUFFIX)])
                            and entry.is_file(follow_symlinks=False)):
                        yield entry
        except FileNotFoundError:
            continue


def sweep(config: RecordingConfig, now: float | None = None, limit: int = 1000) -> int:
    """Delete up to `limit` recordings last written more than recording.retention_days
    ago (0: never); returns how many. The server runs it with the other sweeps."""
    days = config.retention_days
    if not days:
        return 0
    cutoff = (time.time() if now is None else now) - days * _DAY_S
    done = 0
    for entry in _files(config):
        if done >= limit:
            break
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                done += 1
        except FileNotFoundError:
            continue      # removed meanwhile (another node's sweep on shared storage)
    return done
