"""Delivery: one worker per channel reads raised alerts from the journal and sends them.

Each worker follows the journal's commit feed from its durable cursor (gated.alerts.state),
sends every `alert_raised` row its channel takes, and moves the cursor only after the
receiver's acknowledgement (HTTP 2xx; for MQTT the broker's PUBACK). A failure is retried
with capped, jittered back-off (gated.backoff) for as long as it takes, so an alert raised
offline goes out when the network returns, marked with its age. Receivers de-duplicate by
the alert's id: after a crash between the acknowledgement and the cursor's write the same
alert is sent again with the same id. A receiver that refuses an alert outright (a 4xx
other than 408/429) is not retried: the refusal is audited and the worker carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gated.alerts.payload import alert_from_row, is_alert_row, sign, webhook_body, wire_record
from gated.backoff import Backoff
from gated.errors import GatedError

if TYPE_CHECKING:
    from gated.alerts.state import AlertState
    from gated.config import AlertChannelConfig
    from gated.mqttlink import MqttLink

log = logging.getLogger(__name__)

READ_BATCH = 200
MAX_RESPONSE_BYTES = 4096  # a receiver's answer is read this far and no further
RETRY_STATUSES = frozenset({408, 425, 429})


class DeliveryError(GatedError):
    """An alert was not delivered; `retry` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Channel(Protocol):
    """Something an alert can be sent through."""

    name: str
    cfg: AlertChannelConfig

    async def send(self, alert: dict[str, Any], now: float) -> str: ...


def _read_secret(path: str) -> bytes:
    # The bytes never reach a log line, the journal or a page.
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as err:
        raise DeliveryError(f"cannot read {path}: {err.strerror or err}") from err
    if not secret:
        raise DeliveryError(f"{path} is empty")
    return secret


class WebhookChannel:
    """A JSON (or ntfy, or Slack-compatible) POST, signed with HMAC-SHA256 when a secret is set."""

    def __init__(self, cfg: AlertChannelConfig, *, late_after_s: float,
                 user_agent: str = "gated") -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.late_after_s = late_after_s
        self.user_agent = user_agent
        self._secret = b""
        self._token = ""
        self._client: Any = None

    def _credentials(self) -> None:
        # Read at the first send (and again until readable): a secret file that went
        # missing after `gated check-config` delays this channel's alerts, it does not
        # stop the daemon or the other channels.
        if self.cfg.secret_file and not self._secret:
            self._secret = _read_secret(self.cfg.secret_file)
        if self.cfg.token_file and not self._token:
            self._token = _read_secret(self.cfg.token_file).decode("utf-8", "replace")

    def _http(self) -> Any:
        if self._client is None:
            import httpx  # lazily: a device without webhooks never loads it

            self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, alert: dict[str, Any], now: float) -> str:
        """POST one alert; a description of the answer, or DeliveryError."""
        import httpx

        self._credentials()
        record = wire_record(alert, now)
        body, headers = webhook_body(self.cfg.format, record, self.late_after_s)
        timestamp = str(int(now))
        headers = {**headers, "User-Agent": self.user_agent, "X-Gated-Alert-Id": record["id"],
                   "X-Gated-Timestamp": timestamp}
        if self._secret:
            headers["X-Gated-Signature"] = sign(self._secret, timestamp, body)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._http().stream("POST", self.cfg.url, content=body,
                                           headers=headers) as response:
                # Only the status matters; a huge or garbled body is not read past a little.
                async for _ in response.aiter_raw(MAX_RESPONSE_BYTES):
                    break
                status = response.status_code
        except httpx.TimeoutException as err:
            raise DeliveryError(f"timed out after {self.cfg.timeout_s:g} s") from err
        except httpx.HTTPError as err:
            raise DeliveryError(f"{type(err).__name__}: {err}"[:200]) from err
        if 200 <= status < 300:
            return f"HTTP {status}"
        retry = status >= 500 or status in RETRY_STATUSES
        raise DeliveryError(f"HTTP {status}", retry=retry)


class MqttChannel:
    """A JSON alert published with QoS 1, not retained: delivered on the broker's PUBACK."""

    def __init__(self, cfg: AlertChannelConfig, link: MqttLink, topic: str) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.link = link
        self.topic = topic

    async def send(self, alert: dict[str, Any], now: float) -> str:
        """Publish one alert and wait for the PUBACK; DeliveryError when the broker is away."""
        if not self.link.stats.connected:
            # Not handed to paho while the link is down: a retry would queue it twice.
            raise DeliveryError("broker not connected")
        body = json.dumps(wire_record(alert, now), separators=(",", ":"), default=str)
        try:
            await asyncio.wait_for(self.link.publish(self.topic, body, qos=1, retain=False),
                                   self.cfg.timeout_s)
        except TimeoutError as err:
            raise DeliveryError(f"no PUBACK within {self.cfg.timeout_s:g} s") from err
        except GatedError as err:
            raise DeliveryError(str(err)) from err
        return f"published to {self.topic}"


Audit = Callable[..., Awaitable[Any]]
HealthSet = Callable[[str, bool, str], None]


class ChannelWorker:
    """Delivers one channel's alerts in journal order from its durable cursor."""

    def __init__(self, channel: Channel, journal: Any, state: AlertState, *,
                 retry_min_s: float, retry_max_s: float, audit: Audit,
                 health: HealthSet | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.channel = channel
        self.journal = journal
        self.state = state
        self.backoff = Backoff(retry_min_s, retry_max_s)
        self.audit = audit
        self.health = health
        self.clock = clock
        self.delivered = 0
        self.failing = False

    @property
    def name(self) -> str:
        """The worker's component name (health, logs)."""
        return f"alerts-{self.channel.name}"

    def takes(self, alert: dict[str, Any]) -> bool:
        """Whether this channel's rule filter lets the alert through."""
        rules = self.channel.cfg.rules
        return not rules or alert["rule"] in rules

    async def run(self) -> None:
        """Deliver until cancelled (or the journal closes)."""
        commits = self.journal.commits
        cursor = self.state.channels.get(self.channel.name)
        if cursor is None:
            # A new channel starts at the head: it is not flooded with the site's history.
            cursor = commits.seq
            self.state.channels[self.channel.name] = cursor
            await self.state.save()
        while True:
            rows = await self.journal.after(cursor, READ_BATCH)
            for row in rows:
                if is_alert_row(row):
                    alert = alert_from_row(row)
                    if self.takes(alert):
                        await self._deliver(await self._with_personal(alert))
                        self.state.channels[self.channel.name] = row["seq"]
                        await self.state.save()
                cursor = row["seq"]
            if len(rows) < READ_BATCH:
                # Rows without alerts move the cursor in memory only: re-reading them after
                # a restart costs a scan, never a second delivery.
                self.state.channels[self.channel.name] = max(
                    self.state.channels.get(self.channel.name, 0), cursor)
                try:
                    await commits.wait(cursor + 1)
                except EOFError:
                    return

    async def _with_personal(self, alert: dict[str, Any]) -> dict[str, Any]:
        """Fill the alert's placeholders ({plate}, {address}) from the erasable journal fields.

        A plate or address erased since (`gated journal redact`, unknown-plate ageing) is
        sent as "(erased)": an alert never brings back what the journal forgot.
        """
        personal = alert.pop("personal", {})
        for name, where in personal.items():
            value = "(erased)"
            try:
                stream, event_id, column = where
                row = await self.journal.get(stream, event_id)
                if row is not None and row.get(column):
                    value = str(row[column])
            except (ValueError, TypeError, GatedError) as err:
                log.warning("alert %s: %s not resolved: %s", alert["id"], name, err)
            token = "{" + name + "}"
            for key in ("subject", "title", "message"):
                alert[key] = str(alert[key]).replace(token, value)
            alert["details"] = {**alert.get("details", {}), name: value}
        return alert

    async def _deliver(self, alert: dict[str, Any]) -> None:
        while True:
            try:
                outcome = await self.channel.send(alert, self.clock())
            except DeliveryError as err:
                if not err.retry:
                    log.error("alert %s to %s refused: %s (not retried)", alert["id"],
                              self.channel.name, err)
                    await self._audit_refused(alert, str(err))
                    return
                if not self.failing:
                    log.warning("alert delivery to %s failing: %s (retrying)",
                                self.channel.name, err)
                    self.failing = True
                if self.health is not None:
                    self.health(self.name, False, str(err))
                await asyncio.sleep(self.backoff.next_delay())
                continue
            self.backoff.reset()
            self.delivered += 1
            if self.failing:
                log.warning("alert delivery to %s recovered", self.channel.name)
                self.failing = False
            if self.health is not None:
                self.health(self.name, True, "")
            log.info("alert %s (%s) delivered to %s: %s", alert["id"], alert["rule"],
                     self.channel.name, outcome)
            return

    async def _audit_refused(self, alert: dict[str, Any], why: str) -> None:
        try:
            await self.audit("alert_delivery_failed", "alert", resource_id=alert["rule"],
                             status="failure", error_message=why[:240],
                             metadata={"alert_id": alert["id"], "channel": self.channel.name})
        except GatedError as err:
            log.error("could not journal a refused alert delivery: %s", err)
