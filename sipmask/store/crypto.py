"""The store's key (issue 14 §2): real numbers are sealed, the lookups that need one go by a
keyed hash, and X numbers stay in clear.

`store.key_file` holds 32 random bytes, mode 0600. Two subkeys are derived from it with
HKDF-SHA256 (RFC 5869) under distinct labels, so the cipher key and the index key are
independent and neither is the file's bytes:
  - seal: AES-256-GCM (NIST SP 800-38D) with a fresh random 96-bit nonce per value; the
    record's clear header is the associated data, so a sealed part cannot be moved to
    another record (a binding's numbers under another id) without failing to open.
  - index: HMAC-SHA256 (RFC 2104) of X and a real number, cut to 128 bits: the route key.
    Keyed, so the 10^11 possible numbers cannot be hashed by someone without the key and
    compared; X is in the input, so one number bound on two Xs gives two unrelated keys.
A fingerprint (a third HKDF output, 64 bits) names the key in the store's meta and in error
texts: it tells a wrong key file from the right one without saying anything of the key.
A fourth, the recording subkey, wraps each recording's own random key (AES-256-GCM, random
nonce, the file's tenant and name as associated data; store/recording_file.py): a recording
seals a chunk a second, far beyond the seal key's nonce budget, so it has a key of its own
with counter nonces, and a rekey rewraps 60 octets per file instead of re-sealing audio.

Random nonces come straight from os.urandom (no pooled buffer): a nonce used twice under
one GCM key gives away the authentication key, and the CDR writer thread, the API writer
thread and the event loop all seal. 2^32 values per key keep the chance of a repeat below
2^-32 (SP 800-38D §8.3); a store is rekeyed (`sipmask store rekey`) long before that.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sipmask.errors import StoreError

KEY_BYTES = 32
NONCE_BYTES = 12
INDEX_BYTES = 16
FILE_MODE, DIR_MODE = 0o600, 0o700
_SEAL_LABEL = b"sipmask store seal v1"
_INDEX_LABEL = b"sipmask store index v1"
_FINGERPRINT_LABEL = b"sipmask store key id v1"
_RECORDING_LABEL = b"sipmask recording key wrap v1"
FINGERPRINT_BYTES = 8
WRAPPED_BYTES = NONCE_BYTES + KEY_BYTES + 16      # nonce, the sealed key, GCM's tag
# A sealed value: tag, key generation, clear header length, clear header, nonce, ciphertext.
HEAD = struct.Struct(">BBH")
_BLOCK = 64     # SHA-256's block: HMAC pads its key to this (RFC 2104 §2)


class KeyFileError(StoreError):
    """store.key_file cannot be used: missing, too open, or not 32 bytes."""


class KeyMismatch(StoreError):
    """A sealed value does not open with this key: another key file, or a rekey left half
    done. The text names the key by fingerprint only."""


def _derive(master: bytes, label: bytes, size: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=size, salt=None, info=label).derive(master)


class Keyring:
    """The subkeys of one key file, at one key generation of the store (a byte in every
    sealed value that says which key sealed it; `rekey` moves a store to the next one)."""

    __slots__ = ("_aead", "_inner", "_outer", "_recording", "fingerprint", "generation")

    def __init__(self, master: bytes, generation: int = 1) -> None:
        if len(master) != KEY_BYTES:
            raise KeyFileError(f"a store key is {KEY_BYTES} bytes, not {len(master)}")
        if not 1 <= generation <= 255:
            raise ValueError("key generation is 1..255")
        self.generation = generation
        self.fingerprint = _derive(master, _FINGERPRINT_LABEL, FINGERPRINT_BYTES).hex()
        self._aead = AESGCM(_derive(master, _SEAL_LABEL))
        self._recording = AESGCM(_derive(master, _RECORDING_LABEL))
        index_key = _derive(master, _INDEX_LABEL)
        # HMAC's two hash states after the padded key block, made once: an index costs two
        # copies and two short updates (0.9 µs here against 1.9 µs for hmac.digest, which
        # pads the key again on every call). Same output: tests check it against hmac.
        self._inner = hashlib.sha256(bytes(k ^ 0x36 for k in index_key.ljust(_BLOCK, b"\0")))
        self._outer = hashlib.sha256(bytes(k ^ 0x5C for k in index_key.ljust(_BLOCK, b"\0")))

    @classmethod
    def generate(cls) -> Keyring:
        """A key that lives as long as the process (the in-memory store of unit tests)."""
        return cls(os.urandom(KEY_BYTES))

    def index(self, x: str, number: str) -> bytes:
        """HMAC-SHA256(index key, X US number), first 128 bits: the route key's tail."""
        inner = self._inner.copy()
        inner.update(f"{x}\x1f{number}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:INDEX_BYTES]

    def seal(self, tag: int, clear: bytes, plain: bytes) -> bytes:
        """tag, generation, len(clear), clear, nonce, AES-GCM(plain) with all before the
        nonce as associated data."""
        head = HEAD.pack(tag, self.generation, len(clear)) + clear
        nonce = os.urandom(NONCE_BYTES)
        return head + nonce + self._aead.encrypt(nonce, plain, head)

    def open(self, raw: bytes, end: int) -> bytes:
        """The plaintext of a sealed value whose clear header ends at `end`."""
        if raw[1] != self.generation:
            raise KeyMismatch(f"a record sealed with key generation {raw[1]} is read with "
                              f"generation {self.generation} (key {self.fingerprint}): "
                              "store.key_file does not match this store")
        try:
            return self._aead.decrypt(raw[end:end + NONCE_BYTES], raw[end + NONCE_BYTES:],
                                      raw[:end])
        except InvalidTag:
            raise KeyMismatch(f"a record does not open with key {self.fingerprint}: "
                              "store.key_file does not match this store, or the record "
                              "was altered") from None

    def wrap_key(self, key: bytes, associated: bytes) -> bytes:
        """A recording's file key sealed with the recording subkey: nonce, ciphertext and
        tag (WRAPPED_BYTES). `associated` (the file's place) must be given to unwrap it."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._recording.encrypt(nonce, key, associated)

    def unwrap_key(self, wrapped: bytes, associated: bytes) -> bytes:
        """The file key `wrap_key` sealed; KeyMismatch when this key did not wrap it, or the
        file was moved (another `associated`) or altered."""
        try:
            return self._recording.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                           associated)
        except InvalidTag:
            raise KeyMismatch(f"a recording's key does not open with key {self.fingerprint}: "
                              "another key wrapped it, or the file was moved or altered"
                              ) from None


def read_key_file(path: Path) -> bytes:
    """The key file's 32 bytes; KeyFileError naming store.key_file when it is missing, open
    to group or others (wider than 0600), or not 32 bytes. The key is never in a message."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyFileError(f"store.key_file: {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"store.key_file: cannot read {path}: "
                           f"{exc.strerror or exc}") from None
    try:
        found = os.fstat(fd)
        mode = found.st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(f"store.key_file: {path} has mode {mode:04o}; a key file must "
                               f"be readable by its owner only (chmod 600 {path})")
        if found.st_size != KEY_BYTES:
            raise KeyFileError(f"store.key_file: {path} holds {found.st_size} bytes; a key "
                               f"file holds exactly {KEY_BYTES} random bytes")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"store.key_file: {path} changed while it was read")
    return data


def create_key_file(path: Path) -> bytes:
    """Write 32 random bytes to `path`, mode 0600, unless it exists; the key now there.

    Atomic across processes: the key goes to a private temporary name first and is linked
    into place, so a second process starting at the same moment either wins or reads the
    winner's key whole; never a half-written file, never two keys."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)       # whatever the umask
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass                            # another process made it first: use theirs
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if not path.exists():           # a filesystem without hard links
            os.rename(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)                # the new name survives a power cut
    finally:
        os.close(dir_fd)
    return read_key_file(path)
