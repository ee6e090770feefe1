"""benchmarks/pretraining_gain.py: which overrides reach which arm."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lepton_vision.config.errors import RecipeError
from lepton_vision.config.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("pretraining_gain", REPO / "benchmarks" / "pretraining_gain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pretrain_overrides_reach_only_the_pretrained_arm() -> None:
    bench = _bench()
    given = ["train.epochs=100", "seed=7", "pretrain.seed=1234", " pretrain.images = 8", "pretrained_note=x"]
    kept = bench.scratch_overrides(given)
    assert kept == ["train.epochs=100", "seed=7", "pretrained_note=x"]
    scratch, pretrained = (REPO / "recipes" / r for r in bench.ARMS["kitti"])
    # Why: the scratch recipe has no pretrain: stage and refuses a pretrain.* override ...
    with pytest.raises(RecipeError, match="pretrain"):
        load_recipe(scratch, ["train.epochs=100", "seed=7", "pretrain.seed=1234"])
    # ... while the filtered list loads, and the pretrained arm takes all of them.
    assert load_recipe(scratch, kept[:2]).seed == 7
    r = load_recipe(pretrained, given[:3])
    assert (r.seed, r.pretrain.seed, r.train.epochs) == (7, 1234, 100)
