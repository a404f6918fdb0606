"""Unpredictable bytes for identifiers (tags, branches, Call-IDs, binding ids), cheaply.

`token_bytes(n)` is `secrets.token_bytes(n)` drawn from an os.urandom buffer 4 kB at a
time: one system call per few hundred identifiers instead of one each (per-id urandom was
a tenth of a bulk import and a few percent of a call's CPU). The bytes are the kernel's
CSPRNG output either way; only the read is batched. A forked child drops the buffer so it
never hands out the bytes its parent hands out next.
"""

from __future__ import annotations

import os

_POOL_BYTES = 4096


class RandomPool:
    def __init__(self) -> None:
        self._buf = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        at = self._at
        if at + n > len(self._buf):
            self._buf, at = os.urandom(max(_POOL_BYTES, n)), 0
        self._at = at + n
        return self._buf[at:at + n]

    def drop(self) -> None:
        self._buf, self._at = b"", 0


_POOL = RandomPool()
os.register_at_fork(after_in_child=_POOL.drop)

token_bytes = _POOL.take
