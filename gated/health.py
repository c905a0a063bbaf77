"""Component liveness and the systemd notify protocol (READY, STATUS, WATCHDOG, STOPPING).

The watchdog is pinged only while the event loop is responsive and every
critical component (the journal above all) reports healthy: a gate whose
journal cannot write must be restarted by systemd, not kept alive by a timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends sd_notify(3) datagrams to $NOTIFY_SOCKET; a no-op when not under systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        # An abstract-namespace socket is written with a leading '@'.
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return bool(self._addr)

    def notify(self, *lines: str) -> bool:
        """Send `KEY=value` lines in one datagram; False when not under systemd or on error."""
        if not self._addr:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError as err:
            log.warning("systemd notify failed: %s", err)
            return False
        return True


@dataclass(slots=True)
class ComponentStatus:
    """What the status API shows of one component."""

    name: str
    ok: bool
    detail: str = ""
    critical: bool = False
    since: float = 0.0  # wall clock of the last change


class Health:
    """Registry of component health, and the watchdog loop."""

    def __init__(
        self, notifier: SystemdNotifier | None = None, *, max_loop_lag_s: float = 2.0
    ) -> None:
        self.notifier = notifier or SystemdNotifier()
        self.components: dict[str, ComponentStatus] = {}
        self.max_loop_lag_s = max_loop_lag_s
        self.loop_lag_s = 0.0
        self.watchdog_pings = 0

    def set(self, name: str, ok: bool, detail: str = "", *, critical: bool = False) -> None:
        """Record a component's health; logs only when it changes."""
        current = self.components.get(name)
        if current and current.ok == ok and current.detail == detail:
            return
        if current is None or current.ok != ok:
            if ok and current is not None:
                log.info("%s recovered", name)
            elif not ok:
                log.warning("%s unhealthy: %s", name, detail)
        crit = critical or (current.critical if current else False)
        self.components[name] = ComponentStatus(name, ok, detail, crit, time.time())

    def healthy(self) -> bool:
        """True when every critical component is ok and the loop is responsive."""
        if self.loop_lag_s > self.max_loop_lag_s:
            return False
        return all(c.ok for c in self.components.values() if c.critical)

    def summary(self) -> str:
        """A one-line STATUS= text for systemctl status."""
        bad = [c.name for c in self.components.values() if not c.ok]
        return "all components healthy" if not bad else "degraded: " + ", ".join(sorted(bad))

    def ready(self) -> None:
        """Tell systemd start-up is complete."""
        self.notifier.notify("READY=1", f"STATUS={self.summary()}")

    def stopping(self) -> None:
        """Tell systemd we are shutting down."""
        self.notifier.notify("STOPPING=1", "STATUS=stopping: draining the journal")

    async def run(self) -> None:
        """Measure loop lag and ping the watchdog while healthy; runs until cancelled."""
        period = 1.0
        if self.notifier.watchdog_s:
            period = min(period, self.notifier.watchdog_s / 3)
        last_status = ""
        while True:
            start = time.monotonic()
            await asyncio.sleep(period)
            # Lateness of our own wake-up is the loop's responsiveness.
            self.loop_lag_s = max(0.0, time.monotonic() - start - period)
            status = self.summary()
            lines = []
            if self.notifier.watchdog_s and self.healthy():
                lines.append("WATCHDOG=1")
                self.watchdog_pings += 1
            if status != last_status:
                lines.append(f"STATUS={status}")
                last_status = status
            if lines:
                self.notifier.notify(*lines)
