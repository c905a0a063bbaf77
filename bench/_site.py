"""What the daemon benchmarks share: a loopback port, plates, a site's config, residents, RSS."""

from __future__ import annotations

import json
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plate(i: int) -> str:
    """The i-th of a sequence of distinct, valid-looking plates."""
    a = "ABCDEFGHJKLMNPRSTUVWXYZ"
    return f"{a[i % 23]}{a[(i // 23) % 23]}{i % 1000:03d}{a[(i // 529) % 23]}{a[(i // 7) % 23]}"


def rss_mb(pid: int) -> float:
    """The VmRSS of process `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def lane_toml(lane: str, direction: str, camera_path: str, *, source: str,
              pulse_ms: int = 200) -> str:
    """One lane on a fake relay with a generic JSON camera allowed from loopback."""
    return f"""
[[lanes]]
id = "{lane}"
direction = "{direction}"
dedup_window_s = 0
[lanes.relay]
kind = "fake"
pulse_ms = {pulse_ms}
[[lanes.sources]]
kind = "anpr_http"
name = "{source}"
format = "generic"
path = "{camera_path}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


def site_toml(base: Path, camera_port: int, device_id: str, rest: str) -> str:
    """A site whose journal and rules live in `base`, cameras on 127.0.0.1:`camera_port`,
    logging warnings; `rest` is the further tables (lanes, [web], [sync], ...)."""
    return f"""
[site]
tenant_id = "bench"
site_id = "bench"
device_id = "{device_id}"
[journal]
path = "{base / "journal.sqlite3"}"
snapshot_dir = "{base / "snapshots"}"
[rules]
path = "{base / "rules.sqlite3"}"
[cameras_listener]
host = "127.0.0.1"
port = {camera_port}
[log]
level = "warning"
{rest}"""


def import_residents(base: Path, rules_db: Path | str, plates: list[str]) -> None:
    """One resident per plate, allowed at every access point, imported into `rules_db`
    through `gated rules import`'s path (the document is left in base/rules.json)."""
    from gated.rules.files import import_rules
    from gated.rules.store import RuleStore

    rules = {"format": "gated-rules", "format_version": 1,
             "residents": [{"id": f"r{i}", "name": f"Resident {i}", "access_points": "*"}
                           for i in range(len(plates))],
             "vehicles": [{"id": f"v{i}", "plate": p, "resident_id": f"r{i}"}
                          for i, p in enumerate(plates)]}
    (base / "rules.json").write_text(json.dumps(rules))
    with RuleStore(rules_db) as store:
        import_rules(store, base / "rules.json")
