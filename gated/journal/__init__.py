"""The device's SQLite journal: every access event and audit record, append-only, in one
hash chain, durable before anyone is told "taken", and marked synced only after upstream
acknowledged it. `rows` defines a row and how the chain hashes it, `schema` the file and
its migrations, `writer` the one thread that commits, `journal` the async `Journal` the
daemon uses, `commits` the feed of committed seqs, `verify` and `export` the offline tools
behind `gated journal verify|head|export|stats`. Design notes: docs/journal-internals.md.
"""

from gated.journal.commits import CommitFeed
from gated.journal.journal import Journal
from gated.journal.writer import Erasure, Pruned

__all__ = ["CommitFeed", "Erasure", "Journal", "Pruned"]
