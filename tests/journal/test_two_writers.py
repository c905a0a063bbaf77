"""Two writers on one journal file (the daemon and `gated rules import`) keep one valid chain."""

from __future__ import annotations

from pathlib import Path

from gated.journal import Journal
from gated.journal.verify import verify
from tests.journal.journal_child import access_event, audit_event


async def test_interleaved_writers_share_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    daemon = await Journal.open(path)
    seqs = [await daemon.append(access_event())]
    for _ in range(3):
        cli = await Journal.open(path)  # a second process opening the same file
        seqs.append(await cli.append(audit_event()))
        await cli.close()
        seqs.append(await daemon.append(access_event()))
        seqs.append(await daemon.append(audit_event()))
    await daemon.close()
    assert seqs == list(range(1, len(seqs) + 1))
    result = verify(path)
    assert result.ok, result.message
    assert result.rows == len(seqs)
