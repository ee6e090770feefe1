"""Every kind in KINDS fulfils the TaskKind contract and every card kind has an implementation."""

from __future__ import annotations

import inspect
import typing

import pytest

from lepton_vision.config.cards import KIND_NAMES, TaskCard
from lepton_vision.config.errors import LeptonError
from lepton_vision.kinds import KINDS, kind_of
from lepton_vision.kinds.base import TaskKind


def test_card_kinds_and_kinds_table_agree():
    literal = typing.get_args(TaskCard.model_fields["kind"].annotation)
    assert set(literal) == set(KINDS) == set(KIND_NAMES)
    for name, kind in KINDS.items():
        assert kind.name == name


def _protocol_members() -> tuple[list[str], list[str]]:
    methods = [n for n, v in vars(TaskKind).items() if inspect.isfunction(v) and not n.startswith("_")]
    attributes = list(typing.get_type_hints(TaskKind))
    return methods, attributes


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_has_every_protocol_member_with_its_signature(name):
    kind = KINDS[name]
    methods, attributes = _protocol_members()
    assert "export" in methods and "fold_task" in attributes  # the protocol itself was read
    for attr in attributes:
        assert hasattr(kind, attr), f"{name} lacks {attr}"
    assert isinstance(kind.OOF_COLUMNS, tuple) and kind.OOF_COLUMNS
    assert callable(kind.fold_task) and kind.fold_task.__module__.startswith("lepton_vision.kinds.")
    for method in methods:
        impl = getattr(kind, method, None)
        assert callable(impl), f"{name} lacks {method}()"
        want = [p for p in inspect.signature(getattr(TaskKind, method)).parameters if p != "self"]
        got = list(inspect.signature(impl).parameters)
        assert got[: len(want)] == want, f"{name}.{method}{got} does not take {want}"


def test_each_kind_names_its_pretraining_steps_and_demo():
    for name, kind in KINDS.items():
        steps = kind.pretraining()
        for fn in ("render", "job_size", "concat", "setup", "chunk_state", "make_batch", "output_signature",
                   "validate"):
            assert callable(getattr(steps, fn)), f"{name} pretraining lacks {fn}"
        demo = kind.demo()
        assert callable(demo.build_page) and callable(demo.card_section), name


def test_an_unknown_kind_is_a_clear_error():
    with pytest.raises(LeptonError, match="unknown task kind 'segmentation'"):
        kind_of("segmentation")
