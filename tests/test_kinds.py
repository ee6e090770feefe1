"""Every kind in KINDS fulfils the TaskKind contract and every card kind has an implementation."""

from __future__ import annotations

import typing

from lepton_vision.config.cards import KIND_NAMES, TaskCard
from lepton_vision.kinds import KINDS


def test_card_kinds_and_kinds_table_agree():
    literal = typing.get_args(TaskCard.model_fields["kind"].annotation)
    assert set(literal) == set(KINDS) == set(KIND_NAMES)


def test_each_kind_has_the_protocol_members():
    for name, module in KINDS.items():
        assert callable(module.build_model), name
        assert callable(module.score_oof), name
        assert isinstance(module.OOF_COLUMNS, tuple) and len(module.OOF_COLUMNS) >= 1, name
