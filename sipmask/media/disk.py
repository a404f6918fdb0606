"""Recording files written off the event loop (issue 15: "disk writes off the event loop").

One thread (`DiskWriter`, started with the first recording) does all the file work of the
embedded relay's recordings: it runs the sink factory (mkdir, open, the sealed header:
store/recordings.open_sink), writes what each recorder hands over (sealed on the way,
store/recording_file.py) and closes the file. On the event loop a recording's sink is a
`QueuedSink`, whose `write` and `close` only queue: a disk that stalls (a full journal, a
failing drive, a slow network mount) stalls this thread, never the calls. The loop takes
the queue's lock only to append; the thread holds it only to take a job, never during I/O.

Bounded: the queue holds at most `max_queued_bytes` of audio, all recordings together
(32 MiB by default: two seconds of 500 recorded calls at 32 kB/s each). A write that finds
it full is dropped and counted (`WriterStats.dropped_writes`, `dropped_bytes`) and its
length kept: the next write of that recording that gets in carries it, and the thread
writes that much silence first, so the recording keeps its time line (what was said during
the stall is lost, where the rest sits is not). Opening and closing are never dropped.

Failures: any error on the thread (the file cannot be made, no space, an I/O error, the
final chunk) ends that recording's file: it is closed at once (what reached it stays; it
reads back as truncated), later writes are dropped, the failure is counted
(`failed_files`) and reported to the loop, where `QueuedSink.error` takes the errno's name
and the owner's `on_failed` runs (media/services.py stops tapping the call). The sink's
next `write` raises it, so the recorder stops too (media/recorder.py). The call goes on.

Completion: `QueuedSink.opened` resolves once the factory has run, `QueuedSink.done` once
the thread has closed the file, each with None or the errno's name. Whoever writes the CDR
waits for `done` (bounded), so the CDR's `recording` says whether the file is whole.
`DiskWriter.close()` writes out everything queued, then stops the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sipmask.media.backend import RecordingFile, SinkFactory, failure_reason
from sipmask.observability.logging import get_logger

log = get_logger("sipmask.media.disk")

DEFAULT_MAX_QUEUED_BYTES = 32 << 20
_SILENCE = bytes(1 << 16)           # a dropped write's length is written back this way


@dataclass
class WriterStats:
    """What the disk thread did over its life (metrics read them)."""

    queued_bytes: int = 0            # audio waiting for the thread now
    dropped_writes: int = 0          # writes refused because the queue was full
    dropped_bytes: int = 0
    failed_files: int = 0            # files ended by an error on the thread
    open_files: int = 0


class _Kind(Enum):
    OPEN = 1
    WRITE = 2
    CLOSE = 3


@dataclass(slots=True)
class _Job:
    sink: QueuedSink
    kind: _Kind
    data: bytes = b""
    gap: int = 0                     # silence to write before `data` (dropped writes)
    factory: SinkFactory | None = None


class QueuedSink:
    """The event loop's side of one recording file (a RecordingSink that only queues).
    Made by DiskWriter.open; see the module docstring for `opened`, `done` and `error`."""

    def __init__(self, writer: DiskWriter, loop: asyncio.AbstractEventLoop,
                 on_failed: Callable[[], None] | None) -> None:
        self._writer = writer
        self._loop = loop
        self._on_failed = on_failed
        self.opened: asyncio.Future[str | None] = loop.create_future()
        self.done: asyncio.Future[str | None] = loop.create_future()
        self.error: str | None = None            # the errno's name, on the loop
        self.name: str | None = None             # the file's name, once the thread made it
        self._gap = 0
        self._closed = False
        # The thread's side: the errno the moment it failed (read by `write`), the file.
        self._errno: int | None = None
        self._file: RecordingFile | None = None

    def write(self, data: bytes) -> None:
        """Queue `data`; OSError once the file has failed or the sink is closed."""
        failed = self._errno
        if failed is not None:
            raise OSError(failed, os.strerror(failed))
        if self._closed:
            raise OSError(errno.EBADF, "recording already closed")
        if self._writer.put(_Job(self, _Kind.WRITE, data, self._gap)):
            self._gap = 0
        else:
            self._gap += len(data)

    def close(self) -> None:
        """Queue the close (once); the file is finished on the thread, `done` says how."""
        if not self._closed:
            self._closed = True
            self._writer.put(_Job(self, _Kind.CLOSE, gap=self._gap))
            self._gap = 0

    # -- reports from the thread, run on the loop --------------------------------------
    def _report(self, kind: _Kind, reason: str | None) -> None:
        if reason is not None and self.error is None:
            self.error = reason
            if self._on_failed is not None:
                self._on_failed()
        future = {_Kind.OPEN: self.opened, _Kind.CLOSE: self.done}.get(kind)
        if future is not None and not future.done():
            future.set_result(reason)


class DiskWriter:
    """The thread that writes every recording file (module docstring)."""

    def __init__(self, max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self.max_queued_bytes = max_queued_bytes
        self.stats = WriterStats()
        self._ready = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def open(self, factory: SinkFactory, *, on_failed: Callable[[], None] | None = None
             ) -> QueuedSink:
        """A sink for a new recording whose file `factory` makes, on the thread. Call on
        the event loop; `on_failed` runs there if the file fails."""
        sink = QueuedSink(self, asyncio.get_running_loop(), on_failed)
        self.put(_Job(sink, _Kind.OPEN, factory=factory))
        return sink

    def put(self, job: _Job) -> bool:
        """Queue `job`; False (counted) for a write that would pass the bound."""
        with self._ready:
            if job.kind is _Kind.WRITE:
                if job.sink._errno is not None:
                    return True      # the file is gone: nothing to keep time for
                size = len(job.data)
                if self.stats.queued_bytes + size > self.max_queued_bytes:
                    self.stats.dropped_writes += 1
                    self.stats.dropped_bytes += size
                    return False
                self.stats.queued_bytes += size
            self._jobs.append(job)
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="sipmask-recordings",
                                                daemon=True)
                self._thread.start()
            self._ready.notify()
        return True

    async def close(self) -> None:
        """Write out what is queued, then stop the thread (a later open starts another)."""
        with self._ready:
            thread = self._thread
            self._stopping = True
            self._ready.notify()
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._stopping:
                    self._ready.wait()
                if not self._jobs:
                    self._thread = None
                    return
                job = self._jobs.popleft()
                self.stats.queued_bytes -= len(job.data)
            self._perform(job)

    def _perform(self, job: _Job) -> None:
        sink = job.sink
        if sink._errno is not None:
            # Failed before: its file is closed; only the close is still owed an answer.
            if job.kind is _Kind.CLOSE:
                self._tell(sink, _Kind.CLOSE, errno.errorcode.get(sink._errno, "EIO"))
            return
        try:
            if job.kind is _Kind.OPEN:
                assert job.factory is not None
                sink._file = job.factory()
                sink.name = sink._file.path.name
                self.stats.open_files += 1
            elif job.kind is _Kind.WRITE:
                file = self._file_of(sink)
                _write_silence(file, job.gap)
                file.write(job.data)
                return
            else:
                file = self._file_of(sink)
                _write_silence(file, job.gap)
                sink._file = None
                self.stats.open_files -= 1
                file.close()
        except Exception as exc:
            self._fail(sink, exc, job.kind)
            return
        self._tell(sink, job.kind, None)

    @staticmethod
    def _file_of(sink: QueuedSink) -> RecordingFile:
        if sink._file is None:
            raise OSError(errno.EBADF, "recording file not open")
        return sink._file

    def _fail(self, sink: QueuedSink, exc: Exception, kind: _Kind) -> None:
        if isinstance(exc, OSError):
            code = exc.errno or errno.EIO
        else:
            # Not a disk error (a bug, a bad name): the recording ends all the same.
            log.error("recording.writer_error", error_type=type(exc).__name__)
            code = errno.EIO
        sink._errno = code
        self.stats.failed_files += 1
        file, sink._file = sink._file, None
        if file is not None:
            self.stats.open_files -= 1
            with contextlib.suppress(OSError):
                file.close()        # releases the descriptor even when it raises
        self._tell(sink, kind, failure_reason(OSError(code, "")))

    @staticmethod
    def _tell(sink: QueuedSink, kind: _Kind, reason: str | None) -> None:
        if kind is _Kind.WRITE and reason is None:
            return
        with contextlib.suppress(RuntimeError):     # the loop is closed: no one listens
            sink._loop.call_soon_threadsafe(sink._report, kind, reason)


def _write_silence(file: RecordingFile, octets: int) -> None:
    """`octets` of zero samples: the place of writes dropped from a full queue."""
    while octets > 0:
        piece = _SILENCE if octets >= len(_SILENCE) else _SILENCE[:octets]
        file.write(piece)
        octets -= len(piece)
