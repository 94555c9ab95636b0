"""The training-patches step: ``qsmflow patches`` and the TrainingPatches interface write the
same patch set (metadata apart from ``Sources``, and every array)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmflow.cli.main import main
from qsmflow.errors import QSMInputError
from qsmflow.interfaces.patches import TrainingPatches
from qsmflow.io.nifti import save_volume
from qsmflow.steps.patches import training_patches
from qsmflow.training.patch_grid import extract_patches, patch_origins
from qsmflow.training.patch_store import read_patch_set

SHAPE = (40, 36, 24)
AFFINE = np.diag([1.0, 1.0, 1.2, 1.0])
P, STRIDE = 16, 8
B0_DIRS = [[0.0, 0.0, 1.0], [0.0, 0.28, 0.96], [0.2, 0.0, 0.98]]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three local fields, chi and mask on one grid, as NIfTI files."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.arange(s) - s / 2 for s in SHAPE], indexing="ij")
    mask = (x / 16) ** 2 + (y / 14) ** 2 + (z / 10) ** 2 <= 1
    chi = rng.standard_normal(SHAPE) * 0.03 * mask
    files = {
        "chi": save_volume(root / "chi.nii.gz", chi, AFFINE),
        "mask": save_volume(root / "mask.nii.gz", mask, AFFINE, dtype=np.uint8),
        "fields": [
            save_volume(root / f"field{k}.nii.gz", rng.standard_normal(SHAPE) * 0.01, AFFINE)
            for k in range(len(B0_DIRS))
        ],
    }
    return files, chi.astype(np.float32), mask


def _cli(files, out) -> int:
    b0_args = [a for b in B0_DIRS for a in ("--b0-dir", *map(str, b))]
    argv = ["patches", *map(str, files["fields"]), "--chi", str(files["chi"])]
    argv += ["-m", str(files["mask"]), "-o", str(out), "--patch-size", str(P)]
    return main([*argv, "--stride", str(STRIDE), *b0_args])


def test_cli_and_interface_write_the_same_patch_set(inputs, tmp_path, monkeypatch, capsys):
    files, chi, mask = inputs
    assert _cli(files, tmp_path / "cli") == 0
    assert "patches ->" in capsys.readouterr().out
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    monkeypatch.chdir(node_dir)
    raw = ["/bids/sub-01/anat/sub-01_acq-ori1_part-phase_T2starw.nii.gz"]
    result = TrainingPatches(
        local_fields=[str(f) for f in files["fields"]],
        chi=str(files["chi"]),
        mask=str(files["mask"]),
        b0_dirs=B0_DIRS,
        patch_size=P,
        stride=STRIDE,
        source_files=raw,
    ).run()
    node_set = read_patch_set(result.outputs.out_dir)
    cli_set = read_patch_set(tmp_path / "cli")
    assert result.outputs.count == len(cli_set) == len(node_set)

    cli_meta, node_meta = dict(cli_set.meta), dict(node_set.meta)
    assert cli_meta.pop("sources") == {
        "Sources": [str(p.resolve()) for p in (*files["fields"], files["chi"], files["mask"])]
    }
    assert node_meta.pop("sources") == {"Sources": raw}
    assert cli_meta == node_meta
    for name in ("field", "chi", "mask", "b0_dir", "orientation", "origin"):
        np.testing.assert_array_equal(getattr(cli_set, name), getattr(node_set, name))
    # and they are the patches of the inputs
    origins = patch_origins(SHAPE, P, STRIDE, mask, 0.125)
    np.testing.assert_array_equal(cli_set.chi[: len(origins)], extract_patches(chi, origins, P))
    assert cli_meta["voxel_size_mm"] == pytest.approx([1.0, 1.0, 1.2])
    np.testing.assert_allclose(cli_meta["b0_dirs"], np.asarray(B0_DIRS), atol=1e-3)


def test_step_result_and_errors(inputs, tmp_path, capsys):
    files, _, _ = inputs
    grid = {"patch_size": P, "stride": STRIDE}
    result = training_patches(
        files["fields"], files["chi"], files["mask"], B0_DIRS, tmp_path / "ps", **grid
    )
    meta = json.loads((tmp_path / "ps" / "patches.json").read_text())
    assert result.sidecar == meta and result.values["count"] == meta["count"]
    assert result.outputs == {"patches": tmp_path / "ps"}
    with pytest.raises(QSMInputError, match="overwrite"):
        training_patches(
            files["fields"], files["chi"], files["mask"], B0_DIRS, tmp_path / "ps", **grid
        )
    with pytest.raises(QSMInputError, match="2 B0 directions for 3 local fields"):
        training_patches(files["fields"], files["chi"], files["mask"], B0_DIRS[:2], tmp_path / "x")
    other = save_volume(tmp_path / "shifted.nii.gz", np.ones(SHAPE), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(QSMInputError, match="grid"):
        training_patches(files["fields"], files["chi"], other, B0_DIRS, tmp_path / "x", **grid)
    assert _cli(files, tmp_path / "ps") == 2  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
