"""The alerts' state file beside the journal: how far the watcher and each channel got.

{"version": 1, "observed_seq": N, "channels": {"<name>": seq, …}}: the watcher has
looked at every journal row up to observed_seq; a channel has delivered (or given up on)
every alert up to its seq. Written durably (gated.file_modes.replace_private): a power cut
leaves the old cursors or the new, and an old cursor only means an alert is sent again
with the same id, which receivers de-duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from gated.file_modes import replace_private

log = logging.getLogger(__name__)

STATE_NAME = "alerts-state.json"


def state_path(journal_path: str, configured: str = "") -> Path:
    """Where the state file lives: the configured path, else beside the journal."""
    return Path(configured) if configured else Path(journal_path).parent / STATE_NAME


class AlertState:
    """The cursors, loaded once and written through one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.observed_seq: int | None = None
        self.channels: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._load()

    def _load(self) -> None:
        try:
            doc: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            # A damaged file loses where delivery stood, never an alert row: the channels
            # start again from the journal's head and the watcher from now.
            log.error("alerts state file %s unreadable (%s): starting from the journal head",
                      self.path, err)
            return
        if not isinstance(doc, dict):
            return
        seq = doc.get("observed_seq")
        if isinstance(seq, int) and seq >= 0:
            self.observed_seq = seq
        channels = doc.get("channels")
        if isinstance(channels, dict):
            self.channels = {str(k): v for k, v in channels.items()
                             if isinstance(v, int) and v >= 0}

    async def save(self) -> None:
        """Write the cursors durably (in a worker thread)."""
        async with self._lock:
            data = json.dumps({"version": 1, "observed_seq": self.observed_seq,
                               "channels": dict(self.channels)}, sort_keys=True).encode()
            # A temporary name of this process's own: a second gated command writing the
            # same state (it should not, but a test or a stray copy might) cannot collide.
            await asyncio.to_thread(replace_private, self.path, data,
                                    tmp_suffix=f".{os.getpid()}.tmp")
