"""Reproduce docs/demo_<task>.png: each demo after one prediction, in headless Chromium.

    python docs/make_screenshots.py                       # newest runs/*/export of each task
    python docs/make_screenshots.py --ct runs/A/export --person runs/B/export --obstacle runs/C/export

For each export it starts `python -m lepton_vision demo EXPORT --port FREE`, picks one sample of
the run's samples.csv with the Predictor (CT: the positive-labelled example with the highest
score, shown with Grad-CAM; detection: the frame with the most boxes, and of the most classes),
uploads it through the page, waits for the result and saves a 1280 px wide PNG (quantised to at
most 256 colours so it stays small). Needs Debian's /usr/bin/chromium and playwright (the
[test] extra); never downloads a browser.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VALUE_JS = "(id) => { const e = document.querySelector(`#${id} textarea, #${id} input`); return e ? e.value : ''; }"
TASKS = ("ct_screening", "person_detection", "obstacle_detection")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(export_dir: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "lepton_vision", "demo", str(export_dir), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        if proc.poll() is not None:
            raise SystemExit(f"demo of {export_dir} exited:\n{(tmp / 'server.log').read_text()[-3000:]}")
        if "Running on" in (tmp / "server.log").read_text():
            return proc, url
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"demo of {export_dir} did not start in 120 s")


def pick_sample(export_dir: Path) -> tuple[Path, str]:
    """(file, upload name) of the sample to show."""
    from lepton_vision import Predictor
    from lepton_vision.serve.ui import pick_examples

    p = Predictor.from_bundle(export_dir)
    examples = pick_examples(export_dir, per_class=8)
    if not examples:
        raise SystemExit(f"{export_dir}: no samples.csv with existing files next to it")
    if p.bundle.get("kind") == "object_detection":
        def key(item: tuple[str, Path]) -> tuple[int, int]:
            d = p.predict(item[1])
            keep = d.above()
            return len(set(d.classes[keep].tolist())), int(keep.sum())
    else:
        def key(item: tuple[str, Path]) -> tuple[int, float]:
            return int(item[0] == p.classes[-1]), p.predict(item[1]).score
    label, path = max(examples, key=key)
    return path, f"{label}_{path.parent.name}_{path.name}" if path.suffix == ".dcm" else f"{label}_{path.name}"


def save_png(png: bytes, out: Path, max_bytes: int = 400_000) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    for colours in (256, 128, 64):
        buf = io.BytesIO()
        img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes:
            break
    out.write_bytes(buf.getvalue())
    print(f"{out}: {img.size[0]}x{img.size[1]}, {buf.tell() / 1000:.0f} kB, {colours} colours")


def shoot(task: str, export_dir: Path, out: Path, browser) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"shot_{task}_"))
    try:
        sample, name = pick_sample(export_dir)
        upload = tmp / name
        shutil.copyfile(sample, upload)
        proc, url = start(export_dir, tmp)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="load")
            if task == "ct_screening":
                page.wait_for_selector("#ct-file")
                page.locator("#ct-cam input[type=checkbox]").check()
                page.locator("#ct-file input[type=file]").set_input_files(str(upload))
                page.wait_for_function("(id) => !!document.querySelector(`#${id} textarea, #${id} input`).value",
                                       arg="ct-score", timeout=90_000)
                page.wait_for_function("() => !!document.querySelector('#ct-image img')", timeout=60_000)
                result = f"score {page.evaluate(VALUE_JS, 'ct-score')}, {page.evaluate(VALUE_JS, 'ct-label')}"
            else:
                page.wait_for_selector("#det-image-in")
                page.locator("#det-image-in input[type=file]").set_input_files(str(upload))
                page.wait_for_function("(id) => !!document.querySelector(`#${id} textarea, #${id} input`).value",
                                       arg="det-count", timeout=90_000)
                result = f"{page.evaluate(VALUE_JS, 'det-count')} boxes"
            time.sleep(1.0)  # let images finish decoding and toasts settle
            page.mouse.move(0, 0)
            save_png(page.screenshot(full_page=True), out)
            print(f"  {task}: {name} -> {result}")
            page.close()
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from lepton_vision.serve.demo import latest_export

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", type=Path, help="CT export (default: newest under runs/)")
    ap.add_argument("--person", type=Path, help="person-detection export")
    ap.add_argument("--obstacle", type=Path, help="obstacle-detection export")
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    args = ap.parse_args(argv)
    exports = {"ct_screening": args.ct, "person_detection": args.person, "obstacle_detection": args.obstacle}
    exports = {t: (d or latest_export(t, REPO / "runs")) for t, d in exports.items()}
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="chromium_"), executable_path=CHROMIUM,
                                                    headless=True, args=FLAGS,
                                                    viewport={"width": 1280, "height": 900})
        for task in TASKS:
            shoot(task, Path(exports[task]), args.out / f"demo_{task}.png", ctx)
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
