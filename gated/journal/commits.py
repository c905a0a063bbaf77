"""Which journal rows are committed, for consumers that must not poll: sync, the live feed.

The journal advances one `CommitFeed` after every batch its writer commits (access
and audit rows share one sequence, so one number says it all). A consumer keeps
only the feed — not the journal's writer — and awaits the seq it needs:

    seq = await feed.wait(last_seen + 1)   # returns at once if already committed

Rows appended by another process (a `gated rules import` writing its audit row)
are seen when the daemon's writer next re-reads the chain head, i.e. with its next
batch: the feed reports this process's commits promptly, others' eventually.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["CommitFeed"]


class CommitFeed:
    """The highest committed seq, and waiters woken once it reaches theirs."""

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self._waiters: list[tuple[int, int, asyncio.Future[int]]] = []
        self._order = itertools.count()  # ties broken by arrival, never by comparing futures
        self.closed = False

    def advance(self, seq: int) -> None:
        """Record that every row up to `seq` is committed; wake whoever waited for it."""
        if seq <= self.seq:
            return
        self.seq = seq
        waiters = self._waiters
        while waiters and waiters[0][0] <= seq:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(seq)

    async def wait(self, seq: int) -> int:
        """Wait until rows up to `seq` are committed; the committed seq then (>= seq).

        Raises EOFError once the journal closed without reaching it.
        """
        if self.seq >= seq:
            return self.seq
        if self.closed:
            raise EOFError("journal closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._order), future))
        return await future

    def close(self) -> None:
        """Wake every waiter with EOFError: nothing more will be committed."""
        self.closed = True
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(EOFError("journal closed"))
        self._waiters.clear()
