"""Keep a component running: restart with backoff, give up after too many failures.

Giving up raises TooManyFailuresError out of the TaskGroup, so the process exits
non-zero and systemd (Restart=on-failure) starts it afresh: a clean process is
a better cure for a wedged driver than an endless in-process retry loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from gated.backoff import Backoff
from gated.config import SupervisorConfig
from gated.errors import GatedError

log = logging.getLogger(__name__)

# A component that ran this long before failing is considered to have recovered
# in between, so its restart delay starts small again.
_HEALTHY_RUN_S = 60.0


class TooManyFailuresError(GatedError):
    """A component failed more often than the supervisor allows within its window."""


FailureCallback = Callable[[str, BaseException, int], None]


class Supervisor:
    """Runs components under a restart policy shared by the whole daemon."""

    def __init__(
        self,
        cfg: SupervisorConfig,
        *,
        on_failure: FailureCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.on_failure = on_failure
        self.clock = clock
        self.failures: dict[str, int] = collections.Counter()

    async def keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Await run() again and again until it returns normally or fails too often."""
        backoff = Backoff(self.cfg.restart_backoff_s, self.cfg.restart_backoff_max_s)
        recent: collections.deque[float] = collections.deque()
        while True:
            started = self.clock()
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                now = self.clock()
                self.failures[name] += 1
                recent.append(now)
                while recent and now - recent[0] > self.cfg.failure_window_s:
                    recent.popleft()
                log.error("%s failed (%d in window): %s", name, len(recent), err, exc_info=err)
                if self.on_failure is not None:
                    try:
                        self.on_failure(name, err, len(recent))
                    except Exception:  # auditing must never stop the supervisor itself
                        log.exception("failure callback for %s raised", name)
                if len(recent) >= self.cfg.max_failures:
                    raise TooManyFailuresError(
                        f"{name} failed {len(recent)} times within "
                        f"{self.cfg.failure_window_s:g} s; exiting for a clean restart"
                    ) from err
                if now - started >= _HEALTHY_RUN_S:
                    backoff.reset()
                await asyncio.sleep(backoff.next_delay())
            else:
                return
