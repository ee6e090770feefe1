"""Scale-out configuration without a cluster (default tier: no TensorFlow, no Ray started).

Recipe fields of the executors, strategies and tracking; the clear error when Ray or MLflow is
missing; resume across executors; the search-space checks of ``lepton-vision tune``; the sweep
objective; and that none of it makes ``import lepton_vision`` or ``--help`` heavier.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lepton_vision.cli import main
from lepton_vision.config.errors import LeptonError, RecipeError
from lepton_vision.config.recipe import dump_recipe, recipe_from_text, result_sha256

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "recipes/ct_screening/baseline.yaml"
MINIMAL = "schema_version: 1\nname: t\ntask: ct_screening\ndataset: synthetic_ct\n"


# ---- recipe fields ---------------------------------------------------------------------------


def test_scale_out_defaults_run_locally_without_a_tracker():
    r = recipe_from_text(MINIMAL)
    assert r.train.executor == "local" and r.train.strategy == "auto" and r.train.threads == 0
    assert (r.train.resources.cpus, r.train.resources.gpus) == (1.0, 0.0)
    assert r.train.ray.address is None and r.train.ray.retries == 1 and r.train.ray.artifacts == "auto"
    assert r.train.batch_scaling == "per_replica" and r.train.mixed_precision == "auto"
    assert r.tracking.backend == "none" and r.tracking.uri is None


def test_tracking_shorthand_and_full_form_are_the_same_recipe():
    short = recipe_from_text(MINIMAL + "tracking: mlflow\n")
    full = recipe_from_text(MINIMAL + "tracking: {backend: mlflow, uri: null}\n")
    assert short == full and short.tracking.backend == "mlflow"
    assert recipe_from_text(dump_recipe(short)) == short  # the dump is a valid recipe


@pytest.mark.parametrize(
    ("text", "where", "snippet"),
    [
        ("train: {executor: rey}\n", "train.executor", "'local' or 'ray'"),
        ("train: {resources: {cpus: 0}}\n", "train.resources.cpus", "greater than 0"),
        ("train: {resources: {gpu: 1}}\n", "train.resources.gpu", "Did you mean 'gpus'?"),
        ("train: {strategy: multi_worker}\n", "train.strategy", "'mirrored'"),
        ("train: {ray: {retries: -1}}\n", "train.ray.retries", "greater than or equal to 0"),
        ("tracking: mlfow\n", "tracking.backend", "'none' or 'mlflow'"),
        ("tracking: {backend: mlflow, url: x}\n", "tracking.url", "Did you mean 'uri'?"),
    ],
)
def test_bad_scale_out_fields_name_file_line_and_path(text, where, snippet):
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL + text, file="r.yaml")
    msg = str(e.value)
    assert msg.startswith("r.yaml:") and where in msg and snippet in msg and "line 5" in msg


def test_resume_ignores_where_a_run_executes_but_not_what_it_computes():
    base = recipe_from_text(MINIMAL)
    moved = recipe_from_text(MINIMAL, ["train.executor=ray", "train.resources.cpus=4", "train.ray.address=auto",
                                       "tracking.backend=mlflow"])
    assert result_sha256(moved) == result_sha256(base) and moved.sha256() != base.sha256()
    for changed in ("train.threads=1", "seed=7", "train.strategy=mirrored", "train.batch_scaling=global"):
        assert result_sha256(recipe_from_text(MINIMAL, [changed])) != result_sha256(base), changed


def test_global_batch_is_explicit():
    from lepton_vision.backend import global_batch_size, recipe_for_replicas

    assert global_batch_size(32, 1) == 32
    assert global_batch_size(32, 4) == 128  # per replica: 32 on each GPU
    assert global_batch_size(32, 4, "global") == 32  # split: 8 on each GPU
    with pytest.raises(RecipeError, match="train.batch_size.*multiple of 3"):
        global_batch_size(32, 3, "global")
    r = recipe_from_text(MINIMAL, ["train.batch_size=16"])
    assert recipe_for_replicas(r, 1) is r
    scaled = recipe_for_replicas(r, 2)
    assert scaled.train.batch_size == 32 and r.train.batch_size == 16
    assert scaled.train.optimizer == r.train.optimizer  # the learning rate is not changed behind the user


# ---- optional packages -------------------------------------------------------------------------


def _pretend_missing(monkeypatch, name: str) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == name else real(n, *a, **k))


def test_ray_executor_without_ray_fails_before_any_work(monkeypatch, tmp_path, capsys):
    _pretend_missing(monkeypatch, "ray")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASELINE.read_text().replace("\ntrain:\n", "\ntrain:\n  executor: ray\n"))
    monkeypatch.setenv("LEPTON_HOME", str(REPO))
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(recipe) in err and "train.executor" in err and "pip install" in err and "lepton-vision[ray]" in err
    line = next(i for i, t in enumerate(recipe.read_text().splitlines(), 1) if "executor: ray" in t)
    assert f"line {line}" in err
    assert not out.exists()  # nothing started


def test_cli_flags_need_the_extras_too(monkeypatch, tmp_path, capsys):
    _pretend_missing(monkeypatch, "mlflow")
    rc = main(["train", str(BASELINE), "--tracking-uri", "sqlite:////tmp/x.db", "--out", str(tmp_path / "r")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "tracking.backend (from the recipe or --set)" in err and "lepton-vision[mlflow]" in err
    _pretend_missing(monkeypatch, "ray")
    space = tmp_path / "space.yaml"
    space.write_text("model.backbone: {choice: [small_cnn]}\n")
    assert main(["tune", str(BASELINE), "--space", str(space), "--trials", "1"]) == 1
    assert "lepton-vision[ray]" in capsys.readouterr().err


def test_cli_scale_out_flags_become_recipe_overrides():
    from lepton_vision.cli import _scale_out_overrides, build_parser

    args = build_parser().parse_args(["train", "r.yaml", "--executor", "ray", "--address", "10.0.0.5:6379",
                                      "--tracking-uri", "sqlite:////shared/mlflow.db"])
    overrides = _scale_out_overrides(args)
    r = recipe_from_text(MINIMAL, overrides)
    assert r.train.executor == "ray" and r.train.ray.address == "10.0.0.5:6379"
    assert r.tracking.backend == "mlflow" and r.tracking.uri == "sqlite:////shared/mlflow.db"


def test_loopback_addresses_are_recognised():
    from lepton_vision.engine.executors import _loopback

    assert _loopback("127.0.0.1:6379") and _loopback("ray://localhost:10001") and _loopback("[::1]:6379")
    assert not _loopback("10.0.0.5:6379") and not _loopback("ray://head:10001")


# ---- tune: search space and objective ----------------------------------------------------------


def test_space_file_loads_with_every_domain(tmp_path):
    from lepton_vision.engine.sweep import load_space

    space = tmp_path / "space.yaml"
    space.write_text(
        "train.optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "model.backbone: {choice: [small_cnn, mobilenet_v3_small]}\n"
        "train.batch_size: {grid: [16, 32]}\n"
        "model.dropout: {uniform: [0.0, 0.5]}\n"
        "train.epochs: {randint: [2, 6]}\n"
        "train.schedule.warmup_epochs: {quniform: [0, 2, 0.5]}\n"
        "augment[0].p: {uniform: [0.1, 0.9]}\n"
    )
    loaded = load_space(space, BASELINE, [])
    assert [d.kind for d in loaded.values()] == ["loguniform", "choice", "grid", "uniform", "randint", "quniform", "uniform"]
    assert loaded["train.epochs"].probe_values() == [2, 5]


def test_bad_space_file_lists_every_problem_with_its_line(tmp_path):
    from lepton_vision.engine.sweep import load_space

    space = tmp_path / "space.yaml"
    space.write_text(
        "train.optimizer.learning_rte: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "model.backbone: {choice: [small_cnn, mobilenet_v3_smal]}\n"
        "train.epochs: {randint: [5, 2]}\n"
        "train.batch_size: {chioce: [16, 32]}\n"
        "train.executor: {choice: [local, ray]}\n"
        "train.optimizer.learning_rate: {loguniform: [0, 1.0e-2]}\n"
        "cv.n_splits: 5\n"
    )
    with pytest.raises(RecipeError) as e:
        load_space(space, BASELINE, [])
    msg = str(e.value)
    assert msg.startswith(f"{space}: 7 problems in this search space")
    for line, snippet in [
        (1, "Did you mean 'learning_rate'?"), (2, "Did you mean 'mobilenet_v3_small'?"),
        (3, "low must be below high"), (4, "Did you mean 'choice'?"), (5, "where trials run"),
        (6, "low must be > 0"), (7, "expected a domain"),
    ]:
        assert any(f"line {line} " in row and snippet in row for row in msg.splitlines()), (line, snippet, msg)


def test_space_values_are_checked_against_the_recipe(tmp_path):
    from lepton_vision.engine.sweep import load_space

    space = tmp_path / "space.yaml"
    space.write_text("train.optimizer.learning_rate: {loguniform: [1.0e-3, 20.0]}\n")  # the recipe allows <= 10
    with pytest.raises(RecipeError, match=r"loguniform value 20.0 makes an invalid recipe.*less than or equal to 10"):
        load_space(space, BASELINE, [])


def test_tune_values_round_trip_through_set():
    from lepton_vision.engine.sweep import yaml_value

    r = recipe_from_text(MINIMAL, [f"train.optimizer.learning_rate={yaml_value(1e-05)}",
                                   f"model.backbone={yaml_value('mobilenet_v3_small')}",
                                   f"input.image_size={yaml_value([64, 96])}"])
    assert r.train.optimizer.learning_rate == 1e-05  # PyYAML would read '1e-05' as a string
    assert r.model.backbone == "mobilenet_v3_small" and r.input.image_size == (64, 96)


def test_objective_is_the_task_cards_primary_metric():
    from lepton_vision.engine.sweep import check_objective, objective_of

    cls = {"pooled": {"roc_auc": {"value": 0.8, "lo": 0.7, "hi": 0.9}, "f1": {"value": 0.6, "lo": 0.5, "hi": 0.7}}}
    assert objective_of(cls, "roc_auc", "binary_classification") == (0.8, 0.7, 0.9)
    det = {"ap50": 0.42, "ci": {"ap50": [0.3, 0.5], "image_auc": [0.6, 0.9]}, "image_level": {"auc": 0.75}}
    assert objective_of(det, "ap50", "object_detection") == (0.42, 0.3, 0.5)
    assert objective_of(det, "roc_auc", "object_detection") == (0.75, 0.6, 0.9)
    with pytest.raises(LeptonError, match="objective pr_auc is not available"):
        objective_of(cls, "pr_auc", "binary_classification")
    with pytest.raises(RecipeError, match="primary_metric: ap50 is not a cross-validated metric"):
        check_objective("ap50", "binary_classification", "tasks/x/task.yaml")


# ---- lightness -------------------------------------------------------------------------------------


def test_scale_out_modules_import_nothing_heavy():
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import lepton_vision, lepton_vision.cli, lepton_vision.engine.executors, lepton_vision.engine.tracking, lepton_vision.engine.sweep\n"
        "from lepton_vision.cli import main\n"
        "try:\n    main(['tune', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('ray', 'mlflow', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:", out.stdout
    assert "lepton-vision tune" in out.stdout


def test_a_resource_request_no_node_can_meet_is_refused_or_warned(capsys):
    from lepton_vision.engine.executors import check_fits

    class FakeRay:
        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]

    fits = recipe_from_text(MINIMAL, ["train.resources.cpus=2"]).train.resources
    check_fits(FakeRay, fits, started=True)
    too_big = recipe_from_text(MINIMAL, ["train.resources.gpus=1"]).train.resources
    with pytest.raises(RecipeError, match=r"train.resources: each fold task asks for 1 CPU and 1 GPU.*2 CPU/0 GPU"):
        check_fits(FakeRay, too_big, started=True)  # a private Ray never grows: an error
    check_fits(FakeRay, too_big, started=False, what="trial")  # a joined cluster may autoscale: a warning
    out = capsys.readouterr().out
    assert "WARNING" in out and "each trial asks for" in out
