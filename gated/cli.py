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

from gated.errors import GatedError

EX_OK = 0
EX_FAIL = 1
EX_USAGE = 64
EX_CONFIG = 78
DEFAULT_CONFIG = "/etc/gated/gated.toml"


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
    """(journal db, rules db, snapshot dir) from --db/--rules-db or the config file."""
    from gated.config import JournalConfig, RulesConfig

    journal, rules, snaps = JournalConfig().path, RulesConfig().path, JournalConfig().snapshot_dir
    config_path = getattr(args, "config", None)
    if config_path or Path(DEFAULT_CONFIG).exists():
        cfg = _load_config_or_exit(config_path or DEFAULT_CONFIG)
        journal, rules, snaps = cfg.journal.path, cfg.rules.path, cfg.journal.snapshot_dir
    journal = getattr(args, "db", None) or journal
    rules = getattr(args, "rules_db", None) or rules
    return journal, rules, snaps


# --- subcommands -------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file: exit 0 when valid, 78 with a one-line message when not."""
    cfg = _load_config_or_exit(args.path)
    print(
        f"{args.path}: ok ({len(cfg.lanes)} lane(s), "
        f"site {cfg.site.site_id}, device {cfg.site.device_id})"
    )
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    cfg = _load_config_or_exit(args.config)
    _setup_logging(cfg.log.level)
    from gated.app import run_daemon

    return run_daemon(cfg, config_path=args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the daemon on simulated hardware with a traffic generator."""
    _setup_logging("warning")
    from gated.demo import run_demo

    return run_demo(
        Path(args.dir), duration_s=args.duration, interval_s=args.interval, port=args.port
    )


def cmd_journal_verify(args: argparse.Namespace) -> int:
    """Check the journal's hash chain; exit 1 naming the first bad sequence number."""
    from gated.journal_verify import verify

    db, _, _ = _paths(args)
    result = verify(db)
    print(result.message)
    return EX_OK if result.ok else EX_FAIL


def cmd_journal_export(args: argparse.Namespace) -> int:
    """Write journal rows as JSON lines or CSV to stdout or --out."""
    from gated.journal_export import export
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

    from gated.journal_export import stats

    db, _, snaps = _paths(args)
    print(json.dumps(stats(db, snapshot_dir=snaps), indent=2, sort_keys=True, default=str))
    return EX_OK


def cmd_rules_import(args: argparse.Namespace) -> int:
    """Import a rule-set file atomically and audit it."""
    from gated.rules_cli import rules_import

    db, rules_db, _ = _paths(args)
    return rules_import(args, journal_path=db, rules_path=rules_db, config_path=args.config)


def cmd_rules_export(args: argparse.Namespace) -> int:
    """Export the rule set as JSON or CSV."""
    from gated.rules_cli import rules_export

    _, rules_db, _ = _paths(args)
    return rules_export(args, rules_path=rules_db)


# --- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `gated` command."""
    parser = argparse.ArgumentParser(
        prog="gated", description="Edge daemon for gates, barriers and doors."
    )
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
        "--port", type=int, default=8081, help="camera listener port on 127.0.0.1 (0: any free)"
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
    p = journal.add_parser("verify", help="verify the hash chain (exit 1 on the first bad row)")
    db_args(p)
    p.set_defaults(func=cmd_journal_verify)
    p = journal.add_parser("export", help="export rows as JSON lines or CSV")
    db_args(p)
    p.add_argument("--since", help="ISO 8601 time, or a duration such as 24h / 7d")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--stream", choices=["access", "audit", "all"], default="all")
    p.add_argument("--out", help="file to write (default stdout)")
    p.set_defaults(func=cmd_journal_export)
    p = journal.add_parser("stats", help="counts, oldest unsynced event, sizes")
    db_args(p)
    p.set_defaults(func=cmd_journal_stats)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gated` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GatedError as err:
        print(f"gated: {err}", file=sys.stderr)
        return EX_FAIL
    except BrokenPipeError:
        # `gated journal export | head` closing the pipe early is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except KeyboardInterrupt:
        return 130
