"""benchmarks/peer_ultralytics.py: the YOLO dataset it hands Ultralytics, and its skip without the venv
(the training itself needs the Ultralytics venv and minutes of CPU: it is the benchmark, not a test)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("peer_ultralytics", REPO / "benchmarks" / "peer_ultralytics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _samples(folder: Path) -> pd.DataFrame:
    rows = []
    for i in range(4):
        path = folder / f"f{i}.png"
        cv2.imwrite(str(path), np.full((40, 80, 3), 200, np.uint8))
        rows.append({"sample_id": f"s{i}", "path": str(path), "width": 80, "height": 40,
                     "boxes": json.dumps([[8.0, 4.0, 24.0, 36.0]]), "classes": json.dumps([0]),
                     "ignore": json.dumps([[40.0, 0.0, 60.0, 20.0]] if i == 1 else [])})
    return pd.DataFrame(rows)


def test_yolo_fold_has_the_folds_images_normalised_labels_and_painted_ignore_regions(tmp_path):
    bench = _bench()
    samples = _samples(tmp_path)
    fold_of = {"s0": 0, "s1": 1, "s2": 0, "s3": 1}
    data_yaml, val_txt = bench.write_yolo_fold(samples, fold_of, 1, tmp_path / "yolo")
    import yaml

    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["train"] == "images/train" and spec["val"] == "images/val" and spec["names"] == {0: "object"}
    train = sorted(p.name for p in (tmp_path / "yolo/images/train").iterdir())
    val = sorted(p.name for p in (tmp_path / "yolo/images/val").iterdir())
    assert train == ["00000.png", "00002.png"] and val == ["00001.png", "00003.png"]
    assert [Path(p).name for p in val_txt.read_text().split()] == val
    label = (tmp_path / "yolo/labels/val/00001.txt").read_text().split()
    assert label[0] == "0" and np.allclose([float(v) for v in label[1:]], [16 / 80, 20 / 40, 16 / 80, 32 / 40])
    # s1 has an ignore region: a painted copy (letterbox grey there), the others are links
    painted = cv2.imread(str(tmp_path / "yolo/images/val/00001.png"))
    assert (painted[0:20, 40:60] == 114).all() and (painted[30:, :] == 200).all()
    assert (tmp_path / "yolo/images/val/00003.png").is_symlink()


def test_skips_with_a_hint_without_the_venv(tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--python", str(tmp_path / "missing" / "python"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "requirements-ultralytics.txt" in out
    assert not (tmp_path / "out").exists()
