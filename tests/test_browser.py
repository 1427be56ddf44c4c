"""The MLflow UI in a real browser, opened the way a user opens it: ``privbench ui``'s link.

A three-cell suite (no defense, clipping, DP-SGD; one seed) is run into a temporary SQLite
store; ``python -m bench ui`` starts MLflow on it and prints each suite's link, which headless
Chromium (selenium) opens. Asserted as a user sees it:

* the runs table, not MLflow 3's GenAI overview, with the "Model training" side bar;
* no group rows (each setting has one run; a group row per single run is what MLflow would
  draw), a distinct colour per setting, every run name (at most 40 characters) shown in full
  and no two alike;
* a run page reached by clicking its name stays in the training-runs mode: "Runs" and "Model
  registry" in the side bar, no "Evaluations"; so does the compare page reached by ticking the
  runs and clicking "Compare";
* the headline metric columns (test accuracy, ε, δ, the attack's TPR at 1 % FPR, seconds) and a
  filled Dataset column;
* the chart view: one "Compare defenses" section of a few charts (not one per metric) and the
  rest collapsed;
* MLflow's compare-runs page of the three cells lists all three.

A second test stops ``privbench ui`` with SIGTERM and, separately, kills it hard (SIGKILL), and
checks that its MLflow server, uvicorn worker and watchdog are all gone (polled, generous timeout).

Screenshots go to ``results/browser/*.png`` (git-ignored). Needs Chromium and chromedriver:
``apt-get install -y --no-install-recommends chromium chromium-driver`` (CI's .ci/run does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "results" / "browser"
SUITE = """\
suite: browsertest
base:
  data: {name: breast_cancer, partition: iid, num_sites: 3}
  model: {name: logreg}
  train: {rounds: 2, local_epochs: 1, batch_size: 16, lr: 0.1}
  attacks: [{name: loss_threshold}]
grid:
  defenses: [[], [{name: clipping, max_norm: 0.5}], [{name: dp_sgd, noise_multiplier: 1.0, max_grad_norm: 1.0}]]
seeds: [0]
"""
HEADERS_JS = """
const seen = new Set();
const scroller = document.querySelector('.ag-body-horizontal-scroll-viewport') || document.querySelector('.ag-center-cols-viewport');
const collect = () => document.querySelectorAll('.ag-header-cell[col-id]').forEach(h => seen.add(h.getAttribute('col-id')));
collect();
if (scroller) {
  for (let x = 0; x <= scroller.scrollWidth; x += 200) { scroller.scrollLeft = x; scroller.dispatchEvent(new Event('scroll')); collect(); }
  scroller.scrollLeft = 0; scroller.dispatchEvent(new Event('scroll'));
}
return Array.from(seen);
"""
HEADLINE = ("utility/test_accuracy", "privacy/epsilon", "privacy/delta", "attack/loss_threshold/tpr_at_fpr_0.01", "cost/seconds")
GENAI_OVERVIEW = ("No data available for the selected time range", "Token Usage")  # what MLflow 3 showed before
GENAI_NAV = ("Evaluations", "Judges", "Prompts & versions")  # MLflow 3's GenAI side bar and breadcrumb on run/compare pages
TRAINING_NAV = ("Runs", "Model registry")
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=2200,1100",
)
# the run-name links whose text does not fit (CSS ellipsis): [name, clipped] (the cell also holds the colour swatch)
NAME_CELLS_JS = """
return Array.from(document.querySelectorAll('.ag-row .ag-cell[col-id="attributes.`Run Name`"] a[href*="/runs/"]')).map(a =>
  [a.innerText.trim(), [a, ...a.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1)]);
"""


# the colour swatch of each run row (the UI's run colour: the `mlflow.runColor` tag privbench sets per setting)
COLORS_JS = """
return Array.from(document.querySelectorAll('.ag-row [data-testid="experiment-view-table-run-color"]')).map(e => {
  const all = [e, ...e.querySelectorAll('*')].map(x => getComputedStyle(x));
  const c = all.map(st => st.backgroundColor).find(v => v && v !== 'rgba(0, 0, 0, 0)' && v !== 'transparent');
  return c || all.map(st => st.color).join('/');
});
"""


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


def _read_links(proc: subprocess.Popen, out: list[str], timeout: float) -> list[str]:
    """The suite links ``privbench ui`` prints once MLflow answers (stdout read on a thread)."""
    done = threading.Event()

    def pump():
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            if "Ctrl-C to stop" in line:
                done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and not done.is_set():
        time.sleep(0.2)
    if proc.poll() is not None or not done.is_set():
        pytest.fail(f"`privbench ui` gave no link in {timeout:.0f} s (exit {proc.poll()}): {out[-10:]}")
    return [l.split(": ", 1)[1] for l in out if "#/experiments/" in l and ": http" in l]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the ``privbench ui`` this test started: SIGINT, as Ctrl-C would (it then stops MLflow).
    A generous timeout (as the stop test's): a loaded CI machine once needed more than 20 s. If it
    still hangs, SIGUSR1 makes ``privbench ui`` print every thread's stack (faulthandler) into its
    output, which the failing assertion shows, before the hard kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.slow
def test_privbench_ui_opens_a_suite_ready_to_compare(tmp_path):
    from mlflow.tracking import MlflowClient
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bench.cli import main
    from bench.mlflow_view import compare_link

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
    assert len(names) == 3 and len(set(names)) == 3
    for r in cells:  # `privbench run` logged each cell's data as an MLflow dataset input, and MLflow's source tags
        (ds,) = [d.dataset for d in r.inputs.dataset_inputs]
        assert ds.name == "breast_cancer" and ds.digest and r.data.tags["data_fingerprint"].startswith("sklearn-")
        assert r.data.tags["mlflow.source.name"].endswith("browsertest.yaml")

    port = _free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "bench", "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    out: list[str] = []
    driver = None
    shots = {name: tmp_path / f"{name}.png" for name in ("runs_table", "charts", "compare", "run_clicked", "compare_clicked")}
    try:
        links = _read_links(ui, out, timeout=90)
        assert len(links) == 1 and "viewStateShareKey=" in links[0] and "workflowType=machine_learning" in links[0], out
        assert "/privbench/open#/experiments/" in links[0], out  # through the page that keeps training-runs mode
        link = links[0]

        opts = Options()
        opts.binary_location = chromium
        for flag in CHROME_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
        driver = webdriver.Chrome(options=opts, service=Service(chromedriver))
        driver.set_page_load_timeout(60)
        # a page that re-renders while it is read (React replacing the node being read) raises
        # StaleElementReference or Chrome's "Node with given id does not belong to the document":
        # read again at the next poll instead of failing (the wait's timeout still bounds it)
        wait = WebDriverWait(driver, 45, poll_frequency=0.5, ignored_exceptions=(WebDriverException,))

        def body() -> str:
            for _ in range(5):
                try:
                    return driver.find_element(By.TAG_NAME, "body").text
                except WebDriverException:  # the document changed under the read: read the new one
                    time.sleep(0.2)
            return driver.find_element(By.TAG_NAME, "body").text

        # 1. the runs table, grouped by setting, headline columns, names in full
        driver.get(link)
        wait.until(lambda d: all(n in body() for n in names) and d.find_elements(By.CSS_SELECTOR, ".ag-header-cell"))
        # the grid draws only the columns in sight: scroll it across and collect every header it draws
        wait.until(lambda d: all(f"metrics.`{m}`" in d.execute_script(HEADERS_JS) for m in HEADLINE))
        wait.until(lambda d: "breast_cancer (" in body())  # the Dataset column: name (digest)
        text = body()
        assert not any(t in text for t in GENAI_OVERVIEW), "MLflow opened its GenAI overview"
        assert "Model training" in text
        # one seed per setting: no group rows (the UI would give each single run one of its own)
        assert "Group by: " not in text and text.count("Group: ") == 0 and "Additional runs" not in text, text[:600]
        assert "browsertest · 20" not in text  # the suite's parent run is not listed among the cells
        colors = driver.execute_script(COLORS_JS)
        assert len(colors) == 3 and len(set(colors)) == 3, colors  # a colour per setting, as in the charts
        assert all(len(n) <= 40 for n in names), names
        cells_shown = [(n, clipped) for n, clipped in driver.execute_script(NAME_CELLS_JS) if n in names]
        assert sorted(n for n, _ in cells_shown) == names, driver.execute_script(NAME_CELLS_JS)  # each cell once: no two alike
        assert not [n for n, clipped in cells_shown if clipped], f"run names cut: {cells_shown}"
        assert driver.save_screenshot(str(shots["runs_table"]))

        # 1b. click a run name: its run page, still in training-runs mode
        first = driver.find_elements(By.CSS_SELECTOR, '.ag-row a[href*="/runs/"]')[0]
        clicked = first.text.strip()
        first.click()
        wait.until(lambda d: "/runs/" in d.current_url and "Metrics (" in body())
        text = body()
        assert clicked in text and not [t for t in GENAI_NAV if t in text], text[:400]
        assert all(t in text for t in TRAINING_NAV), text[:400]
        assert driver.save_screenshot(str(shots["run_clicked"]))


        # 1c. back to the table, tick every run and click Compare: MLflow's compare page, training-runs mode
        driver.get(link)
        wait.until(lambda d: all(n in body() for n in names) and d.find_elements(By.CSS_SELECTOR, ".ag-row"))
        for box in driver.find_elements(By.CSS_SELECTOR, ".ag-row .ag-selection-checkbox input, .ag-row input[type=checkbox]"):
            if not box.is_selected():
                driver.execute_script("arguments[0].click();", box)
        button = wait.until(lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().startswith("Compare")
                                       and b.is_enabled()] or None)[0]
        button.click()
        wait.until(lambda d: "compare-runs" in d.current_url and "Comparing 3 Runs" in body() and all(n in body() for n in names))
        text = body()
        assert not [t for t in GENAI_NAV if t in text] and all(t in text for t in TRAINING_NAV), text[:400]
        assert driver.save_screenshot(str(shots["compare_clicked"]))

        # 2. the chart view: the headline charts open, the other metrics collapsed
        driver.get(link + "&compareRunsMode=CHART")
        cards = lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=experiment-view-compare-runs-card]")  # noqa: E731
        wait.until(lambda d: "Compare defenses" in body() and cards(d))
        time.sleep(2)  # let the charts draw
        assert "All other metrics" in body()
        assert len(cards(driver)) <= len(HEADLINE) + 2, f"{len(cards(driver))} charts open"
        assert driver.save_screenshot(str(shots["charts"]))

        # 3. MLflow's compare-runs page of the three cells
        driver.get(compare_link(link.split("/privbench/open")[0], exp.experiment_id, [r.info.run_id for r in cells]))
        wait.until(lambda d: "Comparing 3 Runs" in body() and all(n in body() for n in names))
        assert not [t for t in GENAI_NAV if t in body()], body()[:400]  # after a run page visited by clicking, too
        assert driver.save_screenshot(str(shots["compare"]))
    except WebDriverException:
        if driver is not None:
            driver.save_screenshot(str(tmp_path / "failure.png"))
        raise
    finally:
        if driver is not None:
            driver.quit()
        _stop(ui)
        SHOTS.mkdir(parents=True, exist_ok=True)
        for shot in [*shots.values(), tmp_path / "failure.png"]:
            if shot.is_file():
                shutil.copy(shot, SHOTS / shot.name)
    assert ui.returncode == 0, out[-60:]
    assert all(s.stat().st_size > 10_000 for s in shots.values())


def _ui_processes(port: int) -> list[str]:
    """Command lines of the processes a ``privbench ui --port PORT`` started (server, worker, watchdog)."""
    out = subprocess.run(["ps", "ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
    return [l for l in out if f"--port {port}" in l and ("mlflow" in l or "uvicorn" in l)]


def _gone(pred, timeout: float = 60.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def _ui_on_one_cell(tmp_path, preexec_fn=None) -> tuple[subprocess.Popen, int]:
    """A one-cell suite run into a fresh store, then ``privbench ui`` on it (its own session) and its port."""
    from bench.cli import main

    suite = tmp_path / "browsertest.yaml"
    suite.write_text(SUITE.replace("[], [{name: clipping, max_norm: 0.5}], ", ""))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(suite), "--tracking-uri", uri, "-q"]) == 0
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--tracking-uri", uri, "--port", str(port)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                          preexec_fn=preexec_fn)
    return ui, port


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_privbench_ui_leaves_nothing_behind(tmp_path, how):
    """SIGTERM stops ``privbench ui`` (exit 0) and everything it started; a hard kill (SIGKILL, which
    it cannot handle) still takes its MLflow server and uvicorn worker down (the watchdog). No timing
    assertion: polled with a generous timeout; the measured time is printed."""
    ui, port = _ui_on_one_cell(tmp_path)
    out: list[str] = []
    try:
        _read_links(ui, out, timeout=90)
        started = _ui_processes(port)
        assert any("mlflow server" in l for l in started) and any("uvicorn" in l for l in started), started
        watchdogs = subprocess.run(["pgrep", "-f", f"watchdog\\({ui.pid},"], capture_output=True, text=True).stdout.split()
        assert len(watchdogs) == 1, watchdogs
        t0 = time.monotonic()
        ui.send_signal(getattr(signal, how))
        ui.wait(timeout=60)
        assert _gone(lambda: not _ui_processes(port)), _ui_processes(port)
        assert _gone(lambda: not os.path.exists(f"/proc/{watchdogs[0]}") or "zombie" in open(f"/proc/{watchdogs[0]}/status").read().lower())
        print(f"privbench ui {how}: exit {ui.returncode}, everything gone after {time.monotonic() - t0:.2f} s")
        if how == "SIGTERM":
            assert ui.returncode == 0, out[-10:]
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        for line in _ui_processes(port):
            os.kill(int(line.split()[0]), signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_stops_privbench_ui_even_when_started_with_sigint_ignored(tmp_path):
    """A background job of a non-interactive shell (some CI runners start tests that way) starts
    with SIGINT ignored, and Python then raises no KeyboardInterrupt: ``privbench ui`` installs its
    own Ctrl-C handler, so SIGINT still stops it (exit 0). No timing assertion."""
    ui, port = _ui_on_one_cell(tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    out: list[str] = []
    try:
        _read_links(ui, out, timeout=90)
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=60)
        assert ui.returncode == 0, out[-10:]
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        for line in _ui_processes(port):
            os.kill(int(line.split()[0]), signal.SIGKILL)
