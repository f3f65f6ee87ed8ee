"""End to end in a real browser: ``landslide-batch app`` serves, headless Chromium uploads and runs.

Needs Debian's ``chromium`` and ``chromium-driver``. The screenshot goes to
``$LANDSLIDE_BATCH_ARTIFACTS`` (default ``tests/artifacts/``, which ignores itself in git).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from landslide_batch.synthetic import synthetic_scene, write_l4s_patch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs Chromium and its driver: apt-get install -y chromium chromium-driver"),
]
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1400")
WAIT_S = 90  # server start, model load and a forward pass on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifacts() -> Path:
    env = os.environ.get("LANDSLIDE_BATCH_ARTIFACTS")
    path = Path(env) if env else Path(__file__).parent / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    if not env:
        (path / ".gitignore").write_text("*\n")
    return path


@pytest.fixture
def server(tmp_path, tiny_model):
    """The app as a user starts it, on a free localhost port; yields its URL."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / tiny_model.name).symlink_to(tiny_model, target_is_directory=True)
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    cli = Path(sys.executable).with_name("landslide-batch")
    proc = subprocess.Popen(
        [str(cli), "app", "--models-dir", str(tmp_path / "models"), "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"app did not come up:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_a_patch_and_run_one_model(server, browser, tmp_path, tiny_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bands, labels = synthetic_scene(128, 128, seed=5)
    write_l4s_patch(tmp_path / "image_7.h5", bands, tmp_path / "mask_7.h5", labels)
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server)

    def text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    for key, name in (("patch", "image_7.h5"), ("truth", "mask_7.h5")):  # the widgets load lazily
        wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, f".st-key-{key} input[type=file]"))).send_keys(str(tmp_path / name))
    run = wait.until(ec.element_to_be_clickable(
        (By.XPATH, f"//button[.//p[text()='Run {tiny_model.name}']]")))
    wait.until(lambda d: "128 x 128 px, 100% valid" in text())
    run.click()
    wait.until(lambda d: "Overlay on RGB" in text() and "IoU" in text())
    wait.until(lambda d: all(img.get_property("naturalWidth") > 0
                             for img in d.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")))
    body = text()
    shot = _artifacts() / "app_patch_mode.png"
    browser.save_screenshot(str(shot))
    assert "UNTRAINED" in body and "Architecture: Unet" in body
    for caption in ("RGB (B4, B3, B2)", "Mask (threshold 0.50)", "Probability (viridis, 0 → 1)",
                    "Precision", "Recall", "F1"):
        assert caption in body
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) == 4
    assert "probability .npy" in body and "Traceback" not in body
    assert shot.stat().st_size > 10_000
