"""The status page in real headless Chromium (Debian's chromium + chromium-driver, Selenium).

A guard logs in, watches a camera read appear live, opens the gate (confirmation step)
and sees the relay fire and the audit row appear, filters the audit log and replays a
decision — on a desktop and on a phone-sized viewport. Screenshots go to
test-output/browser/ (gitignored). `scripts/setup.sh --test` installs the browser.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import CAMERA_PATH, LCUS_OFF, LCUS_ON, post_until_accepted, wait_audit
from tests.web.support import PASSWORDS, WebSite, make_site, serving

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"
VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}
WAIT_S = 20

if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
    pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh --test)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: only needed with a browser)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[webdriver.Chrome]:
    width, height = VIEWPORTS[request.param]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: webdriver.Chrome, viewport: str, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{viewport}-{name}.png"))


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Errors the page raised (a CSP violation by our own page would show here).

    A driver that cannot give the browser's log fails the test rather than passing it.
    """
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and "favicon" not in e["message"]
            and "status of 401" not in e["message"]]  # the login page before logging in


@pytest.mark.parametrize("browser", list(VIEWPORTS), indirect=True)
def test_a_guard_runs_the_gate_from_the_page(tmp_path: Path, browser: webdriver.Chrome) -> None:
    viewport = "phone" if browser.get_window_size()["width"] < 600 else "desktop"
    site: WebSite = make_site(tmp_path)
    wait = WebDriverWait(browser, WAIT_S)
    try:
        with serving(site):
            site.relay.drain(0.3)
            # Log in.
            browser.get(site.base + "/")
            browser.find_element(By.ID, "user").send_keys("gus")
            browser.find_element(By.ID, "password").send_keys(PASSWORDS["gus"])
            shot(browser, viewport, "1-login")
            browser.find_element(By.ID, "login").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "live-state"), "live"))
            shot(browser, viewport, "2-dashboard")
            # A camera read appears without reloading.
            post_until_accepted(site.site.listener_port, CAMERA_PATH, "AB123CD")
            wait.until(ec.text_to_be_present_in_element((By.ID, "live-events"), "AB123CD"))
            shot(browser, viewport, "3-live-read")
            # Open the gate: confirmation, then the relay fires and the audit row shows.
            site.relay.drain(0.5)  # the read's own pulse
            browser.find_element(By.ID, "act-main-in-open").click()
            # the click navigates to the confirmation page: wait for it, not the old page
            wait.until(ec.presence_of_element_located((By.ID, "reason"))).send_keys(
                "delivery van")
            shot(browser, viewport, "4-confirm")
            browser.find_element(By.ID, "confirm").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "result"), "main-in opened"))
            assert site.relay.read(8, timeout_s=5) == LCUS_ON + LCUS_OFF
            row = wait_audit(site.site, "gate_open")[-1]
            assert (row["actor_id"], row["actor_type"]) == ("gus", "guard")
            shot(browser, viewport, "5-opened")
            browser.find_element(By.ID, "back").click()
            browser.get(site.base + "/audit?action=gate_open")
            wait.until(ec.text_to_be_present_in_element((By.ID, "audit-rows"), "gate_open"))
            # Filter the audit log from its form.
            field = browser.find_element(By.ID, "f-action")
            field.clear()
            field.send_keys("login")
            browser.find_element(By.ID, "f-go").click()
            wait.until(ec.url_contains("action=login"))
            text = browser.find_element(By.ID, "audit-rows").text
            assert "login" in text and "gate_open" not in text
            shot(browser, viewport, "6-audit-filtered")
            # Replay the read's decision against today's rules.
            browser.get(site.base + "/events?plate=AB123CD")
            browser.find_element(By.CSS_SELECTOR, "a.plate").click()
            wait.until(ec.element_to_be_clickable((By.ID, "replay"))).click()
            verdict = wait.until(ec.presence_of_element_located((By.ID, "replay-verdict")))
            assert verdict.text == "Same answer today."
            assert browser.find_element(By.ID, "replay-answer").text == "allowed"
            shot(browser, viewport, "7-replay")
            assert console_errors(browser) == []
    finally:
        site.relay.close()


@pytest.mark.parametrize("browser", list(VIEWPORTS), indirect=True)
def test_an_admin_adds_a_resident_and_their_car_is_let_in_live(
        tmp_path: Path, browser: webdriver.Chrome) -> None:
    viewport = "phone" if browser.get_window_size()["width"] < 600 else "desktop"
    site: WebSite = make_site(tmp_path)
    wait = WebDriverWait(browser, WAIT_S)
    try:
        with serving(site):
            site.relay.drain(0.3)
            browser.get(site.base + "/login")
            browser.find_element(By.ID, "user").send_keys("ada")
            browser.find_element(By.ID, "password").send_keys(PASSWORDS["ada"])
            browser.find_element(By.ID, "login").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "live-state"), "live"))
            # The rule set from the page: a resident with a first vehicle, in one save.
            browser.find_element(By.LINK_TEXT, "Rules").click()
            wait.until(ec.presence_of_element_located((By.ID, "rules-form")))
            for field, value in (("f-id", "r-77"), ("f-name", "Noor Bakker"),
                                 ("f-unit", "7C"), ("f-access_points", "*"),
                                 ("f-plate", "NEW-123-X")):
                browser.find_element(By.ID, field).send_keys(value)
            shot(browser, viewport, "8-rules-add-resident")
            browser.find_element(By.ID, "rules-save").click()
            message = wait.until(ec.presence_of_element_located((By.ID, "rules-message")))
            assert message.text.startswith("r-77 added (rule-set version")
            assert "Noor Bakker" in browser.find_element(By.ID, "rules-list").text
            shot(browser, viewport, "9-rules-added")
            # The next read of that plate is let in, and shows up live.
            browser.get(site.base + "/")
            wait.until(ec.text_to_be_present_in_element((By.ID, "live-state"), "live"))
            post_until_accepted(site.site.listener_port, CAMERA_PATH, "NEW123X")
            wait.until(ec.text_to_be_present_in_element((By.ID, "live-events"), "NEW123X"))
            row = browser.find_element(By.CSS_SELECTOR, "#live-events tr")
            assert "NEW123X" in row.text and "entry" in row.text
            assert row.get_attribute("class") == "allowed"
            assert site.relay.read(8, timeout_s=5) == LCUS_ON + LCUS_OFF
            shot(browser, viewport, "10-resident-let-in")
            # The event page names the resident; the dashboard charts the day.
            row.find_element(By.CSS_SELECTOR, "a.plate").click()
            name = wait.until(ec.presence_of_element_located((By.ID, "resident-name")))
            assert name.text.startswith("Noor Bakker")
            shot(browser, viewport, "11-event-named")
            browser.get(site.base + "/")
            chart = browser.find_element(By.CSS_SELECTOR, "#chart-hourly svg")
            assert chart.size["width"] > 200
            browser.execute_script("arguments[0].scrollIntoView()", chart)
            shot(browser, viewport, "12-charts")
            assert console_errors(browser) == []
    finally:
        site.relay.close()
