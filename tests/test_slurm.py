"""The cluster paths on a real SLURM scheduler (a one-node cluster on this machine).

``qsmflow run --plugin SLURM`` (every Nipype node a batch job), the one-subject-per-task array
template ``workflows/slurm-array.sbatch`` (a cancelled task's subject reruns from its Nipype
cache) and ``workflows/train-isdu.sbatch`` (torchrun with 2 CPU processes and gloo; a requeued
job resumes from its newest checkpoint). Outputs are compared with a ``Linear`` run voxel for
voxel, and the requeued training with an uninterrupted one weight for weight.

Needs ``sbatch`` and a controller with an idle node: ``sudo scripts/local-slurm.sh start``
(``.ci/run`` starts one before the tests). Skipped when there is none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qsmflow.cli.main import main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYTHON_BACKEND = ["--mask-backend", "python"]
#: small jobs so that the 2-CPU node runs two at a time
JOB_RESOURCES = ["--cpus-per-task=1", "--mem=2G"]
SMALL_BIDS = (
    "--voxel-size", "4", "--orientations", "1", "--subjects", "2",
    "--echo-times", "0.004", "0.009", "0.014", "--seed", "3",
)  # fmt: skip


def _slurm_ready() -> str | None:
    """None when sbatch can run jobs here, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM client (sbatch) on PATH; start one with scripts/local-slurm.sh start"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc})"
    if not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"no usable SLURM node (sinfo: {states or 'no answer'})"
    return None


pytestmark = pytest.mark.skipif(_slurm_ready() is not None, reason=str(_slurm_ready()))


# ------------------------------------------------------------------------------- helpers


def _images(out: Path, subject: str) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {
        p.name: np.asarray(nib.load(p).dataobj)
        for p in sorted((out / f"sub-{subject}" / "anat").glob("*.nii.gz"))
    }


def _assert_same_images(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want) and len(want) >= 5, (sorted(got), sorted(want))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _sbatch(*args: str, env: dict[str, str] | None = None, cwd: Path) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


ACTIVE_STATES = frozenset(
    ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")
)


def _job_states(job: str) -> dict[str, str]:
    """{job or array task id: state} from ``scontrol -o show job`` (finished jobs included)."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30
    ).stdout
    states = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        key = fields.get("JobId", "?")
        if fields.get("ArrayTaskId"):
            key = f"{fields.get('ArrayJobId')}_{fields['ArrayTaskId']}"
        states[key] = fields.get("JobState", "?")
    return states


def _wait_done(job: str, timeout: float = 300) -> dict[str, str]:
    """Wait until no task of ``job`` is pending, running or completing; return their states."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        states = _job_states(job)
        if states and not any(s in ACTIVE_STATES for s in states.values()):
            return states
        time.sleep(0.5)
    subprocess.run(["scancel", job], timeout=30)
    raise AssertionError(f"SLURM job {job} not done after {timeout} s: {_job_states(job)}")


def _wait_for(base: Path, pattern: str, job: str, timeout: float = 120) -> Path:
    """The first file under ``base`` matching the glob ``pattern``, once one appears."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        found = sorted(base.glob(pattern)) if base.exists() else []
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{base}/{pattern} did not appear in {timeout} s ({_job_states(job)})")


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bids(simulate_bids) -> Path:
    """2 subjects, 1 orientation, 4 mm: 16 Nipype nodes per subject, seconds each."""
    return simulate_bids(*SMALL_BIDS)


@pytest.fixture(scope="module")
def linear(bids, tmp_path_factory) -> Path:
    """The reference: both subjects through the qsm pipeline with the Linear plugin."""
    out = tmp_path_factory.mktemp("linear") / "out"
    work = out.parent / "work"
    rc = main(["run", str(bids), str(out), "participant", "--pipeline", "qsm",
               "--work-dir", str(work), *PYTHON_BACKEND])  # fmt: skip
    assert rc == 0
    return out


# ------------------------------------------------------------------------------- tests


def test_slurm_plugin_equals_linear(bids, linear, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    rc = main(["run", str(bids), str(out), "participant", "--participant-label", "01",
               "--pipeline", "qsm", "--work-dir", str(work), *PYTHON_BACKEND,
               "--plugin", "SLURM", "--plugin-args",
               "sbatch_args=" + " ".join(JOB_RESOURCES)])  # fmt: skip
    assert rc == 0
    # every computing node went through sbatch (Nipype writes one batch script per job; the
    # derivative sinks run in the submitting process)
    scripts = [p.stem for p in (work / "qsmflow_wf/batch").glob("batchscript_*.sh")]
    for step in ("merge_phase", "brain_mask", "multiecho_field", "vsharp", "invert_tv"):
        assert sum(name.endswith(step) for name in scripts) == 1, (step, scripts)
    assert len(list((work / "qsmflow_wf/batch").glob("slurm-*.out"))) == len(scripts)
    _assert_same_images(_images(out, "01"), _images(linear, "01"))
    assert not (out / "sub-02").exists()


def test_array_template_and_a_cancelled_subject_reruns_from_its_cache(bids, linear, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "BIDS_DIR": str(bids),
        "OUTPUT_DIR": str(out),
        "PIPELINE": "qsm",
        "QSMFLOW": str(BIN / "qsmflow"),
        "QSMFLOW_EXTRA_ARGS": " ".join(PYTHON_BACKEND),
    }
    template = str(REPO / "workflows" / "slurm-array.sbatch")
    log = str(tmp_path / "task_%A_%a.log")
    job = _sbatch("--array=1-2", *JOB_RESOURCES, "-o", log, template, env=env, cwd=tmp_path)

    # cancel sub-02's task as soon as its first node has finished
    work2 = out / "work" / "sub-02"
    first = _wait_for(work2, "qsmflow_wf/sub_02_wf/*/*/result_*.pklz", job)
    subprocess.run(["scancel", f"{job}_2"], check=True, timeout=30)
    states = _wait_done(job)
    assert states == {f"{job}_1": "COMPLETED", f"{job}_2": "CANCELLED"}, states
    _assert_same_images(_images(out, "01"), _images(linear, "01"))
    assert not (out / "sub-02/anat/sub-02_desc-tv_Chimap.nii.gz").exists()  # cut short

    # what sub-02 had finished stays in its cache; rerunning its task completes it from there
    cached = {p: p.stat().st_mtime_ns for p in work2.rglob("result_*.pklz")}
    assert first in cached and len(cached) < 16
    job2 = _sbatch("--array=2", *JOB_RESOURCES, "-o", log, template, env=env, cwd=tmp_path)
    assert _wait_done(job2) == {f"{job2}_2": "COMPLETED"}
    for path, mtime in cached.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    assert len(list(work2.rglob("result_*.pklz"))) > len(cached)
    _assert_same_images(_images(out, "02"), _images(linear, "02"))
    text = (tmp_path / f"task_{job2}_2.log").read_text()
    assert "qsmflow task 2: sub-02" in text and "sub-02                   ok" in text


def _train_env(out: Path, epochs: int) -> dict[str, str]:
    return {
        **os.environ,
        "CONFIG": str(REPO / "workflows" / "train-isdu-tiny.toml"),
        "OUTPUT_DIR": str(out),
        "NPROC": "2",
        "QSMFLOW_PYTHON": sys.executable,
        "TRAIN_EXTRA_ARGS": f"--simulate 8 --no-progress --epochs {epochs}",
    }


def test_train_sbatch_torchrun_gloo_requeue_resumes(tmp_path):
    from qsmflow.models.checkpoints import read_checkpoint

    script = str(REPO / "workflows" / "train-isdu.sbatch")
    resources = ["--cpus-per-task=2", "--mem=4G"]
    epochs = 10

    # uninterrupted
    whole = tmp_path / "whole"
    job = _sbatch(*resources, "-o", str(tmp_path / "whole.log"), script,
                  env=_train_env(whole, epochs), cwd=tmp_path)  # fmt: skip
    assert _wait_done(job) == {job: "COMPLETED"}, (tmp_path / "whole.log").read_text()

    # the same run, told by USR1 (as SLURM does before the time limit) to requeue itself
    run = tmp_path / "requeued"
    log = tmp_path / "requeued.log"
    job = _sbatch(*resources, "-o", str(log), script, env=_train_env(run, epochs), cwd=tmp_path)
    _wait_for(run, "k1/checkpoints/epoch_0002.pt", job)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    t_end = time.monotonic() + 60
    # a requeued job waits until its old credential expires (cred_expire, 10 s in
    # scripts/local-slurm.sh; starting it earlier fails it), then runs again
    while _job_states(job).get(job) != "PENDING":
        assert time.monotonic() < t_end, (_job_states(job), log.read_text())
        time.sleep(0.2)
    assert _wait_done(job) == {job: "COMPLETED"}, log.read_text()

    text = log.read_text()
    assert "time limit near: requeueing" in text
    assert f"qsmflow-train job {job} run 1:" in text and f"qsmflow-train job {job} run 2:" in text
    assert "2 process(es), 0 GPU(s)" in text
    assert "qsmflow train: resuming after epoch" in text  # not started over
    for stage in ("k1", "k2"):
        a = read_checkpoint(whole / stage / "final.pt")
        b = read_checkpoint(run / stage / "final.pt")
        sa, sb = a["model"], b["model"]
        assert sorted(sa) == sorted(sb)
        for key in sa:  # a requeue costs time, not reproducibility
            assert torch.equal(sa[key], sb[key]), (stage, key)
    last = read_checkpoint(run / "k2/checkpoints" / f"epoch_{epochs:04d}.pt")
    assert last["extra"]["training"]["world_size"] == 2
