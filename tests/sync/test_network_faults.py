"""Network faults between the device and its upstream, and the transports that remained.

* a network cut through a fault-injecting TCP proxy for tens of seconds, and a black
  hole (TCP up, nothing flows) that only keepalives can detect, while the gate keeps
  journaling: every event reaches the receiver once, the chain intact; the retained
  "offline" (the last will) arrives within keepalive x 1.5 and "online" follows;
* `gated run` SIGKILLed: the broker publishes the retained offline for it;
* MQTT over TLS with a private CA and client certificates, made here with
  `cryptography`, against a Mosquitto that requires them;
* pictures given up as "pending" retried until the service keeps them, over HTTP and
  beside an MQTT uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gated.config import parse_config
from gated.errors import ConfigError
from gated.journal import Journal
from gated.mqttlink import MqttLink, tls_context
from gated.sync.service import SyncService
from tests.daemon.harness import (
    CAMERA_PATH,
    RESIDENT_RULES,
    DaemonProcess,
    Site,
    generic_lane,
    post_until_accepted,
    wait_until,
)
from tests.support.broker import HOST, free_port, mosquitto_available, mosquitto_broker
from tests.support.receiver import Fault, Receiver
from tests.support.schemas import validate_event
from tests.support.tcp_proxy import TcpProxy
from tests.sync.conftest import (
    DEVICE,
    TENANT,
    KillableBroker,
    access_event,
    all_synced,
    auditor_for,
    eventually,
    journal_ids,
    stop_service,
    sync_config,
)

STATUS_TOPIC = f"gated/v1/{TENANT}/{DEVICE}/status"
KEEPALIVE_S = 5  # the smallest [mqtt] keepalive_s allows: the black hole is found soonest
MOSQUITTO_CHECK_S = 6  # Mosquitto 2.0 looks for expired keepalives once every 6 s


def _statuses(receiver: Receiver, topic: str = STATUS_TOPIC) -> list[str]:
    return [body["status"] for t, body, _ in receiver.statuses if t == topic]


def retained_status(port: int, topic: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """What a fresh subscriber is handed for `topic` (the retained message), or None."""
    got: list[dict[str, Any]] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                         protocol=MQTTProtocolVersion.MQTTv5)

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            got.append(json.loads(message.payload))
        done.set()

    client.on_connect = lambda c, *_a: c.subscribe(topic, 1)
    client.on_message = on_message
    client.connect(HOST, port, keepalive=10)
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[-1] if got else None


# --- 1 and 2: a network cut and a black hole through the proxy -----------------------------


async def _through_proxy(tmp_path: Path, broker, receiver_factory, journal: Journal, *,
                         fault: str, fault_s: float) -> dict[str, float]:
    """Drain a backlog through a proxy, break the path for fault_s while the gate keeps
    journaling, and check the outcome; the figures measured, for the report."""
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    proxy = TcpProxy(broker.host, broker.port).start()
    try:
        cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64,
                          batch_max_events=100, mqtt_window=100, ack_timeout_s=3.0)
        cfg = parse_config({**_as_dict(cfg), "mqtt": {**_as_dict(cfg)["mqtt"],
                                                      "port": proxy.port,
                                                      "keepalive_s": KEEPALIVE_S}})
        await journal.append_many([access_event(i) for i in range(2000)])
        service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
        task = asyncio.create_task(service.run())
        await eventually(lambda: len(receiver.ids(DEVICE)) > 200, what="drain under way")
        await eventually(lambda: "online" in _statuses(receiver), what="online")
        link = service.link
        assert link is not None
        downs_before = link.stats.disconnects

        broke_at = time.monotonic()
        getattr(proxy, fault)()
        during: list[int] = []
        offline_after: float | None = None
        link_down_after: float | None = None
        while time.monotonic() - broke_at < fault_s:  # the gate goes on deciding meanwhile
            during.append(await journal.append(access_event(70_000 + len(during))))
            if offline_after is None and "offline" in _statuses(receiver):
                offline_after = time.monotonic() - broke_at
            if link_down_after is None and link.stats.disconnects > downs_before:
                link_down_after = time.monotonic() - broke_at
            await asyncio.sleep(0.1)
        synced_before_resume = len(receiver.ids(DEVICE))
        online_count = _statuses(receiver).count("online")

        resumed_at = time.monotonic()
        proxy.resume()
        await eventually(lambda: link.stats.connected and link.stats.disconnects > downs_before,
                         what="link up again")
        reconnect_s = time.monotonic() - resumed_at
        await eventually(lambda: all_synced(journal), timeout_s=120, what="every row synced")
        drained_s = time.monotonic() - resumed_at
        await eventually(lambda: _statuses(receiver).count("online") > online_count,
                         what="online again")
        await stop_service(service, task)

        # The path was really broken: nothing of the gate's new rows got through it.
        assert len(during) >= fault_s * 5
        assert synced_before_resume < 2000 + len(during)
        assert offline_after is not None, "the broker never published the last will"
        assert link_down_after is not None, "the device never noticed the broken path"
        # 0 lost, 0 duplicated in effect, the chain intact at the receiver.
        assert receiver.ids(DEVICE) == await journal_ids(journal)
        assert receiver.count() == len(await journal_ids(journal))
        assert receiver.chain_problems(DEVICE) == []
        assert receiver.invalid == []
        assert retained_status(broker.port, STATUS_TOPIC) is not None
        return {"offline_after_s": offline_after, "device_noticed_s": link_down_after,
                "reconnect_after_resume_s": reconnect_s, "drained_after_resume_s": drained_s,
                "journaled_during_fault": len(during)}
    finally:
        proxy.stop()


def _parse_mqtt(data: dict[str, Any]) -> Any:
    """parse_config of a config holding only [site] and these sections."""
    return parse_config({"site": {"tenant_id": TENANT, "site_id": "s1", "device_id": DEVICE},
                         **data})


def _as_dict(cfg: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(cfg)


@pytest.mark.slow
async def test_a_network_cut_of_tens_of_seconds_loses_nothing(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    figures = await _through_proxy(tmp_path, broker, receiver_factory, journal,
                                   fault="cut", fault_s=30.0)
    # A cut is a closed socket to the broker: the will goes out at once, not after keepalive.
    assert figures["offline_after_s"] <= KEEPALIVE_S * 1.5
    print("network cut 30 s:", json.dumps(figures))


@pytest.mark.slow
async def test_a_black_hole_is_found_by_keepalives_and_loses_nothing(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    figures = await _through_proxy(tmp_path, broker, receiver_factory, journal,
                                   fault="blackhole", fault_s=25.0)
    # Nothing flows and nothing closes: only the broker's keepalive check (1.5 x keepalive
    # without a packet) publishes the will. Mosquitto 2.0 runs that check only every 6 s
    # (keepalive.c), so its bound is 1.5 x keepalive + 6 s; 1 s more for the delivery.
    assert figures["offline_after_s"] <= KEEPALIVE_S * 1.5 + MOSQUITTO_CHECK_S + 1.0
    # The device's own check: a PINGREQ after keepalive_s of silence, unanswered for another.
    assert figures["device_noticed_s"] <= KEEPALIVE_S * 2 + 3.0
    print("black hole 25 s:", json.dumps(figures))


@pytest.mark.slow
async def test_an_http_black_hole_is_found_by_the_request_timeout(
    tmp_path: Path, receiver_factory, journal: Journal
) -> None:
    # Over HTTP nothing keeps the path alive: a request that gets no answer within
    # [sync.http] timeout_s (2 s here) is given up and retried with back-off.
    receiver = receiver_factory()
    with TcpProxy(HOST, receiver.http_port) as proxy:
        cfg = sync_config(tmp_path, http_url=f"http://{HOST}:{proxy.port}/",
                          batch_max_events=50, service_key=receiver.service_public_b64)
        await journal.append_many([access_event(i) for i in range(500)])
        service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
        task = asyncio.create_task(service.run())
        await eventually(lambda: len(receiver.ids(DEVICE)) >= 50, what="drain under way")
        proxy.blackhole()
        during = [await journal.append(access_event(60_000 + i)) for i in range(50)]
        await eventually(lambda: service.transport.state.startswith("unreachable"),
                         what="the request timeout noticed the black hole")
        stored_in_hole = len(receiver.ids(DEVICE))
        await asyncio.sleep(5.0)  # a few timeouts and retries into the hole
        assert len(receiver.ids(DEVICE)) == stored_in_hole  # nothing got through it
        resumed_at = time.monotonic()
        proxy.resume()
        await eventually(lambda: all_synced(journal), timeout_s=120, what="every row synced")
        drained_s = time.monotonic() - resumed_at
        await stop_service(service, task)
    assert len(during) == 50
    assert receiver.ids(DEVICE) == await journal_ids(journal)
    assert receiver.count() == len(await journal_ids(journal))
    assert receiver.chain_problems(DEVICE) == []
    assert receiver.invalid == []
    print(f"HTTP black hole: drained {drained_s:.2f} s after resume")


@pytest.mark.slow
def test_a_sigkilled_daemon_leaves_a_retained_offline_then_comes_back_online(
    tmp_path: Path, broker: KillableBroker, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    site = Site(tmp_path / "site")
    site.root.mkdir()
    site.write_config(generic_lane('kind = "fake"', dedup_window_s=0.01), extra=f"""
[mqtt]
host = "127.0.0.1"
port = {broker.port}
keepalive_s = {KEEPALIVE_S}
reconnect_min_s = 0.05
reconnect_max_s = 0.3

[sync]
enabled = true
service_public_keys = ["{receiver.service_public_b64}"]
""")
    site.import_rules(RESIDENT_RULES)
    topic = "gated/v1/t-test/d-test/status"
    daemon = DaemonProcess(site)
    daemon.wait_ready()
    assert post_until_accepted(site.listener_port, CAMERA_PATH, "AB123CD") == 200
    assert wait_until(lambda: "online" in _statuses(receiver, topic), 20)
    daemon.proc.send_signal(signal.SIGKILL)  # no clean stop, no "offline" of its own
    daemon.proc.wait(10)
    killed_at = time.monotonic()
    assert wait_until(lambda: _statuses(receiver, topic)[-1:] == ["offline"],
                      KEEPALIVE_S * 1.5 + 2.0)
    offline_s = time.monotonic() - killed_at
    daemon.close()
    retained = retained_status(broker.port, topic)
    assert retained is not None and retained["status"] == "offline"
    assert retained["reason"] == "connection lost"  # the will, not a clean stop

    (site.root / "notify.sock").unlink(missing_ok=True)
    daemon = DaemonProcess(site)
    daemon.wait_ready()
    assert wait_until(lambda: _statuses(receiver, topic)[-1:] == ["online"], 20)
    retained = retained_status(broker.port, topic)
    assert retained is not None and retained["status"] == "online"
    assert daemon.terminate() == 0
    print(f"SIGKILL: retained offline seen after {offline_s:.2f} s")


# --- 3: MQTT over TLS with client certificates ---------------------------------------------


@dataclass
class Pki:
    """A CA, a broker certificate, a device certificate, and a stranger from another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path
    wrong_name_cert: Path
    wrong_name_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey | None, *, ca: bool = False,
          sans: list[x509.GeneralName] | None = None,
          usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if issuer_key is not None and not ca:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> Path:
        path = root / f"{name}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (root / f"{name}.key").write_bytes(_key_pem(key))
            (root / f"{name}.key").chmod(0o600)
        return path

    server_auth = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    client_auth = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = _cert("gated test CA", ca_key, None, None, ca=True)
    other = _cert("someone else's CA", other_key, None, None, ca=True)
    keys = {n: ec.generate_private_key(ec.SECP256R1())
            for n in ("server", "client", "stranger", "wrong")}
    server = _cert("broker", keys["server"], ca.subject, ca_key, usage=server_auth,
                   sans=[x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")])
    client = _cert(f"{TENANT}/{DEVICE}", keys["client"], ca.subject, ca_key, usage=client_auth)
    stranger = _cert(f"{TENANT}/{DEVICE}", keys["stranger"], other.subject, other_key,
                     usage=client_auth)
    wrong = _cert("broker", keys["wrong"], ca.subject, ca_key, usage=server_auth,
                  sans=[x509.DNSName("broker.elsewhere.example")])
    return Pki(ca=write("ca", ca, None), server_cert=write("server", server, keys["server"]),
               server_key=root / "server.key",
               client_cert=write("client", client, keys["client"]),
               client_key=root / "client.key", other_ca=write("other-ca", other, None),
               other_cert=write("stranger", stranger, keys["stranger"]),
               other_key=root / "stranger.key",
               wrong_name_cert=write("wrong", wrong, keys["wrong"]),
               wrong_name_key=root / "wrong.key")


@contextlib.contextmanager
def tls_broker(tmp_path: Path, pki: Pki, *, cert: Path | None = None,
               key: Path | None = None) -> Iterator[tuple[Any, int]]:
    """Mosquitto with a plain loopback listener (the receiver) and a TLS one requiring a
    client certificate from the test CA (the device), as config/mosquitto/gated.conf."""
    tls_port = free_port()
    # "user root": run by root (CI), Mosquitto would drop to "mosquitto", which cannot read
    # the test's temporary files.
    extra = f"""
user root
listener {tls_port} {HOST}
cafile {pki.ca}
certfile {cert or pki.server_cert}
keyfile {key or pki.server_key}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    with mosquitto_broker(tmp_path / "tls-broker", extra) as broker:
        yield broker, tls_port


def _tls_mqtt(port: int, pki: Pki, **keys: str) -> dict[str, Any]:
    return {"host": HOST, "port": port, "tls": True, "tls_ca_file": str(pki.ca),
            "keepalive_s": KEEPALIVE_S, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, **keys}


def _paho_tls_connect(port: int, ctx: ssl.SSLContext, timeout_s: float = 10.0) -> str:
    """Connect a plain paho client with this TLS context: "accepted" or why it was not."""
    outcome: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(ctx)

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        outcome.append("accepted" if not reason.is_failure else f"refused: {reason}")
        done.set()

    def on_disconnect(*_a: Any) -> None:
        outcome.append("closed")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(HOST, port, keepalive=10)
    except (OSError, ssl.SSLError) as err:
        return f"handshake failed: {err}"
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.loop_stop()
        with contextlib.suppress(Exception):
            client.disconnect()
    return outcome[0] if outcome else "no answer"


async def test_sync_over_tls_with_a_client_certificate(
    tmp_path: Path, pki: Pki, receiver_factory, journal: Journal
) -> None:
    with tls_broker(tmp_path, pki) as (broker, tls_port):
        receiver = receiver_factory(mqtt_port=broker.port, http=False)
        cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64)
        cfg = parse_config({**_as_dict(cfg),
                            "mqtt": _tls_mqtt(tls_port, pki, tls_cert_file=str(pki.client_cert),
                                              tls_key_file=str(pki.client_key))})
        await journal.append_many([access_event(i) for i in range(50)])
        service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
        task = asyncio.create_task(service.run())
        await eventually(lambda: all_synced(journal), what="every row synced over TLS")
        await stop_service(service, task)
        assert receiver.ids(DEVICE) == await journal_ids(journal)
        assert receiver.chain_problems(DEVICE) == []
        assert "online" in _statuses(receiver)
        assert receiver.invalid == []


def test_the_broker_refuses_a_client_without_a_certificate_or_from_another_ca(
    tmp_path: Path, pki: Pki
) -> None:
    with tls_broker(tmp_path, pki) as (_broker, tls_port):
        def ctx(cert: Path | None, key: Path | None) -> ssl.SSLContext:
            keys = {"tls_cert_file": str(cert), "tls_key_file": str(key)} if cert else {}
            return tls_context(_parse_mqtt({"mqtt": _tls_mqtt(tls_port, pki, **keys)}).mqtt)

        assert _paho_tls_connect(tls_port, ctx(pki.client_cert, pki.client_key)) == "accepted"
        no_cert = _paho_tls_connect(tls_port, ctx(None, None))
        stranger = _paho_tls_connect(tls_port, ctx(pki.other_cert, pki.other_key))
        assert no_cert != "accepted" and no_cert != "no answer", no_cert
        assert stranger != "accepted" and stranger != "no answer", stranger


async def test_gateds_link_says_why_a_broker_refused_its_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    with tls_broker(tmp_path, pki) as (_broker, tls_port):
        cfg = _parse_mqtt({"mqtt": _tls_mqtt(tls_port, pki, tls_cert_file=str(pki.other_cert),
                                              tls_key_file=str(pki.other_key))}).mqtt
        assert cfg is not None
        link = MqttLink(cfg, "stranger", name="sync")
        task = asyncio.create_task(link.run())
        try:
            await eventually(lambda: link.stats.connect_failures >= 2, what="refusals")
            assert link.stats.connects == 0
            assert "client certificates" in link.stats.detail or "certificate" in (
                link.stats.detail), link.stats.detail
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_the_brokers_name_is_verified(tmp_path: Path, pki: Pki) -> None:
    # A broker certificate from the right CA but for another host name is refused: there
    # is no tls_insecure to turn this off.
    with tls_broker(tmp_path, pki, cert=pki.wrong_name_cert, key=pki.wrong_name_key) as (
            _broker, tls_port):
        ctx = tls_context(_parse_mqtt({"mqtt": _tls_mqtt(
            tls_port, pki, tls_cert_file=str(pki.client_cert),
            tls_key_file=str(pki.client_key))}).mqtt)
        outcome = _paho_tls_connect(tls_port, ctx)
        assert outcome.startswith("handshake failed") and "mismatch" in outcome, outcome


@pytest.mark.parametrize(("mqtt_keys", "problem"), [
    ({"tls_cert_file": "/c.pem", "tls_key_file": "/k.pem"}, "mqtt.tls_cert_file: set tls = true"),
    ({"tls": True, "tls_cert_file": "/c.pem"}, "mqtt.tls_cert_file: set tls_cert_file and "
                                               "tls_key_file together"),
    ({"tls": True, "tls_key_file": "/k.pem"}, "mqtt.tls_cert_file: set tls_cert_file and "
                                              "tls_key_file together"),
    ({"tls": True, "tls_insecure": True}, "tls_insecure"),
])
def test_tls_keys_are_validated(mqtt_keys: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        _parse_mqtt({"mqtt": mqtt_keys})


def test_an_unloadable_certificate_names_its_key(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    cfg = _parse_mqtt({"mqtt": {"tls": True, "tls_cert_file": str(tmp_path / "junk.pem"),
                                 "tls_key_file": str(pki.client_key)}}).mqtt
    with pytest.raises(ConfigError, match=r"mqtt\.tls_cert_file: cannot load"):
        tls_context(cfg)
    cfg = _parse_mqtt({"mqtt": {"tls": True, "tls_ca_file": str(tmp_path / "none.pem")}}).mqtt
    with pytest.raises(ConfigError, match=r"mqtt\.tls_ca_file: cannot load"):
        tls_context(cfg)
    # A key that does not belong to the certificate.
    cfg = _parse_mqtt({"mqtt": {"tls": True, "tls_cert_file": str(pki.client_cert),
                                 "tls_key_file": str(pki.other_key)}}).mqtt
    with pytest.raises(ConfigError, match=r"mqtt\.tls_cert_file"):
        tls_context(cfg)


# --- 4: pictures owed to the service ------------------------------------------------------


def _picture(cfg: Any, name: str, data: bytes) -> tuple[str, str]:
    snaps = Path(cfg.journal.snapshot_dir) / "2024-11-30"
    snaps.mkdir(parents=True, exist_ok=True)
    (snaps / name).write_bytes(data)
    return f"2024-11-30/{name}", hashlib.sha256(data).hexdigest()


async def test_a_picture_given_up_as_pending_is_uploaded_later(
    tmp_path: Path, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory()
    cfg = sync_config(tmp_path, http_url=receiver.base_url, snapshot_wait_s=0.5,
                      ack_timeout_s=0.3, retry_min_s=0.05, retry_max_s=0.3)
    path, sha = _picture(cfg, "late.jpg", b"\xff\xd8late-jpeg\xff\xd9")
    failing = 40  # the service refuses this picture for a while …
    receiver.http_faults.extend(Fault("status", 503, path=f"/snapshots/{sha}")
                                for _ in range(failing))
    event = access_event(1, snapshot_path=path, snapshot_sha256=sha)
    await journal.append(event)
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="the event settled without its picture")
    assert receiver.picture_states[event.event_id] == "pending"
    # … then keeps it: the picture was not forgotten when its event went without it.
    await eventually(lambda: sha in receiver.snapshot_hashes(), what="the picture uploaded")
    await stop_service(service, task)
    assert receiver.http_faults == []  # every refusal was met: it really was retried
    assert receiver.picture_state(event.event_id) == "uploaded"
    assert receiver.seen[event.event_id] == 1  # the event itself was not sent again
    assert service.pictures is not None and service.pictures.owed() == 0
    assert receiver.invalid == []


async def test_pictures_owed_survive_a_restart(
    tmp_path: Path, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory()
    cfg = sync_config(tmp_path, http_url=receiver.base_url, snapshot_wait_s=0.3,
                      ack_timeout_s=0.2, retry_min_s=0.05, retry_max_s=0.2)
    path, sha = _picture(cfg, "kept.jpg", b"\xff\xd8kept-over-restart\xff\xd9")
    receiver.http_faults.extend(Fault("status", 500, path=f"/snapshots/{sha}")
                                for _ in range(10_000))  # down for as long as the first run
    event = access_event(1, snapshot_path=path, snapshot_sha256=sha)
    await journal.append(event)
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="the event settled without its picture")
    await eventually(lambda: service.pictures.owed() == 1, what="the picture owed")
    assert service.pictures.is_owed(event.event_id)  # the snapshot quota spares it meanwhile
    await stop_service(service, task)
    receiver.http_faults.clear()  # the service is well again; the device starts afresh

    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: sha in receiver.snapshot_hashes(), what="uploaded after restart")
    await eventually(lambda: service.pictures.owed() == 0, what="nothing owed")
    assert not service.pictures.is_owed(event.event_id)
    await stop_service(service, task)
    assert receiver.picture_state(event.event_id) == "uploaded"


async def test_an_mqtt_site_with_an_http_url_uploads_its_pictures(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port)
    cfg = sync_config(tmp_path, broker=broker, http_url=receiver.base_url,
                      service_key=receiver.service_public_b64)
    path, sha = _picture(cfg, "mqtt.jpg", b"\xff\xd8over-mqtt-site\xff\xd9")
    receiver.http_faults.extend(Fault("status", 503, path=f"/snapshots/{sha}")
                                for _ in range(5))
    events = [access_event(1, snapshot_path=path, snapshot_sha256=sha), access_event(2)]
    await journal.append_many(events)
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="events synced over MQTT")
    await eventually(lambda: sha in receiver.snapshot_hashes(), what="picture over HTTP")
    beat = await service.heartbeat()
    await stop_service(service, task)
    validate_event(beat)
    assert beat["data"]["pictures"]["upload"] == "http"
    assert receiver.picture_state(events[0].event_id) == "uploaded"
    assert receiver.picture_state(events[1].event_id) is None  # no picture at all
    assert receiver.ids(DEVICE) == await journal_ids(journal)


async def test_an_mqtt_only_site_says_its_pictures_stay_local(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64)
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    beat = await service.heartbeat()
    validate_event(beat)
    assert beat["data"]["pictures"] == {"upload": "local"}
    assert service.pictures is None


def test_the_proxy_passes_cuts_and_black_holes(tmp_path: Path) -> None:
    # The proxy itself: what the fault tests above rely on.
    server = socket.create_server((HOST, 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    with TcpProxy(HOST, port) as proxy:
        client = socket.create_connection((HOST, proxy.port), timeout=5)
        assert wait_until(lambda: accepted, 5)
        client.sendall(b"ping")
        assert accepted[0].recv(4) == b"ping"
        proxy.blackhole()  # stays up, nothing flows
        client.sendall(b"lost?")
        accepted[0].settimeout(0.5)
        with pytest.raises(TimeoutError):
            accepted[0].recv(5)
        proxy.resume()  # held, not dropped: the stream is whole
        accepted[0].settimeout(5)
        assert accepted[0].recv(5) == b"lost?"
        proxy.cut()
        client.settimeout(5)
        with pytest.raises(OSError):  # reset (or closed) by the cut
            assert client.recv(1) == b""
            raise ConnectionResetError
        late = socket.create_connection((HOST, proxy.port), timeout=5)
        late.settimeout(5)
        with pytest.raises(OSError):
            assert late.recv(1) == b""
            raise ConnectionResetError
        assert proxy.active == 0
    server.close()
