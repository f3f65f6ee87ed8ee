"""End to end in a real browser: ``landslide-batch app`` serves, headless Chromium uploads and runs,
and shows a region run on the deck.gl map.

Needs Debian's ``chromium`` and ``chromium-driver``. The screenshot goes to
``$LANDSLIDE_BATCH_ARTIFACTS`` (default ``tests/artifacts/``, which ignores itself in git).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app import runs_dir  # noqa: F401  (a real region run, made by the region job)
from test_region import region  # noqa: F401

from landslide_batch.synthetic import synthetic_scene, write_l4s_patch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Chromium and its driver: apt-get install -y chromium chromium-driver",
    ),
]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1400",
)
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


@contextmanager
def _serving(tmp_path: Path, *options: str) -> Iterator[str]:
    """``landslide-batch app OPTIONS`` as a user starts it, on a free localhost port; yields its URL."""
    port = _free_port()
    cli = Path(sys.executable).with_name("landslide-batch")
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(cli),
                "app",
                *options,
                "--server.port",
                str(port),
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
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


@pytest.fixture
def server(tmp_path, tiny_model):
    """The app serving one model folder."""
    shutil.copytree(tiny_model, tmp_path / "models" / tiny_model.name)  # a symlink out of it is not offered
    with _serving(tmp_path, "--models-dir", str(tmp_path / "models")) as url:
        yield url


@pytest.fixture
def runs_server(tmp_path, runs_dir):  # noqa: F811
    """The app serving the runs folder of ``test_app`` (a two-zone region run and a single scene)."""
    with _serving(tmp_path, "--runs-dir", str(runs_dir)) as url:
        yield url


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
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f".st-key-{key} input[type=file]"))).send_keys(
            str(tmp_path / name)
        )
    run = wait.until(ec.element_to_be_clickable((By.XPATH, f"//button[.//p[text()='Run {tiny_model.name}']]")))
    wait.until(lambda d: "128 x 128 px, 100% valid" in text())
    run.click()
    wait.until(lambda d: "Overlay on RGB" in text() and "IoU" in text())
    wait.until(
        lambda d: all(
            img.get_property("naturalWidth") > 0
            for img in d.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")
        )
    )
    body = text()
    shot = _artifacts() / "app_patch_mode.png"
    browser.save_screenshot(str(shot))
    assert "UNTRAINED" in body and "Architecture: Unet" in body
    for caption in (
        "RGB (B4, B3, B2)",
        "Mask (threshold 0.50)",
        "Probability (viridis, 0 → 1)",
        "Precision",
        "Recall",
        "F1",
    ):
        assert caption in body
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) == 4
    assert "probability .npy" in body and "Traceback" not in body
    assert shot.stat().st_size > 10_000


def _map_pixels(browser, canvas) -> np.ndarray:
    """The map's on-screen pixels, RGB, cut from a screenshot of the page."""
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    scale = browser.execute_script("return window.devicePixelRatio")
    r = canvas.rect
    top, left = round(r["y"] * scale), round(r["x"] * scale)
    return shot[top : top + round(r["height"] * scale), left : left + round(r["width"] * scale)]


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.abs(pixels.astype(int) - np.array(colour)).max(axis=-1) <= tol


def test_region_run_on_the_map(runs_server, browser):
    """deck.gl draws the probability, the footprints and the polygons offline (no basemap request),
    and the map zooms under the mouse wheel."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from landslide_batch.app.runs_view import FOOTPRINT_COLOUR

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(runs_server)
    wait.until(ec.element_to_be_clickable((By.XPATH, "//label[.//p[text()='Runs']]"))).click()
    canvas = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".stDeckGlJsonChart canvas")))
    background = np.array([255, 255, 255])

    def coloured() -> float:
        """Share of the map's pixels that are not the page's white background."""
        return float((np.abs(_map_pixels(browser, canvas).astype(int) - background).max(axis=-1) > 30).mean())

    wait.until(lambda d: coloured() > 0.05)  # deck.gl draws once the picture has decoded
    time.sleep(1)  # the polygons' layer may land a frame after the picture
    pixels = _map_pixels(browser, canvas)
    shot = _artifacts() / "region_view.png"
    browser.save_screenshot(str(shot))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "gorkha — region" in body and "Scenes" in body and "Traceback" not in body
    before = coloured()
    assert before > 0.05, f"map canvas nearly blank ({before:.1%} coloured); see {shot}"
    assert _near(pixels, tuple(FOOTPRINT_COLOUR[:3])).sum() > 100  # the footprints' blue outlines
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [r for r in resources if not r.startswith(runs_server) and not r.startswith("data:")], resources

    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -600).perform()
    wait.until(lambda d: coloured() > before + 0.05)  # zoomed in: the map fills more of the canvas
