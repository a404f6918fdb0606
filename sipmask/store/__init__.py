"""The bindings store: `open_store(config)` for LMDB, `MemoryStore` for unit tests.

Records and the Protocol are in store/base.py; the rules both stores share in rules.py.
"""

from sipmask.store.base import (
    AuditEntry,
    Binding,
    BindingRequest,
    BindingStore,
    HeldBinding,
    ImportOutcome,
    PoolRange,
    PoolUsage,
    Refusal,
    Target,
    target,
)
from sipmask.store.lmdb import LmdbStore, open_store
from sipmask.store.memory import MemoryStore

__all__ = ["AuditEntry", "Binding", "BindingRequest", "BindingStore", "HeldBinding",
           "ImportOutcome", "LmdbStore", "MemoryStore", "PoolRange", "PoolUsage", "Refusal",
           "Target", "open_store", "target"]
