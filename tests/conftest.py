"""Shared fixtures. The suite is tiered by markers: default (no TensorFlow), tf, slow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No network at test time: albumentations' update check, Gradio analytics, the HF hub.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def repo() -> Path:
    """The repository root (holds tasks/, datasets/, recipes/)."""
    return REPO


def real_data_root() -> Path | None:
    """$LEPTON_DATA_ROOT or ../shared/data when present, else None (real-data tests skip)."""
    env = os.environ.get("LEPTON_DATA_ROOT")
    if env and Path(env).is_dir():
        return Path(env)
    return SHARED_DATA if SHARED_DATA.is_dir() else None
