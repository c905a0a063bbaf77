"""The `gated` command: run | demo | check-config | journal … | rules ….

Imports are deferred to the subcommand that needs them: `gated check-config`
on a Pi should not pay for OpenCV and numpy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gated import __version__
from gated.config import DEFAULT_CONFIG
from gated.errors import GatedError, StateError
from gated.wording import plural

EX_OK = 0
EX_FAIL = 1
EX_USAGE = 64
EX_CANTCREAT = 73  # sysexits.h: a state file or directory cannot be created or written
EX_CONFIG = 78


def _setup_logging(level: str = "info") -> None:
    # Under journald (JOURNAL_STREAM set) timestamps are added by the journal itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


def _load_config_or_exit(path: str):
    from gated.config import load_config
    from gated.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as err:
        print(f"gated: invalid configuration: {err}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from err


def _paths(args: argparse.Namespace) -> tuple[str, str, str]:
    """(journal db, rules db, snapshot dir) from --db/--rules-db/--snapshots or the config file.

    Says on stderr which config and which of these files the command uses: a command run
    without --config must not read or create /var/lib/gated/… without saying so.
    """
    from gated.config import JournalConfig, RulesConfig

    journal, rules, snaps = JournalConfig().path, RulesConfig().path, JournalConfig().snapshot_dir
    origin = {"journal": "built-in default", "rules": "built-in default", "snapshots": ""}
    config_path = getattr(args, "config", None)
    if config_path or Path(DEFAULT_CONFIG).exists():
        config_path = config_path or DEFAULT_CONFIG
        cfg = _load_config_or_exit(config_path)
        journal, rules, snaps = cfg.journal.path, cfg.rules.path, cfg.journal.snapshot_dir
        origin = {"journal": "", "rules": "", "snapshots": ""}
        source = f"config {config_path}"
    else:
        source = f"no config file ({DEFAULT_CONFIG} not found)"
    if getattr(args, "db", None) and args.db != journal:
        journal, origin["journal"] = args.db, "--db"
        # The demo and /var/lib/gated keep snapshots beside the journal; another config's
        # snapshot folder belongs to another journal.
        snaps, origin["snapshots"] = str(Path(args.db).parent / "snapshots"), "beside --db"
    if getattr(args, "rules_db", None):
        rules, origin["rules"] = args.rules_db, "--rules-db"
    if getattr(args, "snapshots", None):
        snaps, origin["snapshots"] = args.snapshots, "--snapshots"
    paths = {"journal": journal, "rules": rules, "snapshots": snaps}
    default_use = ("journal",) if args.command == "journal" else ("journal", "rules", "snapshots")
    used = [
        f"{role} {paths[role]}" + (f" ({origin[role]})" if origin[role] else "")
        for role in _USES.get((args.command, _subcommand(args)), default_use)
    ]
    print(f"gated: using {source}: {', '.join(used)}", file=sys.stderr)
    return journal, rules, snaps


# Which state files each command reads or writes (what it reports using).
_USES: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("journal", "stats"): ("journal", "snapshots"),
    ("journal", "redact"): ("journal", "snapshots"),
    ("rules", "import"): ("rules", "journal"),
    ("rules", "export"): ("rules",),
    ("pass", "add"): ("rules", "journal"),
    ("pass", "revoke"): ("rules", "journal"),
    ("pass", "list"): ("rules",),
}


def _subcommand(args: argparse.Namespace) -> str | None:
    return (
        getattr(args, "journal_command", None)
        or getattr(args, "rules_command", None)
        or getattr(args, "pass_action", None)
    )


# --- subcommands -------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file: exit 0 when valid, 78 with a one-line message when not."""
    cfg = _load_config_or_exit(args.path)
    print(
        f"{args.path}: ok ({plural(len(cfg.lanes), 'lane')}, "
        f"site {cfg.site.site_id}, device {cfg.site.device_id})"
    )
    return EX_OK


def _prepare_daemon_state(cfg: Any, config_path: str) -> None:
    """Say which files the daemon uses; create their folders (0750) or refuse in one line."""
    from gated.state_dirs import prepare_dir, prepare_file

    print(
        f"gated: using config {config_path}: journal {cfg.journal.path}, "
        f"rules {cfg.rules.path}, snapshots {cfg.journal.snapshot_dir}",
        file=sys.stderr,
    )
    # Before the daemon starts: a folder it cannot write is a one-line refusal now, not a
    # traceback (or a hang) once its threads are running.
    prepare_file(cfg.journal.path, "the journal")
    prepare_file(cfg.rules.path, "the rule store")
    prepare_dir(cfg.journal.snapshot_dir, "snapshots")
    if cfg.metrics.textfile:
        prepare_dir(Path(cfg.metrics.textfile).parent, "the metrics textfile")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    cfg = _load_config_or_exit(args.config)
    _prepare_daemon_state(cfg, args.config)
    _setup_logging(cfg.log.level)
    from gated.app import run_daemon

    return run_daemon(cfg, config_path=args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the daemon on simulated hardware with a traffic generator."""
    _setup_logging("warning")
    from gated.demo import run_demo

    return run_demo(
        Path(args.dir), duration_s=args.duration, interval_s=args.interval, port=args.port,
        mqtt=args.mqtt, sync=not args.no_sync, web_port=args.web_port,
    )


def cmd_journal_verify(args: argparse.Namespace) -> int:
    """Check the chain and triggers: 0 intact, 1 not intact (first bad seq), 66 cannot verify."""
    from gated.journal.verify import parse_anchor, verify

    anchor = None
    if args.anchor is not None:
        try:
            anchor = parse_anchor(args.anchor)
        except GatedError as err:
            print(f"gated: --anchor: {err}", file=sys.stderr)
            return EX_USAGE
    db, _, _ = _paths(args)
    if args.countersigned:
        if anchor is not None:
            print("gated: --anchor and --countersigned: give one of them", file=sys.stderr)
            return EX_USAGE
        return _verify_countersigned(db, args.config)
    result = verify(db, anchor=anchor)
    print(result.message)
    return result.exit_code


def _verify_countersigned(db: str, config_path: str | None) -> int:
    """Verify against the newest head the service countersigned (journal rows or the copy)."""
    from gated.journal.verify import (
        EXIT_CANNOT_VERIFY,
        EXIT_NOT_INTACT,
        countersigned_heads,
        verify,
    )
    from gated.sync.signing import SignatureError, parse_public_keys
    from gated.sync.signing import verify as verify_signature

    try:
        heads = countersigned_heads(db)
    except GatedError as err:  # CannotVerifyError too: no journal, or an unreadable copy
        print(f"journal cannot verify: {err}")
        return EXIT_CANNOT_VERIFY
    if not heads:
        print("journal cannot verify against a countersigned head: none recorded (the service "
              "has not countersigned a head of this journal yet)")
        return EXIT_CANNOT_VERIFY
    config_path = config_path or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    checked = "service signature NOT checked (no config with [sync] service_public_keys)"
    cfg = _load_config_or_exit(config_path) if config_path else None
    keys = parse_public_keys(cfg.sync.service_public_keys) if cfg is not None else {}
    device_id = cfg.site.identity.device_id if cfg is not None else None
    for head in heads:  # the journal's newest and the copy: each must be the service's own
        seq = head.anchor[0]
        if keys:
            # A countersignature nobody can forge is what makes this anchor worth more than
            # the file's own rows: a rebuilt chain cannot carry a valid one for its new hash.
            try:
                kid = verify_signature(head.head, keys)
            except SignatureError as err:
                print(f"journal NOT intact: the countersigned head seq {seq} ({head.where}) "
                      f"does not verify under the service keys: {err}")
                return EXIT_NOT_INTACT
            if head.head.get("device_id") != device_id:
                print(f"journal NOT intact: the countersigned head seq {seq} ({head.where}) "
                      f"is for device {head.head.get('device_id')!r}, not this one")
                return EXIT_NOT_INTACT
            checked = f"service signature checked (kid {kid})"
    newest = heads[0]
    same_seq = [h for h in heads if h.anchor[0] == newest.anchor[0] and h.anchor != newest.anchor]
    if same_seq:
        print(f"journal NOT intact: two countersigned heads for seq {newest.anchor[0]} differ "
              f"({newest.where}, {same_seq[0].where})")
        return EXIT_NOT_INTACT
    result = verify(db, anchor=newest.anchor)
    print(f"{result.message} — against the countersigned head seq {newest.anchor[0]} "
          f"({newest.where}), {checked}")
    return result.exit_code


def cmd_journal_head(args: argparse.Namespace) -> int:
    """Print the chain head (seq and row_hash) to record outside the device; 66 when no journal."""
    import json

    from gated.journal.verify import EXIT_CANNOT_VERIFY, CannotVerifyError, read_head

    db, _, _ = _paths(args)
    try:
        seq, digest = read_head(db)
    except CannotVerifyError as err:
        print(f"gated: journal cannot verify: {err}", file=sys.stderr)
        return EXIT_CANNOT_VERIFY
    if args.json:
        print(json.dumps({"seq": seq, "row_hash": digest, "anchor": f"{seq}:{digest}"}))
    else:
        print(f"journal head: seq {seq} row_hash {digest}")
        print(f"anchor: {seq}:{digest}")
    return EX_OK


def cmd_journal_export(args: argparse.Namespace) -> int:
    """Write journal rows as JSON lines or CSV to stdout or --out."""
    from gated.journal.export import export
    from gated.timeparse import parse_since

    db, _, _ = _paths(args)
    since = parse_since(args.since) if args.since else None
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            export(db, out, since=since, fmt=args.format, stream=args.stream)
    else:
        export(db, sys.stdout, since=since, fmt=args.format, stream=args.stream)
    return EX_OK


def cmd_journal_stats(args: argparse.Namespace) -> int:
    """Print journal counts, oldest unsynced event and sizes as JSON."""
    import json

    from gated.journal.export import stats

    db, _, snaps = _paths(args)
    print(json.dumps(stats(db, snapshot_dir=snaps), indent=2, sort_keys=True, default=str))
    return EX_OK


def cmd_journal_backup(args: argparse.Namespace) -> int:
    """Copy the journal (online, consistent while the daemon runs), verify it, print a summary."""
    from gated.journal.backup import backup

    db, _, _ = _paths(args)
    try:
        done = backup(db, args.dest)
    except GatedError as err:
        print(f"gated: {err}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"backup {done.path}: {plural(done.rows, 'row')} through seq {done.head_seq} "
          f"(head {done.head_hash}), {done.bytes} bytes, verified in {done.seconds:.1f} s")
    return EX_OK


def cmd_journal_redact(args: argparse.Namespace) -> int:
    """Erase a plate's or a resident's personal fields and snapshots, audited."""
    from gated.journal.redact import run_cli
    from gated.rules.cli import site_of

    db, _, snaps = _paths(args)
    identity, _tz = site_of(args.config)
    return run_cli(journal_path=db, snapshot_dir=snaps, identity=identity, plate=args.plate,
                   resident_id=args.resident, reason=args.reason)


def cmd_rules_import(args: argparse.Namespace) -> int:
    """Import a rule-set file atomically and audit it."""
    from gated.rules.cli import rules_import

    db, rules_db, _ = _paths(args)
    return rules_import(args, journal_path=db, rules_path=rules_db, config_path=args.config)


def cmd_ctl(args: argparse.Namespace) -> int:
    """Talk to the running daemon over its control socket."""
    from gated.control_client import run

    return run(args)


def cmd_keys(args: argparse.Namespace) -> int:
    """Show the device's signing key and the service keys it trusts."""
    from gated.keys_cli import run

    return run(args)


def cmd_pass(args: argparse.Namespace) -> int:
    """Add, revoke or list visitor passes as audited rule-set changes."""
    from gated.rules.cli import site_of
    from gated.rules.passes import run

    db, rules_db, _ = _paths(args)
    identity, tz = site_of(args.config)
    return run(args, journal_path=db, rules_path=rules_db, identity=identity, tz=tz)


def cmd_user(args: argparse.Namespace) -> int:
    """Add, change, remove or list status page users."""
    from gated.web.users_cli import run

    return run(args)


def cmd_recognize(args: argparse.Namespace) -> int:
    """Read the plates in pictures with the on-device recogniser, one JSON line per image."""
    from gated.recognize_cli import run

    return run(args)


def cmd_alert(args: argparse.Namespace) -> int:
    """Send a test alert through each configured alert channel."""
    from gated.alerts.cli import run

    _setup_logging("error")
    return run(args, _load_config_or_exit(args.config))


def cmd_rules_export(args: argparse.Namespace) -> int:
    """Export the rule set as JSON or CSV."""
    from gated.rules.cli import rules_export

    _, rules_db, _ = _paths(args)
    return rules_export(args, rules_path=rules_db)


# --- parser ------------------------------------------------------------------


def build_parser(*, lean: bool = False) -> argparse.ArgumentParser:
    """The argument parser of the `gated` command (lean: without the commands that
    live in their own modules, which `gated run` does not need to import)."""
    parser = argparse.ArgumentParser(
        prog="gated", description="Edge daemon for gates, barriers and doors."
    )
    parser.add_argument("--version", action="version", version=f"gated {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run on simulated hardware with generated traffic")
    p.add_argument(
        "--dir", default="var/demo", help="where the demo's config, journal and rules go"
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between simulated reads per lane"
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="camera listener port on 127.0.0.1 (default 8081, or a free one if that is in use;"
        " 0: any free)",
    )
    p.add_argument(
        "--mqtt",
        metavar="HOST:PORT",
        default=None,
        help="sync to this MQTT broker (default: 127.0.0.1:1883 when one answers); a demo"
        " service stores and acknowledges the events, and Home Assistant on that broker"
        " discovers the gate",
    )
    p.add_argument("--no-sync", action="store_true", help="do not sync, even to a local broker")
    p.add_argument(
        "--web-port", type=int, default=None,
        help="status page port on 127.0.0.1 (default 8080, or a free one if that is in use)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check-config", help="validate a config file (exit 0 or 78)")
    p.add_argument("path")
    p.set_defaults(func=cmd_check_config)

    def db_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", help="journal database (default: from the config)")
        q.add_argument(
            "--config", help=f"config file to take paths from (default {DEFAULT_CONFIG} if present)"
        )

    journal = sub.add_parser("journal", help="inspect the journal").add_subparsers(
        dest="journal_command", required=True, metavar="SUBCOMMAND"
    )
    p = journal.add_parser(
        "verify",
        help="verify the hash chain and triggers (0 intact, 1 not intact, 66 cannot verify)",
    )
    db_args(p)
    p.add_argument(
        "--anchor",
        metavar="SEQ:HASH",
        help="a head recorded earlier (gated journal head): the chain must still contain it",
    )
    p.add_argument(
        "--countersigned",
        action="store_true",
        help="anchor on the newest head the service countersigned (journal rows and the copy"
        " beside the journal); its signature is checked with the config's service keys",
    )
    p.set_defaults(func=cmd_journal_verify)
    p = journal.add_parser("head", help="print the chain head's seq and hash (an anchor)")
    db_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object: seq, row_hash, anchor")
    p.set_defaults(func=cmd_journal_head)
    p = journal.add_parser("export", help="export rows as JSON lines or CSV")
    db_args(p)
    p.add_argument("--since", help="ISO 8601 time, or a duration such as 24h / 7d")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--stream", choices=["access", "audit", "all"], default="all")
    p.add_argument("--out", help="file to write (default stdout)")
    p.set_defaults(func=cmd_journal_export)
    p = journal.add_parser("stats", help="counts, oldest unsynced event, sizes")
    db_args(p)
    p.add_argument(
        "--snapshots",
        help="snapshot folder (default: from the config, or 'snapshots' beside --db)",
    )
    p.set_defaults(func=cmd_journal_stats)
    p = journal.add_parser(
        "backup", help="copy the journal to DEST while the daemon runs, verified (SQLite backup)")
    db_args(p)
    p.add_argument("dest", help="a new file, or a folder to put a dated copy in")
    p.set_defaults(func=cmd_journal_backup)
    p = journal.add_parser(
        "redact", help="erase the personal fields and snapshots of a plate's or resident's events")
    db_args(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--plate", help="the plate, as typed or normalised")
    who.add_argument("--resident", help="a resident id: every event recorded for them")
    p.add_argument("--reason", default="erasure request",
                   help="why (kept in the audit record, e.g. a request reference)")
    p.add_argument(
        "--snapshots",
        help="snapshot folder (default: from the config, or 'snapshots' beside --db)",
    )
    p.set_defaults(func=cmd_journal_redact)

    rules = sub.add_parser("rules", help="import or export the rule set").add_subparsers(
        dest="rules_command", required=True, metavar="SUBCOMMAND"
    )
    p = rules.add_parser("import", help="import a rule-set file (atomic, audited)")
    db_args(p)
    p.add_argument("--rules-db", help="rules database (default: from the config)")
    p.add_argument("file")
    p.add_argument("--format", choices=["json", "csv"], help="default: from the file name")
    p.add_argument(
        "--merge",
        action="store_true",
        help="merge into the current rules instead of replacing them",
    )
    p.add_argument(
        "--actor", default=os.environ.get("SUDO_USER") or os.environ.get("USER") or "installer"
    )
    p.set_defaults(func=cmd_rules_import)
    p = rules.add_parser("export", help="export the rule set")
    db_args(p)
    p.add_argument("--rules-db", help="rules database (default: from the config)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", help="file (json) or directory (csv); default stdout for json")
    p.set_defaults(func=cmd_rules_export)

    if lean:  # `gated run`: the daemon needs none of the commands below (48 modules, 2.5 MB)
        return parser
    from gated import control_client, keys_cli
    from gated.rules import passes

    control_client.add_parser(sub, cmd_ctl)
    passes.add_parser(sub, cmd_pass)
    keys_cli.add_parser(sub, cmd_keys)
    from gated.web import users_cli

    users_cli.add_parser(sub, cmd_user)
    from gated.alerts import cli as alerts_cli

    alerts_cli.add_parser(sub, cmd_alert)
    from gated import recognize_cli

    recognize_cli.add_parser(sub, cmd_recognize)
    # the parser only: gated.central's storage packages are imported by its commands
    from gated.central import cli as central_cli

    central_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gated` command; returns the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(lean=words[:1] == ["run"]).parse_args(argv)
    try:
        return int(args.func(args))
    except StateError as err:
        print(f"gated: {err}", file=sys.stderr)
        return EX_CANTCREAT
    except GatedError as err:
        print(f"gated: {err}", file=sys.stderr)
        return EX_FAIL
    except BrokenPipeError:
        # `gated journal export | head` closing the pipe early is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except OSError as err:
        # A file a command was pointed at (--out, an import file) cannot be read or written:
        # the installer needs the path and the reason, not a traceback.
        print(f"gated: {err}", file=sys.stderr)
        return EX_FAIL
    except KeyboardInterrupt:
        return 130
