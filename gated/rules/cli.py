"""`gated rules import|export`: the rule-set files, with the import audited in the journal.

An import is one change set of the rule store (a new version the running daemon picks up)
and one audit row in the journal, success or failure, so every change to who may enter is
accounted for; both files are checked writable before either is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gated.audit import Auditor
from gated.config import DEFAULT_CONFIG, Config, load_config
from gated.errors import RulesError
from gated.model import SiteIdentity
from gated.state_dirs import adopt_files, prepare_file
from gated.wording import rule_counts


def site_of(config_path: str | None) -> tuple[SiteIdentity, str]:
    """Identity and time zone from the config, when there is one."""
    path = config_path or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    if path is None:
        return SiteIdentity("unknown", "unknown", "unknown"), "UTC"
    cfg: Config = load_config(path)
    return cfg.site.identity, cfg.site.timezone


async def _audit(journal_path: str, identity: SiteIdentity, **kwargs: object) -> None:
    from gated.journal import Journal

    journal = await Journal.open(journal_path)
    try:
        await Auditor(journal.append, identity).record(
            "rules_import", "rules", actor_type="installer", **kwargs
        )
    finally:
        await journal.close()


def rules_import(
    args: argparse.Namespace, *, journal_path: str, rules_path: str, config_path: str | None
) -> int:
    """Import a rule-set file atomically; print a summary or every bad row; audit either way."""
    from gated.rules.files import import_rules
    from gated.rules.store import RuleStore

    identity, tz = site_of(config_path)
    # Both stores are checked before either is touched: an import the audit row cannot follow
    # would be a change nobody can account for.
    prepare_file(rules_path, "the rule store")
    prepare_file(journal_path, "the journal")
    meta = {"file": str(args.file), "merge": bool(args.merge)}
    with RuleStore(rules_path) as store:
        try:
            result = import_rules(
                store, args.file, fmt=args.format, merge=args.merge, actor=args.actor, tz=tz
            )
        except RulesError as err:
            print(f"gated: rules not imported, nothing changed:\n{err}", file=sys.stderr)
            asyncio.run(
                _audit(
                    journal_path,
                    identity,
                    actor_id=args.actor,
                    status="failure",
                    error_message=str(err)[:2000],
                    metadata=meta,
                )
            )
            adopt_files([rules_path, journal_path])
            return 1
    new_values = {
        "version": result.version,
        "format": result.format,
        "sha256": result.sha256,
        "counts": result.counts,
        "written": result.written,
        "deleted": result.deleted,
    }
    asyncio.run(
        _audit(journal_path, identity, actor_id=args.actor, new_values=new_values, metadata=meta)
    )
    adopt_files([rules_path, journal_path])
    counts = rule_counts(result.counts)
    print(
        f"rules imported as version {result.version} "
        f"({'merged' if result.merge else 'replaced'}): {counts}"
    )
    return 0


def rules_export(args: argparse.Namespace, *, rules_path: str) -> int:
    """Write the rule set as JSON (file or stdout) or CSV (a folder)."""
    from gated.rules.files import export_rules
    from gated.rules.store import RuleStore

    if not Path(rules_path).exists():
        raise RulesError(f"no rule store at {rules_path}")
    with RuleStore(rules_path) as store:
        if args.format == "csv":
            if not args.out:
                raise RulesError("CSV export writes one file per kind: give a folder with --out")
            export_rules(store, args.out, "csv")
        else:
            export_rules(store, args.out or sys.stdout, "json")
    return 0
