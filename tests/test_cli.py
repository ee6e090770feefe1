"""The command line: help, recipe commands, error exits (no TensorFlow)."""

from __future__ import annotations

import json

import pytest

from lepton_vision.cli import EXAMPLES, main


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_each_command_help_has_a_worked_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"lepton-vision {command}" in out


def test_recipe_validate_ok_and_bad(repo, tmp_path, capsys):
    good = repo / "recipes/ct_screening/baseline.yaml"
    assert main(["recipe", "validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("\ntrain:\n", "\ntrain:\n  epochz: 2\n"))
    assert "epochz" in bad.read_text()
    # the copied recipe must still find the cards: point LEPTON_HOME at the repo
    import os

    os.environ["LEPTON_HOME"] = str(repo)
    try:
        assert main(["recipe", "validate", str(good), str(bad)]) == 1
    finally:
        del os.environ["LEPTON_HOME"]
    err = capsys.readouterr().err
    assert "train.epochz" in err and "Did you mean 'epochs'?" in err and str(bad) in err


def test_recipe_show_applies_overrides(repo, capsys):
    assert main(["recipe", "show", str(repo / "recipes/ct_screening/baseline.yaml"), "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 2" in out and "n_bootstrap: 1000" in out


def test_recipe_schema_prints_json(capsys):
    assert main(["recipe", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Recipe"


def test_user_error_exits_1_without_traceback(repo, capsys):
    rc = main(["train", str(repo / "recipes/ct_screening/baseline.yaml"), "--set", "cv.n_splitz=2"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cv.n_splitz (from --set)" in err and "Traceback" not in err and "--debug" in err


def test_debug_shows_the_traceback(repo):
    from lepton_vision.config.errors import RecipeError

    with pytest.raises(RecipeError):
        main(["--debug", "train", str(repo / "recipes/ct_screening/baseline.yaml"), "--set", "cv.n_splitz=2"])
    with pytest.raises(RecipeError):
        main(["train", str(repo / "recipes/ct_screening/baseline.yaml"), "--set", "cv.n_splitz=2", "--debug"])


def test_missing_recipe_file(capsys, tmp_path):
    assert main(["recipe", "validate", str(tmp_path / "nope.yaml")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_resume_of_a_non_run_dir_is_refused(repo, tmp_path, capsys):
    rc = main(["train", str(repo / "recipes/ct_screening/baseline.yaml"), "--resume", str(tmp_path)])
    assert rc == 1
    assert "not a run directory" in capsys.readouterr().err
