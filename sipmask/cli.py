"""Command line: parse arguments, load the config, hand over to the module that does the work.

Exit status (CONTRACT.md): 0 done, 1 refused (stderr names the field), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sipmask import __version__
from sipmask.config import loader
from sipmask.config.schema import Config
from sipmask.errors import ConfigError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, Config], int]

# Subcommand → "module:function". Imported only when run, so `sipmask show` never pays for
# the SIP stack and `sipmask serve` never imports the CSV importer.
HANDLERS: dict[str, str] = {
    "serve": "sipmask.server:run",
    "check-config": "sipmask.cli:check_config",
    "reload": "sipmask.cli:reload",
    "bind": "sipmask.admin:bind",
    "show": "sipmask.admin:show",
    "unbind": "sipmask.admin:unbind",
    "list": "sipmask.admin:list_bindings",
    "pool": "sipmask.admin:pool",
    "import": "sipmask.admin:import_file",
    "audit": "sipmask.admin:audit",
    "cdr": "sipmask.cdr.commands:run",
    "trace": "sipmask.admin:trace",
    "store": "sipmask.admin:store_command",
    "recording": "sipmask.admin:recording",
}


def _common(sub: bool) -> argparse.ArgumentParser:
    # On subcommands the defaults are suppressed, so `sipmask -c F show ID` and
    # `sipmask show ID -c F` both work and neither clobbers the other.
    p = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if sub else None
    p.add_argument("-c", "--config", metavar="FILE", default=default,
                   help="config file (default: $SIPMASK_CONFIG, configs/sipmask.yaml, "
                        "or the embedded default)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   default=argparse.SUPPRESS if sub else [],
                   help="override a config key, value parsed as YAML "
                        "(e.g. --set store.path=/tmp/s.lmdb); repeatable")
    return p


class _Version(argparse.Action):
    """`sipmask --version`: the version and the build (pure Python, or how many modules run
    compiled: README "mypyc"). Worked out only when asked: it looks for each module's file."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from sipmask import _compiled
        parser.exit(message=f"sipmask {__version__} ({_compiled.describe()})\n")


def build_parser() -> argparse.ArgumentParser:
    common = _common(sub=True)
    parser = argparse.ArgumentParser(
        prog="sipmask", parents=[_common(sub=False)],
        description="Number-protection SIP B2BUA for 700 privacy numbers.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show the version and whether the compiled build is in use")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    subs.add_parser("serve", parents=[common],
                    help="run the B2BUA in the foreground (SIGTERM drains)")
    subs.add_parser("check-config", parents=[common],
                    help="validate the config; name any bad key")
    subs.add_parser("reload", parents=[common],
                    help="check the config, then have the running node (sip.pid_file) take "
                         "it: SIGHUP; keys that need a restart are named in its log")

    bind = subs.add_parser("bind", parents=[common], help="create a binding, print it as JSON")
    modes = bind.add_subparsers(dest="mode", metavar="MODE", required=True)
    for mode, text in (("axb", "A and B reach each other through X"),
                       ("axn", "anyone calling X reaches A"),
                       ("axe", "anyone calling X and keying extension E reaches A; A "
                               "calling X reaches B"),
                       ("axyb", "A calls X to reach B (B sees Y); B calls Y to reach A "
                                "(A sees X)")):
        m = modes.add_parser(mode, parents=[common], help=text)
        m.add_argument("--a", required=True, help="real number A")
        if mode in ("axb", "axyb"):
            m.add_argument("--b", required=True, help="real number B")
        elif mode == "axe":
            m.add_argument("--b", help="real number B, whom A reaches by calling X")
        m.add_argument("--x", help="the 700 number (default: allocated from the tenant's pool)")
        if mode == "axe":
            m.add_argument("--ext", help="the extension (tenants.<t>.ext_digits digits; "
                                         "default: a free one at random)")
        if mode == "axyb":
            m.add_argument("--y", help="the 700 number B calls to reach A (default: "
                                       "allocated from the tenant's pool)")
        m.add_argument("--ttl", type=int, default=7200,
                       help="seconds until the binding expires; 0: never (default 7200)")
        m.add_argument("--tenant", help="tenant (default: the only one configured)")
        m.add_argument("--record", action="store_true",
                       help="record this binding's calls (both sides hear "
                            "announcements.recording_notice first)")
        if mode in ("axb", "axyb"):
            m.add_argument("--direction", choices=("both", "a_to_b", "b_to_a"),
                           default="both", help="which way calls may go (default both)")
        m.add_argument("--max-duration", type=int, metavar="S",
                       help="answered calls end after S seconds (default policy.max_duration_s)")
        m.add_argument("--max-concurrent", type=int, metavar="N",
                       help="calls in progress on X (default policy.max_concurrent_per_x)")
        m.add_argument("--blacklist", action="append", default=[], metavar="NUMBER",
                       help="refuse this caller number or prefix (repeatable)")

    show = subs.add_parser("show", parents=[common], help="print one binding as JSON")
    show.add_argument("id")
    unbind = subs.add_parser("unbind", parents=[common], help="delete a binding")
    unbind.add_argument("id")
    unbind.add_argument("--tenant", help="only if it belongs to this tenant")
    lst = subs.add_parser("list", parents=[common], help="list bindings as JSON lines")
    lst.add_argument("--x", help="only bindings on this X")
    lst.add_argument("--tenant", help="only this tenant's bindings")
    lst.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")

    pool = subs.add_parser("pool", parents=[common], help="manage a tenant's X ranges")
    pool_ops = pool.add_subparsers(dest="op", metavar="OP", required=True)
    for op, text in (("add", "add a range of X numbers to a tenant"),
                     ("remove", "remove a range (refused while bindings use it)")):
        p = pool_ops.add_parser(op, parents=[common], help=text)
        p.add_argument("range", help="FIRST-LAST, e.g. 700100000000000-700100000009999")
        p.add_argument("--tenant", help="tenant (default: the only one configured)")
    p = pool_ops.add_parser("list", parents=[common], help="list ranges with use counts")
    p.add_argument("--tenant", help="only this tenant")

    imp = subs.add_parser("import", parents=[common],
                          help="bulk-create bindings from JSON lines or CSV")
    imp.add_argument("file", help="path, or - for standard input")
    imp.add_argument("--format", choices=["jsonl", "csv"],
                     help="default: from the file name (.csv is CSV, else JSON lines)")
    imp.add_argument("--tenant", help="tenant for lines without one")
    imp.add_argument("--rejects", metavar="FILE", help="write rejected lines with reasons here")

    audit = subs.add_parser("audit", parents=[common], help="show the audit log (numbers masked)")
    audit.add_argument("--since", help="ISO time or Unix seconds")
    audit.add_argument("--tenant", help="only this tenant")
    audit.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")

    store = subs.add_parser("store", parents=[common], help="store maintenance: schema, "
                                                            "LMDB to PostgreSQL, rekey")
    store_ops = store.add_subparsers(dest="op", metavar="OP", required=True)
    store_ops.add_parser("migrate", parents=[common],
                         help="bring the store's schema up to this version")
    copy = store_ops.add_parser("copy", parents=[common],
                                help="copy the LMDB store (store.path) into an empty "
                                     "PostgreSQL database")
    copy.add_argument("--to", required=True, metavar="DSN",
                      help="libpq URI of the target; give the password by PGPASSWORD or "
                           "~/.pgpass, not in the URI")
    rekey = store_ops.add_parser(
        "rekey", parents=[common],
        help="seal every record with a new key and rewrap this node's recordings (stop "
             "sipmask serve first); then point store.key_file at the new key")
    rekey.add_argument("--new-key", required=True, metavar="FILE",
                       help="the new key: 32 bytes, mode 0600; made when FILE does not exist")

    cdr = subs.add_parser("cdr", parents=[common], help="call detail records")
    cdr_ops = cdr.add_subparsers(dest="op", metavar="OP", required=True)
    for op in ("list", "export"):
        c = cdr_ops.add_parser(op, parents=[common],
                               help="print records" if op == "list" else "export records")
        c.add_argument("--format", choices=["json", "csv"], default="json")
        c.add_argument("--since", help="ISO time or Unix seconds")
        c.add_argument("--tenant", help="only this tenant")
        c.add_argument("--limit", type=int, default=None if op == "export" else 100)

    trace = subs.add_parser("trace", parents=[common],
                            help="which binding held X at a time, and its calls (operator "
                                 "use: real numbers are shown)")
    trace.add_argument("x", metavar="X", help="the 700 number")
    trace.add_argument("--at", required=True, metavar="TIME",
                       help="ISO-8601 (UTC when no zone) or Unix seconds")

    rec = subs.add_parser("recording", parents=[common], help="recorded calls")
    rec_ops = rec.add_subparsers(dest="op", metavar="OP", required=True)
    export = rec_ops.add_parser("export", parents=[common],
                                help="write a call's recording, unsealed with "
                                     "store.key_file, as a stereo WAV")
    export.add_argument("cdr_id", metavar="CDR_ID", help="the CDR's call_id")
    export.add_argument("--out", required=True, metavar="FILE",
                        help="where the WAV goes (- for standard output); an existing "
                             "file is not overwritten")
    export.add_argument("--tenant", help="only this tenant's recording")
    rec_ops.add_parser("sweep", parents=[common],
                       help="delete recordings older than recording.retention_days")
    return parser


def check_config(args: argparse.Namespace, config: Config) -> int:
    # The TLS files are read as `serve` reads them, so a config that passes here starts.
    from sipmask.server import ListenError, tls_contexts
    try:
        tls_contexts(config)
    except ListenError as exc:
        print(f"sipmask: {exc}", file=sys.stderr)
        return EXIT_USAGE
    source = loader.resolve_source(args.config)
    print(f"{source or loader.EMBEDDED}: ok")
    return EXIT_OK


def reload(args: argparse.Namespace, config: Config) -> int:
    """The config was loaded and checked by main(); the node reads the same file again."""
    if check_config(args, config) != EXIT_OK:
        return EXIT_USAGE
    path = config.sip.pid_file
    if path is None:
        print("sipmask: sip.pid_file is null: send SIGHUP to the node yourself "
              "(systemctl reload)", file=sys.stderr)
        return EXIT_REFUSED
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        print(f"sipmask: no running node: {path} (sip.pid_file) does not exist",
              file=sys.stderr)
        return EXIT_REFUSED
    except ValueError:
        print(f"sipmask: {path} (sip.pid_file) holds no process id", file=sys.stderr)
        return EXIT_REFUSED
    except ProcessLookupError:
        print(f"sipmask: the node in {path} (sip.pid_file) is not running", file=sys.stderr)
        return EXIT_REFUSED
    except PermissionError:
        print(f"sipmask: not allowed to signal the node in {path}: run as its user",
              file=sys.stderr)
        return EXIT_REFUSED
    print(f"sipmask: reload sent to process {pid}; its log names what it applied")
    return EXIT_OK


def resolve(command: str) -> Handler:
    module_name, _, func = HANDLERS[command].partition(":")
    handler: Handler = getattr(importlib.import_module(module_name), func)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = loader.load(args.config, args.overrides)
    except ConfigError as exc:
        print(f"sipmask: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "serve":    # serve sets up its own; stdout is the commands' output
        from sipmask.observability import logging as sm_logging
        sm_logging.setup(config.log, sys.stderr, secrets=sm_logging.config_secrets(config))
    return resolve(args.command)(args, config)


if __name__ == "__main__":
    raise SystemExit(main())
