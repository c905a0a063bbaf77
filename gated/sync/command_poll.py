"""Remote commands for a gate that syncs over HTTP only (docs/protocol.md, 11.8).

With no MQTT link there is no `P/commands` to subscribe, so the gate asks: it long-polls
`GET /v1/devices/{device_id}/commands?wait=S` and the service holds the request until a
command is issued for it or the wait ends. Each command it answers goes to the same
`CommandReceiver.handle` as a payload from `P/commands` (signature, identity, times, replay
cache, then the control plane), one at a time, oldest first; the receiver's signed result is
POSTed to `…/commands/result`.

The service serves a command until it has the gate's answer, so a lost answer or a lost
result means the command comes again. That is safe: the replay cache refuses the second copy
(`replayed`) before the control plane, and that refusal's result is the answer that stops it
being served. A command served again that this process already handed on does not make the
poller ask again at once (the service is waiting for a result it could not keep): it backs off.

Failures (the service away, 5xx, 401/403/404, an answer it cannot read) are retried with the
capped, jittered back-off of gated/backoff.py, a Retry-After as a floor; the state is logged
once per change and reported by `status()` and the `on_state` hook.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

from gated.backoff import Backoff
from gated.errors import GatedError, SyncError
from gated.sync.envelope import encode
from gated.sync.http import retry_after_s

__all__ = ["LONG_POLL_S", "HttpCommandPoller"]

log = logging.getLogger(__name__)

LONG_POLL_S = 25.0  # the wait asked for: under the service's 30 s cap and most proxies' idle limits
MAX_ANSWER_BYTES = 1024 * 1024  # the service answers at most 16 commands of at most 16 KiB
MAX_COMMANDS = 64  # handed on from one answer; the rest come with the next poll
MIN_CYCLE_S = 1.0  # a poll that brought nothing new is not repeated sooner than this
SEEN_MAX = 1024  # command ids remembered as handed on (only to pace a service that repeats)
RESULT_CONTENT_TYPE = "application/cloudevents+json"

Handle = Callable[[bytes], Awaitable[Any]]
OnState = Callable[[bool, str], None]


class _Failed(Exception):
    """A poll that did not bring an answer; the state to show and any Retry-After."""

    def __init__(self, state: str, retry_after: float | None = None) -> None:
        super().__init__(state)
        self.state = state
        self.retry_after = retry_after


class HttpCommandPoller:
    """Long-polls the service for this device's commands and hands them to the receiver."""

    name = "command-poll"

    def __init__(self, client: Callable[[], httpx.AsyncClient], base_url: str, device_id: str,
                 *, timeout_s: float, retry_min_s: float, retry_max_s: float,
                 wait_s: float = LONG_POLL_S, rng: random.Random | None = None,
                 on_state: OnState | None = None) -> None:
        self._client = client
        self.url = f"{base_url.rstrip('/')}/v1/devices/{quote(device_id, safe='')}/commands"
        self.result_url = self.url + "/result"
        self.wait_s = wait_s
        # The service holds the request for wait_s: the answer's own time comes on top.
        self.timeout = httpx.Timeout(timeout_s, read=wait_s + timeout_s)
        self.backoff = Backoff(initial=retry_min_s, maximum=retry_max_s, rng=rng)
        self.handle: Handle | None = None  # CommandReceiver.handle, set by the downlink
        self.on_state = on_state
        self.state = "starting"
        self.polls = 0
        self.received = 0
        self.results_sent = 0
        self.results_failed = 0
        self.last_error: str | None = None
        self.last_answer_at: float | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Poll, hand on, repeat until cancelled."""
        while True:
            started = time.monotonic()
            try:
                commands = await self._poll()
            except _Failed as failed:
                self._set_state(failed.state)
                delay = self.backoff.next_delay()
                await asyncio.sleep(max(delay, failed.retry_after or 0.0))
                continue
            self._set_state("ok")
            fresh = False
            for command in commands[:MAX_COMMANDS]:
                fresh = self._first_time(command) or fresh
                await self._hand_on(command)
            if commands and not fresh:
                # Only commands already handed on: the service still has no answer to them
                # (our result did not reach it, or it refused it). Their replay refusals were
                # just sent again; do not ask again at once.
                await asyncio.sleep(self.backoff.next_delay())
                continue
            self.backoff.reset()
            if not fresh:
                # An empty answer long before the wait: a service that does not hold polls,
                # or one stopping; never a tight loop.
                await asyncio.sleep(max(0.0, MIN_CYCLE_S - (time.monotonic() - started)))

    async def _poll(self) -> list[Any]:
        self.polls += 1
        try:
            async with self._client().stream(
                    "GET", self.url, params={"wait": f"{self.wait_s:g}"},
                    headers={"Accept": "application/cloudevents-batch+json, application/json"},
                    timeout=self.timeout) as response:
                status = response.status_code
                body = bytearray()
                if status == 200:
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            raise _Failed(f"answer over {MAX_ANSWER_BYTES} bytes")
                else:
                    body += (await response.aread())[:300]
        except httpx.HTTPError as err:
            raise _Failed(f"unreachable: {type(err).__name__}: {err}") from err
        if status != 200:
            detail = body.decode("utf-8", "replace").strip()[:200]
            raise _Failed(f"answered {status}" + (f": {detail}" if detail else ""),
                          retry_after_s(response.headers.get("Retry-After")))
        try:
            commands = json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise _Failed(f"unreadable answer: {str(err)[:80]}") from err
        if not isinstance(commands, list):
            raise _Failed("unreadable answer: not a JSON array")
        self.last_answer_at = time.time()
        self.received += len(commands)
        return commands

    def _first_time(self, command: Any) -> bool:
        cid = command.get("id") if isinstance(command, dict) else None
        if not isinstance(cid, str) or cid in self._seen:
            return False
        self._seen[cid] = None
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    async def _hand_on(self, command: Any) -> None:
        if self.handle is None:
            return
        try:
            # The payload as P/commands would carry it: the receiver checks everything.
            await self.handle(encode(command))
        except GatedError as err:  # the journal or the state file failed: say so, go on
            log.error("remote command not handled: %s", err)

    # --- results ------------------------------------------------------------------------

    async def publish_result(self, event: dict[str, Any]) -> None:
        """POST one signed result; SyncError when the service did not keep it."""
        try:
            response = await self._client().post(
                self.result_url, content=encode(event),
                headers={"Content-Type": RESULT_CONTENT_TYPE})
        except httpx.HTTPError as err:
            self.results_failed += 1
            raise SyncError(f"result not sent: {type(err).__name__}: {err}") from err
        if not 200 <= response.status_code < 300:
            self.results_failed += 1
            raise SyncError(f"result answered {response.status_code}: "
                            f"{response.text[:200].strip()}")
        self.results_sent += 1

    # --- state --------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        if state == "ok":
            log.info("remote commands: polling %s", self.url)
        else:
            log.warning("remote commands: poll %s; retrying with back-off", state)
            self.last_error = state
        self.state = state
        if self.on_state is not None:
            self.on_state(state == "ok", "polling" if state == "ok" else state)

    def status(self) -> dict[str, Any]:
        """What the downlink reports of the poller."""
        return {"state": self.state, "polls": self.polls, "received": self.received,
                "results_sent": self.results_sent, "results_failed": self.results_failed,
                "last_error": self.last_error, "last_answer_at": self.last_answer_at}
