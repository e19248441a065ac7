"""`make up` as a person uses it: the Airflow UI and the MLflow UI, seen in headless Chromium.

Screenshots of every page checked land in test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from ml.config import Settings
from ml.models import catalogue
from ml.models.registry import CHAMPION, alias_version
from tests.conftest import free_port, processes_with_env, run_make

pytestmark = pytest.mark.airflow
PROJECT_DIR = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_DIR / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DAG_IDS = ("segment_pipeline", "train_models")
DAGS_PARSED_TIMEOUT_S = 120
PAGE_TIMEOUT_S = 30


@dataclass(frozen=True)
class UiServers:
    airflow_url: str
    mlflow_url: str
    airflow_home: Path


@pytest.fixture(scope="module")
def ui_servers(
    trained_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UiServers]:
    """`make up` on its own Airflow home and data folder, with MLflow serving the registry that
    `trained_settings` trained (read only); `make down` afterwards, whatever happened."""
    root = tmp_path_factory.mktemp("ui")
    airflow_port, mlflow_port = free_port(), free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "SEGFLOW_DATA_DIR": str(root / "data"),
        "MLFLOW_TRACKING_URI": trained_settings.mlflow_tracking_uri,
        "AIRFLOW__API__PORT": str(airflow_port),
        "MLFLOW_PORT": str(mlflow_port),
        # The log servers' fixed default ports would clash with another Airflow on this machine.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    try:
        up = run_make("up", env)
        run_dir = root / "airflow" / "run"
        logs = "".join(
            f"\n--- {log.name} (end)\n" + log.read_text()[-3000:] for log in run_dir.glob("*.log")
        )
        assert up.returncode == 0, f"make up failed:\n{up.stdout}\n{up.stderr}{logs}"
        yield UiServers(
            airflow_url=f"http://127.0.0.1:{airflow_port}",
            mlflow_url=f"http://127.0.0.1:{mlflow_port}",
            airflow_home=root / "airflow",
        )
    finally:
        down = run_make("down", env)
        leftovers = processes_with_env("AIRFLOW_HOME", env["AIRFLOW_HOME"])
        for pid in leftovers:  # still stop them, then fail
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert down.returncode == 0, f"make down failed:\n{down.stdout}\n{down.stderr}"
    assert not leftovers, f"make down left processes running: {leftovers}"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium driven by Debian's chromedriver; installed here when missing, since
    only this test needs it."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
        ):
            subprocess.run(command, env=apt, check=True, capture_output=True, timeout=600)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    # Wide enough that the MLflow tables show whole model names beside its assistant panel.
    options.add_argument("--window-size=1600,1000")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def link_texts(driver: WebDriver, href_part: str) -> set[str]:
    return {link.text for link in driver.find_elements(By.CSS_SELECTOR, f"a[href*='{href_part}']")}


def test_airflow_ui_lists_the_dags_after_login(browser: WebDriver, ui_servers: UiServers):
    passwords = ui_servers.airflow_home / "simple_auth_manager_passwords.json.generated"
    password = json.loads(passwords.read_text())["admin"]
    browser.get(f"{ui_servers.airflow_url}/dags")

    wait = WebDriverWait(browser, PAGE_TIMEOUT_S)
    wait.until(expected_conditions.element_to_be_clickable((By.NAME, "username"))).send_keys(
        "admin"
    )
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda driver: "/auth/login" not in driver.current_url)

    # The list shows what the dag-processor has parsed so far and does not refresh by itself.
    deadline = time.monotonic() + DAGS_PARSED_TIMEOUT_S
    while True:
        try:
            WebDriverWait(browser, 10).until(
                lambda driver: set(DAG_IDS) <= link_texts(driver, "/dags/")
            )
            break
        except TimeoutException:
            if time.monotonic() > deadline:
                browser.save_screenshot(ARTIFACTS / "airflow-dags-missing.png")
                raise AssertionError(
                    f"DAGs {DAG_IDS} not listed after {DAGS_PARSED_TIMEOUT_S} s; the page shows "
                    f"{link_texts(browser, '/dags/')}"
                ) from None
            browser.refresh()

    browser.save_screenshot(ARTIFACTS / "airflow-dags.png")
    assert browser.current_url == f"{ui_servers.airflow_url}/dags"
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Sign into Airflow" not in page
    assert "segflow" in page  # the DAGs' tag


def test_mlflow_ui_shows_every_model_with_its_champion(
    browser: WebDriver, ui_servers: UiServers, trained_settings: Settings
):
    champions = {
        model.registered_name: alias_version(trained_settings, model.kind, CHAMPION)
        for model in catalogue.MODELS
    }
    assert None not in champions.values(), champions  # the fixture promoted every kind

    wait = WebDriverWait(browser, PAGE_TIMEOUT_S)
    models_list = f"{ui_servers.mlflow_url}/#/models"
    browser.get(models_list)
    wait.until(lambda driver: set(champions) <= link_texts(driver, "#/models/"))
    # A fresh browser profile gets a promotion dialog over the list: close it.
    for close in browser.find_elements(By.CSS_SELECTOR, "[role=dialog] button[aria-label=Close]"):
        close.click()
    # Until its fading mask is gone, it greys the screenshot and takes the clicks.
    wait.until(
        lambda driver: (
            not any(
                overlay.is_displayed()
                for overlay in driver.find_elements(
                    By.CSS_SELECTOR, "[role=dialog], [class*=modal-mask]"
                )
            )
        )
    )
    browser.save_screenshot(ARTIFACTS / "mlflow-models.png")

    # The list shows one alias per model; each model's page shows every version's aliases. Open
    # each from the list, as a person does (MLflow 3.17's page stays blank when only the model
    # in its address changes).
    for name, version in champions.items():
        browser.get(models_list)
        wait.until(expected_conditions.element_to_be_clickable((By.LINK_TEXT, name))).click()
        champion_tag = wait.until(
            lambda driver, name=name: (
                driver.find_element(By.TAG_NAME, "h2").text == name
                and driver.find_element(
                    By.CSS_SELECTOR, f"[role=row] [role=status][title={CHAMPION}]"
                )
            )
        )
        row = champion_tag.find_element(By.XPATH, "ancestor::*[@role='row'][1]")
        browser.save_screenshot(ARTIFACTS / f"mlflow-model-{name}.png")
        assert row.text.startswith(f"Version {version}\n"), row.text
        assert f"@ {CHAMPION}" in row.text


def test_make_up_writes_owner_only_under_a_usual_umask(ui_servers: UiServers):
    """`make up` ran with umask 022 (run_make): Airflow and MLflow, which do not import segflow,
    still create owner-only files, the generated password file among them."""
    passwords = ui_servers.airflow_home / "simple_auth_manager_passwords.json.generated"
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    data = ui_servers.airflow_home.parent / "data"
    assert (data / "mlflow" / "artifacts").is_dir()
    for path in (data, *data.rglob("*")):
        assert not stat.S_IMODE(path.stat().st_mode) & 0o077, path
    servers = processes_with_env("AIRFLOW_HOME", str(ui_servers.airflow_home))
    assert servers
    for pid in servers:
        status = Path(f"/proc/{pid}/status").read_text()
        umask = next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:"))
        assert umask == "0077", (pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:120])
