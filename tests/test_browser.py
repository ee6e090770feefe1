"""Browser tier: each demo is started as `python -m lepton_vision demo EXPORT --port FREE` and driven
in headless Debian Chromium through Playwright (no browser download).

What a user sees is checked against the Predictor on the same file: the CT score and decision,
the detector's box count; a corrupt upload must show the friendly error, never a traceback; the
annotated video must play in the browser; the page must make no request outside 127.0.0.1.
Screenshots go to $LEPTON_TEST_ARTIFACTS/browser (default test-artifacts/browser).

Run: pytest -m browser (CI stage 2, with the slow tier). Skips, saying why, without /usr/bin/chromium or playwright.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("LEPTON_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("LEPTON_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); "
                ".ci/run does so", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

import demo_exports  # noqa: E402 - tests/demo_exports.py: the shared tiny exports and their demo server

# JavaScript: the value of a Gradio textbox by elem_id (textarea or input).
VALUE_JS = "(id) => { const e = document.querySelector(`#${id} textarea, #${id} input`); return e ? e.value : null; }"
FILLED_JS = ("(id) => { const e = document.querySelector(`#${id} textarea, #${id} input`); "
             "return !!e && e.value.length > 0; }")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(30_000)
        yield ctx
        ctx.close()


@pytest.fixture(scope="module")
def ct(ct_demo_export):
    return ct_demo_export


@pytest.fixture(scope="module")
def det(det_demo_export):
    return det_demo_export


@pytest.fixture(scope="module")
def ct_server(ct, tmp_path_factory) -> Iterator[Any]:
    server = demo_exports.DemoServer(ct["dir"], tmp_path_factory.mktemp("ct_server"), "--max-file-size", "1mb")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def det_server(det, tmp_path_factory) -> Iterator[Any]:
    server = demo_exports.DemoServer(det["dir"], tmp_path_factory.mktemp("det_server"))
    yield server
    server.stop()


def _open(browser: Any, server: Any, ready: str) -> tuple[Any, list[str]]:
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url, wait_until="load")
    page.wait_for_selector(ready)
    return page, requests


def _value(page: Any, elem_id: str) -> str:
    return page.evaluate(VALUE_JS, elem_id)


def _upload(page: Any, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def _remove(page: Any, elem_id: str) -> None:
    """Click the input's clear button (gr.File: "Clear", gr.Image: "Remove Image")."""
    page.locator(f"#{elem_id} button[aria-label='Clear'], #{elem_id} button[aria-label='Remove Image']").first.click()


def _toast(page: Any) -> str:
    page.wait_for_selector(".toast-body", timeout=30_000)
    return " ".join(page.locator(".toast-body").all_inner_texts())


def _only_local(requests: list[str], server: Any) -> None:
    outside = sorted({u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))})
    assert not outside, f"the page made requests outside 127.0.0.1: {outside[:5]}"
    assert requests, "no requests recorded"


def test_ct_demo_shows_the_predictor_score_threshold_and_gradcam(browser, ct, ct_server, artifacts):
    from lepton_vision import Predictor

    dcm = ct["dicoms"][1]
    ref = Predictor.from_bundle(ct["dir"]).predict(dcm)
    page, requests = _open(browser, ct_server, "#ct-file")
    assert float(page.locator("#ct-threshold input[type=number]").input_value()) == pytest.approx(
        demo_exports.CT_THRESHOLD)
    _upload(page, "ct-file", dcm)
    page.wait_for_function(FILLED_JS, arg="ct-score")
    assert _value(page, "ct-score") == f"{ref.score:.4f}"
    assert _value(page, "ct-label") == ref.label
    badge = page.inner_text("#ct-decision")
    assert ref.label in badge and f"{ref.score:.4f}" in badge
    assert page.locator("#ct-image img").count() == 1
    assert "DICOM 40×48" in page.inner_text("#ct-details")
    # the threshold slider re-decides: just above the score -> the other class
    other = "abnormal" if ref.label == "normal" else "normal"
    new_thr = ref.score + 1e-4 if ref.decision else max(0.0, ref.score - 1e-4)
    box = page.locator("#ct-threshold input[type=number]")
    box.fill(f"{new_thr:.4f}")
    box.press("Enter")
    page.wait_for_function(f"() => document.querySelector('#ct-label textarea, #ct-label input').value === '{other}'")
    # Grad-CAM overlay: the shown image changes (TensorFlow loads in the server on first use)
    src_before = page.locator("#ct-image img").get_attribute("src")
    page.locator("#ct-cam input[type=checkbox]").check()
    page.wait_for_function("(s) => { const i = document.querySelector('#ct-image img'); return i && i.src !== s; }",
                           arg=src_before, timeout=60_000)
    page.screenshot(path=str(artifacts / "ct_prediction.png"), full_page=True)
    assert "Model card: CT screening (test export)" in page.inner_text("#model-card")
    assert "Traceback" not in page.content()
    _only_local(requests, ct_server)
    page.close()


def test_ct_demo_corrupt_upload_shows_the_friendly_error(browser, ct, ct_server, artifacts):
    page, requests = _open(browser, ct_server, "#ct-file")
    _upload(page, "ct-file", ct["dicoms"][0])
    page.wait_for_function(FILLED_JS, arg="ct-score")
    _remove(page, "ct-file")
    _upload(page, "ct-file", ct["corrupt"])
    text = _toast(page)
    assert "corrupt.png: Cannot decode the file as an image" in text
    assert "Traceback" not in text and "gradio" not in text.lower()
    assert _value(page, "ct-score") == "" and _value(page, "ct-label") == ""  # no stale result on screen
    page.screenshot(path=str(artifacts / "ct_corrupt_upload.png"))
    _only_local(requests, ct_server)
    page.close()


def test_ct_demo_refuses_an_upload_over_the_size_limit(browser, ct_server, tmp_path):
    big = tmp_path / "huge_slice.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1_500_000))
    page, _ = _open(browser, ct_server, "#ct-file")
    _upload(page, "ct-file", big)
    text = _toast(page)
    assert "exceed the maximum allowed size of 1.0 Mb" in text and "huge_slice.png" in text
    assert _value(page, "ct-score") == ""
    page.close()


def test_detection_demo_shows_the_predictor_box_count_and_sliders(browser, det, det_server, artifacts):
    from lepton_vision import Predictor

    frame = det["frames"][3]
    ref = Predictor.from_bundle(det["dir"]).predict(frame)
    page, requests = _open(browser, det_server, "#det-image-in")
    _upload(page, "det-image-in", frame)
    page.wait_for_function(FILLED_JS, arg="det-count")
    assert _value(page, "det-count") == str(ref.count)
    assert _value(page, "det-image-score") == f"{ref.image_score:.3f}"
    assert float(_value(page, "det-latency")) > 0
    assert page.locator("#det-image-out img").count() == 1
    table = page.inner_text("#det-counts")
    assert "person" in table and str(ref.count) in table
    page.screenshot(path=str(artifacts / "detection_prediction.png"), full_page=True)
    # the score slider filters the shown boxes without re-running the model
    box = page.locator("#det-threshold input[type=number]")
    box.fill("1")
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('#det-count textarea, #det-count input').value === '0'")
    assert "Traceback" not in page.content()
    _only_local(requests, det_server)
    page.close()


def test_detection_demo_corrupt_upload_shows_the_friendly_error(browser, det, det_server, artifacts):
    page, requests = _open(browser, det_server, "#det-image-in")
    _upload(page, "det-image-in", det["frames"][0])
    page.wait_for_function(FILLED_JS, arg="det-count")
    _remove(page, "det-image-in")
    _upload(page, "det-image-in", det["corrupt"])
    text = _toast(page)
    assert "corrupt.png: Cannot decode the file as an image" in text and "Traceback" not in text
    assert _value(page, "det-count") == ""
    page.screenshot(path=str(artifacts / "detection_corrupt_upload.png"))
    _only_local(requests, det_server)
    page.close()


def test_detection_demo_video_comes_back_annotated_and_playable(browser, det, det_server, artifacts):
    from lepton_vision import Predictor

    expected = sum(d.count for d in Predictor.from_bundle(det["dir"]).iter_video(det["video"]))
    page, requests = _open(browser, det_server, "#det-image-in")
    page.get_by_role("tab", name="Video").click()
    _upload(page, "det-video-in", det["video"])
    page.locator("#det-video-run").click()
    page.wait_for_function("() => { const v = document.querySelector('#det-video-out video'); "
                           "return !!v && v.readyState >= 1 && v.duration > 0; }", timeout=60_000)
    width, height = page.evaluate("() => { const v = document.querySelector('#det-video-out video'); "
                                  "return [v.videoWidth, v.videoHeight]; }")
    assert (width, height) == (640, 480)  # 160x120 frames, drawn 4x enlarged, decoded by Chromium
    summary = page.inner_text("#det-video-summary")
    assert "ran 10 frames of 10" in summary and f"person {expected} boxes in total" in summary
    page.screenshot(path=str(artifacts / "detection_video.png"), full_page=True)
    _only_local(requests, det_server)
    page.close()


def test_servers_logged_no_traceback(ct_server, det_server):
    """User mistakes are answered on the page, not with a traceback in the server log."""
    for server in (ct_server, det_server):
        assert server.proc.poll() is None, server.log[-2000:]
        assert "Traceback" not in server.log, server.log[-4000:]



def test_ct_demo_warns_on_an_out_of_distribution_upload(browser, ct, det, ct_server, artifacts):
    page, requests = _open(browser, ct_server, "#ct-file")
    _upload(page, "ct-file", det["frames"][0])  # a street frame into the CT screener
    page.wait_for_selector("#ct-ood-warning", timeout=60_000)
    warning = page.inner_text("#ct-ood-warning")
    assert "Out of distribution" in warning and "Do not rely on the result" in warning
    assert "unlike the training images" in page.inner_text("#ct-details")
    page.screenshot(path=str(artifacts / "ct_ood_warning.png"), full_page=True)
    # a CT slice afterwards: the warning block goes away with the new result
    _remove(page, "ct-file")
    _upload(page, "ct-file", ct["dicoms"][1])
    page.wait_for_function("() => !document.querySelector('#ct-ood-warning')", timeout=60_000)
    _only_local(requests, ct_server)
    page.close()


def test_monitor_page_shows_verdict_plots_and_windows(browser, ct, det, tmp_path, artifacts):
    from lepton_vision.serve.monitor import monitor

    # 12 CT inputs, then 12 street frames: two windows of 12, the second out of distribution
    slices, frames = [*ct["dicoms"], ct["png"]], list(det["frames"])
    inputs = (slices * 12)[:12] + (frames * 12)[:12]
    assert len(inputs) == 24
    result = monitor(ct["dir"], inputs, tmp_path / "mon", window=12, progress=False)
    assert result.drift and result.first_drift_window == 1
    page = browser.new_page()
    page.goto((tmp_path / "mon" / "monitor.html").as_uri(), wait_until="load")
    verdict = page.inner_text("#monitor-verdict")
    assert verdict.startswith("Drift") and "first window 1" in verdict and "out of distribution" in verdict
    assert page.evaluate("() => [...document.images].every(i => i.complete && i.naturalWidth > 600)")
    assert page.locator("table").first.locator("tbody tr").count() == 2
    page.screenshot(path=str(artifacts / "monitor_page.png"), full_page=True)
    page.close()
