"""Recording files written off the event loop (media/disk.py): the thread does every file
operation, a full queue drops and counts without blocking the loop and keeps the time line,
a failure on the thread ends the file and reaches the loop, close writes everything out."""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sipmask.media.disk import DiskWriter, QueuedSink


class SpyFile:
    """A RecordingFile that notes the thread of each call; `fail_at` makes that write (by
    index) fail as a full disk does."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.path = Path("spy.wav")
        self.data = bytearray()
        self.writes = 0
        self.threads: set[int] = set()
        self.closed = 0
        self.fail_at = fail_at

    def write(self, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += data

    def close(self) -> None:
        self.threads.add(threading.get_ident())
        self.closed += 1


def factory(file: SpyFile, gate: threading.Event | None = None,
            threads: set[int] | None = None) -> Callable[[], SpyFile]:
    def make() -> SpyFile:
        if threads is not None:
            threads.add(threading.get_ident())
        if gate is not None:
            assert gate.wait(10)
        return file
    return make


async def drained(writer: DiskWriter) -> None:
    for _ in range(1000):
        if writer.stats.queued_bytes == 0 and not writer._jobs:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the disk thread did not drain its queue")


def test_the_file_is_made_written_and_closed_off_the_loop_thread() -> None:
    async def test() -> None:
        writer = DiskWriter()
        file, made_on = SpyFile(), set[int]()
        sink = writer.open(factory(file, threads=made_on))
        assert await sink.opened is None and sink.name == "spy.wav"
        for n in range(20):
            sink.write(bytes([n]) * 100)
        sink.close()
        assert await sink.done is None
        loop_thread = threading.get_ident()
        assert made_on and file.threads and loop_thread not in made_on | file.threads
        assert file.data == b"".join(bytes([n]) * 100 for n in range(20))
        assert file.closed == 1 and writer.stats.open_files == 0
        await writer.close()
    asyncio.run(test())


def test_a_full_queue_drops_and_counts_and_the_recording_keeps_its_time_line() -> None:
    async def test() -> None:
        writer = DiskWriter(max_queued_bytes=100)
        gate = threading.Event()
        file = SpyFile()
        sink = writer.open(factory(file, gate))       # the thread is stuck making the file
        # None of these waits for the disk: the loop goes on while the thread is stuck.
        for part in (b"a" * 40, b"b" * 40, b"c" * 40, b"d" * 40):
            sink.write(part)
        assert (writer.stats.dropped_writes, writer.stats.dropped_bytes) == (2, 80)
        assert writer.stats.queued_bytes == 80
        gate.set()
        await drained(writer)
        sink.write(b"e" * 40)              # carries the 80 dropped octets as silence
        sink.close()
        assert await sink.done is None
        assert file.data == b"a" * 40 + b"b" * 40 + bytes(80) + b"e" * 40
        await writer.close()
    asyncio.run(test())


def test_a_failure_on_the_thread_ends_the_file_and_reaches_the_loop() -> None:
    async def test() -> None:
        writer = DiskWriter()
        file = SpyFile(fail_at=2)
        reported: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        sink: QueuedSink = writer.open(factory(file),
                                       on_failed=lambda: reported.set_result(sink.error))
        sink.write(b"1" * 10)
        sink.write(b"2" * 10)              # ENOSPC on the thread
        assert await asyncio.wait_for(reported, 10) == "ENOSPC"
        assert file.closed == 1            # released at once, not at the owner's close
        with pytest.raises(OSError) as caught:
            sink.write(b"3" * 10)
        assert caught.value.errno == errno.ENOSPC
        sink.close()
        assert await sink.done == "ENOSPC"
        assert file.data == b"1" * 10 and file.closed == 1
        assert (writer.stats.failed_files, writer.stats.open_files) == (1, 0)
        await writer.close()
    asyncio.run(test())


@pytest.mark.parametrize(("error", "reason"), [(FileExistsError(errno.EEXIST, "File exists"),
                                                "EEXIST"),
                                               (ValueError("not <id>.wav"), "EIO")])
def test_a_file_that_cannot_be_made_fails_the_recording(error: Exception,
                                                         reason: str) -> None:
    async def test() -> None:
        writer = DiskWriter()

        def cannot() -> SpyFile:
            raise error
        calls: list[int] = []
        sink = writer.open(cannot, on_failed=lambda: calls.append(1))
        assert await sink.opened == reason and calls == [1] and sink.name is None
        with pytest.raises(OSError):
            sink.write(b"x" * 4)
        sink.close()
        assert await sink.done == reason
        await writer.close()
    asyncio.run(test())


def test_close_writes_everything_out_then_stops_the_thread() -> None:
    async def test() -> None:
        writer = DiskWriter()
        files = [SpyFile() for _ in range(5)]
        sinks = [writer.open(factory(f)) for f in files]
        for n in range(50):
            for sink in sinks:
                sink.write(bytes([n]) * 10)
        for sink in sinks:
            sink.close()
        await writer.close()
        assert writer._thread is None
        assert all(f.closed == 1 and len(f.data) == 500 for f in files)
        assert [await s.done for s in sinks] == [None] * 5
        again = SpyFile()
        sink = writer.open(factory(again))         # a later open starts a new thread
        sink.close()
        assert await sink.done is None and again.closed == 1
        await writer.close()
    asyncio.run(test())
