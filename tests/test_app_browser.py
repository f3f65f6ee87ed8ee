"""End to end in a real browser: ``landslide-batch app`` serves, headless Chromium uploads and runs,
and shows a region run on the deck.gl map; the app keeps the CLI's safeguards (a patch in the
wrong units is refused, run.json's warnings shown) and explains what it shows (models trained,
a legend and a scale bar under and on the map).

Needs Debian's ``chromium`` and ``chromium-driver``. The screenshot goes to
``$LANDSLIDE_BATCH_ARTIFACTS`` (default ``tests/artifacts/``, which ignores itself in git).
"""

from __future__ import annotations

import io
import json
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
from test_app_explain import models_dir as trained_models_dir  # noqa: F401  (a model trained on scene_arrays)
from test_app_explain import runs_dir as warned_runs_dir  # noqa: F401  (a region run with warnings)
from test_region import region  # noqa: F401

from landslide_batch.synthetic import synthetic_scene, write_geotiff, write_l4s_patch

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
def trained_server(tmp_path, trained_models_dir):  # noqa: F811
    """The app serving a model whose card says trained, with its training statistics."""
    with _serving(tmp_path, "--models-dir", str(trained_models_dir)) as url:
        yield url


@pytest.fixture
def warned_runs_server(tmp_path, warned_runs_dir):  # noqa: F811
    """The app serving a region run of a trained model whose run.json carries warnings."""
    with _serving(tmp_path, "--runs-dir", str(warned_runs_dir)) as url:
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
        "Ground truth (cyan) on RGB",
        "Mask (threshold 0.50)",
        "Probability (viridis, 0 → 1)",
        "Precision",
        "Recall",
        "F1",
    ):
        assert caption in body
    images = browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImage]")
    assert len(images) == 5
    (truth,) = [e for e in images if e.text.strip() == "Ground truth (cyan) on RGB"]
    shown = _element_pixels(truth.find_element(By.TAG_NAME, "img")).astype(int)
    cyan = (shown[..., 1] - shown[..., 0] > 80) & (shown[..., 2] - shown[..., 0] > 80)
    assert abs(cyan.mean() - labels.mean()) < 0.03, (cyan.mean(), labels.mean())  # the mask drawn, no more
    assert "probability .npy" in body and "Traceback" not in body
    assert shot.stat().st_size > 10_000


def _map_pixels(browser, canvas) -> np.ndarray:
    """The map's on-screen pixels, RGB, cut from a screenshot of the page."""
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    scale = browser.execute_script("return window.devicePixelRatio")
    r = canvas.rect
    top, left = round(r["y"] * scale), round(r["x"] * scale)
    return shot[top : top + round(r["height"] * scale), left : left + round(r["width"] * scale)]


def _element_pixels(element) -> np.ndarray:
    """An element's on-screen pixels, RGB (WebDriver scrolls it into view first)."""
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))


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


def _body(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text


def _images_loaded(browser) -> bool:
    from selenium.webdriver.common.by import By

    imgs = browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")
    return bool(imgs) and all(img.get_property("naturalWidth") > 0 for img in imgs)


def test_patch_in_the_wrong_units_is_refused_then_flagged(trained_server, browser, tmp_path, scene_arrays):
    """Digital numbers (reflectance x 10000) for a model trained on reflectance: the page maps
    nothing and says how to go on; accepting the mismatch maps it under a warning."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    path = write_geotiff(tmp_path / "patch_dn.tif", scene_arrays[0][:, :128, :128] * 10000)
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(trained_server)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".st-key-patch input[type=file]"))).send_keys(str(path))
    wait.until(lambda d: "128 x 128 px, 100% valid" in _body(d))
    run = "//button[.//p[starts-with(text(), 'Run unet_trained')]]"
    wait.until(ec.element_to_be_clickable((By.XPATH, run))).click()
    wait.until(lambda d: "not in the units the model was trained on" in _body(d))
    shot = _artifacts() / "app_units_refused.png"
    browser.save_screenshot(str(shot))
    body = _body(browser)
    assert "Nothing was mapped" in body and "Map it anyway" in body and "Traceback" not in body
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img"), "nothing mapped"

    wait.until(ec.element_to_be_clickable((By.XPATH, "//label[.//p[starts-with(text(), 'Map it anyway')]]"))).click()
    wait.until(ec.element_to_be_clickable((By.XPATH, run))).click()
    wait.until(lambda d: "units mismatch accepted" in _body(d) and _images_loaded(d))
    browser.save_screenshot(str(_artifacts() / "app_units_accepted.png"))
    body = _body(browser)
    assert "not in the units the model was trained on" not in body and "Overlay on RGB" in body
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) == 4


def test_region_run_shows_warnings_trained_models_and_a_legend(warned_runs_server, browser, warned_runs_dir):  # noqa: F811
    from matplotlib import colormaps
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from landslide_batch.app.runs_view import POLYGON_COLOUR

    run = json.loads((warned_runs_dir / "valley" / "run.json").read_text())
    assert run["warnings"] and [m["trained"] for m in run["models"]] == [True]
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(warned_runs_server)
    wait.until(ec.element_to_be_clickable((By.XPATH, "//label[.//p[text()='Runs']]"))).click()
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".stDeckGlJsonChart canvas")))
    wait.until(lambda d: "Models" in _body(d) and _images_loaded(d))
    time.sleep(1)  # deck.gl draws a frame after the picture decodes
    shot = _artifacts() / "region_explained.png"
    browser.save_screenshot(str(shot))
    body = _body(browser)
    assert "Traceback" not in body and "UNTRAINED" not in body
    canvas = browser.find_element(By.CSS_SELECTOR, ".stDeckGlJsonChart canvas")  # before anything scrolls
    assert _near(_map_pixels(browser, canvas), (0, 0, 0), 30).sum() > 100, "the scale bar, black on the map"
    assert "the black scale bar is 500 m on the ground" in body  # a quarter of the 3.3 km region, rounded down
    alerts = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stAlert]")]
    for warning in run["warnings"]:
        assert any(a.startswith(warning.split(":")[0]) and warning[-20:] in a for a in alerts), (warning, alerts)

    (models,) = [
        t for t in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stTable] table") if "trained" in t.text
    ]
    header, *rows = [
        [c.text for c in tr.find_elements(By.CSS_SELECTOR, "th, td")] for tr in models.find_elements(By.TAG_NAME, "tr")
    ]
    (row,) = [dict(zip(header, r)) for r in rows]
    assert row["trained"] == "yes" and row["arch"] == "Unet", (header, rows)
    models.screenshot(str(_artifacts() / "region_models.png"))

    (legend,) = [
        e for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stImage]") if e.text.strip() == "Legend"
    ]
    pixels = _element_pixels(legend.find_element(By.TAG_NAME, "img"))
    yellow = tuple(int(v) for v in colormaps["viridis"](1.0, bytes=True)[:3])
    assert _near(pixels, yellow, 20).sum() > 10, "the colour bar's high end"
    assert _near(pixels, tuple(POLYGON_COLOUR[:3]), 20).sum() > 100, "the polygons' swatch"
