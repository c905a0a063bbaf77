"""The downlink service: signed remote commands and rule bundles, on the sync's MQTT link and HTTP.

app.py builds one `Downlink` beside the `SyncService` (a long-lived service,
supervised, outliving config generations) and hands it the control plane's
`perform`, the auditor, the rule-bundle import (the same change-set path as
`gated rules import`) and the sync's MQTT link. It subscribes `P/commands` and
`P/rules` on that link, publishes results on `P/commands/result`, and polls
`GET /v1/devices/{device_id}/rules` when an HTTP endpoint is configured. A gate that
syncs over HTTP only has no link: it long-polls `GET /v1/devices/{device_id}/commands`
instead (gated.sync.command_poll) and POSTs its results, through the same receiver.
`status()` is what the heartbeat reports about the rule bundle in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.config import Config
from gated.mqttlink import MqttLink
from gated.sync.command_poll import HttpCommandPoller
from gated.sync.commands import Audit, CommandReceiver, Perform, mqtt_result_publisher
from gated.sync.downlink_state import DownlinkState
from gated.sync.envelope import source_of, topic_prefix
from gated.sync.http import http_client
from gated.sync.rules_sync import ApplyBundle, HttpBundleFetcher, Reload, RulesSync
from gated.sync.signing import parse_public_keys

__all__ = ["STATE_FILE_NAME", "Downlink", "state_file"]

log = logging.getLogger(__name__)

STATE_FILE_NAME = "downlink.sqlite3"


def state_file(cfg: Config) -> Path:
    """Where the replay cache and the active bundle are kept."""
    configured = cfg.sync.downlink_state_file
    return Path(configured) if configured else Path(cfg.journal.path).parent / STATE_FILE_NAME


class Downlink:
    """Commands and rule bundles from the service, for one device."""

    name = "downlink"

    def __init__(
        self,
        cfg: Config,
        *,
        perform: Perform,
        audit: Audit,
        apply_rules: ApplyBundle,
        reload_rules: Reload | None = None,
        link: MqttLink | None = None,
        device_key: Ed25519PrivateKey | None = None,
        clock_unsynced: Callable[[], bool] = lambda: False,
        # Health.set: the poller reports its state as component "sync-commands"
        health: Callable[[str, bool, str], None] | None = None,
    ) -> None:
        sync = cfg.sync
        identity = cfg.site.identity
        self.prefix = topic_prefix(identity)
        self.link = link
        keys = parse_public_keys(sync.service_public_keys)
        if not keys:
            log.warning("downlink: no [sync] service_public_keys: every remote command and "
                        "rule bundle will be refused")
        self.state = DownlinkState(state_file(cfg), capacity=sync.replay_cache_size)
        self.sync = sync
        self.client: httpx.AsyncClient | None = None  # made in run(): a restart makes a new one
        fetch = (HttpBundleFetcher(self._http_client, sync.http.url, identity.device_id,
                                   max_bytes=sync.rules_max_bundle_mb * 1024 * 1024)
                 if sync.http.url else None)
        self.rules = RulesSync(
            tenant_id=identity.tenant_id,
            device_id=identity.device_id,
            service_keys=keys,
            state=self.state,
            apply=apply_rules,
            audit=audit,
            fetch=fetch,
            reload=reload_rules,
            poll_s=sync.rules_poll_s,
            retry_min_s=sync.retry_min_s,
            retry_max_s=sync.retry_max_s,
        )
        self.commands: CommandReceiver | None = None
        self.poller: HttpCommandPoller | None = None
        publish_result = None
        if sync.remote_commands and link is not None:
            publish_result = mqtt_result_publisher(link, self.prefix + "commands/result")
        elif (sync.remote_commands and sync.transport == "http" and sync.http.url
              and sync.http.commands):
            # No broker to push commands: ask the service for them (protocol 11.8).
            on_state = None
            if health is not None:
                def on_state(ok: bool, detail: str) -> None:
                    health("sync-commands", ok, detail)
            self.poller = HttpCommandPoller(
                self._http_client, sync.http.url, identity.device_id,
                timeout_s=sync.http.timeout_s, retry_min_s=sync.retry_min_s,
                retry_max_s=sync.retry_max_s, on_state=on_state)
            publish_result = self.poller.publish_result
        if publish_result is not None:
            self.commands = CommandReceiver(
                tenant_id=identity.tenant_id,
                device_id=identity.device_id,
                source=source_of(identity),
                service_keys=keys,
                state=self.state,
                perform=perform,
                audit=audit,
                publish_result=publish_result,
                sync_rules=self.rules.sync_now,
                device_key=device_key,
                max_age_s=sync.command_max_age_s,
                clock_skew_s=sync.command_clock_skew_s,
                clock_unsynced=clock_unsynced,
            )
            if link is not None:
                link.subscribe(self.prefix + "commands", self.commands.on_mqtt)
            if self.poller is not None:
                self.poller.handle = self.commands.handle
        if link is not None:
            link.subscribe(self.prefix + "rules", self.rules.on_mqtt)

    def status(self) -> dict[str, Any]:
        """The downlink's part of the heartbeat and the status API."""
        out = self.rules.status()
        if self.commands is not None:
            out["commands"] = dict(self.commands.counts)
        if self.poller is not None:
            out["commands_poll"] = self.poller.status()
        return out

    def _http_client(self) -> httpx.AsyncClient:
        if self.client is None or self.client.is_closed:
            self.client = http_client(self.sync)
        return self.client

    async def run(self) -> None:
        """Take commands and bundles until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.rules.run(), name="downlink-rules")
                if self.commands is not None:
                    group.create_task(self.commands.run(), name="downlink-commands")
                if self.poller is not None:
                    group.create_task(self.poller.run(), name="downlink-command-poll")
        finally:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.aclose()
                self.client = None

    def close(self) -> None:
        """Close the state file (after run() ended)."""
        self.state.close()
