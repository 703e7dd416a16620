"""The review station in a real browser: Debian's chromium + chromedriver driven by Selenium, headless,
against `medge review` started as the CLI starts it. A reviewer logs in, sees urgent and needs-review
findings first, opens one with its overlay, records a verdict and sees the agreement dashboard change.

Runs on a SQLite file and on PostgreSQL. Screenshots are kept as test artefacts in
$MEDGE_TEST_ARTEFACTS/review-browser/<store> when that is set, else in
the test's tmp_path; the folder is printed (pytest -s, or the captured output of a failure)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("argon2")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.support.review import PASSWORDS, WORKLIST_ORDER, Server, make_db  # noqa: E402

CHROMIUM = ("/usr/bin/chromium", "chromium")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")


def _which(names: tuple[str, ...]) -> str | None:
    for n in names:
        p = n if os.access(n, os.X_OK) else shutil.which(n)
        if p:
            return p
    return None


@pytest.fixture
def browser(tmp_path):
    chromium, driver = _which(CHROMIUM), _which(CHROMEDRIVER)
    if not chromium or not driver:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
              f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver, log_output=str(tmp_path / "chromedriver.log")), options=opts)
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def artefacts(tmp_path) -> Path:
    root = os.environ.get("MEDGE_TEST_ARTEFACTS")
    folder = Path(root) / "review-browser" if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"review station screenshots: {folder}")
    return folder


def test_reviewer_logs_in_reviews_a_finding_and_sees_the_dashboard_change(store_db, tmp_path, browser, artefacts):
    db = make_db(store_db)
    shots = artefacts / db.kind  # the same pages from each store
    shots.mkdir(exist_ok=True)
    with Server(db.url, tmp_path / "review.log") as server:
        b, wait = browser, WebDriverWait(browser, 20)
        b.get(server.url + "/")
        wait.until(EC.presence_of_element_located((By.ID, "username")))
        assert b.current_url.startswith(server.url + "/login")
        b.save_screenshot(str(shots / "1-login.png"))
        b.find_element(By.ID, "username").send_keys("rita")
        b.find_element(By.ID, "password").send_keys(PASSWORDS["rita"])
        b.find_element(By.ID, "login").click()
        wait.until(EC.presence_of_element_located((By.ID, "worklist")))
        assert b.find_element(By.ID, "who").text == "rita (reviewer)"
        cookie = b.get_cookie("medge_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        rows = b.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
        assert [r.get_attribute("data-finding") for r in rows] == WORKLIST_ORDER
        first = rows[0]
        assert first.get_attribute("data-priority") == "urgent" and first.get_attribute("data-needs-review") == "1"
        assert "needs review" in first.text and "urgent" in first.text
        b.save_screenshot(str(shots / "2-worklist.png"))

        # the dashboard before
        b.get(server.url + "/audit")
        before = b.find_element(By.CSS_SELECTOR, '#by-model tr[data-key="us-free-fluid 1.0.0"]')
        assert before.get_attribute("data-reviewed") == "0" and before.find_element(By.CLASS_NAME, "agreement").text == "n/a"
        b.save_screenshot(str(shots / "3-audit-before.png"))

        # open the top finding and check that its overlay picture loaded
        b.get(server.url + "/")
        b.find_element(By.CSS_SELECTOR, '#worklist tbody tr[data-finding="urgent-review"] a').click()
        img = wait.until(EC.presence_of_element_located((By.ID, "overlay")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
        assert b.execute_script("return arguments[0].naturalWidth", img) == 160
        assert "free_fluid" in b.find_element(By.TAG_NAME, "h1").text
        assert "uncertain" in b.find_element(By.ID, "reasons").text
        assert b.find_element(By.ID, "sha").text == "f" * 64
        b.save_screenshot(str(shots / "4-finding.png"))

        # one click: agree
        b.find_element(By.ID, "agree").click()
        wait.until(EC.presence_of_element_located((By.ID, "saved")))
        assert b.find_element(By.ID, "state").text == "agreed"
        history = b.find_element(By.ID, "verdicts").text
        assert "rita" in history and "agree (counts)" in history
        b.save_screenshot(str(shots / "5-verdict.png"))

        # the dashboard after
        b.get(server.url + "/audit")
        after = b.find_element(By.CSS_SELECTOR, '#by-model tr[data-key="us-free-fluid 1.0.0"]')
        assert after.get_attribute("data-reviewed") == "1" and after.get_attribute("data-agree") == "1"
        assert after.find_element(By.CLASS_NAME, "agreement").text == "100 %"
        assert len(b.find_elements(By.CSS_SELECTOR, "#charts svg")) == 2
        b.save_screenshot(str(shots / "6-audit-after.png"))

        # the worklist moved on: the reviewed finding left the unreviewed list
        b.get(server.url + "/")
        rows = b.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
        assert [r.get_attribute("data-finding") for r in rows] == WORKLIST_ORDER[1:]

        # logging out ends it: the worklist sends the browser to the login form again
        b.find_element(By.CSS_SELECTOR, "header form button").click()
        wait.until(EC.presence_of_element_located((By.ID, "username")))
        b.get(server.url + "/")
        assert b.current_url.startswith(server.url + "/login")
    assert sorted(p.name for p in shots.iterdir()) == ["1-login.png", "2-worklist.png", "3-audit-before.png",
                                                           "4-finding.png", "5-verdict.png", "6-audit-after.png"]
