"""`gated alert test [RULE]`: one test alert through each configured channel, and what happened.

The test alert is not journaled (the daemon owns the journal's alert rows); it is sent once
per channel with the channel's own timeout, no retries, so the answer comes at once.
Exit status: 0 when every channel took it, 1 when one failed or none is configured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

from gated.config import DEFAULT_CONFIG, Config

CONNECT_WAIT_S = 10.0


def add_parser(sub: argparse._SubParsersAction, handler: Callable[[argparse.Namespace], int]
               ) -> None:
    """Register `gated alert test [RULE]`."""
    alert = sub.add_parser("alert", help="local alerts (docs/alerts.md)")
    commands = alert.add_subparsers(dest="alert_command", required=True)
    p = commands.add_parser("test", help="send a test alert through each configured channel")
    p.add_argument("rule", nargs="?", default="test",
                   help="the rule the test alert poses as (channels filtering it out skip it)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"config file (default {DEFAULT_CONFIG})")
    p.set_defaults(func=handler)


def test_alert(cfg: Config, rule: str, now: float) -> dict[str, Any]:
    """The alert `gated alert test` sends (marked "test": true)."""
    from gated.ids import new_event_id

    return {
        "id": new_event_id(), "rule": rule, "subject": "test", "severity": "info",
        "title": f"gated test alert ({rule})",
        "message": f"A test alert from {cfg.site.device_id} at site {cfg.site.site_id}: "
                   "this channel works.",
        "count": 1, "first_at": now, "last_at": now, "details": {}, "test": True,
        "raised_at": now, "clock_unsynced": False,
        "site": {"tenant_id": cfg.site.tenant_id, "site_id": cfg.site.site_id,
                 "device_id": cfg.site.device_id},
    }


async def send_tests(cfg: Config, rule: str) -> list[tuple[str, bool, str]]:
    """(channel, ok, what happened) for each configured channel."""
    from gated import __version__
    from gated.alerts.deliver import DeliveryError, MqttChannel, WebhookChannel
    from gated.alerts.service import build_channels

    connected = asyncio.Event()

    def on_state(up: bool, _detail: str) -> None:
        if up:
            connected.set()

    channels, links = build_channels(cfg, __version__, on_state=on_state)
    link_tasks = [asyncio.create_task(link.run()) for link in links.values()]
    results: list[tuple[str, bool, str]] = []
    try:
        for ch in channels:
            label = f"{ch.name} ({ch.cfg.type})"
            if ch.cfg.rules and rule not in ch.cfg.rules:
                results.append((label, True, f"skipped: takes only {', '.join(ch.cfg.rules)}"))
                continue
            if isinstance(ch, MqttChannel) and not ch.link.stats.connected:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(connected.wait(), CONNECT_WAIT_S)
            now = time.time()
            try:
                outcome = await ch.send(test_alert(cfg, rule, now), now)
            except DeliveryError as err:
                results.append((label, False, f"FAILED: {err}"))
            else:
                results.append((label, True, f"delivered: {outcome}"))
    finally:
        for ch in channels:
            if isinstance(ch, WebhookChannel):
                await ch.aclose()
        for task in link_tasks:
            task.cancel()
        await asyncio.gather(*link_tasks, return_exceptions=True)
    return results


def run(args: argparse.Namespace, cfg: Config) -> int:
    """`gated alert test`: print one line per channel; 1 when any failed."""
    from gated.alerts.rules import RULE_NAMES

    if args.rule not in RULE_NAMES:
        print(f"gated: unknown rule {args.rule!r} (one of: {', '.join(RULE_NAMES)})",
              file=sys.stderr)
        return 64
    if not cfg.alerts.channels:
        print("gated: no alert channels configured ([[alerts.channels]] in the config)",
              file=sys.stderr)
        return 1
    results = asyncio.run(send_tests(cfg, args.rule))
    for label, _, what in results:
        print(f"{label}: {what}")
    return 0 if all(ok for _, ok, _ in results) else 1
