"""The central log viewer in real headless Chromium (Debian's chromium + chromium-driver, Selenium).

One `gated central run` (MQTT ingest through the shipped broker config and ACL, the viewer on a
loopback port, remote commands through the operator's broker account) over a real PostgreSQL,
with events of two tenants ingested through the real store. One browser for the module: an
admin logs in through the form, filters the access list by plate and by time range, pages
forward, opens an event and its picture, fetches the CSV, opens device health, sends an `open`
to a gate and sees it waiting and then answered, and logs out; the old session is refused
after. Screenshots go to test-output/browser/ (gitignored).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from gated.central.admin import enrol_device
from gated.central.snapshots import LocalSnapshotStore
from gated.central.store import Store
from gated.central.witness import rfc3339
from gated.sync.signing import kid_of, load_or_create_key, sign, verify
from tests.central.conftest import USERS, AclBroker
from tests.support.broker import free_port, mosquitto_available
from tests.support.device_sim import SimDevice
from tests.support.postgres import OWNER, SERVICE, PgServer

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"
WAIT_S = 20
PASSWORD = "correct-horse-battery"
DAY1 = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)
DAY2 = dt.datetime(2026, 11, 3, 9, 0, tzinfo=dt.UTC)

if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
    pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh --test)",
                allow_module_level=True)
if not mosquitto_available():
    pytest.skip("mosquitto is not installed (scripts/setup.sh --test)", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: only needed with a browser)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


class Gate:
    """acme/gate-1 on the broker with its own account: takes commands, answers them signed."""

    def __init__(self, broker: AclBroker, device: SimDevice) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.device = device
        self.received: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        user = f"{device.tenant_id}/{device.device_id}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user)
        self.client.username_pw_set(user, USERS[user])
        self.client.on_connect = lambda c, *_: c.subscribe(device.prefix + "commands", 1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.received.append(json.loads(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def answer(self, command: dict[str, Any], message: str) -> None:
        """Publish the signed `success` result the gate's downlink would send."""
        data = sign({"command_id": command["id"], "tenant_id": self.device.tenant_id,
                     "device_id": self.device.device_id, "action": command["data"]["action"],
                     "outcome": "success", "reason": None, "message": message,
                     "data": {"lane": command["data"]["args"].get("lane")},
                     "at": rfc3339(dt.datetime.now(dt.UTC).timestamp())}, self.device.key)
        event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": self.device.source,
                 "type": "io.gated.command.result.v1", "time": data["at"],
                 "datacontenttype": "application/json", "subject": command["id"],
                 "data": data}
        self.client.publish(self.device.prefix + "commands/result", json.dumps(event),
                            qos=1).wait_for_publish(10)

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Central:
    """The running service: the viewer's address, what was ingested, the gate."""

    device: SimDevice  # acme's gate-1, with the key it was enrolled with
    service_key: Any
    plates: list[str]  # acme's access events, newest first
    picture: bytes
    day2: list[str]  # the second day's plates, newest first
    base: str = ""
    gate: Gate | None = None


def _jpeg() -> bytes:
    """A small real JPEG (a browser must decode it: naturalWidth > 0)."""
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:, :32] = (40, 160, 220)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def _ingest(url: str, key: Any, owner: Any, pictures: LocalSnapshotStore) -> Central:
    """Two tenants' gates enrolled; their events, a picture, a head and a heartbeat stored."""
    acme, globex = SimDevice("acme", "hq", "gate-1"), SimDevice("globex", "plant", "gate-1")
    for device in (acme, globex):
        enrol_device(owner, device.tenant_id, device.device_id, device.site_id,
                     device.public_b64)
    picture = _jpeg()
    sha = hashlib.sha256(picture).hexdigest()
    relative, _ = pictures.put(sha, picture)
    store = Store(url, key).open()
    try:
        assert store.snapshot_kept("acme", "gate-1", sha, relative, len(picture))
        events = []
        for n in range(1, 10):  # nine on the first day, one of them with the picture
            at = (DAY1 + dt.timedelta(minutes=n)).timestamp()
            events.append(acme.event(vehicle_plate=f"ACME{n:02d}", created_at=at,
                                     captured_at=at - 0.2,
                                     snapshot_sha256=sha if n == 5 else None))
        day2 = ["DAY2A", "DAY2B"]
        for n, plate in enumerate(day2):
            at = (DAY2 + dt.timedelta(minutes=n)).timestamp()
            events.append(acme.event(vehicle_plate=plate, created_at=at, captured_at=at))
        events.append(acme.event("audit", actor_id="ops:zed", created_at=DAY2.timestamp()))
        outcome = store.ingest("acme", "gate-1", events, [acme.signed_head()])
        assert len(outcome.stored) == len(events)
        store.ingest("globex", "gate-1", [globex.event(vehicle_plate="GLOBEX1",
                                                       created_at=DAY1.timestamp())])
        store.heartbeat("acme", "gate-1", {"backlog": {"access": 0, "audit": 0},
                                           "rules_version": 3, "version": "2.1.0",
                                           "healthy": True})
    finally:
        store.close()
    plates = [*day2[::-1], *(f"ACME{n:02d}" for n in range(9, 0, -1))]
    return Central(acme, key, plates, picture, day2[::-1])


@pytest.fixture(scope="module")
def central(pg_server: PgServer, pg_template: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    tmp = tmp_path_factory.mktemp("central")
    db = pg_server.create_database(template=pg_template)
    broker = AclBroker(tmp / "broker").start()
    process: subprocess.Popen[str] | None = None
    gate: Gate | None = None
    try:
        key = load_or_create_key(tmp / "service.key")  # the service's own key file
        with pg_server.connect(db, OWNER) as owner:
            made = _ingest(pg_server.conninfo(db, SERVICE), key, owner,
                           LocalSnapshotStore(tmp / "pictures"))
        port = free_port()
        config = tmp / "central.toml"
        config.write_text(f"""
[database]
url = "{pg_server.conninfo(db, SERVICE)}"
owner_url = "{pg_server.conninfo(db, OWNER)}"

[service]
key_file = "{tmp / 'service.key'}"

[mqtt]
enabled = true
host = "{broker.host}"
port = {broker.port}
username = "gated-service"
password = "{USERS['gated-service']}"
client_id = "gated-service"

[http]
enabled = false

[snapshots]
path = "{tmp / 'pictures'}"

[viewer]
enabled = true
listen = "127.0.0.1"
port = {port}

[downlink]
mqtt_username = "gated-service-2"
mqtt_password = "{USERS['gated-service-2']}"
""")
        # the first admin, as docs/central.md says to make one
        subprocess.run([sys.executable, "-m", "gated", "central", "user", "add", "--tenant",
                        "acme", "ada", "--role", "admin", "--password-stdin", "--config",
                        str(config)], input=PASSWORD + "\n", text=True, check=True,
                       capture_output=True, timeout=60)
        log = tmp / "central.log"  # a file, not a pipe: nobody reads the log while it runs
        with log.open("w") as err:
            process = subprocess.Popen([sys.executable, "-m", "gated", "central", "run",
                                        "--config", str(config)], stdout=subprocess.PIPE,
                                       stderr=err, text=True)
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            process.kill()
            pytest.fail(line + log.read_text())
        gate = Gate(broker, made.device)
        made.base, made.gate = f"http://127.0.0.1:{port}", gate
        yield made
    finally:
        if gate is not None:
            gate.stop()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        broker.stop()
        pg_server.drop_database(db)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    profile = tmp_path_factory.mktemp("profile")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: webdriver.Chrome, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"central-{name}.png"))


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Errors the pages raised (a CSP violation by the viewer's own page would show here)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and "favicon" not in e["message"]
            and "status of 401" not in e["message"]]  # the login page answers 401


def log_in(browser: webdriver.Chrome, central: Central, path: str = "/events") -> None:
    """Through the form, as the viewer's login page asks (it answers the page asked for)."""
    browser.get(central.base + path)
    browser.find_element(By.ID, "tenant").send_keys("acme")
    browser.find_element(By.ID, "user").send_keys("ada")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, WAIT_S).until(ec.url_contains(path))


@pytest.fixture
def ada(browser: webdriver.Chrome, central: Central) -> webdriver.Chrome:
    """The browser with ada's session (logs in when an earlier test did not)."""
    if browser.get_cookie("gated_viewer") is None:
        log_in(browser, central)
    return browser


def plates(browser: webdriver.Chrome) -> list[str]:
    return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#event-rows a.plate")]


def filter_events(browser: webdriver.Chrome, **values: str) -> None:
    """Fill the events form (empty for the rest) and submit it."""
    form = browser.find_element(By.CSS_SELECTOR, "form.filters")
    old = browser.find_element(By.ID, "event-rows")
    for name in ("site", "gate", "lane", "plate", "reason", "since", "until"):
        field_ = form.find_element(By.NAME, name)
        # Date fields are set by script: what send_keys types into one depends on the
        # browser's locale, and the value the form submits is ISO either way.
        browser.execute_script("arguments[0].value = arguments[1]", field_,
                               values.get(name, ""))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, WAIT_S).until(ec.staleness_of(old))


def fetch(browser: webdriver.Chrome, url: str) -> dict[str, Any]:
    """GET from the page (its cookie, its origin): status, content type, text."""
    answer: dict[str, Any] = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text().then(t => done("
        "{status: r.status, type: r.headers.get('content-type'), text: t})))"
        ".catch(e => done({status: 0, type: '', text: String(e)}));", url)
    return answer


def test_log_in_filter_by_plate_and_time_and_page_forward(browser: webdriver.Chrome,
                                                          central: Central) -> None:
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(central.base + "/events")
    assert browser.find_elements(By.ID, "tenant")  # no session: the login form
    shot(browser, "1-login")
    log_in(browser, central)
    wait.until(ec.presence_of_element_located((By.ID, "event-rows")))
    shown = plates(browser)
    assert shown == central.plates and "GLOBEX1" not in browser.page_source
    shot(browser, "2-events")
    # By plate, from the form (contains, any case).
    filter_events(browser, plate="acme0")
    assert "plate=acme0" in browser.current_url
    assert plates(browser) == [p for p in central.plates if p.startswith("ACME")]
    filter_events(browser, plate="ACME05")
    assert plates(browser) == ["ACME05"]
    # By time range: the second day alone.
    filter_events(browser, since="2026-11-03", until="2026-11-03")
    assert "since=2026-11-03" in browser.current_url
    assert plates(browser) == central.day2
    filter_events(browser, until="2026-11-02")
    assert plates(browser) == [p for p in central.plates if p.startswith("ACME")]
    shot(browser, "3-filtered")
    # Page forward, four at a time: every event once, newest first.
    browser.get(central.base + "/events?limit=4")
    seen = plates(browser)
    while browser.find_elements(By.ID, "next"):
        old = browser.find_element(By.ID, "event-rows")
        browser.find_element(By.ID, "next").click()
        wait.until(ec.staleness_of(old))
        assert "before=" in browser.current_url and "limit=4" in browser.current_url
        page = plates(browser)
        assert 0 < len(page) <= 4
        seen.extend(page)
    assert seen == central.plates
    assert console_errors(browser) == []


def test_an_event_page_shows_its_picture_and_the_csv_has_the_rows(
        ada: webdriver.Chrome, central: Central) -> None:
    wait = WebDriverWait(ada, WAIT_S)
    ada.get(central.base + "/events?plate=ACME05")
    ada.find_element(By.CSS_SELECTOR, "#event-rows a.plate").click()
    image: WebElement = wait.until(ec.presence_of_element_located((By.ID, "snapshot")))
    width = wait.until(lambda d: d.execute_script(
        "const i = arguments[0]; return i.complete && i.naturalWidth;", image))
    assert width == 64
    src = image.get_attribute("src")
    assert src is not None
    sha = hashlib.sha256(central.picture).hexdigest()
    assert src == f"{central.base}/snapshots/{sha}.jpg"
    got = fetch(ada, src)
    assert (got["status"], got["type"]) == (200, "image/jpeg")
    assert "Allowed" in ada.find_element(By.ID, "explained").text
    assert "witnessed" in ada.find_element(By.ID, "chain").text
    shot(ada, "4-event")
    # The CSV of what the list shows, from the list's own link.
    ada.get(central.base + "/events?since=2026-11-02&until=2026-11-02")
    link = ada.find_element(By.ID, "csv").get_attribute("href")
    assert link is not None and "since=2026-11-02" in link
    answer = fetch(ada, link)
    assert answer["status"] == 200 and answer["type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer["text"])))
    assert [r["plate"] for r in rows] == [p for p in central.plates if p.startswith("ACME")]
    assert {r["gate"] for r in rows} == {"gate-1"} and {r["site"] for r in rows} == {"hq"}
    assert all(r["created_at"].startswith("2026-11-02T08:0") for r in rows)
    assert console_errors(ada) == []


def test_device_health_a_command_and_its_answer_then_log_out(
        ada: webdriver.Chrome, central: Central) -> None:
    wait = WebDriverWait(ada, WAIT_S)
    ada.get(central.base + "/events")
    ada.find_element(By.LINK_TEXT, "Devices").click()
    row = wait.until(ec.presence_of_element_located((By.ID, "device-gate-1")))
    assert "online" in row.text and "up to seq 12" in row.text and "v2.1.0" in row.text
    shot(ada, "5-devices")
    row.find_element(By.CSS_SELECTOR, "a.device").click()
    wait.until(ec.presence_of_element_located((By.ID, "command-rows")))
    assert "No commands sent" in ada.find_element(By.ID, "command-rows").text
    # An admin sends `open` to the gate from its page.
    form = ada.find_element(By.CSS_SELECTOR, "#commands form.command")
    Select(form.find_element(By.NAME, "action")).select_by_visible_text("open")
    form.find_element(By.NAME, "lane").send_keys("main-in")
    form.find_element(By.NAME, "reason").send_keys("courier")
    form.find_element(By.TAG_NAME, "button").click()
    message = wait.until(ec.presence_of_element_located((By.ID, "message")))
    assert message.text.startswith("open sent to gate-1 (command ")
    command_id = re.search(r"\(command ([0-9a-f-]{36})\)", message.text)
    assert command_id is not None
    sent = ada.find_element(By.ID, f"command-{command_id.group(1)}")
    assert sent.get_attribute("class") == "command-pending"
    assert "no answer yet" in sent.text and "ada" in sent.text and "main-in" in sent.text
    shot(ada, "6-command-sent")
    # The gate got it, signed by the service; its signed answer comes back through the
    # broker and the service's MQTT ingest, and the page shows it.
    gate = central.gate
    assert gate is not None
    wait.until(lambda _: gate.received)
    [command] = gate.received
    public = central.service_key.public_key()
    verify(command["data"], {kid_of(public): public})
    assert command["id"] == command_id.group(1)
    assert command["data"]["issuer"] == "viewer:ada"
    gate.answer(command, "main-in opened")

    def answered(driver: webdriver.Chrome) -> bool:
        driver.get(central.base + "/devices/gate-1")  # a GET: never the form's POST again
        row = driver.find_element(By.ID, f"command-{command['id']}")
        return row.get_attribute("class") == "command-done"

    wait.until(answered)
    done = ada.find_element(By.ID, f"command-{command['id']}")
    assert "done" in done.text and "main-in opened" in done.text
    shot(ada, "7-command-done")
    assert console_errors(ada) == []
    # Log out; the old session's cookie opens nothing any more.
    cookie = ada.get_cookie("gated_viewer")
    assert cookie is not None
    ada.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
    wait.until(ec.url_to_be(central.base + "/login"))
    assert ada.get_cookie("gated_viewer") is None
    ada.add_cookie({"name": "gated_viewer", "value": cookie["value"], "path": "/"})
    for path in ("/events", "/devices/gate-1"):
        ada.get(central.base + path)
        assert ada.find_elements(By.ID, "tenant"), path  # the login form again
        assert not ada.find_elements(By.ID, "event-rows"), path
    sha = hashlib.sha256(central.picture).hexdigest()
    with httpx.Client(base_url=central.base, cookies={"gated_viewer": cookie["value"]}) as old:
        for path in ("/events", "/events.csv", "/devices", "/devices/gate-1",
                     f"/snapshots/{sha}.jpg"):
            assert old.get(path).status_code == 401, path
    ada.delete_all_cookies()
