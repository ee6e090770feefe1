"""Layout rules and the heavy-import discipline (DESIGN.md §2, §5.4)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "keras_cv", "gradio")


def test_declarative_folders_hold_no_python():
    for folder in ("tasks", "datasets", "recipes"):
        found = list((REPO / folder).rglob("*.py"))
        assert not found, f"{folder}/ must hold YAML and Markdown only: {found}"
    for folder in ("apps", "tests"):
        assert not list((REPO / folder).rglob("__init__.py")) if (REPO / folder).exists() else True


def test_light_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import lepton_vision, lepton_vision.cli, lepton_vision.config.recipe, lepton_vision.config.cards\n"
        "import lepton_vision.kinds.classification.metrics, lepton_vision.kinds.classification.report, lepton_vision.data.folds, lepton_vision.data.samples\n"
        "import lepton_vision.data.augment, lepton_vision.data.preprocess, lepton_vision.models.backbones, lepton_vision.data.synthetic.ct\n"
        "import lepton_vision.kinds.classification.predictor\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"


def test_help_is_fast_and_light():
    code = (
        "import sys\n"
        "from lepton_vision.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"
    assert "lepton-vision train" in out.stdout
    assert elapsed < 5.0, f"--help took {elapsed:.1f} s"


def test_only_lepton_vision_is_packaged():
    text = (REPO / "pyproject.toml").read_text()
    assert 'include = ["lepton_vision*"]' in text
    assert 'lepton-vision = "lepton_vision.cli:main"' in text


def test_reliability_matrix_names_tests_that_exist():
    """docs/reliability.md: every `tests/file.py::test_name` it cites is a real test (a renamed or
    deleted test must not leave the matrix claiming a proof that no longer runs)."""
    import re

    text = (REPO / "docs" / "reliability.md").read_text()
    cited = 0
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        current = None
        for m in re.finditer(r"`(tests/[\w/]+\.py)?(?:::([\w*]+))?[^`]*`", line):
            path, name = m.group(1), m.group(2)
            if path:
                current = REPO / path
                assert current.is_file(), f"docs/reliability.md cites a missing file: {path}"
            if name and current is not None:
                pattern = re.compile(r"^def " + re.escape(name).replace(r"\*", r"\w*") + r"\(", re.M)
                assert pattern.search(current.read_text()), f"docs/reliability.md cites {current.name}::{name}"
                cited += 1
    assert cited >= 40, cited
