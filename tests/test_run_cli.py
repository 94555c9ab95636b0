"""``qsmflow run`` on small simulated datasets: plugins, failures, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from qsmflow.cli.main import main

PYTHON = ["--mask-backend", "python", "--registration-backend", "python"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("derivatives"))
    return dst


def _images(out: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {
        str(p.relative_to(out)): np.asarray(nib.load(p).dataobj)
        for p in sorted(out.rglob("sub-*/anat/*.nii.gz"))
    }


def test_multiproc_gives_the_same_outputs_as_linear(simulated_bids, tmp_path):
    import torch

    # MultiProc with the default fork context hangs once the parent has used torch's thread
    # pool; qsmflow run starts its workers with forkserver, so this must not matter.
    torch.set_num_threads(2)
    assert float((torch.ones(256, 256) @ torch.ones(256, 256))[0, 0]) == 256.0
    base = ["run", str(simulated_bids), "", "participant", "--pipeline", "cosmos", *PYTHON]
    base += ["--participant-label", "01"]
    linear, multi = tmp_path / "linear", tmp_path / "multi"
    base[2] = str(linear)
    assert main([*base, "--work-dir", str(tmp_path / "w1")]) == 0
    base[2] = str(multi)
    environment = dict(os.environ)
    assert main([*base, "--work-dir", str(tmp_path / "w2"), "--plugin", "MultiProc"]
                + ["--nprocs", "2"]) == 0  # fmt: skip
    # the workers' thread settings (OMP_NUM_THREADS=1, ...) do not outlive the run
    assert dict(os.environ) == environment
    a, b = _images(linear), _images(multi)
    assert sorted(a) == sorted(b) and len(a) >= 12
    for name in a:  # bit for bit: registration runs single-threaded (reproducible)
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    chi = a["sub-01/anat/sub-01_desc-cosmos_Chimap.nii.gz"]
    assert np.abs(chi).max() > 0.05  # a real map, not zeros


def test_failing_subject_does_not_stop_the_others(simulated_bids, tmp_path, capsys):
    import nibabel as nib

    bids = _copy(simulated_bids, tmp_path / "bids")
    # sub-02: magnitude of one orientation all zeros -> brain extraction fails at run time
    for f in (bids / "sub-02" / "anat").glob("sub-02_acq-ori2_echo-*_part-mag_MEGRE.nii.gz"):
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), f)
    out = tmp_path / "out"
    rc = main(["run", str(bids), str(out), "participant", "--pipeline", "qsm", *PYTHON])
    text = capsys.readouterr().out
    assert rc == 1, text
    assert "sub-01                   ok" in text and "sub-02                   FAILED" in text
    assert "brain_mask" in text  # the failing step is named, with its message
    # sub-01 complete, sub-02's other orientation complete, nothing half-written
    assert (out / "sub-01/anat/sub-01_acq-ori2_desc-tv_Chimap.nii.gz").is_file()
    assert (out / "sub-02/anat/sub-02_acq-ori1_desc-tv_Chimap.nii.gz").is_file()
    assert not (out / "sub-02/anat/sub-02_acq-ori2_desc-tv_Chimap.nii.gz").exists()
    assert not list(out.rglob(".tmp-*"))
    for p in out.rglob("sub-*/anat/*.nii.gz"):
        assert np.isfinite(np.asarray(nib.load(p).dataobj)).all()
    assert list((out / "logs").glob("crash_*/crash-*.txt"))


def _break_missing_echo(bids: Path) -> str:
    f = bids / "sub-01/anat/sub-01_acq-ori2_echo-2_part-mag_MEGRE.nii.gz"
    f.unlink()
    return "sub-01_acq-ori2_echo-2_part-phase_MEGRE"


def _break_echo_time(bids: Path) -> str:
    f = bids / "sub-01/anat/sub-01_acq-ori1_echo-3_part-phase_MEGRE.json"
    meta = json.loads(f.read_text())
    del meta["EchoTime"]
    f.write_text(json.dumps(meta))
    return "sub-01_acq-ori1_echo-3_part-phase_MEGRE"


def _break_grid(bids: Path) -> str:
    import nibabel as nib

    f = bids / "sub-01/anat/sub-01_acq-ori1_echo-1_part-mag_MEGRE.nii.gz"
    img = nib.load(f)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), f)
    return "sub-01_acq-ori1_echo-1_part-mag_MEGRE"


def _break_phase_units(bids: Path) -> str:
    import nibabel as nib

    f = bids / "sub-01/anat/sub-01_acq-ori2_echo-1_part-phase_MEGRE.nii.gz"
    img = nib.load(f)
    nib.save(nib.Nifti1Image(np.degrees(np.asarray(img.dataobj)), img.affine), f)
    return "sub-01_acq-ori2_echo-1_part-phase_MEGRE"


def _break_one_orientation(bids: Path) -> str:
    for f in (bids / "sub-01/anat").glob("sub-01_acq-ori2_*"):
        f.unlink()
    return "at least 2 head orientations"


BREAKERS = {
    "missing-echo": _break_missing_echo,
    "no-echo-time": _break_echo_time,
    "grid-mismatch": _break_grid,
    "phase-in-degrees": _break_phase_units,
    "one-orientation": _break_one_orientation,
}


@pytest.mark.parametrize("problem", sorted(BREAKERS))
def test_bad_input_is_reported_before_any_computation(problem, simulated_bids, tmp_path, capsys):
    bids = _copy(simulated_bids, tmp_path / "bids")
    expected = BREAKERS[problem](bids)
    out = tmp_path / "out"
    argv = ["run", str(bids), str(out), "participant", "--participant-label", "01"]
    rc = main([*argv, "--pipeline", "cosmos", *PYTHON])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expected in err, err
    assert not out.exists() or not list(out.rglob("sub-*"))  # nothing computed or written


def test_invalid_subject_is_skipped_and_reported(simulated_bids, tmp_path, capsys):
    bids = _copy(simulated_bids, tmp_path / "bids")
    _break_echo_time(bids)  # sub-01 invalid; sub-02 fine
    out = tmp_path / "out"
    argv = ["run", str(bids), str(out), "participant", "--pipeline", "qsm", *PYTHON]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 1
    assert "EchoTime" in captured.err and "SKIPPED" in captured.out
    assert (out / "sub-02/anat/sub-02_acq-ori1_desc-tv_Chimap.nii.gz").is_file()
    assert not (out / "sub-01").exists()


def test_unwritable_output_directory(simulated_bids, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["run", str(simulated_bids), str(blocker / "out"), "participant", "--dry-run"])
    assert rc == 2 and str(blocker / "out") in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits: make the access check see them
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == locked else real(p, m))
    rc = main(["run", str(simulated_bids), str(locked), "participant", *PYTHON])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and str(locked) in err
    assert list(locked.iterdir()) == []


def test_runtime_without_passwd_entry_or_temporary_folder(monkeypatch, tmp_path):
    """Containers run as an arbitrary --user with a read-only root: a user ID without a passwd
    entry gets a fallback name; MultiProc without a temporary folder is a clear input error."""
    import getpass
    import tempfile

    from qsmflow.cli import _nipype_runtime as rt
    from qsmflow.errors import QSMInputError

    def no_user():
        raise KeyError("getpwuid(): uid not found: 12345")

    monkeypatch.setattr(getpass, "getuser", no_user)
    monkeypatch.delenv("LOGNAME", raising=False)
    with rt.restored_environment():
        rt.plugin_settings(None, "Linear", {}, None, tmp_path)
        assert os.environ["LOGNAME"] == "qsmflow"

    def no_tmp():
        raise FileNotFoundError("No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", no_tmp)
    with pytest.raises(QSMInputError, match="no writable temporary folder.*TMPDIR"):
        rt.plugin_settings(None, "MultiProc", {}, 2, tmp_path)
