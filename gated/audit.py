"""Builds audit_logs records and hands them to the journal.

Every human or remote action, every refused attempt and every fault goes
through here, so the identity stamp, the clock flag and secret redaction are
applied in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gated.clock import ClockWatch
from gated.config import redacted
from gated.ids import new_event_id
from gated.model import AccessEvent, AuditEvent, SiteIdentity

log = logging.getLogger(__name__)

Append = Callable[[AccessEvent | AuditEvent], Awaitable[int]]


class Auditor:
    """Writes audit events for one device."""

    def __init__(
        self, append: Append, identity: SiteIdentity, clock: ClockWatch | None = None
    ) -> None:
        self._append = append
        self.identity = identity
        self.clock = clock or ClockWatch()
        self._pending: set[asyncio.Task[int]] = set()

    def build(
        self,
        action: str,
        resource_type: str,
        *,
        actor_type: str = "system",
        old_values: Mapping[str, Any] | None = None,
        new_values: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> AuditEvent:
        """An AuditEvent stamped with this device's identity; values are redacted of secrets."""
        return AuditEvent(
            event_id=new_event_id(),
            tenant_id=self.identity.tenant_id,
            site_id=self.identity.site_id,
            device_id=self.identity.device_id,
            created_at=time.time(),
            action=action,
            resource_type=resource_type,
            actor_type=actor_type,
            old_values=redacted(dict(old_values)) if old_values is not None else None,
            new_values=redacted(dict(new_values)) if new_values is not None else None,
            metadata=redacted(dict(metadata or {})),
            clock_unsynced=self.clock.unsynced(),
            **fields,
        )

    async def record(self, action: str, resource_type: str, **kwargs: Any) -> int:
        """Append an audit event and wait until it is durable; returns its sequence number."""
        return await self._append(self.build(action, resource_type, **kwargs))

    def emit(self, action: str, resource_type: str, **kwargs: Any) -> None:
        """Record without waiting (for callbacks that cannot await); failures are logged."""
        event = self.build(action, resource_type, **kwargs)
        task = asyncio.get_running_loop().create_task(self._append(event))
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[int]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not journal an audit event: %s", task.exception())

    async def drain(self) -> None:
        """Wait for every emitted event to be written."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
