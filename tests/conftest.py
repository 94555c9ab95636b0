"""Shared fixtures: the test-data folder and cached phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("QSMFLOW_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$QSMFLOW_TEST_DATA`` (default ../shared/data); skips the test when absent."""
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"test data folder {d} not found (set QSMFLOW_TEST_DATA)")
    return d


@pytest.fixture(scope="session")
def reference_isdu() -> Path:
    d = Path(os.environ.get("QSMFLOW_REFERENCE", REPO.parent / "shared" / "reference" / "isdu"))
    if not d.is_dir():
        pytest.skip(f"reference folder {d} not found (set QSMFLOW_REFERENCE)")
    return d


@pytest.fixture(scope="session")
def head_model_1mm(shared_data):
    """The Challenge 2.0 head model at 1 mm (164x205x205), loaded once per session."""
    from qsmflow.simulate.head_model import load_head_model

    return load_head_model(shared_data / "qsm2_head_model", voxel_size=1.0)
