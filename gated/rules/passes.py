"""`gated pass add|revoke|list`: visitor passes without writing a rule-set file.

Each add or revoke is one change set of the rule store (a new rule-set
version, which the running daemon picks up within its rule poll as it does an
import) and one audit row in the journal naming the Unix user who ran it. The
plate and the visitor's name stay out of the audit row: they are personal data,
kept only in the rule store where a revoke removes them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import sys
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gated import unix_user
from gated.audit import Auditor
from gated.config import DEFAULT_CONFIG
from gated.errors import RulesError
from gated.model import SiteIdentity
from gated.timeparse import parse_when
from gated.wording import plural

__all__ = ["add_parser", "run"]

def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """Add `gated pass …` (handled by `func`) to the top-level subparsers."""
    passes = sub.add_parser("pass", help="add, revoke or list visitor passes").add_subparsers(
        dest="pass_action", required=True, metavar="ACTION"
    )

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG})")
        p.add_argument("--rules-db", default=None, help="rule store (default: from the config)")
        p.add_argument("--db", default=None, help="journal for the audit row (default: config)")
        p.set_defaults(func=func)

    p = passes.add_parser("add", help="issue a visitor pass (a new rule-set version)")
    p.add_argument("plate")
    p.add_argument("--host", required=True, help="id of the resident who invites")
    p.add_argument("--until", required=True, help="end: ISO time or a span from now (4h, 2d)")
    p.add_argument("--from", dest="valid_from", default="now", help="start (default: now)")
    p.add_argument("--uses", type=int, default=None, help="entries allowed (default: unlimited)")
    p.add_argument("--lanes", default=None, help="comma-separated lanes (default: every lane)")
    p.add_argument("--name", default="", help="visitor's name (personal data)")
    p.add_argument("--id", default=None, help="pass id (default: generated)")
    common(p)
    p = passes.add_parser("revoke", help="remove a visitor pass (a new rule-set version)")
    p.add_argument("id")
    common(p)
    p = passes.add_parser("list", help="passes valid now or later")
    p.add_argument("--all", action="store_true", help="include expired passes")
    common(p)


class NoSuchPass(RulesError, LookupError):
    """Revoking a pass the rule store does not hold."""


def new_pass_id(now: float) -> str:
    """A fresh pass id, "p-YYYYMMDD-xxxxxx" (the day in UTC, six random hex digits)."""
    return f"p-{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(3)}"


def add_pass(store: Any, *, pass_id: str, plate: str, host: str, valid_from: float,
             valid_until: float, name: str, lanes: frozenset[str] | None, uses: int | None,
             actor: str, source: str) -> tuple[int, dict[str, Any]]:
    """Save one visitor pass as a rule-set version: (version, the audit row's new_values)."""
    from gated.rules.entities import VisitorPass

    if valid_until <= valid_from:
        raise RulesError("the pass must end later than it starts")
    if uses is not None and uses < 1:
        raise RulesError("a pass needs at least 1 use")
    entry = VisitorPass(id=pass_id, plate=plate, host_resident_id=host,
                        valid_from=valid_from, valid_until=valid_until, visitor_name=name,
                        access_points=lanes, max_uses=uses)
    version = int(store.apply([entry], actor=actor, source=source))
    return version, {"rules_version": version, "host_resident_id": host,
                     "valid_from": valid_from, "valid_until": valid_until, "max_uses": uses,
                     "access_points": sorted(lanes) if lanes else None}


def revoke_pass(store: Any, pass_id: str, *, actor: str, source: str) -> int:
    """Delete one visitor pass as a rule-set version; NoSuchPass when there is none."""
    from gated.rules.store import Delete

    if store.get("visitor_passes", pass_id) is None:
        raise NoSuchPass(f"no visitor pass {pass_id!r}")
    return int(store.apply([Delete("visitor_passes", pass_id)], actor=actor, source=source))


async def _audit(journal_path: str, identity: SiteIdentity, action: str, **kw: Any) -> None:
    from gated.journal import Journal

    journal = await Journal.open(journal_path)
    try:
        await Auditor(journal.append, identity).record(
            action, "visitor_pass", actor_type="local_user", actor_id=unix_user.name_of(),
            ip_address=f"uid={os.getuid()}", **kw,
        )
    finally:
        await journal.close()


def run(args: argparse.Namespace, *, journal_path: str, rules_path: str,
        identity: SiteIdentity, tz: str) -> int:
    """Carry out one `gated pass` invocation; returns the exit status."""
    from gated.rules.store import RuleStore

    if args.pass_action != "add" and not Path(rules_path).exists():
        raise RulesError(f"no rule store at {rules_path}")
    now = time.time()
    with RuleStore(rules_path) as store:
        if args.pass_action == "list":
            return _list(store, now, args.all)
        if args.pass_action == "revoke":
            version = revoke_pass(store, args.id, actor=unix_user.name_of(),
                                  source="gated pass revoke")
            asyncio.run(_audit(journal_path, identity, "pass_revoke", resource_id=args.id,
                               new_values={"rules_version": version}))
            print(f"pass {args.id} revoked (rule-set version {version})")
            return 0
        valid_from = parse_when(args.valid_from, tz, now)
        valid_until = parse_when(args.until, tz, now)
        if valid_until <= valid_from:
            raise RulesError("--until must be later than --from")
        if args.uses is not None and args.uses < 1:
            raise RulesError("--uses must be at least 1")
        lanes = None
        if args.lanes:
            lanes = frozenset(x.strip() for x in args.lanes.split(",") if x.strip())
        pass_id = args.id or new_pass_id(now)
        version, details = add_pass(
            store, pass_id=pass_id, plate=args.plate, host=args.host, valid_from=valid_from,
            valid_until=valid_until, name=args.name, lanes=lanes, uses=args.uses,
            actor=unix_user.name_of(), source="gated pass add")
    asyncio.run(_audit(journal_path, identity, "pass_add", resource_id=pass_id,
                       new_values=details))
    until = dt.datetime.fromtimestamp(valid_until, zoneinfo.ZoneInfo(tz)).isoformat(
        timespec="minutes")
    uses = f", {plural(args.uses, 'use')}" if args.uses else ""
    print(f"pass {pass_id} added (rule-set version {version}): valid until {until}{uses}")
    return 0


def _list(store: Any, now: float, everything: bool) -> int:
    shown = 0
    for vp in store.entities("visitor_passes", raw=False):
        if not everything and vp.valid_until < now:
            continue
        lanes = ",".join(sorted(vp.access_points)) if vp.access_points else "*"
        uses = "unlimited" if vp.max_uses is None else str(vp.max_uses)
        print(f"{vp.id}\t{vp.plate}\thost {vp.host_resident_id}\t"
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(vp.valid_from))} → "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(vp.valid_until))} UTC\t"
              f"uses {uses}\tlanes {lanes}")
        shown += 1
    print(plural(shown, "pass", "passes"), file=sys.stderr)
    return 0
