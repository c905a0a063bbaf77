"""Pictures kept content-addressed on local disk: one file per SHA-256, written once."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SnapshotStore:
    """A folder of pictures named by their SHA-256 (`ab/cd/abcd…`), deduplicated by name."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        """Where the picture with this hash lives (ValueError for a malformed hash)."""
        if not SHA256.match(sha256):
            raise ValueError("not a lower-case hex SHA-256")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, sha256: str, body: bytes) -> tuple[str, bool]:
        """Keep `body` under its hash; (relative path, True if newly written).

        ValueError when the body does not hash to `sha256`. Written to a temporary file,
        fsynced and renamed, so a crash never leaves half a picture under a good name.
        """
        if hashlib.sha256(body).hexdigest() != sha256:
            raise ValueError("the body does not hash to the name")
        path = self.path_of(sha256)
        relative = str(path.relative_to(self.root))
        if path.exists():
            return relative, False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".in-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return relative, True
