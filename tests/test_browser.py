"""The MLflow UI, checked in a real browser: a tiny suite's cells appear by name.

Starts ``mlflow server --workers 1`` on a temporary SQLite store filled by ``privbench run``,
opens the suite's experiment page in headless Chromium (selenium) and waits for the React
app to show every cell's run name. A screenshot is kept under the test's tmp dir and copied
to ``results/browser/`` (git-ignored). Needs Chromium and chromedriver:
``apt-get install -y --no-install-recommends chromium chromium-driver`` (CI's .ci/run does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = """\
suite: browsertest
base:
  data: {name: breast_cancer, partition: iid, num_sites: 3}
  model: {name: logreg}
  train: {rounds: 2, local_epochs: 1, batch_size: 16, lr: 0.1}
  attacks: [{name: loss_threshold}]
grid:
  defenses: [[], [{name: clipping, max_norm: 0.5}]]
seeds: [0]
"""
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1600,1000",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(*names: str) -> str:
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    pytest.fail(f"none of {names} found; install Chromium: apt-get install -y --no-install-recommends chromium chromium-driver")


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout:.0f} s: {log.read_text()[-2000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group, started by this test)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


def _all_visible(driver, names) -> bool:
    text = driver.find_element("tag name", "body").text
    return all(n in text for n in names)


@pytest.mark.slow
def test_mlflow_ui_shows_the_cells_by_name(tmp_path):
    from mlflow.tracking import MlflowClient
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from bench.cli import main

    chromium = _executable("chromium", "chromium-browser", "google-chrome")
    chromedriver = _executable("chromedriver")
    suite = tmp_path / "browsertest.yaml"
    suite.write_text(SUITE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(suite), "--tracking-uri", uri, "-q"]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("browsertest")
    cells = client.search_runs([exp.experiment_id], "tags.role = 'cell'")
    names = sorted(r.info.run_name for r in cells)
    assert names == ["breast_cancer · clipping(C=0.5) · seed 0", "breast_cancer · no defense · seed 0"]

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    log = tmp_path / "mlflow-server.log"
    screenshot = tmp_path / "mlflow_ui.png"
    grouped = tmp_path / "mlflow_ui_grouped.png"
    with open(log, "w") as log_fh:
        server = subprocess.Popen(
            [mlflow_exe, "server", "--backend-store-uri", uri, "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        )
    driver = None
    try:
        _wait_healthy(url, server, log)
        opts = Options()
        opts.binary_location = chromium
        for flag in CHROME_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
        driver = webdriver.Chrome(options=opts, service=Service(chromedriver))
        driver.set_page_load_timeout(60)
        # the suite's runs table (MLflow 3 opens an experiment on its GenAI overview otherwise)
        driver.get(f"{url}/#/experiments/{exp.experiment_id}/runs")
        wait = WebDriverWait(driver, 60, poll_frequency=0.5)
        parent = client.search_runs([exp.experiment_id], "tags.role = 'suite'")[0].info.run_name
        wait.until(lambda d: parent in d.find_element(By.TAG_NAME, "body").text)
        # cells are child runs, folded under the suite's run: unfold it
        if not _all_visible(driver, names):
            for button in driver.find_elements(By.CSS_SELECTOR, "[role=row] button[data-component-id*='runnamecellrenderer']"):
                button.click()
        try:
            WebDriverWait(driver, 20, poll_frequency=0.5).until(lambda d: _all_visible(d, names))
        except TimeoutException:
            # another UI version: search for the cells instead, which lists them by name
            box = driver.find_element(By.CSS_SELECTOR, "input[placeholder*='metrics']")
            box.send_keys("tags.role = 'cell'" + Keys.ENTER)
            WebDriverWait(driver, 30, poll_frequency=0.5).until(lambda d: _all_visible(d, names))
        body = driver.find_element(By.TAG_NAME, "body").text
        for n in names:
            assert n in body
        assert driver.save_screenshot(str(screenshot))
        # "Group by" the ``setting`` tag lines the seeds of each defense setting up (docs/reading-results.md)
        settings = sorted({r.data.tags["setting"] for r in cells})
        driver.find_element(By.XPATH, "//button[contains(., 'Group by')]").click()
        WebDriverWait(driver, 20, poll_frequency=0.5).until(
            lambda d: d.find_elements(By.XPATH, "//*[@role='menuitem' or @role='option' or @role='menuitemcheckbox'][contains(., 'setting')]")
        )[0].click()
        WebDriverWait(driver, 30, poll_frequency=0.5).until(lambda d: _all_visible(d, [f"Group: {s}" for s in settings]))
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        assert driver.save_screenshot(str(grouped))
    except WebDriverException:
        if driver is not None:
            driver.save_screenshot(str(screenshot))
        raise
    finally:
        if driver is not None:
            driver.quit()
        _stop(server)
        keep = REPO / "results" / "browser"
        for shot in (screenshot, grouped):
            if shot.is_file():
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, keep / shot.name)
    assert screenshot.stat().st_size > 10_000 and grouped.stat().st_size > 10_000
