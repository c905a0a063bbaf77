"""Event factories for the journal tests, and the child process of the crash test.

Run as a script: `python journal_child.py DB_PATH` appends events forever from several
concurrent producers and prints each seq (flushed) right after its commit returned.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from typing import Any

from gated.ids import new_event_id
from gated.journal import Journal
from gated.model import AccessEvent, AuditEvent

_counter = itertools.count(1)


def access_event(**overrides: Any) -> AccessEvent:
    """A plausible access event; keyword arguments replace fields."""
    n = next(_counter)
    fields: dict[str, Any] = {
        "event_id": new_event_id(), "tenant_id": "t1", "site_id": "s1", "device_id": "d1",
        "created_at": 1_700_000_000.0 + n, "event_type": "entry", "access_point": "main-in",
        "authorization_method": "auto_plate", "decision_reason": "resident",
        "rules_version": 3, "direction": "in", "resident_id": f"r{n % 7}",
        "vehicle_id": f"v{n % 7}", "vehicle_plate": f"AB{n:04d}CD", "confidence_score": 0.93,
        "read_to_relay_ms": 42.5, "metadata": {"country": "NL", "n": n},
    }
    fields.update(overrides)
    return AccessEvent(**fields)


def audit_event(**overrides: Any) -> AuditEvent:
    """A plausible audit event; keyword arguments replace fields."""
    n = next(_counter)
    fields: dict[str, Any] = {
        "event_id": new_event_id(), "tenant_id": "t1", "site_id": "s1", "device_id": "d1",
        "created_at": 1_700_000_000.0 + n, "action": "relay_pulse", "resource_type": "relay",
        "actor_type": "system", "resource_id": "main-in", "ip_address": "192.0.2.7",
        "user_agent": "Mozilla/5.0", "new_values": {"pulse_ms": 800}, "duration_ms": 801.0,
    }
    fields.update(overrides)
    return AuditEvent(**fields)


async def _produce(journal: Journal, producer: int) -> None:
    while True:
        event = access_event() if producer % 2 else audit_event(created_at=time.time())
        seq = await journal.append(event)
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()


async def _main(path: str) -> None:
    journal = await Journal.open(path)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*(_produce(journal, i) for i in range(4)))


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
