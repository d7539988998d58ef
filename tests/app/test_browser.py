"""``zoo app`` in a real browser: Debian's Chromium driven by Playwright against the app started by the test on
127.0.0.1 (LiteMedSAM's released weights). The browser is installed by the project's set-up (``.ci/run``, the
README's test command); under ``CI=true`` a missing browser fails these tests instead of skipping them.

Waits are on what the page shows (the status line's prompt count, the overlay's colour in the picture), with
generous limits for a slow, loaded machine; nothing asserts a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from zoo.app.views import MASK_COLOUR, ImageGeometry, VolumeGeometry
from zoo.io.nifti import load_image, load_label
from zoo.resources import data_path

CHROMIUM = os.environ.get("ZOO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# per event: model loading and the first encoding on a slow, loaded machine
WAIT_MS = int(float(os.environ.get("ZOO_TEST_BROWSER_WAIT_S", "240")) * 1000)
SCREENSHOT_COPY = Path("/tmp/zoo_app_screenshot.png")
LIVER = 5  # labels.json


class _AppTmp:
    """The temporary folder the app process is given (TMPDIR), to check where it writes."""

    folder: Path | None = None

    def get(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="zoo-app-test-tmp-"))
        return self.folder


APP_TMP = _AppTmp()


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the project's set-up installs it; see .ci/run)")
    pytest.skip(f"{reason}; install it with the README's test command (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).is_file():
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed (the dev extra)")
    try:
        import gradio  # noqa: F401
    except ImportError:
        _missing("gradio is not installed (the app extra)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, accept_downloads=True,
            downloads_path=str(downloads), viewport={"width": 1500, "height": 1100},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    """``zoo app`` on a free port of 127.0.0.1, stopped (and its temporary folder removed) after the tests."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(APP_TMP.get())}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "zoo.cli.main", "app", "--model", "litemedsam", "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"zoo app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"zoo app did not answer on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        shutil.rmtree(APP_TMP.get(), ignore_errors=True)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ZOO_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_status(page, text: str) -> str:
    """Wait until the status line contains ``text`` (the app is done with the event); return the line."""
    page.wait_for_function(
        "text => { const s = document.querySelector('#zoo-status'); return s && s.innerText.includes(text) }",
        arg=text, timeout=WAIT_MS,
    )
    return page.inner_text("#zoo-status")


def _click_pixel(page, view: str, x: float, y: float) -> None:
    """Click the displayed picture of ``view`` at its pixel (x, y) (the picture may be drawn scaled)."""
    image = page.locator(f"#zoo-view-{view} img")
    image.wait_for(state="visible")
    box = image.bounding_box()
    natural = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert box is not None and natural[0] > 0
    page.mouse.click(box["x"] + x * box["width"] / natural[0], box["y"] + y * box["height"] / natural[1])


def _overlay_pixels(page, view: str) -> int:
    """How many pixels of the displayed picture have the mask's outline colour."""
    return int(page.evaluate(
        """([view, colour]) => {
            const img = document.querySelector(`#zoo-view-${view} img`);
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let found = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === colour[0] && data[i + 1] === colour[1] && data[i + 2] === colour[2]) found++;
            }
            return found;
        }""",
        [view, list(MASK_COLOUR)],
    ))


def _wait_overlay(page, view: str) -> int:
    page.wait_for_function(
        """([view, colour]) => {
            const img = document.querySelector(`#zoo-view-${view} img`);
            if (!img || !img.complete || !img.naturalWidth) return false;
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === colour[0] && data[i + 1] === colour[1] && data[i + 2] === colour[2]) return true;
            }
            return false;
        }""",
        arg=[view, list(MASK_COLOUR)], timeout=WAIT_MS,
    )
    return _overlay_pixels(page, view)


def _prompts(status: str) -> int:
    return int(status.split("prompts: ")[1].split()[0])


def _mask_size(status: str) -> int:
    return int(status.split("mask: ")[1].split()[0])


def _download(page, target: Path) -> Path:
    page.click("#zoo-export")
    link = page.locator("#zoo-download a").first
    link.wait_for(state="visible", timeout=WAIT_MS)
    with page.expect_download(timeout=WAIT_MS) as download:
        link.click()
    download.value.save_as(str(target))
    return target


def _box_clicks(page, view: str, geometry, rows: np.ndarray, cols: np.ndarray) -> None:
    page.get_by_label("box (two clicks)").check()
    for row, col in ((rows.min(), cols.min()), (rows.max(), cols.max())):
        _click_pixel(page, view, *geometry.pixel_to_display(view, row, col))
        if (row, col) == (rows.min(), cols.min()):
            _wait_status(page, "First corner")


def test_liver_on_the_bundled_ct(browser_context, app_url: str, artifacts: Path, tmp_path: Path) -> None:
    ct_path = data_path("totalseg_example", "ct.nii.gz")
    ct = load_image(ct_path)
    geometry = VolumeGeometry(ct.shape, ct.affine)
    page = browser_context.new_page()
    page.goto(app_url)
    page.get_by_role("button", name="Example CT (TotalSegmentator, NIfTI)").click()
    _wait_status(page, "Opened ct.nii.gz")
    axial = int(page.locator("#zoo-slice-axial input[type=number]").input_value())
    liver = geometry.extract(geometry.to_ras(load_label(data_path("totalseg_example", "labels.nii.gz")).array == LIVER),
                             "axial", axial)
    rows, cols = np.nonzero(liver)
    assert rows.size > 500, "the displayed axial slice must show the liver"

    # LiteMedSAM was trained with boxes: a box around the liver first, then a click inside it.
    _box_clicks(page, "axial", geometry, rows, cols)
    status = _wait_status(page, "prompts: 1")
    assert "Error" not in status, status
    inside = ndimage.distance_transform_edt(liver)
    row, col = np.unravel_index(int(inside.argmax()), liver.shape)
    page.get_by_label("positive click").check()
    _click_pixel(page, "axial", *geometry.pixel_to_display("axial", row, col))
    status = _wait_status(page, "prompts: 2")
    assert "positive click" in status and "latency" in status, status
    assert _wait_overlay(page, "axial") > 50
    assert _wait_overlay(page, "coronal") > 0 and _wait_overlay(page, "sagittal") > 0  # the mask on every view
    with_click = _mask_size(status)
    assert with_click > 500, status
    page.screenshot(path=str(artifacts / "zoo_app_ct_liver.png"), full_page=True)
    shutil.copyfile(artifacts / "zoo_app_ct_liver.png", SCREENSHOT_COPY)

    page.get_by_label("negative click").check()
    _click_pixel(page, "axial", *geometry.pixel_to_display("axial", 2, 2))  # air, outside the body
    status = _wait_status(page, "prompts: 3")
    assert "negative click" in status, status
    page.click("#zoo-undo")
    status = _wait_status(page, "Undone")
    assert _prompts(status) == 2 and _mask_size(status) == with_click, status

    written = _download(page, tmp_path / "ct_mask.nii.gz")
    mask = nib.load(str(written))
    assert mask.shape == ct.shape
    np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-5)
    array = np.asarray(mask.dataobj) > 0
    assert int(array.sum()) == with_click
    shown = geometry.extract(geometry.to_ras(array), "axial", axial)
    dice = 2 * (shown & liver).sum() / (shown.sum() + liver.sum())
    assert dice > 0.8, f"the liver's Dice on the clicked slice is {dice:.3f}"
    page.close()


def test_box_on_the_bundled_png(browser_context, app_url: str, artifacts: Path, tmp_path: Path) -> None:
    png = data_path("sam_med2d_demo", "images", "amos_0004_75.png")
    size = Image.open(png).size
    geometry = ImageGeometry((size[1], size[0]))
    page = browser_context.new_page()
    page.goto(app_url)
    page.get_by_role("button", name="Example 2D slice (AMOS, PNG)").click()
    _wait_status(page, "Opened amos_0004_75.png")
    _box_clicks(page, "axial", geometry, np.array([230, 300]), np.array([150, 230]))  # (x0, y0, x1, y1) 150 230 230 300
    status = _wait_status(page, "prompts: 1")
    assert "box" in status and "Error" not in status, status
    assert _wait_overlay(page, "axial") > 50
    page.screenshot(path=str(artifacts / "zoo_app_png_box.png"), full_page=True)
    pixels = _mask_size(status)
    written = _download(page, tmp_path / "png_mask.png")
    mask = np.asarray(Image.open(written))
    assert mask.shape == (size[1], size[0])
    assert int((mask > 0).sum()) == pixels > 500
    page.close()


def test_the_app_writes_only_in_its_own_folder(app_url: str) -> None:
    """Everything the app wrote into its TMPDIR (uploads, served pictures, exported masks) lies in its own
    ``zoo-app-*`` folder; it answers on 127.0.0.1."""
    with urllib.request.urlopen(app_url, timeout=30) as response:
        assert response.status == 200
    folder = APP_TMP.get()
    top = sorted(p.name for p in folder.iterdir())
    assert len(top) == 1 and top[0].startswith("zoo-app-"), top
    assert (folder / top[0] / "gradio").is_dir()
