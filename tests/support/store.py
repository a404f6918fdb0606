"""What the store tests share (tests/unit/store): their numbers and tenants, and how to
read every record of an LMDB file and every form a real number could take in it."""

from __future__ import annotations

from pathlib import Path

import lmdb

from sipmask.config.schema import NumberRange, TenantConfig

A, B, C, D = "13800000001", "13900000002", "13700000003", "13600000004"
X = "700100000000001"
DEMO_POOL = "700100000000000-700100000000009"     # ten Xs
ACME_POOL = "700200000000000-700200000000009"

TENANTS = {
    "demo": TenantConfig("demo-token", (NumberRange.parse(DEMO_POOL),)),
    "acme": TenantConfig("acme-token", (NumberRange.parse(ACME_POOL),)),
}


def forms(number: str) -> list[bytes]:
    """The ways a real number could be written: national digits, +86 and 0086 prefixed,
    and UTF-16 (a JSON or text encoder could choose it)."""
    texts = (number, "+86" + number, "0086" + number, "86" + number)
    return [t.encode() for t in texts] + [number.encode("utf-16-le")]


def every_record(path: Path) -> list[bytes]:
    """Every database name, key and value in the environment, read through lmdb itself."""
    out: list[bytes] = []
    env = lmdb.open(str(path), max_dbs=64, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
            for name in names:
                out.append(name)
                for key, value in txn.cursor(db=env.open_db(name, txn=txn, create=False)):
                    out.extend((bytes(key), bytes(value)))
    finally:
        env.close()
    return out
