"""Load on a running demo: 50 concurrent predictions through gradio_client all succeed with the
Predictor's answer, the server's memory stays bounded over repeated waves, and a burst of corrupt
uploads gets friendly errors and leaves the app serving (no traceback in its log).

The demo runs as a real process (`python -m lepton_vision demo EXPORT --port N`), like a user's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import demo_exports  # tests/demo_exports.py: the shared tiny exports and their demo server

pytestmark = [pytest.mark.tf, pytest.mark.slow]


N_CONCURRENT = 50


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def ct(ct_demo_export) -> dict[str, Any]:
    return ct_demo_export


@pytest.fixture(scope="module")
def server(ct, tmp_path_factory) -> Iterator[Any]:
    s = demo_exports.DemoServer(ct["dir"], tmp_path_factory.mktemp("load_server"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server) -> Any:
    from gradio_client import Client

    return Client(server.url, verbose=False)


def _wave(client: Any, files: list[Path], threshold: float) -> list[Any]:
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(str(f)), threshold, False, api_name="/on_score") for f in files]
    return [j.result(timeout=300) for j in jobs]


def test_50_concurrent_predictions_all_succeed_with_the_predictor_answer(ct, client, server):
    from lepton_vision import Predictor

    pred = Predictor.from_bundle(ct["dir"], backend="auto")
    files = [ct["dicoms"][i % len(ct["dicoms"])] for i in range(N_CONCURRENT)]
    t0 = time.monotonic()
    results = _wave(client, files, pred.threshold)
    elapsed = time.monotonic() - t0
    assert len(results) == N_CONCURRENT
    for f, (image, _badge, score, label, _details) in zip(files, results):
        expected = pred.predict(f)
        assert score == f"{expected.score:.4f}" and label == expected.label, f
        # The result image was downloaded whole (no truncated file under concurrency).
        img = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
        assert img is not None and min(img.shape[:2]) > 0, image
    assert "Traceback" not in server.log
    print(f"{N_CONCURRENT} concurrent predictions in {elapsed:.1f} s")


def test_memory_stays_bounded_over_repeated_waves(ct, client, server):
    files = [ct["dicoms"][i % len(ct["dicoms"])] for i in range(N_CONCURRENT)]
    _wave(client, files, 0.5)  # warm: every code path has run once
    rss = [_rss_mb(server.proc.pid)]
    for _ in range(3):
        _wave(client, files, 0.5)
        rss.append(_rss_mb(server.proc.pid))
    # 150 more predictions may not grow the server by more than a few result images' worth.
    assert rss[-1] - rss[0] < 64, f"server RSS per wave (MB): {[round(r) for r in rss]}"


def test_corrupt_upload_burst_leaves_the_app_serving(ct, client, server, tmp_path):
    from gradio_client import handle_file

    bad = [ct["corrupt"], ct["text"]]
    contents = [b"", b"\x89PNG\r\n\x1a\n\x00\x00", bytes(range(256)) * 3,  # empty, truncated, noise
                cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes()]  # a 1x1 PNG
    for i, content in enumerate(contents):
        p = tmp_path / f"bad{i}.png"
        p.write_bytes(content)
        bad.append(p)
    burst = [bad[i % len(bad)] for i in range(30)]

    def one(path: Path) -> str:
        try:
            client.predict(handle_file(str(path)), 0.5, False, api_name="/on_score")
        except Exception as exc:  # gradio_client raises AppError carrying the gr.Error message
            return f"{type(exc).__name__}: {exc}"  # the type too: a bare transport error has no message
        return "no error"

    with ThreadPoolExecutor(max_workers=10) as pool:
        messages = list(pool.map(one, burst))
    assert all(m != "no error" for m in messages), "a corrupt upload was scored"
    for m in messages:
        assert "Traceback" not in m and len(m) < 600, m
        assert any(word in m.lower() for word in ("cannot", "empty", "expected", "not ", "at least")), m
    assert "Traceback" not in server.log, server.log[-3000:]
    # Still serving, with the right answer.
    from lepton_vision import Predictor

    expected = Predictor.from_bundle(ct["dir"]).predict(ct["dicoms"][1])
    _, _, score, label, _ = client.predict(handle_file(str(ct["dicoms"][1])), expected.threshold, False,
                                           api_name="/on_score")
    assert score == f"{expected.score:.4f}" and label == expected.label
