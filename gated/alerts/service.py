"""The alerts service of the daemon: the watcher and one delivery worker per channel.

Built by gated.app when [alerts] has channels; one supervised component ("alerts").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from gated.alerts.deliver import Channel, ChannelWorker, MqttChannel, WebhookChannel
from gated.alerts.rules import DEFAULTS, AlertEngine, RuleSettings
from gated.alerts.state import AlertState, state_path
from gated.alerts.watch import AlertWatcher, Conditions
from gated.config import AlertsConfig, Config, MqttConfig

log = logging.getLogger(__name__)

__all__ = ["AlertService", "build_channels", "rule_settings"]


def rule_settings(cfg: AlertsConfig) -> dict[str, RuleSettings]:
    """The engine's settings: each rule's defaults overlaid with what the config sets."""
    out = dict(DEFAULTS)
    for name in cfg.rules.__struct_fields__:
        rule = getattr(cfg.rules, name)
        base = DEFAULTS[name]
        out[name] = RuleSettings(
            enabled=rule.enabled, interval_s=rule.interval_s,
            fault_after_s=base.fault_after_s if rule.fault_after_s is None else rule.fault_after_s,
            disk_percent=base.disk_percent if rule.disk_percent is None else rule.disk_percent,
            backlog_hours=(base.backlog_hours if rule.backlog_hours is None
                           else rule.backlog_hours),
            flood_count=base.flood_count if rule.flood_count is None else rule.flood_count,
            flood_window_s=(base.flood_window_s if rule.flood_window_s is None
                            else rule.flood_window_s))
    return out


def home_assistant_topic(cfg: Config) -> str:
    """The Home Assistant alert topic: <topic_prefix>/alert (prefix default gated/<device>)."""
    ha = getattr(cfg, "home_assistant", None)
    prefix = getattr(ha, "topic_prefix", "") or f"gated/{cfg.site.device_id}"
    return f"{prefix.rstrip('/')}/alert"


def _broker(cfg: Config, kind: str) -> MqttConfig:
    if kind == "home_assistant":
        ha = getattr(cfg, "home_assistant", None)
        broker = getattr(ha, "mqtt", None) or cfg.mqtt
    else:
        broker = cfg.mqtt
    assert broker is not None  # the config refuses an MQTT channel without a broker
    return broker


def build_channels(cfg: Config, version: str, *,
                   on_state: Callable[[bool, str], None] | None = None,
                   ) -> tuple[list[Channel], dict[str, Any]]:
    """The configured channels and the MQTT links they publish on (one per broker)."""
    from gated.mqttlink import MqttLink

    channels: list[Channel] = []
    links: dict[str, Any] = {}
    for ch in cfg.alerts.channels:
        if ch.type == "webhook":
            channels.append(WebhookChannel(ch, late_after_s=cfg.alerts.late_after_s,
                                           user_agent=f"gated/{version}"))
            continue
        broker = _broker(cfg, ch.type)
        key = f"{broker.host}:{broker.port}:{broker.username}"
        if key not in links:
            links[key] = MqttLink(broker, f"gated-{cfg.site.device_id}-alerts-{len(links)}",
                                  name=f"alerts-mqtt-{len(links)}", on_state=on_state)
        topic = ch.topic or (home_assistant_topic(cfg) if ch.type == "home_assistant" else "")
        channels.append(MqttChannel(ch, links[key], topic))
    return channels, links


class AlertService:
    """Raises alerts into the journal and delivers them through every channel."""

    name = "alerts"

    def __init__(self, cfg: Config, journal: Any, record: Any, *, version: str,
                 conditions: Conditions | None = None,
                 health: Callable[[str, bool, str], None] | None = None) -> None:
        self.cfg = cfg
        self.journal = journal
        self.record = record
        self.version = version
        self.settings = rule_settings(cfg.alerts)
        self.conditions = conditions
        self.health = health
        self.watcher: AlertWatcher | None = None
        self.workers: list[ChannelWorker] = []

    async def run(self) -> None:
        """Watch and deliver until cancelled."""
        state = AlertState(state_path(self.cfg.journal.path, self.cfg.alerts.state_file))
        channels, links = build_channels(self.cfg, self.version)
        self.watcher = AlertWatcher(AlertEngine(self.settings), self.journal, self.record,
                                    state, conditions=self.conditions)
        self.workers = [
            ChannelWorker(ch, self.journal, state, retry_min_s=self.cfg.alerts.retry_min_s,
                          retry_max_s=self.cfg.alerts.retry_max_s, audit=self.record,
                          health=self.health)
            for ch in channels]
        try:
            async with asyncio.TaskGroup() as tg:
                for link in links.values():
                    tg.create_task(link.run(), name=link.name)
                tg.create_task(self.watcher.run(), name="alerts-watch")
                for worker in self.workers:
                    tg.create_task(worker.run(), name=worker.name)
        finally:
            for ch in channels:
                if isinstance(ch, WebhookChannel):
                    with contextlib.suppress(Exception):
                        await ch.aclose()
