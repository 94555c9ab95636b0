"""BIDS input discovery and validation (qsmflow.io.bids) on small simulated datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bids_validator_helper import run_bids_validator, validator_available

from qsmflow.errors import QSMInputError
from qsmflow.io.bids import (
    GRERun,
    Problem,
    SubjectSession,
    collect_inputs,
    discover,
    validate_dataset,
)

TE = (0.005, 0.010, 0.015, 0.020)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """2 subjects x 3 orientations x 4 echoes at 4 mm (about 2 s), shared by the module."""
    from qsmflow.cli.main import main

    root = tmp_path_factory.mktemp("bids") / "sim"
    args = ["simulate", str(root), "--voxel-size", "4", "--orientations", "3"]
    assert main([*args, "--subjects", "2", "--supersample", "1", "--seed", "1"]) == 0
    return root


@pytest.fixture
def ds(sim, tmp_path) -> Path:
    """A private copy of the raw part of the simulated dataset, to break."""
    out = tmp_path / "ds"
    shutil.copytree(sim, out, ignore=shutil.ignore_patterns("derivatives"))
    return out


def anat(root: Path, sub: str = "01") -> Path:
    return root / f"sub-{sub}" / "anat"


def megre(root, acq="ori1", echo=1, part="phase", sub="01") -> Path:
    return anat(root, sub) / f"sub-{sub}_acq-{acq}_echo-{echo}_part-{part}_MEGRE.nii.gz"


def sidecar(nii: Path) -> Path:
    return nii.with_name(nii.name.replace(".nii.gz", ".json"))


def edit_sidecar(nii: Path, **changes) -> None:
    p = sidecar(nii)
    meta = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    p.write_text(json.dumps(meta))


def rewrite(nii: Path, data: np.ndarray, affine=None, dtype=np.float32) -> None:
    img = nib.load(nii)
    aff = img.affine if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), aff), nii)


def messages(problems) -> str:
    return "\n".join(str(p) for p in problems)


# --------------------------------------------------------------------------- discovery


def test_discover_simulated_dataset(sim):
    subjects = discover(sim)
    assert [s.label for s in subjects] == ["sub-01", "sub-02"]
    for s in subjects:
        assert isinstance(s, SubjectSession) and s.session is None
        assert [r.label for r in s.runs] == ["acq-ori1", "acq-ori2", "acq-ori3"]
        assert s.reference is s.runs[0]  # reference orientation first
        for r in s.runs:
            assert isinstance(r, GRERun)
            assert r.echo_times_s == TE and r.field_strength_t == 3.0
            assert [e.echo for e in r.echoes] == [1, 2, 3, 4]
            assert all(p.is_file() and "_part-mag_" in p.name for p in r.magnitude_files)
            assert all(p.is_file() and "_part-phase_" in p.name for p in r.phase_files)
    r = subjects[1].runs[2]
    assert r.bids_prefix == "sub-02_acq-ori3" and r.subject == "02" and r.acquisition == "ori3"
    assert r.run is None and r.session is None
    assert r.relative_source_files[:2] == [
        "sub-02/anat/sub-02_acq-ori3_echo-1_part-mag_MEGRE.nii.gz",
        "sub-02/anat/sub-02_acq-ori3_echo-1_part-phase_MEGRE.nii.gz",
    ]
    assert r.source_files[1] == str(r.phase_files[0]) and Path(r.source_files[0]).is_absolute()
    assert len(r.source_files) == 8 and r.bids_dir == sim.resolve()
    # the full check passes too, for every pipeline
    for pipeline in ("qsm", "cosmos", "training-data"):
        ok, problems = validate_dataset(sim, pipeline=pipeline)
        assert problems == [] and [s.label for s in ok] == ["sub-01", "sub-02"]
    assert collect_inputs(sim, pipeline="cosmos") == subjects


def test_participant_filter_and_unknown_participant(sim):
    for lab in ("02", "sub-02", ["sub-02"]):
        got = discover(sim, participant_label=lab)
        assert [s.label for s in got] == ["sub-02"]
    ok, problems = validate_dataset(sim, participant_label=["01", "sub-99"])
    assert [s.label for s in ok] == ["sub-01"]
    assert len(problems) == 1 and problems[0].subject == "99"
    assert "sub-99" in str(problems[0]) and "not found" in str(problems[0])
    with pytest.raises(QSMInputError, match="sub-99.*participant not found"):
        collect_inputs(sim, participant_label="99")


def test_sessions_acq_run_and_natural_order(sim, tmp_path):
    """ses- entity, run- entity and ori10 sorting after ori2 (files renamed by hand)."""
    root = tmp_path / "ses"
    root.mkdir()
    shutil.copy(sim / "dataset_description.json", root)
    for ses, acqs in (("a", {"ori1": "acq-ori1", "ori2": "acq-ori10", "ori3": "acq-ori2"}),
                      ("b", {"ori1": "run-1", "ori2": "run-2"})):  # fmt: skip
        dest = root / "sub-01" / f"ses-{ses}" / "anat"
        dest.mkdir(parents=True)
        for old, new in acqs.items():
            for f in anat(sim).glob(f"sub-01_acq-{old}_*"):
                name = f.name.replace(f"sub-01_acq-{old}_", f"sub-01_ses-{ses}_{new}_")
                shutil.copy(f, dest / name)
    subjects = discover(root)
    assert [s.label for s in subjects] == ["sub-01_ses-a", "sub-01_ses-b"]
    a, b = subjects
    assert [r.label for r in a.runs] == ["acq-ori1", "acq-ori2", "acq-ori10"]
    assert [r.label for r in b.runs] == ["run-1", "run-2"]
    assert b.runs[1].run == "2" and b.runs[1].acquisition is None
    assert b.runs[1].bids_prefix == "sub-01_ses-b_run-2"
    assert a.runs[0].relative_source_files[0] == (
        "sub-01/ses-a/anat/sub-01_ses-a_acq-ori1_echo-1_part-mag_MEGRE.nii.gz"
    )
    assert all(r.echo_times_s == TE for s in subjects for r in s.runs)
    only_b = discover(root, session_label="ses-b")
    assert [s.label for s in only_b] == ["sub-01_ses-b"]
    ok, problems = validate_dataset(root, session_label=["b", "c"], pipeline="cosmos")
    assert [s.label for s in ok] == ["sub-01_ses-b"]
    assert len(problems) == 1 and "ses-c" in str(problems[0]) and "not found" in str(problems[0])


# --------------------------------------------------------------------------- bad input


def test_missing_echo_named_and_other_subject_still_valid(ds):
    gone = megre(ds, "ori2", 3, "phase")
    gone.unlink()
    sidecar(gone).unlink()
    ok, problems = validate_dataset(ds)
    assert [s.label for s in ok] == ["sub-02"]  # the valid subject can still be processed
    assert len(problems) == 1
    p = problems[0]
    assert isinstance(p, Problem) and p.subject == "01" and p.label == "sub-01"
    assert p.path == str(gone) and "missing" in p.message and "echo 3" in p.message
    assert str(p) == f"{gone}: {p.message}"
    with pytest.raises(QSMInputError, match="missing") as exc:
        discover(ds)  # the cheap pass finds it too
    assert gone.name in str(exc.value)
    # collect_inputs: error by default, the valid subjects with skip_invalid
    with pytest.raises(QSMInputError, match=gone.name):
        collect_inputs(ds)
    assert [s.label for s in collect_inputs(ds, skip_invalid=True)] == ["sub-02"]


def test_echo_gap(ds):
    for part in ("mag", "phase"):
        f = megre(ds, "ori3", 2, part)
        f.unlink()
        sidecar(f).unlink()
    _, problems = validate_dataset(ds, participant_label="01")
    assert len(problems) == 1
    assert "missing: echo 2" in problems[0].message and "1, 3, 4" in problems[0].message
    assert problems[0].path.endswith("sub-01_acq-ori3_echo-2_part-phase_MEGRE.nii.gz")


def test_sidecar_without_echo_time(ds):
    f = megre(ds, "ori1", 2, "mag")
    edit_sidecar(f, EchoTime=None)
    _, problems = validate_dataset(ds, participant_label="01")
    assert messages(problems) == f"{sidecar(f)}: no EchoTime (seconds) in the JSON sidecar"


def test_echo_time_in_ms_and_not_increasing(ds):
    for part in ("mag", "phase"):
        edit_sidecar(megre(ds, "ori2", 1, part), EchoTime=5.0)
        edit_sidecar(megre(ds, "ori3", 3, part), EchoTime=0.008)
    _, problems = validate_dataset(ds, participant_label="01")
    text = messages(problems)
    assert f"{sidecar(megre(ds, 'ori2', 1, 'phase'))}: EchoTime 5 looks like milliseconds" in text
    assert "seconds" in text and "0.005" in text
    assert f"{sidecar(megre(ds, 'ori3', 3, 'phase'))}: EchoTime 0.008 s of echo 3" in text
    assert "must increase" in text


def test_missing_field_strength(ds):
    for f in anat(ds).glob("sub-01_acq-ori1_*.json"):
        edit_sidecar(f.with_name(f.name.replace(".json", ".nii.gz")), MagneticFieldStrength=None)
    _, problems = validate_dataset(ds, participant_label="01")
    assert len(problems) == 1  # one message per run, naming the first file and the rest
    assert "no MagneticFieldStrength (tesla)" in problems[0].message
    assert "sub-01_acq-ori1_echo-1_part-" in problems[0].path and "and 4 more" in str(problems[0])


def test_magnitude_phase_grid_mismatch(ds):
    ph = megre(ds, "ori1", 1, "phase")
    img = nib.load(ph)
    rewrite(ph, np.asarray(img.dataobj)[:-2])
    _, problems = validate_dataset(ds, participant_label="01")
    text = messages(problems)
    assert f"{ph}: magnitude/phase grid mismatch" in text and "(46, 56, 48)" in text
    assert "is on a different grid than echo" in text  # echoes 2-4 differ from echo 1
    # an affine shift alone is also a mismatch
    ph2 = megre(ds, "ori2", 1, "phase")
    aff = nib.load(ph2).affine.copy()
    aff[0, 3] += 2.0
    rewrite(ph2, np.asarray(nib.load(ph2).dataobj), affine=aff)
    _, problems = validate_dataset(ds, participant_label="01")
    assert f"{ph2}: magnitude/phase grid mismatch" in messages(problems)
    assert "affines differ by up to 2 mm" in messages(problems)


@pytest.mark.parametrize(
    "scale, expected",
    [(180 / np.pi, "[-180"), ("uint16", "[0, 6.5")],  # degrees; arbitrary 0..65535
    ids=["degrees", "arbitrary"],
)
def test_phase_units(ds, scale, expected):
    ph = megre(ds, "ori2", 2, "phase")
    data = np.asarray(nib.load(ph).dataobj, dtype=np.float64)
    if scale == "uint16":
        rewrite(ph, np.round((data + np.pi) / (2 * np.pi) * 65535), dtype=np.uint16)
    else:
        rewrite(ph, data * scale)
    edit_sidecar(ph, Units=None)
    _, problems = validate_dataset(ds, participant_label="01")
    assert len(problems) == 1 and problems[0].path == str(ph)
    assert "is neither radians" in problems[0].message and expected in problems[0].message


def test_siemens_phase_accepted_and_units_rad_checked(ds):
    ph = megre(ds, "ori1", 1, "phase")
    data = np.asarray(nib.load(ph).dataobj, dtype=np.float64)
    rewrite(ph, np.round(data * 4096 / np.pi).clip(-4096, 4095))
    edit_sidecar(ph, Units=None)
    ok, problems = validate_dataset(ds, participant_label="01")
    assert problems == [] and len(ok) == 1
    edit_sidecar(ph, Units="rad")  # the sidecar claims radians: now it is an error
    _, problems = validate_dataset(ds, participant_label="01")
    assert len(problems) == 1 and "exceeds [-pi, pi]" in str(problems[0])
    assert '"Units": "rad"' in str(problems[0])


def test_cosmos_needs_two_orientations(ds):
    for f in anat(ds).glob("sub-01_acq-ori[23]_*"):
        f.unlink()
    ok, problems = validate_dataset(ds, participant_label="01")
    assert problems == [] and len(ok[0].runs) == 1  # fine for single-orientation QSM
    for pipeline in ("cosmos", "training-data"):
        ok, problems = validate_dataset(ds, pipeline=pipeline)
        assert [s.label for s in ok] == ["sub-02"]
        assert len(problems) == 1
        text = str(problems[0])
        first = megre(ds, "ori1", 1, "mag")
        assert text.startswith(f"{first}: {pipeline} needs at least 2 head orientations")
        assert f"found 1: {first}" in text
    with pytest.raises(QSMInputError, match="needs at least 2 head orientations"):
        collect_inputs(ds, pipeline="cosmos")


def test_cosmos_orientations_on_different_field_strengths(ds):
    for f in anat(ds).glob("sub-01_acq-ori3_*.nii.gz"):
        edit_sidecar(f, MagneticFieldStrength=7.0)
    assert validate_dataset(ds, participant_label="01")[1] == []
    _, problems = validate_dataset(ds, participant_label="01", pipeline="cosmos")
    assert len(problems) == 1 and "different field strengths" in problems[0].message
    assert "acq-ori1 3 T" in problems[0].message and "acq-ori3 7 T" in problems[0].message


def test_non_3d_image(ds):
    mag = megre(ds, "ori1", 4, "mag")
    data = np.asarray(nib.load(mag).dataobj)
    rewrite(mag, np.stack([data, data], axis=-1))
    _, problems = validate_dataset(ds, participant_label="01")
    assert messages(problems) == (
        f"{mag}: expected a 3-D image (one echo per file), got shape (48, 56, 48, 2)"
    )


def test_all_problems_reported_at_once(ds):
    gone = megre(ds, "ori1", 2, "mag")
    gone.unlink()
    edit_sidecar(megre(ds, "ori3", 4, "phase", sub="02"), EchoTime=None)
    with pytest.raises(QSMInputError) as exc:
        collect_inputs(ds)
    text = str(exc.value)
    lines = text.splitlines()
    assert lines[0].startswith("2 problems with the BIDS input") and len(lines) == 3
    assert f"{gone}: missing: magnitude image of echo 2" in text
    assert "sub-02_acq-ori3_echo-4_part-phase_MEGRE.json: no EchoTime" in text
    ok, problems = validate_dataset(ds)
    assert ok == [] and [p.subject for p in problems] == ["01", "02"]


def test_dataset_level_problems(tmp_path, ds):
    ok, problems = validate_dataset(tmp_path / "nope")
    assert ok == [] and len(problems) == 1 and problems[0].subject is None
    assert "nope: BIDS dataset folder not found" in str(problems[0])
    (ds / "dataset_description.json").unlink()
    with pytest.raises(QSMInputError, match="dataset_description.json: missing"):
        collect_inputs(ds)
    (ds / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (ds / "sub-03" / "anat").mkdir(parents=True)
    (ds / "sub-03" / "anat" / "sub-03_T1w.nii.gz").write_bytes(b"")
    ok, problems = validate_dataset(ds, participant_label=["03", "02"])
    assert [s.label for s in ok] == ["sub-02"]
    assert len(problems) == 1 and "no multi-echo GRE images" in str(problems[0])
    assert problems[0].path == str(ds / "sub-03")
    with pytest.raises(QSMInputError, match="unknown pipeline"):
        validate_dataset(ds, pipeline="cosmo")


# --------------------------------------------------------------------------- BIDS validator


@pytest.mark.skipif(not validator_available(), reason="bids-validator-deno not installed")
def test_simulated_dataset_passes_bids_validator(sim, tmp_path):
    ok, report = run_bids_validator(sim)
    assert ok, report
    assert "0 error(s)" in report and "'01', '02'" in report
    # the truth derivative, validated as a dataset of its own (honours its .bidsignore)
    ok, report = run_bids_validator(sim / "derivatives" / "qsmflow-simulation")
    assert ok, report
    # the helper does see errors
    bad = tmp_path / "bad"
    shutil.copytree(sim, bad, ignore=shutil.ignore_patterns("derivatives", "sub-02"))
    shutil.copy(megre(bad), anat(bad) / "sub-01_acq-ori1_echo-1_phase_MEGRE.nii.gz")
    ok, report = run_bids_validator(bad)
    assert not ok and "ERROR" in report and "sub-01_acq-ori1_echo-1_phase_MEGRE" in report


def test_part_entity_variants_and_duplicates(ds):
    # magnitude without part- (the BIDS default) is accepted; real/imag parts are not used
    for f in anat(ds).glob("sub-01_acq-ori2_echo-*_part-mag_MEGRE.*"):
        f.rename(f.with_name(f.name.replace("_part-mag", "")))
    real = anat(ds) / "sub-01_acq-ori3_echo-2_part-real_MEGRE.nii.gz"
    shutil.copy(megre(ds, "ori3", 2, "phase"), real)
    subjects = discover(ds, participant_label="01")
    run2 = subjects[0].runs[1]
    assert run2.magnitude_files[0].name == "sub-01_acq-ori2_echo-1_MEGRE.nii.gz"
    assert real not in subjects[0].runs[2].phase_files
    # a second phase image of one echo (another rec- label) is ambiguous
    dup = anat(ds) / "sub-01_acq-ori1_rec-x_echo-1_part-phase_MEGRE.nii.gz"
    shutil.copy(megre(ds, "ori1", 1, "phase"), dup)
    _, problems = validate_dataset(ds, participant_label="01")
    assert len(problems) == 1 and problems[0].path == str(dup)
    assert "two phase images for echo 1" in problems[0].message
