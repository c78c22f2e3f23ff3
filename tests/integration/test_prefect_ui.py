"""A job as an operator sees it in the Prefect UI, logged in with the server's auth string:
its logs, its artifacts and its parameters.

Drives Debian's headless Chromium (packages `chromium`, `chromium-driver`, installed by
`scripts/install-system-packages.sh test`: `make test` runs it, and so does this test when they are
missing) with selenium. Screenshots go to the test's temp dir; set
UI_SCREENSHOT_DIR=docs to refresh the ones the README shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.support.payloads import job_payload, model_config
from tests.support.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.sqlite_only]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1300",
)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        subprocess.run(
            ["bash", str(REPO / "scripts" / "install-system-packages.sh"), "test"], check=False, timeout=900
        )
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed and could not be (needs root + apt-get)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dspy-service-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with both paths given, selenium never fetches a browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def ui(stack, browser) -> str:
    """The stack's Prefect UI, logged in (the browser keeps the auth string in its localStorage)."""
    url = stack.stack.config.prefect_api_url.removesuffix("/api")
    log_in(browser, url, stack.stack.prefect_auth)
    return url


def log_in(driver, ui: str, auth_string: str) -> None:
    """Prefect's UI shows its login form while it has no auth string for the server. The UI
    re-renders while it loads: an element found a moment ago may be gone (stale) by the
    next call, which says nothing yet, so each check looks again at the next poll."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def login_fields() -> list | None:
        """The password fields on screen; None while the page re-rendered under us."""
        try:
            return [f for f in driver.find_elements(By.CSS_SELECTOR, "input[type=password]") if f.is_displayed()]
        except StaleElementReferenceException:
            return None

    def typed_auth_string() -> bool:
        fields = login_fields()
        if not fields:
            return False
        try:
            fields[0].send_keys(auth_string, Keys.ENTER)
        except StaleElementReferenceException:
            return False
        return True

    driver.get(f"{ui}/runs")
    wait_until(typed_auth_string, 60, 0.25, what=lambda: f"the login form:\n{page_text(driver)[-2000:]}")

    def logged_in() -> bool:
        stored = driver.execute_script("return localStorage.getItem('prefect-password')")
        return bool(stored) and login_fields() == []

    wait_until(logged_in, 60, 0.25, what=lambda: f"the UI to accept the auth string:\n{page_text(driver)[-2000:]}")


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


# One round trip per poll: the texts no element shows yet (text-node XPath; reading the
# whole page's text, or many WebDriver calls, is slow while the UI renders its run graph).
MISSING_TEXTS_JS = """
return arguments[0].filter(t => document.evaluate(
    '//*[text()[contains(., "' + t + '")]]', document, null, XPathResult.ANY_UNORDERED_NODE_TYPE, null
).singleNodeValue === null);
"""


def missing_texts(driver, texts: tuple[str, ...]) -> list[str]:
    return driver.execute_script(MISSING_TEXTS_JS, list(texts))


def wait_for_text(driver, *texts: str, timeout: float = 60) -> None:
    missing = list(texts)

    def all_shown() -> bool:
        missing[:] = missing_texts(driver, texts)
        return not missing

    wait_until(all_shown, timeout, 0.25, what=lambda: f"{missing} on the page:\n{page_text(driver)[-3000:]}")


def shows(driver, text: str) -> bool:
    return not missing_texts(driver, (text,))


def scroll_to_text(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.XPATH, f"//*[text()[contains(., {text!r})]]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)


def click_text(driver, text: str) -> None:
    """Click the visible element whose own text is `text` (text-node XPath: matching on
    every element's full string value is quadratic on a page full of logs)."""
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.XPATH, f"//*[text()[normalize-space(.)={text!r}]]")
    elements = [e for e in elements if e.is_displayed()]
    assert elements, f"nothing labelled {text!r} to click"
    elements[0].click()


def test_job_logs_and_artifacts_in_the_prefect_ui(stack, local_lm, browser, ui, tmp_path):
    response = stack.api.post("/run", json=job_payload(local_lm.url, rows=40))
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    job = stack.wait_for_status(job_id, {"success", "failed", "cancelled"})
    assert job["status"] == "success", job["message"]
    prefix = f"job-{uuid.UUID(job_id).hex[:12]}"

    browser.get(f"{ui}/runs/flow-run/{job_id}")
    # The Logs tab opens first: the flow's own lines and DSPy's, with logger names.
    wait_for_text(browser, "job finished: baseline", "dspy.evaluate.evaluate", "Average Metric")
    assert not shows(browser, "Loading untrusted .pkl files")
    docs = Path(os.environ.get("UI_SCREENSHOT_DIR") or tmp_path)
    docs.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(docs / "prefect-ui-job-logs.png"))

    click_text(browser, "Artifacts")
    # The three artifacts by key; the progress artifact's last word is that the job finished.
    keys = (f"{prefix}-progress", f"{prefix}-results", f"{prefix}-prompt")
    wait_for_text(browser, *keys, "bootstrap: finished")
    browser.save_screenshot(str(docs / "prefect-ui-job.png"))

    click_text(browser, f"{prefix}-results")
    table_rows = ("baseline_test_metric", "optimized_test_metric", "LM calls (main)", "estimated cost (USD)")
    wait_for_text(browser, *table_rows, f"{job['optimized_test_metric']:.6g}")
    browser.save_screenshot(str(docs / "prefect-ui-results.png"))


@pytest.fixture(scope="module")
def parameters_tab(stack, local_lm, browser, ui, tmp_path_factory) -> tuple[str, str]:
    """The Parameters tab of a finished job submitted with an inline provider key: its
    text and the key. Screenshot: prefect-ui-parameters.png."""
    canary = f"sk-canary-{uuid.uuid4()}"
    model = {**model_config(local_lm.url), "extra": {"api_key": canary}}
    job_id = stack.submit(job_payload(local_lm.url, rows=20, model_config=model))
    job = stack.wait_for_status(job_id, {"success", "failed", "cancelled"})
    assert job["status"] == "success", job["message"]

    browser.get(f"{ui}/runs/flow-run/{job_id}")
    wait_for_text(browser, "Parameters")
    click_text(browser, "Parameters")
    wait_for_text(browser, "signature_code", "model_config", "openai/local-arithmetic")
    scroll_to_text(browser, "model_config")  # the screenshot shows the model's settings
    docs = Path(os.environ.get("UI_SCREENSHOT_DIR") or tmp_path_factory.mktemp("ui"))
    docs.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(docs / "prefect-ui-parameters.png"))
    return page_text(browser), canary


def test_parameters_tab_shows_the_jobs_request(parameters_tab, local_lm):
    text, _ = parameters_tab
    assert local_lm.url in text and "bootstrap" in text


def test_parameters_tab_shows_no_provider_key(parameters_tab):
    text, canary = parameters_tab
    assert canary not in text
