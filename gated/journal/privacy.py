"""Unknown plates forgotten after a while ([privacy] unknown_plate_hash_after_h).

A read that matched nobody (`decision_reason = unknown_plate`) is kept as evidence for
a configurable time; after it, the row's plate text is erased through the journal's one
erasure path (`Journal.erase_personal`: the text and the per-row salt go, the salted
digest that is hashed into the chain stays, so `gated journal verify` still passes and
counts the rows as lawfully erased) and its picture is blurred as a whole (OpenCV
Gaussian blur, the file replaced atomically) or deleted, as configured.

Each pass that changes anything is one chained `personal_data_erased` audit row with
`selector = "unknown_plate_age"`, the event ids, the original picture hashes and the
blurred pictures' new hashes; never a plate. It goes upstream like every audit row, so
the service forgets the same plates. Design and trade-offs: docs/operations.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gated.errors import PayloadError
from gated.file_modes import replace_private
from gated.journal.journal import Journal
from gated.model import AuditEvent, Reason
from gated.snapshots import SnapshotStore

log = logging.getLogger(__name__)

ACTION = "personal_data_erased"
SELECTOR = "unknown_plate_age"
_PAGE = 500
_MAX_ROWS_PER_PASS = 5000  # one erasure record stays a reasonable size; the next pass goes on


@dataclass(frozen=True, slots=True)
class PrivacyOutcome:
    """What one pass forgot: rows erased, pictures blurred or deleted, the audit row's seq."""

    rows: int = 0
    snapshots: int = 0
    audit_seq: int | None = None


def blur_jpeg(data: bytes) -> bytes:
    """The whole picture Gaussian-blurred past reading (sigma 4% of its longer side)."""
    import cv2  # only a site that keeps pictures and turns this on pays for OpenCV
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable JPEG")
    sigma = max(image.shape[0], image.shape[1]) * 0.04
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    ok, encoded = cv2.imencode(".jpg", blurred, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("cannot encode the blurred picture")
    return bytes(encoded.tobytes())


def _replace_blurred(path: Path) -> str | None:
    """Blur the picture at `path` in place (fsync + rename); its new SHA-256, None if gone."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        blurred = blur_jpeg(data)
    except ValueError:
        # Not a picture OpenCV can read: nothing of it can be kept safely, so it goes.
        path.unlink(missing_ok=True)
        return None
    replace_private(path, blurred, tmp_suffix=".blur.partial")
    return hashlib.sha256(blurred).hexdigest()


class UnknownPlates:
    """Erases the plate of unknown-plate rows older than `after_s`, blurs their pictures."""

    def __init__(self, journal: Journal, snapshots: SnapshotStore | None,
                 build_request: Callable[[dict[str, object]], AuditEvent], *,
                 after_s: float, pictures: Literal["blur", "delete"] = "blur") -> None:
        self.journal = journal
        self.snapshots = snapshots
        self.build_request = build_request
        self.after_s = after_s
        self.pictures = pictures
        # Rows up to this seq were looked at while already old enough: not read again.
        self._through_seq = 0

    async def _due(self, cutoff: float) -> tuple[list[dict[str, Any]], int]:
        """Unknown-plate rows created before `cutoff` whose plate is still there, oldest first."""
        due: list[dict[str, Any]] = []
        newest = self._through_seq
        before: int | None = None
        while True:
            page = await self.journal.find(
                "access", equals={"decision_reason": str(Reason.UNKNOWN_PLATE)},
                until=cutoff, before_seq=before, limit=_PAGE)
            fresh = [r for r in page if r["seq"] > self._through_seq]
            if fresh:
                newest = max(newest, fresh[0]["seq"])
            due.extend(r for r in fresh if r.get("vehicle_plate") is not None)
            if len(fresh) < _PAGE:
                break
            before = page[-1]["seq"]
        due.sort(key=lambda r: r["seq"])
        if len(due) > _MAX_ROWS_PER_PASS:
            due = due[:_MAX_ROWS_PER_PASS]
            newest = due[-1]["seq"]  # the rest is found by the next pass
        return due, newest

    async def run_once(self, now: float) -> PrivacyOutcome:
        """Forget the plates (and pictures) of unknown-plate rows created before now - after_s.

        `now` is the caller's best time (the clock watch's time base after a jump); the
        daemon does not call this while the clock cannot be right (1970).
        """
        due, newest = await self._due(now - self.after_s)
        if not due:
            self._through_seq = newest
            return PrivacyOutcome()
        originals = sorted({r["snapshot_sha256"] for r in due if r.get("snapshot_sha256")})
        blurred: list[str] = []
        handled = 0
        if self.snapshots is not None:
            paths = [r["snapshot_path"] for r in due if r.get("snapshot_path")]
            if self.pictures == "delete":
                gone = await asyncio.to_thread(self.snapshots.remove, paths)
                handled = len(paths) if gone else 0
            else:
                for rel in paths:
                    try:
                        full = self.snapshots.path_of(rel)
                    except PayloadError:  # a path outside the store: never touched
                        log.warning("unknown plates: picture path %r refused", rel)
                        continue
                    digest = await asyncio.to_thread(_replace_blurred, full)
                    if digest is not None:
                        blurred.append(digest)
                        handled += 1
        metadata: dict[str, object] = {
            "selector": SELECTOR,
            "reason": "unknown plate kept for its configured time",
            "after_h": self.after_s / 3600.0,
            "event_ids": [r["event_id"] for r in due],
            "snapshot_sha256": originals,
            "pictures": self.pictures,
            "blurred_sha256": sorted(blurred),
        }
        erasure = await self.journal.erase_personal(
            self.build_request(metadata), event_ids=[r["event_id"] for r in due])
        self._through_seq = newest
        log.info("unknown plates: forgot %d plate(s), %s %d picture(s); recorded as seq %d",
                 len(erasure.erased_seqs), "blurred" if self.pictures == "blur" else "deleted",
                 handled, erasure.audit_seq)
        return PrivacyOutcome(len(erasure.erased_seqs), handled, erasure.audit_seq)
