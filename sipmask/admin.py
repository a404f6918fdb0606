"""Admin commands (CONTRACT "Commands"): bind, show, unbind, list, pool, import, audit,
trace, store (migrate, copy, rekey), recording (export, sweep).

They open the store directly (LMDB or PostgreSQL, as `store.backend` says), so they work
with or without a running server, and a running server sees their writes on its next call.
Output is JSON on stdout (one object, or JSON lines for lists); a refusal is one line on
stderr naming the field and exit status 1; a config the store cannot take is exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sipmask.cdr import trace as tracing
from sipmask.cdr.store import CdrLog
from sipmask.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from sipmask.config.schema import Config
from sipmask.errors import ConfigError, RecordNotFound, RefusedError, StoreError
from sipmask.store import BindingRequest, LmdbStore, crypto, open_store, recordings
from sipmask.store.base import DEFAULT_TTL, ImportOutcome
from sipmask.store.recording_file import State
from sipmask.store.rules import RuleStore
from sipmask.times import parse_time

if TYPE_CHECKING:
    from sipmask.store.lmdb import AnyStore

PROGRESS_EVERY_S = 5.0          # progress line period when stderr is not a terminal
_BAR_EVERY_S = 0.1
_BAR_WIDTH = 30
IMPORT_BATCH = 5000             # bindings per transaction: one fsync per batch
# A line without a header row: these columns by position (the first six, or all nine).
CSV_COLUMNS = ("mode", "a", "b", "x", "ttl", "tenant", "ext", "y", "record")
_PLAIN_CSV = 6                  # mode..tenant: the usual line, read without a dict
_PROGRESS_LINES = 512           # look at the clock once per this many lines
_SHOWN_REJECTS = 20             # rejected lines listed on stderr; --rejects has them all


def _err(text: str) -> None:
    print(f"sipmask: {text}", file=sys.stderr, flush=True)


def _emit(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _default_tenant(args: argparse.Namespace, config: Config) -> str | None:
    tenant: str | None = getattr(args, "tenant", None)
    if tenant is None and len(config.tenants) == 1:
        return next(iter(config.tenants))
    return tenant


def _with_store(config: Config, work: Callable[[AnyStore], int]) -> int:
    """Open the store, run one command, map the error types to exit status and stderr."""
    try:
        store = open_store(config)
    except (ConfigError, StoreError) as exc:
        return _not_opened(exc)
    return _run_on(store, work)


def _not_opened(exc: ConfigError | StoreError) -> int:
    if isinstance(exc, ConfigError):
        _err(f"config error: {exc}")
        return EXIT_USAGE
    _err(str(exc))
    return EXIT_REFUSED


def _run_on(store: AnyStore, work: Callable[[AnyStore], int]) -> int:
    """Run one command on an open store (closed after), the refusals on stderr."""
    try:
        return work(store)
    except RefusedError as exc:
        _err(f"{exc.field}: {exc.message}")
        return EXIT_REFUSED
    except RecordNotFound as exc:
        _err(f"{exc.what}: {exc.key} not found")
        return EXIT_REFUSED
    except StoreError as exc:
        _err(str(exc))
        return EXIT_REFUSED
    finally:
        store.close()


# -- bindings ---------------------------------------------------------------------------------
def bind(args: argparse.Namespace, config: Config) -> int:
    def run(store: RuleStore) -> int:
        binding = store.create(mode=args.mode, tenant=_default_tenant(args, config),
                               a=args.a, b=getattr(args, "b", None), x=args.x, ttl=args.ttl,
                               actor="cli", direction=getattr(args, "direction", "both"),
                               max_duration_s=getattr(args, "max_duration", None),
                               max_concurrent=getattr(args, "max_concurrent", None),
                               blacklist=tuple(getattr(args, "blacklist", ())),
                               ext=getattr(args, "ext", None), y=getattr(args, "y", None),
                               record=args.record)
        _emit(binding.to_json())
        return EXIT_OK
    return _with_store(config, run)


def show(args: argparse.Namespace, config: Config) -> int:
    def run(store: RuleStore) -> int:
        _emit(store.get(args.id, getattr(args, "tenant", None)).to_json())
        return EXIT_OK
    return _with_store(config, run)


def unbind(args: argparse.Namespace, config: Config) -> int:
    def run(store: RuleStore) -> int:
        store.delete(args.id, getattr(args, "tenant", None), actor="cli")
        _emit({"id": args.id, "deleted": True})
        return EXIT_OK
    return _with_store(config, run)


def list_bindings(args: argparse.Namespace, config: Config) -> int:
    def run(store: RuleStore) -> int:
        for binding in store.list(tenant=args.tenant, x=args.x, limit=args.limit):
            _emit(binding.to_json())
        return EXIT_OK
    return _with_store(config, run)


# -- pools ------------------------------------------------------------------------------------
def pool(args: argparse.Namespace, config: Config) -> int:
    def run(store: RuleStore) -> int:
        if args.op == "list":
            for usage in store.list_pools(args.tenant):
                _emit(usage.to_json())
            return EXIT_OK
        tenant = _default_tenant(args, config)
        if args.op == "add":
            added = store.add_pool(tenant, args.range, actor="cli")
            _emit({"tenant": added.tenant, "range": f"{added.first}-{added.last}",
                   "source": added.source, "size": added.size})
        else:
            store.remove_pool(tenant, args.range, actor="cli")
            _emit({"tenant": tenant, "range": args.range, "removed": True})
        return EXIT_OK
    return _with_store(config, run)


# -- audit ------------------------------------------------------------------------------------
def audit(args: argparse.Namespace, config: Config) -> int:
    since: float | None = None
    if args.since is not None:
        try:
            since = parse_time(args.since)
        except ValueError:
            _err("since: expected an ISO time or unix seconds")
            return EXIT_USAGE

    def run(store: RuleStore) -> int:
        for entry in store.audit(since=since, tenant=args.tenant, limit=args.limit):
            _emit(entry.to_json(masked=True))
        return EXIT_OK
    return _with_store(config, run)


# -- trace (issue 14 §3) ----------------------------------------------------------------------
def trace(args: argparse.Namespace, config: Config) -> int:
    """One JSON object {bindings, cdrs}; empty lists when nothing held X then."""
    try:
        at = parse_time(args.at)
    except (ValueError, OverflowError):
        _err("at: expected an ISO-8601 time or Unix seconds")
        return EXIT_USAGE

    def run(store: AnyStore) -> int:
        found = tracing.trace(store, CdrLog(store).for_binding, args.x, at, limit=None)
        _emit(found.to_json())
        return EXIT_OK
    return _with_store(config, run)


# -- recordings (issue 15 §4) -------------------------------------------------------------------
def recording(args: argparse.Namespace, config: Config) -> int:
    """`recording export CDR_ID --out FILE`: the WAV, through store/recordings.py's
    open_recording (the one reader); `recording sweep`: files past retention_days."""
    if args.op == "sweep":
        _emit({"swept": recordings.sweep(config.recording, limit=1_000_000)})
        return EXIT_OK
    def keys() -> crypto.Keyring:     # read only for a sealed file
        return crypto.Keyring(crypto.read_key_file(config.store.key_file))
    try:
        found = recordings.open_recording(config.recording, args.cdr_id,
                                          getattr(args, "tenant", None), keys=keys)
    except RecordNotFound:
        _err("cdr_id: no recording of this call")
        return EXIT_REFUSED
    except StoreError as exc:          # the key file, or a recording it cannot open
        _err(str(exc))
        return EXIT_REFUSED
    try:
        return _export(found, args.out)
    except StoreError as exc:          # the file changed while it was read
        _err(str(exc))
        return EXIT_REFUSED
    finally:
        found.close()


# What an export of a file that is not whole says on stderr (the WAV holds what opened).
_CUT = {State.TRUNCATED: "no final chunk (still being recorded, or cut short by a crash or "
                         "a full disk); exported up to its last whole chunk",
        State.DAMAGED: "a chunk does not open (the file was altered); exported up to the "
                       "chunk before"}


def _export(found: recordings.Recording, out: str) -> int:
    if out == "-":
        target: IO[bytes] = sys.stdout.buffer
    else:
        try:
            # O_EXCL: an export never overwrites a file; 0600: it holds a conversation.
            target = os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                               "wb")
        except OSError as exc:
            _err(f"out: {exc.strerror or exc}: {out}")
            return EXIT_REFUSED
    written = 0
    try:
        while chunk := found.stream.read(1 << 16):
            target.write(chunk)
            written += len(chunk)
        target.flush()
    finally:
        if target is not sys.stdout.buffer:
            target.close()
    if out != "-":
        _emit({"recording": found.name, "tenant": found.tenant, "out": out,
               "bytes": written, "state": found.state.value})
    if found.state in (State.TRUNCATED, State.DAMAGED):
        _err(f"{found.name}: {found.state.value}: {_CUT[found.state]}")
    return EXIT_OK


# -- store maintenance ------------------------------------------------------------------------
def rekey(args: argparse.Namespace, config: Config) -> int:
    """Seal the store (LMDB or PostgreSQL) with the key in --new-key (made there when
    missing). The command leaves store.key_file alone: the operator points it at the new
    key, on every node."""
    new_file = Path(args.new_key)
    try:
        master = (crypto.read_key_file(new_file) if new_file.exists()
                  else crypto.create_key_file(new_file))
    except (crypto.KeyFileError, OSError) as exc:
        _err(f"new-key: {str(exc).removeprefix('store.key_file: ')}")
        return EXIT_REFUSED
    try:
        store = open_store(config)
    except crypto.KeyMismatch as mismatch:
        # Already sealed with the new key (a rekey that ran, store.key_file not moved yet)?
        try:
            open_store(replace(config, store=replace(config.store, key_file=new_file))).close()
        except StoreError:
            _err(str(mismatch))
            return EXIT_REFUSED
        # This node's recordings may still be on the old key (a rekey stopped before it
        # got to them, or the first rekey ran on another node): rewrapped now.
        try:
            moved = _rewrap(config, crypto.Keyring(crypto.read_key_file(config.store.key_file)),
                            crypto.Keyring(master))
        except (StoreError, OSError) as exc:
            _err(f"recordings not rewrapped: {exc}")
            return EXIT_REFUSED
        _emit({"key_file": str(new_file), "fingerprint": crypto.Keyring(master).fingerprint,
               "rekeyed": False, "recordings": moved})
        _err(f"the store is already sealed with {new_file}: point store.key_file at it")
        return EXIT_OK
    except (ConfigError, StoreError) as exc:
        return _not_opened(exc)
    keys: list[crypto.Keyring] = []

    def run(store: AnyStore) -> int:
        keys.append(store.keys)
        keys.append(store.rekey(master))
        return EXIT_OK
    status = _run_on(store, run)
    if status != EXIT_OK:
        return status
    old, new = keys
    try:
        moved = _rewrap(config, old, new)
    except OSError as exc:
        _err(f"the store is rekeyed, recordings not all rewrapped ({exc}): run the same "
             "command again to finish")
        return EXIT_REFUSED
    _emit({"key_file": str(new_file), "fingerprint": new.fingerprint, "was": old.fingerprint,
           "rekeyed": True, "recordings": moved})
    _err(f"rekeyed: set store.key_file to {new_file} (on every node), then start sipmask; "
         f"keep the old key file until then, destroy it after")
    return EXIT_OK


def _rewrap(config: Config, old: crypto.Keyring, new: crypto.Keyring) -> dict[str, int]:
    """This node's recordings moved to the new key (store/recordings.rewrap_all); a file
    on neither key is named by count on stderr (it stays readable only with its own key)."""
    moved = recordings.rewrap_all(config.recording, old, new)
    if moved.get("other_key") or moved.get("unreadable"):
        _err(f"recordings: {moved['other_key']} on another key, {moved['unreadable']} "
             "unreadable: left as they are")
    return moved


# -- bulk import ------------------------------------------------------------------------------
class _Rejected(Exception):
    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def _ttl_of(value: Any) -> int:
    if type(value) is str and value.isascii() and value.isdigit():
        return int(value)   # the usual CSV cell, already stripped
    if value is None or value == "":
        return DEFAULT_TTL
    if isinstance(value, bool):
        raise _Rejected("ttl", "must be a whole number of seconds")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise _Rejected("ttl", "must be a whole number of seconds") from None


def _text(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | int):
        raise _Rejected(field, "must be a string")
    return str(value).strip() or None


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _record_of(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Rejected("record", "must be true or false")


def _request(row: dict[str, Any]) -> BindingRequest:
    mode = _text(row.get("mode"), "mode")
    if mode is None:
        raise _Rejected("mode", "required")
    a = _text(row.get("a"), "a")
    return BindingRequest(mode.lower(), a or "", _text(row.get("b"), "b"),
                          _text(row.get("x"), "x"), _ttl_of(row.get("ttl")),
                          _text(row.get("tenant"), "tenant"), ext=_text(row.get("ext"), "ext"),
                          y=_text(row.get("y"), "y"), record=_record_of(row.get("record")))


def _csv_request(cells: list[str]) -> BindingRequest:
    # The usual shape (mode,a,b,x,ttl,tenant by position) without building a dict per line.
    mode, a, b, x, ttl, tenant = map(str.strip, cells)
    if not mode:
        raise _Rejected("mode", "required")
    return BindingRequest(mode.lower(), a, b or None, x or None, _ttl_of(ttl), tenant or None)


def _rows(text: IO[str], fmt: str) -> Iterator[tuple[int, BindingRequest | _Rejected]]:
    """Line number and request (or why the line cannot be one), blank lines skipped."""
    if fmt == "jsonl":
        for number, line in enumerate(text, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(row)
            except ValueError:
                yield number, _Rejected("line", "not a JSON object")
                continue
            try:
                yield number, _request(row)
            except _Rejected as exc:
                yield number, exc
        return
    reader = csv.reader(text)
    columns: tuple[str, ...] = CSV_COLUMNS
    for cells in reader:
        number = reader.line_num
        if not cells or not (cells[0].strip() or any(c.strip() for c in cells)):
            continue
        if number == 1 and cells[0].strip().lower() == "mode":
            columns = tuple(c.strip().lower() for c in cells)   # a header names the columns
            continue
        if len(cells) > len(columns):
            yield number, _Rejected("line", f"more than {len(columns)} columns")
            continue
        try:
            if columns == CSV_COLUMNS and len(cells) == _PLAIN_CSV:
                yield number, _csv_request(cells)
            else:
                yield number, _request(dict(zip(columns, cells, strict=False)))
        except _Rejected as exc:
            yield number, exc


class _Progress:
    """A bar on a terminal; elsewhere a line every PROGRESS_EVERY_S (logs stay readable).
    `done` counts toward `total` (bytes of an import, records of a copy); `items` are
    what the rate counts, named by `unit`."""

    def __init__(self, stream: IO[str], total_bytes: int | None, verb: str = "import",
                 unit: str = "lines") -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total = total_bytes
        self.verb, self.unit = verb, unit
        self.start = self.last = time.monotonic()

    def update(self, done_bytes: int, lines: int, final: bool = False,
               note: str = "") -> None:
        now = time.monotonic()
        if not final and now - self.last < (_BAR_EVERY_S if self.tty else PROGRESS_EVERY_S):
            return
        self.last = now
        rate = lines / max(now - self.start, 1e-9)
        if self.tty:
            share = min(done_bytes / self.total, 1.0) if self.total else 0.0
            bar = "#" * int(share * _BAR_WIDTH)
            pct = f"{share:4.0%}" if self.total else "   ?"
            self.stream.write(f"\r[{bar:<{_BAR_WIDTH}}] {pct} {lines:,} {self.unit} "
                              f"{rate:,.0f}/s {note}" + ("\n" if final else ""))
        else:
            pct = f" ({done_bytes / self.total:.0%})" if self.total else ""
            self.stream.write(f"{self.verb}: {lines:,} {self.unit}{pct}, {rate:,.0f}/s"
                              f"{f' ({note})' if note else ''}\n")
        self.stream.flush()


def import_file(args: argparse.Namespace, config: Config) -> int:
    fmt = args.format or ("csv" if str(args.file).lower().endswith(".csv") else "jsonl")
    try:
        raw: IO[bytes] = (sys.stdin.buffer if args.file == "-"
                          else open(args.file, "rb"))   # noqa: SIM115 - closed below
    except OSError as exc:
        _err(f"file: {exc.strerror or exc}: {args.file}")
        return EXIT_USAGE
    total = None
    if args.file != "-":
        total = os.fstat(raw.fileno()).st_size or None
    # newline="" as the csv module asks; utf-8-sig drops the BOM spreadsheets write.
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    rejects_out: IO[str] | None = None
    try:
        if args.rejects:
            rejects_out = open(args.rejects, "w", encoding="utf-8")   # noqa: SIM115
        return _with_store(config, lambda store: _import(store, args, config, text, raw,
                                                         fmt, total, rejects_out))
    except OSError as exc:
        _err(f"rejects: {exc.strerror or exc}: {args.rejects}")
        return EXIT_USAGE
    except UnicodeDecodeError as exc:
        # Batches before this point are committed; say where the text went bad.
        _err(f"file: not UTF-8 text (byte {exc.start} of a read chunk); earlier lines "
             "were imported")
        return EXIT_REFUSED
    finally:
        text.detach()   # leave standard input open; a file is closed just below
        if raw is not sys.stdin.buffer:
            raw.close()
        if rejects_out is not None:
            rejects_out.close()


def _position(raw: IO[bytes]) -> int:
    try:
        return raw.tell()   # bytes read so far (by the buffer: close enough for a bar)
    except OSError:
        return 0            # a pipe has no position


def _import(store: RuleStore, args: argparse.Namespace, config: Config, text: IO[str],
            raw: IO[bytes], fmt: str, total: int | None, rejects_out: IO[str] | None) -> int:
    progress = _Progress(sys.stderr, total)
    rejected: list[ImportOutcome] = []
    imported = seen = 0
    started = time.monotonic()

    def requests() -> Iterator[tuple[int, BindingRequest]]:
        nonlocal seen
        for number, row in _rows(text, fmt):
            seen += 1
            if isinstance(row, _Rejected):
                rejected.append(ImportOutcome(number, field=row.field, reason=row.reason))
            else:
                yield number, row
            if seen % _PROGRESS_LINES == 0:
                progress.update(_position(raw), seen)

    for outcome in store.create_many(requests(), actor="import", batch=IMPORT_BATCH,
                                     default_tenant=_default_tenant(args, config)):
        if outcome.binding is not None:
            imported += 1
        else:
            rejected.append(outcome)
    progress.update(total or _position(raw), seen, final=True)
    rejected.sort(key=lambda o: o.line)
    if rejects_out is not None:
        for o in rejected:
            rejects_out.write(json.dumps({"line": o.line, "field": o.field,
                                          "reason": o.reason}) + "\n")
    for o in rejected[:_SHOWN_REJECTS]:
        print(f"line {o.line}: {o.field}: {o.reason}", file=sys.stderr)
    if len(rejected) > _SHOWN_REJECTS:
        more = len(rejected) - _SHOWN_REJECTS
        print(f"... and {more} more rejected line(s)"
              + (f"; all in {args.rejects}" if args.rejects else "; use --rejects FILE"),
              file=sys.stderr)
    elapsed = time.monotonic() - started
    _emit({"imported": imported, "rejected": len(rejected), "seconds": round(elapsed, 3),
           "per_second": round(imported / elapsed) if elapsed > 0 else None})
    return EXIT_REFUSED if rejected else EXIT_OK


# -- store: schema and moving to PostgreSQL ---------------------------------------------------
def store_command(args: argparse.Namespace, config: Config) -> int:
    """`sipmask store migrate`, `sipmask store copy --to DSN`, `sipmask store rekey`."""
    if args.op == "rekey":
        return rekey(args, config)
    try:
        if args.op == "migrate":
            return _migrate(config)
        return _copy(config, args.to)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_REFUSED


def _migrate(config: Config) -> int:
    if config.store.backend == "postgres":
        from sipmask.store.postgres import migrate_database
        assert config.store.dsn is not None
        before, after = migrate_database(config.store.dsn)
        # Opening it with the key seals a database written in clear (store/postgres.py).
        sealed = open_store(config)
        try:
            _emit({"backend": "postgres", "from": before, "to": after,
                   "schema_version": sealed.schema_version()})
        finally:
            sealed.close()
        return EXIT_OK
    # LMDB makes (or checks) its schema when it is opened.
    store = LmdbStore(config.store.path, map_size=config.store.map_size_mb << 20,
                      key_file=config.store.key_file)
    try:
        _emit({"backend": "lmdb", "schema_version": store.schema_version()})
    finally:
        store.close()
    return EXIT_OK


def _copy(config: Config, dsn: str) -> int:
    from sipmask.store.pg_copy import copy_store
    from sipmask.store.postgres import PostgresStore
    if not (config.store.path / "data.mdb").is_file():
        _err(f"store.path: no LMDB store at {config.store.path}")
        return EXIT_REFUSED
    started = time.monotonic()
    source = LmdbStore(config.store.path, map_size=config.store.map_size_mb << 20,
                       key_file=config.store.key_file)
    try:
        # The same key: the records are copied as they are, sealed (store/pg_copy.py).
        target = PostgresStore(dsn, pool_size=2, call_workers=1,
                               key_file=config.store.key_file)
        try:
            progress = _Progress(sys.stderr, None, verb="copy", unit="records")
            copied = copy_store(source, target, lambda table, done, total: progress.update(
                done, done, final=False, note=f"{table}, of {total:,}"))
            total = sum(copied.values())
            progress.update(total, total, final=True)
        finally:
            target.close()
    finally:
        source.close()
    _emit({"copied": copied, "to": target.where, "seconds": round(time.monotonic() - started, 3)})
    return EXIT_OK


__all__ = ["audit", "bind", "import_file", "list_bindings", "pool", "recording", "rekey",
           "show", "store_command", "trace", "unbind"]
