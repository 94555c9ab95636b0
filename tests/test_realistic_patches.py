"""Realistic training patches (qsmflow.training.realistic, ``qsmflow realistic-patches``).

One small acquisition (2.5 mm, 3 T preset, B0 tilted by 20 degrees, jittered chi) through the
whole chain, ~40 s on 2 cores; the recipe reader and the chi jitter on their own.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from qsmflow.cli.main import main
from qsmflow.errors import QSMInputError
from qsmflow.training.patch_store import read_patch_set
from qsmflow.training.realistic import (
    JITTERED_LABELS,
    AcquisitionSpec,
    RealisticPatchRecipe,
    jittered_chiref,
    load_recipe,
    make_realistic_patch_sets,
    tilted_b0,
)

ROOT = Path(__file__).resolve().parents[1]


def test_tilted_b0():
    b = tilted_b0(20.0, 90.0)
    assert np.isclose(np.linalg.norm(b), 1.0)
    assert np.isclose(math.degrees(math.acos(b[2])), 20.0)
    assert abs(b[0]) < 1e-12 and b[1] > 0
    assert tilted_b0(0.0) == (0.0, 0.0, 1.0)


def test_jittered_chiref_only_brain_labels():
    ref = np.linspace(-2.0, 9.0, 17)
    out = jittered_chiref(ref, 0.3, 0.0, np.random.default_rng(0))
    other = [i for i in range(17) if i not in JITTERED_LABELS]
    assert np.array_equal(out[other], ref[other])
    ratio = out[list(JITTERED_LABELS)] / ref[list(JITTERED_LABELS)]
    assert np.all((ratio >= 0.7) & (ratio <= 1.3)) and not np.allclose(ratio, 1.0)
    shifted = jittered_chiref(ref, 0.0, 0.01, np.random.default_rng(1))
    assert 0 < np.abs(shifted - ref).max() < 0.06


def test_recipe_shipped_and_errors(tmp_path):
    recipe = load_recipe(ROOT / "workflows" / "realistic-patches.toml")
    assert recipe.patch_size == 32 and len(recipe.acquisitions) >= 8
    assert len({a.name for a in recipe.acquisitions}) == len(recipe.acquisitions)
    assert {a.preset for a in recipe.acquisitions} == {"3t", "7t"}
    assert any(a.voxel_size[2] != a.voxel_size[0] for a in recipe.acquisitions)  # anisotropic
    assert max(a.tilt_deg for a in recipe.acquisitions) >= 20
    bad = tmp_path / "bad.toml"
    for text, match in (
        ("patch_size = 32\n", "no \\[\\[acquisitions\\]\\]"),
        ("[[acquisitions]]\nname = 'a'\nsnr2 = 3\n", "unknown key"),
        ("[[acquisitions]]\npreset = '3t'\n", "no name"),
        ("[[acquisitions]]\nname = 'a'\npreset = '9t'\n", "preset"),
        ("[[acquisitions]]\nname = 'a'\ntilt_deg = 100\n", "tilt_deg"),
        ("[[acquisitions]]\nname = 'a'\n[[acquisitions]]\nname = 'a'\n", "unique"),
        ("what = 1\n[[acquisitions]]\nname = 'a'\n", "unknown key"),
    ):
        bad.write_text(text)
        with pytest.raises(QSMInputError, match=match) as err:
            load_recipe(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(QSMInputError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_fine_tuning_preset_mixes_patch_sets_and_phantoms(tmp_path):
    """workflows/train-isdu-realistic.toml: one whole-model fine-tuning stage, patch sets from
    --patches mixed with [phantoms]."""
    from qsmflow.training.config import load_train_preset

    preset = load_train_preset(ROOT / "workflows" / "train-isdu-realistic.toml")
    [(name, stage)] = preset.stages
    assert stage["stage"] == "unrolled" and stage["n_iterations"] == 4
    assert stage["init_from"] == "isdu-cpu-k4.pt" and stage["channels_last"] is True
    assert preset.data["augment"] is True and preset.phantoms["count"] == 400


@pytest.fixture(scope="module")
def head_model_dir(shared_data):
    d = shared_data / "qsm2_head_model"
    if not (d / "SegmentedModel.nii.gz").is_file():
        pytest.skip(f"no QSM Challenge 2.0 head model in {d} (the simulation needs it)")
    return d


@pytest.fixture(scope="module")
def small_set(head_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("realistic")
    spec = AcquisitionSpec(
        name="3t-2.5mm",
        preset="3t",
        voxel_size=(2.5, 2.5, 2.5),
        tilt_deg=20.0,
        azimuth_deg=90.0,
        seed=7,
        contrast=0.3,
        offset_ppm=0.01,
    )
    recipe = RealisticPatchRecipe(acquisitions=(spec,), patch_size=16, stride=8)
    sets = make_realistic_patch_sets(recipe, out, head_model_dir=head_model_dir, progress=False)
    return spec, recipe, out, sets


def test_realistic_patch_set_pairs_chain_field_with_truth(small_set, head_model_dir):
    from qsmflow.simulate.head_source import _native_head
    from qsmflow.simulate.realism import simulate_realistic

    spec, recipe, out, sets = small_set
    assert sets == [out / spec.name]
    ps = read_patch_set(sets[0])
    meta = json.loads((sets[0] / "patches.json").read_text())
    acq = meta["sources"]["realistic_acquisition"]
    assert acq["acquisition"]["name"] == spec.name and acq["acquisition"]["seed"] == 7
    b0 = np.asarray(meta["b0_dirs"][0])
    assert np.isclose(math.degrees(math.acos(b0[2])), 20.0, atol=1e-4)
    assert np.allclose(b0, tilted_b0(20.0, 90.0), atol=1e-6)
    assert ps.patch_size == 16 and len(ps) > 20
    # the truth is the simulation's own chi with the recorded (jittered) susceptibilities
    rng = np.random.default_rng([7, 0x5EA1])
    chiref = jittered_chiref(_native_head(str(head_model_dir))[2], 0.3, 0.01, rng)
    assert np.allclose(acq["chiref_ppm"], chiref)
    gre = simulate_realistic(
        "3t",
        voxel_size=spec.voxel_size,
        directory=head_model_dir,
        seed=7,
        chiref=chiref.tolist(),
        b0_dir=tilted_b0(20.0, 90.0),
    )
    origins = np.asarray(ps.origin)
    for row in (0, len(ps) // 2, len(ps) - 1):
        sl = tuple(slice(int(o), int(o) + 16) for o in origins[row])
        assert np.array_equal(np.asarray(ps.chi[row]), gre.chi[sl].astype(np.float32))
    # the field is our chain's local field of that acquisition: close to the true local field
    # (V-SHARP, noise and the residual background make it differ), not to anything else
    field = np.concatenate(
        [np.asarray(ps.field[r])[np.asarray(ps.mask[r]) > 0] for r in range(len(ps))]
    )
    true = np.concatenate(
        [
            gre.local_field[tuple(slice(int(o), int(o) + 16) for o in origins[r])][
                np.asarray(ps.mask[r]) > 0
            ]
            for r in range(len(ps))
        ]
    )
    corr = np.corrcoef(field - field.mean(), true - true.mean())[0, 1]
    assert corr > 0.6, corr


def test_rerun_keeps_sets_and_cli(small_set, head_model_dir, tmp_path, capsys):
    spec, recipe, out, sets = small_set
    stamp = os.stat(sets[0] / "field.npy").st_mtime_ns
    again = make_realistic_patch_sets(recipe, out, head_model_dir=head_model_dir, progress=False)
    assert again == sets and os.stat(sets[0] / "field.npy").st_mtime_ns == stamp
    with pytest.raises(QSMInputError, match="no acquisition named"):
        make_realistic_patch_sets(recipe, out, head_model_dir=head_model_dir, only=["nope"])
    with pytest.raises(QSMInputError, match="head model"):
        make_realistic_patch_sets(recipe, out, head_model_dir=tmp_path)
    # the command: an existing set is kept, the summary names the folder
    toml = tmp_path / "recipe.toml"
    toml.write_text(
        "patch_size = 16\nstride = 8\n[[acquisitions]]\n"
        f"name = '{spec.name}'\npreset = '3t'\nvoxel_size = 2.5\ntilt_deg = 20.0\n"
        "azimuth_deg = 90.0\nseed = 7\ncontrast = 0.3\noffset_ppm = 0.01\n"
    )
    code = main(
        ["realistic-patches", str(toml), "-o", str(out), "--head-model", str(head_model_dir)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "kept" in text and "1 patch set(s)" in text
    assert main(["realistic-patches", str(tmp_path / "none.toml"), "-o", str(out)]) == 2
