"""Recorded calls at rest (issue 15 §4): whether a call is recorded, where its file goes,
how it is read back, and the retention sweep.

Layout: `recording.dir/<tenant>/<name>`, `name` = the local part of sipmask's call id (128
random bits in hex, media/sinks.py's `<id>.wav`); the CDR's `recording` field holds the
name. Each tenant's files are in its own directory (config/loader.py keeps tenant names
safe for that), so a tenant's request is answered from its own directory and no other: a
call id of another tenant's call finds nothing (404), as an unknown one does.

Every read goes through `open_recording`: the API (`GET /v1/recordings/{cdr_id}`) and
`sipmask recording export`. Files are plain WAV today; an encrypting sink (media/sinks.py)
would write a sealed format, and this one function would open it (README "Recording").

The sweep deletes files whose last write is older than `recording.retention_days`; a call
still being recorded writes every second, so it is never swept under itself.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sipmask.config.schema import RecordingConfig, TenantConfig
from sipmask.errors import RecordNotFound
from sipmask.media.sinks import FileSink
from sipmask.store.base import Binding

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


def open_sink(config: RecordingConfig, tenant: str, call_id: str) -> FileSink:
    """A new recording file for a call (0600, in a 0700 directory; never overwrites):
    the engine's CallRecorder writes into it, and the CDR's `recording` is
    `recording_name(call_id)`. OSError when the file cannot be made."""
    return FileSink.create(tenant_dir(config, tenant), recording_name(call_id))


@dataclass(slots=True)
class Recording:
    """An open recording: read `stream` (a WAV file's bytes), then close it."""

    tenant: str
    name: str
    stream: BinaryIO
    size: int | None               # bytes the stream will give; None when not known ahead

    def close(self) -> None:
        self.stream.close()


def open_recording(config: RecordingConfig, cdr_id: str,
                   tenant: str | None = None) -> Recording:
    """The recording of call `cdr_id` (the CDR's call_id, or its local part): the
    tenant's own when `tenant` is given, any tenant's when it is None (an operator, the
    CLI). RecordingNotFound when there is none. The caller closes it."""
    try:
        name = recording_name(cdr_id)
    except ValueError:
        raise RecordingNotFound(cdr_id) from None
    owners = [tenant] if tenant is not None else _tenants(config)
    for owner in owners:
        path = tenant_dir(config, owner) / name
        try:
            # O_NOFOLLOW: a link planted in the directory is not followed out of it.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:      # a link: not a recording of ours
                continue
            raise
        stream = os.fdopen(fd, "rb")
        return Recording(owner, name, stream, os.fstat(fd).st_size)
    raise RecordingNotFound(cdr_id)


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
