"""`sipmask cdr list|export`: records from the store, JSON lines or CSV.

Real numbers are shown only when `--tenant` names whose records they are (CONTRACT: real
numbers in CDRs are visible only to their tenant); across tenants they are masked.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from sipmask.cdr.record import CSV_COLUMNS, parse_time
from sipmask.cdr.store import CdrLog
from sipmask.config.schema import Config
from sipmask.errors import RefusedError, StoreError
from sipmask.store import open_store

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def run(args: argparse.Namespace, config: Config) -> int:
    since = None
    if args.since:
        try:
            since = parse_time(args.since)
        except ValueError:
            print(f"sipmask: since: not a time: {args.since!r} (use ISO-8601 or Unix seconds)",
                  file=sys.stderr)
            return EXIT_USAGE
    if args.tenant is not None and args.tenant not in config.tenants:
        print(f"sipmask: tenant: no tenant {args.tenant!r} in the config", file=sys.stderr)
        return EXIT_REFUSED
    try:
        store = open_store(config)
    except StoreError as exc:
        print(f"sipmask: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        records = CdrLog(store).list(since=since, tenant=args.tenant, limit=args.limit)
    except RefusedError as exc:
        print(f"sipmask: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        store.close()
    mask = args.tenant is None
    rows = [r.to_json(mask=mask) for r in records]
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    if args.op == "export":
        print(f"sipmask: exported {len(rows)} records", file=sys.stderr)
    return EXIT_OK
