"""Every lesson opened in JupyterLab in a real headless browser, and one interactive view clicked.

A JupyterLab server runs on a copy of the committed notebooks; headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by selenium) opens each lesson and checks that its
cells render, then runs a small notebook that builds the retrieval browser
(``medmm_lite.widgets``), changes its study number as a learner would, and waits for the view
to redraw. Screenshots go to ``build/browser/``. Skipped, with the reason, where no browser is
installed (``make test`` installs one where it can).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "browser"
TOKEN = "medmm-browser-test"
WAIT_S = 180  # a loaded 2-core CI machine starts kernels slowly

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    SELENIUM = True
except ImportError:
    SELENIUM = False

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER and SELENIUM),
    reason="no headless browser: needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver; `make test` does this where it can) and selenium (the [dev] extras)")

WIDGET_CELLS = [
    "import torch\nfrom medmm_lite import widgets\nfrom medmm_lite.data import generate_cohort",
    "cohort = generate_cohort(12, image_size=32, seed=0, cache=False)\n"
    "g = torch.Generator().manual_seed(0)\n"
    "# stand-ins for a contrastive model's embeddings: report i lies next to image i\n"
    "image_emb = torch.randn(12, 8, generator=g)\n"
    "text_emb = image_emb + 0.1 * torch.randn(12, 8, generator=g)\n"
    "reports = [f'report number {i}: {r}' for i, r in enumerate(cohort.reports)]\n"
    "view = widgets.retrieval_browser(image_emb, text_emb, torch.as_tensor(cohort.images), reports, start=2)",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}?token={TOKEN}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(nb, root / "notebooks" / nb.name)
    demo = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in WIDGET_CELLS])
    demo.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(demo, root / "widget_demo.ipynb")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MEDMM_WIDGETS"}  # a live frontend: real widgets
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + WAIT_S
    while True:
        try:
            api(base, "/api/status")
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start; its log:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    yield base
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        # a widget that redraws replaces its elements between finding one and reading it: try again
        return WebDriverWait(driver, timeout, poll_frequency=0.5,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition(d))
    except TimeoutException:
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / "timeout.png"))
        pytest.fail(f"the browser never showed {what} within {timeout:.0f} s (screenshot: build/browser/timeout.png)")


def shut_down_kernels(base: str):
    """Opening a notebook starts its kernel; stop them so a dozen lessons do not pile up."""
    for session in api(base, "/api/sessions") or []:
        api(base, f"/api/sessions/{session['id']}", method="DELETE")


def open_in_lab(driver, base: str, path: str):
    from selenium.webdriver.common.by import By
    driver.get(f"{base}/lab/tree/{path}?token={TOKEN}&reset")  # reset: do not reopen earlier tabs
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")) > 0,
             f"the cells of {path}")


LESSONS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_lesson_opens(lab, browser):
    from selenium.webdriver.common.by import By
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "timeout.png").unlink(missing_ok=True)
    for name in LESSONS:
        open_in_lab(browser, lab, f"notebooks/{name}")
        expected = len(nbformat.read(ROOT / "notebooks" / name, as_version=4).cells)
        # JupyterLab renders cells lazily (windowing), so count those it has at least begun with
        shown = len(browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"))
        assert 0 < shown <= expected, f"{name}: {shown} cells shown of {expected}"
        wait_for(browser, lambda d: [h for h in d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-MarkdownOutput h1")
                                     if h.text.startswith(name[:2])], f"{name}'s title rendered")
        errors = browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog")
        assert not errors, f"{name}: JupyterLab showed a dialog: {errors[0].text[:300]}"
        browser.save_screenshot(str(SHOTS / f"{Path(name).stem}.png"))
        shut_down_kernels(lab)


def test_retrieval_browser_redraws_on_input(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    open_in_lab(browser, lab, "widget_demo.ipynb")
    # Run > Run All Cells, through JupyterLab's own menu
    wait_for(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                                 if e.text == "Run"], "the Run menu")[0].click()
    wait_for(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                                 if e.text == "Run All Cells"], "Run All Cells")[0].click()

    def answer_list(d):   # the texts, read at once: the elements go stale when the view redraws
        return [item.text for item in d.find_elements(By.CSS_SELECTOR, ".widget-html ol li")] or None

    first = wait_for(browser, answer_list, "the retrieval browser's nearest reports")
    assert "report number 2:" in first[0] and "its own report" in first[0]
    box = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-text input"), "the study box")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("5", Keys.ENTER)
    wait_for(browser, lambda d: (items := answer_list(d)) and "report number 5:" in items[0],
             "the view redrawn for study 5")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "widget_retrieval_browser.png"))
    shut_down_kernels(lab)
