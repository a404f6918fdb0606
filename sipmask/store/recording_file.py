"""A recording at rest, sealed with the store key (issue 15 §4): the file format, its
writer, its reader, and the rewrap a rekey does.

Why a format of its own: the store's seal (store/crypto.py) uses a random nonce per value
under one key, good for 2^32 values; a recording seals a chunk a second, so 500 recorded
calls would spend that in three months. Each file therefore has its own random 256-bit key,
used with counter nonces (never repeated within a file, and no other file has the key), and
only that key is sealed with the store key: a rekey rewraps 60 octets per file.

Layout (integers big-endian):

    header, 77 octets, in clear, fixed size (a rekey rewrites it in place):
      magic        8   b"\\x89SMREC\\r\\n": no RIFF, so no player takes the file for a WAV;
                       the CR LF and the high octet catch a text-mode copy (as PNG's do)
      version      1   1
      key id       8   the fingerprint of the store key that wrapped the file key: names
                       the key file a recording needs, in errors
      wrapped key 60   nonce, AES-256-GCM(file key), tag, under the store key's recording
                       subkey; associated data: magic, version, "<tenant>/<file name>", so
                       a file moved into another tenant's directory or renamed does not open
    chunks, each:
      length       4   bit 31: the final chunk; bits 0-30: the octets sealed below
      sealed       n   AES-256-GCM(file key) of the audio, with its 16-octet tag; nonce:
                       the chunk's number (8 octets) and the final flag (4 octets, 0 or 1);
                       associated data: magic and version

The chunk number and the final flag in the nonce are the STREAM construction (Hoang,
Reyhanitabar, Rogaway and Vizár, "Online authenticated-encryption and its nonce-reuse
misuse-resistance", CRYPTO 2015; age and Tink's streaming AEAD do the same): a chunk that is
dropped, repeated or moved fails to open, and only the writer's `close` makes a final
chunk, so a file cut at a chunk boundary is told from a whole one.

The audio is the recording's stereo samples (16-bit, 8 kHz, caller left, media/recorder.py)
without a WAV header: the reader makes the header from the length it finds.

Writing (`SealedWriter`, a RecordingSink): each `write` is one chunk in one os.write (the
recorder writes a second of audio at a time; longer writes are cut at MAX_CHUNK); `close`
writes the final chunk, empty. Nothing is held back: a process killed with -9 loses what it
had not written yet, and its file reads as truncated up to its last whole chunk. After a
failed write (no space, I/O error) nothing more is written, not even the final chunk: a
half-written chunk may be on disk, and whatever followed it would be misframed.

Reading (`open_sealed`): every chunk is opened once up front, so the state and the audio's
length are known before the first octet is served:
  complete   the final chunk is there and nothing follows it;
  truncated  no final chunk: the recording is still being written, or its writer was
             killed or stopped by a full disk; served up to the last whole chunk;
  damaged    a whole chunk does not open (altered), or octets follow the final chunk;
             served up to the chunk before;
  plain      a WAV recorded before recordings were sealed, served as it is.
A file this key cannot open (another key's, moved, not a recording) is RecordingUnreadable.
The audio is then opened a second time as it is read; a chunk that no longer opens (the
file changed between the two reads) raises RecordingUnreadable from `read`.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sipmask.errors import StoreError
from sipmask.media.sinks import FileSink
from sipmask.media.wav import HEADER_SIZE as WAV_HEADER_SIZE
from sipmask.media.wav import MAX_DATA_BYTES, wav_header
from sipmask.store.crypto import (
    FINGERPRINT_BYTES,
    KEY_BYTES,
    WRAPPED_BYTES,
    KeyMismatch,
    Keyring,
)

MAGIC = b"\x89SMREC\r\n"
VERSION = 1
_PREFIX = MAGIC + bytes([VERSION])            # the associated data of every chunk
_HEADER = struct.Struct(f">8sB{FINGERPRINT_BYTES}s{WRAPPED_BYTES}s")
HEADER_SIZE = _HEADER.size                     # 77
_KEY_AT = len(_PREFIX)                         # where the key id and wrapped key start
_LENGTH = struct.Struct(">I")
_NONCE = struct.Struct(">QI")                  # chunk number, final flag
_FINAL = 0x80000000
TAG_BYTES = 16
MAX_CHUNK = 1 << 20                            # audio octets per chunk at most (32 s)


class RecordingUnreadable(StoreError):
    """A recording file this key cannot open: another key's, moved from its place, or not
    a recording at all. The text names keys by fingerprint only."""


class State(Enum):
    """What `open_sealed` found (module docstring)."""

    COMPLETE = "complete"
    TRUNCATED = "truncated"
    DAMAGED = "damaged"
    PLAIN = "plain"


def place(tenant: str, name: str) -> bytes:
    """The associated data that ties a file key to the file's place."""
    return _PREFIX + f"{tenant}/{name}".encode()


def _nonce(number: int, final: bool) -> bytes:
    return _NONCE.pack(number, 1 if final else 0)


# --- writing ---------------------------------------------------------------------------

class SealedWriter:
    """A RecordingSink that seals what it is given into a new 0600 file (module
    docstring). Whoever creates one closes it, on every path."""

    def __init__(self, file: FileSink, key: bytes) -> None:
        self._file = file
        self._aead = AESGCM(key)
        self._number = 0
        self._broken = False

    @property
    def path(self) -> Path:
        return self._file.path

    @classmethod
    def create(cls, directory: str | Path, name: str, keys: Keyring, tenant: str
               ) -> SealedWriter:
        """A new sealed recording `name` in `directory` (FileSink.create: 0600, never over
        another file), its header written. Raises OSError (the file is removed when its
        header could not be written) and ValueError for a bad name."""
        file = FileSink.create(directory, name)
        key = os.urandom(KEY_BYTES)
        try:
            file.write(_HEADER.pack(MAGIC, VERSION, bytes.fromhex(keys.fingerprint),
                                    keys.wrap_key(key, place(tenant, name))))
        except BaseException:
            file.close()
            os.unlink(file.path)        # a header alone holds nothing worth keeping
            raise
        return cls(file, key)

    def write(self, data: bytes) -> None:
        """Seal `data` as one chunk (several past MAX_CHUNK). Raises OSError; after one,
        every write raises EIO (nothing after a half-written chunk would read)."""
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            self._seal(view[start:start + MAX_CHUNK], final=False)

    def close(self) -> None:
        """The final chunk, then the file released (on every path); OSError when the
        final chunk could not be written."""
        try:
            if not self._broken:
                self._seal(b"", final=True)
        finally:
            self._file.close()

    def _seal(self, audio: bytes | memoryview, *, final: bool) -> None:
        if self._broken:
            raise OSError(errno.EIO, "an earlier write of this recording failed")
        sealed = self._aead.encrypt(_nonce(self._number, final), audio, _PREFIX)
        try:
            self._file.write(_LENGTH.pack(len(sealed) | (_FINAL if final else 0)) + sealed)
        except BaseException:
            self._broken = True
            raise
        self._number += 1


# --- reading ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Chunk:
    offset: int                 # of its sealed octets in the file
    size: int                   # sealed octets, tag included
    final: bool


class SealedStream:
    """A recording's WAV, read from its sealed file: the header `open_sealed` made, then
    each chunk opened as it is read. `read(n)` returns at most n octets, b"" at the end;
    `close()` releases the file (the stream owns the descriptor)."""

    def __init__(self, fd: int, header: bytes, aead: AESGCM | None,
                 chunks: tuple[_Chunk, ...]) -> None:
        self._fd: int | None = fd
        self._aead = aead
        self._chunks = chunks
        self._next = 0
        self._buffer = bytearray(header)

    def read(self, size: int = -1) -> bytes:
        while (size < 0 or len(self._buffer) < size) and self._next < len(self._chunks):
            self._buffer += self._open_chunk(self._next)
            self._next += 1
        if size < 0 or size >= len(self._buffer):
            out = bytes(self._buffer)
            self._buffer.clear()
            return out
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def _open_chunk(self, number: int) -> bytes:
        chunk = self._chunks[number]
        if self._fd is None:
            raise ValueError("read of a closed recording")
        assert self._aead is not None
        sealed = os.pread(self._fd, chunk.size, chunk.offset)
        try:
            return self._aead.decrypt(_nonce(number, chunk.final), sealed, _PREFIX)
        except InvalidTag:
            raise RecordingUnreadable("the recording changed while it was read") from None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class _PlainStream:
    """A WAV written before recordings were sealed, read as it is."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "rb")

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


@dataclass(slots=True)
class Opened:
    """An open recording: `stream` gives `size` octets of WAV; `state` says how whole the
    file was (module docstring)."""

    stream: SealedStream | _PlainStream
    size: int
    state: State
    audio_bytes: int            # of stereo samples served (the WAV's data chunk)


# The store key's Keyring, or what reads it: a plain WAV is served without the key file.
KeySource = Keyring | Callable[[], Keyring]


def open_sealed(fd: int, keys: KeySource, tenant: str, name: str) -> Opened:
    """The recording in the open file `fd` (read from its start), which the result owns
    from now on; on an exception `fd` is closed here. RecordingUnreadable when `keys`
    cannot open it; what reading the key raises (KeyFileError) passes through."""
    try:
        return _open(fd, keys, tenant, name)
    except BaseException:
        os.close(fd)
        raise


def _open(fd: int, source: KeySource, tenant: str, name: str) -> Opened:
    size = os.fstat(fd).st_size
    head = os.pread(fd, HEADER_SIZE, 0)
    if head[:4] == b"RIFF":
        return Opened(_PlainStream(fd), size, State.PLAIN, max(0, size - WAV_HEADER_SIZE))
    if not MAGIC.startswith(head[:len(MAGIC)]):
        raise RecordingUnreadable(f"{name} is not a sipmask recording")
    if len(head) < HEADER_SIZE:
        # Cut before its header was whole: nothing was ever sealed into it.
        return _empty(fd, State.TRUNCATED)
    _, version, key_id, wrapped = _HEADER.unpack(head)
    if version != VERSION:
        raise RecordingUnreadable(f"{name} is a version {version} recording; this sipmask "
                                  f"reads version {VERSION}")
    keys = source if isinstance(source, Keyring) else source()
    if key_id.hex() != keys.fingerprint:
        raise RecordingUnreadable(
            f"{name} is sealed with key {key_id.hex()}; store.key_file is key "
            f"{keys.fingerprint} (see README \"Recording\": rekey)")
    try:
        aead = AESGCM(keys.unwrap_key(wrapped, place(tenant, name)))
    except KeyMismatch as exc:
        raise RecordingUnreadable(f"{name}: {exc}") from None
    chunks, audio, state = _scan(fd, size, aead)
    header = wav_header(2, audio)
    return Opened(SealedStream(fd, header, aead, chunks), len(header) + audio, state, audio)


def _empty(fd: int, state: State) -> Opened:
    header = wav_header(2, 0)
    return Opened(SealedStream(fd, header, None, ()), len(header), state, 0)


def _scan(fd: int, size: int, aead: AESGCM) -> tuple[tuple[_Chunk, ...], int, State]:
    """The chunks that open, in order, the audio octets they hold, and the file's state."""
    chunks: list[_Chunk] = []
    audio = 0
    offset = HEADER_SIZE
    while True:
        if offset == size:
            return tuple(chunks), audio, State.TRUNCATED
        field = os.pread(fd, _LENGTH.size, offset)
        if len(field) < _LENGTH.size:
            return tuple(chunks), audio, State.TRUNCATED      # cut inside a length
        (length,) = _LENGTH.unpack(field)
        final, sealed_size = bool(length & _FINAL), length & ~_FINAL
        if not TAG_BYTES <= sealed_size <= MAX_CHUNK + TAG_BYTES:
            return tuple(chunks), audio, State.DAMAGED
        start = offset + _LENGTH.size
        if start + sealed_size > size:
            return tuple(chunks), audio, State.TRUNCATED      # cut inside the chunk
        plain = sealed_size - TAG_BYTES
        if audio + plain > MAX_DATA_BYTES:
            return tuple(chunks), audio, State.DAMAGED        # more than a WAV can say
        try:
            aead.decrypt(_nonce(len(chunks), final), os.pread(fd, sealed_size, start),
                         _PREFIX)
        except InvalidTag:
            return tuple(chunks), audio, State.DAMAGED
        chunks.append(_Chunk(start, sealed_size, final))
        audio += plain
        offset = start + sealed_size
        if final:
            return tuple(chunks), audio, State.COMPLETE if offset == size else State.DAMAGED


# --- rekey -----------------------------------------------------------------------------

class Rewrap(Enum):
    """What `rewrap` did to one file."""

    REWRAPPED = "rewrapped"      # its key was the old key's; now the new key's
    CURRENT = "current"          # already the new key's (a rekey run again)
    PLAIN = "plain"              # written before sealing: no key to rewrap
    OTHER_KEY = "other_key"      # neither key's: left as it is, named in the report
    UNREADABLE = "unreadable"    # not a recording, cut before its header, or altered


def rewrap(fd: int, tenant: str, name: str, old: Keyring, new: Keyring) -> Rewrap:
    """Wrap the file key of the recording open (read-write) at `fd` with `new` in place of
    `old`: the key id and the wrapped key, 68 octets inside the first disk sector, written
    with one pwrite and synced. The audio is not touched: a recording still being written
    goes on appending."""
    head = os.pread(fd, HEADER_SIZE, 0)
    if head[:4] == b"RIFF":
        return Rewrap.PLAIN
    if len(head) < HEADER_SIZE or not head.startswith(_PREFIX):
        return Rewrap.UNREADABLE
    _, _, key_id, wrapped = _HEADER.unpack(head)
    if key_id.hex() == new.fingerprint:
        return Rewrap.CURRENT
    if key_id.hex() != old.fingerprint:
        return Rewrap.OTHER_KEY
    where = place(tenant, name)
    try:
        key = old.unwrap_key(wrapped, where)
    except KeyMismatch:
        return Rewrap.UNREADABLE
    field = bytes.fromhex(new.fingerprint) + new.wrap_key(key, where)
    if os.pwrite(fd, field, _KEY_AT) != len(field):
        raise OSError(errno.EIO, "short write of a recording's header")
    os.fsync(fd)
    return Rewrap.REWRAPPED
