"""Shared fixtures: the test-data folder, cached phantoms and simulated BIDS datasets.

Session-scoped fixtures are built once and shared by every test file: treat what they return
as read-only (the phantoms' arrays are write-protected; copy a dataset before changing it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: ``qsmflow simulate`` options of :func:`simulated_bids`: built-in phantom, 3 mm, two
#: subjects x 2 head orientations (rotated), 3 echoes, SNR 100, seed 3.
SIMULATED_BIDS_ARGS = (
    "--voxel-size", "3", "--orientations", "2", "--subjects", "2",
    "--echo-times", "0.004", "0.009", "0.014", "--seed", "3",
)  # fmt: skip


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


def _read_only(head):
    """``head`` with every array field write-protected (a shared fixture must not change)."""
    for f in dataclasses.fields(head):
        value = getattr(head, f.name)
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return head


@pytest.fixture(scope="session")
def builtin_phantom_2mm():
    """The procedural head phantom at 2 mm (96x112x96), seed 0, no texture; read-only."""
    from qsmflow.simulate.phantom import make_phantom

    return _read_only(make_phantom(2.0))


@pytest.fixture(scope="session")
def builtin_phantom_4mm():
    """The procedural head phantom at 4 mm (48x56x48), seed 0, no texture; read-only."""
    from qsmflow.simulate.phantom import make_phantom

    return _read_only(make_phantom(4.0))


@pytest.fixture(scope="session")
def simulate_bids(tmp_path_factory) -> Callable[..., Path]:
    """``simulate_bids(*options)``: the dataset ``qsmflow simulate <options>`` writes.

    Each distinct option list is simulated once per session; copy the folder before changing
    it (``shutil.copytree``).
    """
    from qsmflow.cli.main import main

    made: dict[tuple[str, ...], Path] = {}

    def simulate(*options: str) -> Path:
        if options not in made:
            root = tmp_path_factory.mktemp("simulated") / "bids"
            assert main(["simulate", str(root), *options]) == 0
            made[options] = root
        return made[options]

    return simulate


@pytest.fixture(scope="session")
def simulated_bids(simulate_bids) -> Path:
    """The small shared dataset (:data:`SIMULATED_BIDS_ARGS`): 2 subjects x 2 orientations."""
    return simulate_bids(*SIMULATED_BIDS_ARGS)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny tensors: avoids OpenMP spin-waiting on a
    busy 2-core machine (16^3 FFTs were measured 500x slower with 2 threads under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
