"""Where a recording's bytes go: the `RecordingSink` interface and the raw file under it.

The recorder (media/recorder.py) writes a call's stereo samples into a RecordingSink and
knows nothing of files, formats or threads. In `sipmask serve` the sink is a QueuedSink
(media/disk.py: the writes happen on a thread of their own, off the event loop) in front of
a SealedWriter (store/recording_file.py: the samples sealed with the store key), which
writes through a `FileSink`. A sink raises OSError for whatever goes wrong (disk full, I/O
error, quota); the recorder catches it and stops recording, the call goes on.

Recordings hold conversations: files are created 0600, in a directory created 0700, and
never overwrite an existing file.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Protocol

# A recording's name is sipmask's own call id plus ".wav": no path separators, no leading
# dot, nothing a shell or a URL would need to quote.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.wav")


class RecordingSink(Protocol):
    def write(self, data: bytes) -> None:
        """Append `data`. Raises OSError."""
        ...

    def close(self) -> None:
        """Release the file. Raises OSError; the file is released all the same."""
        ...


class FileSink:
    """A new file, 0600, written with unbuffered os.write: what `write` returned for is in
    the page cache, so a crash of sipmask (not of the machine) loses nothing written."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def create(cls, directory: str | Path, name: str) -> FileSink:
        """A new file `name` in `directory` (made 0700 when missing). Raises OSError, and
        ValueError for a name that is not a plain `<id>.wav`."""
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"recording name {name!r} is not <id>.wav")
        folder = Path(directory)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / name
        # O_EXCL: a second recording with the same name never truncates the first.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600)
        try:
            os.fchmod(fd, 0o600)        # the mode holds whatever the process umask says
        except OSError:
            os.close(fd)
            raise
        return cls(fd, path)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, "recording file already closed")
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._open_fd()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
