"""The MQTT and Home Assistant channels against a real Mosquitto; `gated alert test` and
`gated check-config` as the installer runs them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gated.alerts.deliver import ChannelWorker
from gated.alerts.rules import AlertEngine
from gated.alerts.service import build_channels, home_assistant_topic
from gated.alerts.state import AlertState
from gated.alerts.watch import AlertWatcher
from gated.audit import Auditor
from gated.config import MqttConfig, parse_config
from gated.journal import Journal
from gated.model import SiteIdentity
from gated.mqttlink import MqttLink, MqttMessage
from tests.alerts.receiver import Receiver
from tests.alerts.test_webhook import decision, until
from tests.support.broker import Broker, free_port, mosquitto_available, mosquitto_broker

SITE = {"tenant_id": "t-1", "site_id": "s-1", "device_id": "gate-7"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    with mosquitto_broker(tmp_path / "broker") as b:
        yield b


def config(broker: Broker, **alerts: object) -> dict[str, object]:
    return {"site": SITE, "mqtt": {"host": broker.host, "port": broker.port},
            "alerts": alerts}


def test_mqtt_and_home_assistant_channels_publish_the_contract_json(
        tmp_path: Path, broker: Broker) -> None:
    cfg = parse_config(config(broker, channels=[
        {"name": "ops", "type": "mqtt", "topic": "site/alerts"},
        {"name": "ha", "type": "home_assistant", "rules": ["deny_listed"]},
    ]))
    assert home_assistant_topic(cfg) == "gated/gate-7/alert"

    async def main() -> None:
        journal = await Journal.open(tmp_path / "journal.sqlite3")
        auditor = Auditor(journal.append, SiteIdentity("t-1", "s-1", "gate-7"))
        state = AlertState(tmp_path / "alerts-state.json")
        watcher = AlertWatcher(AlertEngine(), journal, auditor.record, state)
        channels, links = build_channels(cfg, "test")
        got: list[MqttMessage] = []
        listener = MqttLink(MqttConfig(host=broker.host, port=broker.port), "listener")
        listener.subscribe("site/alerts", got.append)
        listener.subscribe("gated/gate-7/alert", got.append)
        workers = [ChannelWorker(ch, journal, state, retry_min_s=0.05, retry_max_s=0.2,
                                 audit=auditor.record) for ch in channels]
        tasks = [asyncio.create_task(t) for t in
                 [listener.run(), *(link.run() for link in links.values()),
                  *(w.run() for w in workers)]]
        try:
            await asyncio.wait_for(listener.subscribed.wait(), 15)
            await until(lambda: all(w.channel.name in state.channels for w in workers))
            deny = await watcher.raise_alert(decision("XX000X"))
            other = await watcher.raise_alert(decision("main-in", rule="forced_open"))
            await until(lambda: len(got) >= 3)
            await asyncio.sleep(0.5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await journal.close()
        by_topic: dict[str, list[dict[str, object]]] = {}
        for message in got:
            assert not message.retain
            by_topic.setdefault(message.topic, []).append(json.loads(message.payload))
        assert [d["id"] for d in by_topic["site/alerts"]] == [deny, other]
        # The Home Assistant channel filters: only the deny-listed read.
        [ha] = by_topic["gated/gate-7/alert"]
        assert ha["id"] == deny and ha["event_type"] == "deny_listed"
        for key in ("event_type", "id", "subject", "severity", "title", "message",
                    "raised_at", "age_s", "folded"):
            assert key in ha

    asyncio.run(main())


def test_home_assistant_topic_follows_the_configured_prefix(broker: Broker) -> None:
    doc = config(broker, channels=[{"name": "ha", "type": "home_assistant"}])
    doc["home_assistant"] = {"topic_prefix": "estate/north-gate"}
    assert home_assistant_topic(parse_config(doc)) == "estate/north-gate/alert"


def gated_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gated", *args], capture_output=True,
                          text=True, timeout=60)


def write_config(path: Path, body: str) -> Path:
    path.write_text('[site]\ntenant_id = "t-1"\nsite_id = "s-1"\ndevice_id = "gate-7"\n'
                    + body)
    return path


def test_gated_alert_test_says_what_happened_per_channel(tmp_path: Path,
                                                         broker: Broker) -> None:
    with Receiver() as receiver:
        secret = tmp_path / "hook.secret"
        secret.write_bytes(receiver.secret)
        dead = f"http://127.0.0.1:{free_port()}/hook"
        good = f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}

[[alerts.channels]]
name = "phone"
type = "webhook"
url = "{receiver.url}"
format = "ntfy"
secret_file = "{secret}"

[[alerts.channels]]
name = "ops"
type = "mqtt"
topic = "site/alerts"

[[alerts.channels]]
name = "plates-only"
type = "webhook"
url = "{dead}"
rules = ["deny_listed"]
"""
        cfg = write_config(tmp_path / "good.toml", good)
        done = gated_cli("alert", "test", "--config", str(cfg))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "phone (webhook): delivered: HTTP 200"
        assert lines[1] == "ops (mqtt): delivered: published to site/alerts"
        assert lines[2].startswith("plates-only (webhook): skipped")
        [(headers, body)] = receiver.bodies
        assert headers["Title"] == "gated test alert (test)"
        assert "this channel works" in body.decode()

        # Posing as deny_listed, the third channel takes it and fails: exit 1.
        done = gated_cli("alert", "test", "deny_listed", "--config", str(cfg))
        assert done.returncode == 1
        assert "plates-only (webhook): FAILED: ConnectError" in done.stdout
        assert "phone (webhook): delivered: HTTP 200" in done.stdout

        receiver.faults.append("500")
        only_phone = good.split('[[alerts.channels]]\nname = "ops"')[0]
        done = gated_cli("alert", "test", "--config",
                         str(write_config(tmp_path / "one.toml", only_phone)))
        assert done.returncode == 1 and "phone (webhook): FAILED: HTTP 500" in done.stdout

    done = gated_cli("alert", "test", "no_such_rule", "--config", str(cfg))
    assert done.returncode == 64 and "unknown rule" in done.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[alerts.channels]]\nname = "x"\ntype = "webhook"\nurl = "ftp://example/"\n',
         "alerts.channels[0].url: 'ftp://example/' is not an http:// or https:// URL"),
        ('[[alerts.channels]]\nname = "x"\ntype = "webhook"\nurl = "https://h/"\n'
         'secret_file = "/nonexistent/hook.secret"\n',
         "alerts.channels[0].secret_file: cannot read /nonexistent/hook.secret"),
        ('[[alerts.channels]]\nname = "x"\ntype = "mqtt"\ntopic = "a/b"\n',
         "alerts.channels[0]: an mqtt channel needs an [mqtt] broker"),
        ('[[alerts.channels]]\nname = "x"\ntype = "mqtt"\ntopic = "a/#"\n[mqtt]\n',
         "alerts.channels[0].topic: 'a/#' is not a topic to publish to"),
        ('[[alerts.channels]]\nname = "x"\ntype = "webhook"\nurl = "https://h/"\n'
         'rules = ["deny_listd"]\n', "alerts.channels[0].rules[0]: unknown rule 'deny_listd'"),
        ('[alerts.rules.deny_listed]\ndisk_percent = 50\n',
         "alerts.rules.deny_listed.disk_percent: not a setting of this rule"),
        ('[alerts.rules.disk_full]\ndisk_percent = 150\n',
         "alerts.rules.disk_full.disk_percent: expected float <= 100"),
        ('[alerts.rules.door_ajar]\n', "alerts.rules.door_ajar: unknown key"),
        ('[[alerts.channels]]\nname = "x"\ntype = "webhook"\nurl = "https://h/"\n'
         '[[alerts.channels]]\nname = "x"\ntype = "webhook"\nurl = "https://i/"\n',
         "alerts.channels[1].name: duplicate channel name 'x'"),
    ],
)
def test_a_bad_alerts_config_is_refused_naming_the_key(tmp_path: Path, body: str,
                                                       expected: str) -> None:
    path = write_config(tmp_path / "bad.toml", body)
    done = gated_cli("check-config", str(path))
    assert done.returncode == 78
    assert expected in done.stderr, done.stderr


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.secret"
    empty.write_bytes(b"\n")
    path = write_config(tmp_path / "bad.toml", '[[alerts.channels]]\nname = "x"\n'
                        f'type = "webhook"\nurl = "https://h/"\nsecret_file = "{empty}"\n')
    done = gated_cli("check-config", str(path))
    assert done.returncode == 78 and "is empty" in done.stderr


def test_a_webhook_url_is_shown_in_records_without_its_path(tmp_path: Path) -> None:
    from gated.config import redacted

    hook = "https://hooks.chat.example/services/T0AAA/B0BBB/s3cr3tP4th"
    cfg = parse_config({"site": SITE, "alerts": {"channels": [
        {"name": "chat", "type": "webhook", "format": "slack", "url": hook}]}})
    shown = json.dumps(redacted(cfg))
    assert "s3cr3tP4th" not in shown and "https://hooks.chat.example/***" in shown
    assert redacted({"url": "http://[::1]:8080/x?token=1"}) == {"url": "http://[::1]:8080/***"}
    assert redacted({"url": "rtsp://admin:pw@10.0.0.5:554/"}) == {"url": "rtsp://10.0.0.5:554/***"}
    assert redacted({"url": "/var/lib/video.mp4"}) == {"url": "/var/lib/video.mp4"}
