"""Settings presets: parsing, validation, and every preset in workflows/ dry-run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qsmflow.config import PipelineConfig, config_from_dict, load_config
from qsmflow.errors import QSMInputError

REPO = Path(__file__).resolve().parents[1]
#: ``qsmflow run`` presets; ``train-*.toml`` are ``qsmflow train`` presets (tests/test_training.py)
#: Pipeline presets: every TOML in workflows/ except the training presets (train-*.toml, read by
#: tests/test_training.py) and the realistic-patch recipe (tests/test_realistic_patches.py).
PRESETS = sorted(
    p
    for p in (REPO / "workflows").glob("*.toml")
    if not p.name.startswith("train-") and p.name != "realistic-patches.toml"
)


def test_defaults_are_valid():
    cfg = PipelineConfig().validate()
    assert cfg.pipeline == "qsm" and cfg.masking.backend == "auto"
    assert cfg.training.patch_size == 64 and cfg.training.stride == 32
    assert cfg.cosmos.method == "lsq" and cfg.inversion.methods == ["tv"]
    assert cfg.inversion.magnitude_weights == ["tv"]


def test_nested_values_and_unknown_keys(tmp_path):
    cfg = config_from_dict({"pipeline": "cosmos", "cosmos": {"lam": 0.01, "method": "closed"}})
    assert cfg.pipeline == "cosmos" and cfg.cosmos.lam == 0.01 and cfg.cosmos.method == "closed"
    with pytest.raises(QSMInputError, match="unknown setting cosmos.'lamda'"):
        config_from_dict({"cosmos": {"lamda": 0.01}})
    with pytest.raises(QSMInputError, match="pipeline = 'cosmo'"):
        config_from_dict({"pipeline": "cosmo"})
    with pytest.raises(QSMInputError, match="unknown inversion method 'tdk'"):
        config_from_dict({"inversion": {"methods": ["tdk"]}})
    bad = tmp_path / "bad.toml"
    bad.write_text("pipeline = \n")
    with pytest.raises(QSMInputError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(QSMInputError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"qsm", "cosmos", "training-data", "cosmos-slurm", "cosmos-multiproc"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_loads_and_dry_runs(preset, simulated_bids, tmp_path, capsys):
    from qsmflow.cli.main import main

    cfg = load_config(preset)
    out = tmp_path / "out"
    argv = ["run", str(simulated_bids), str(out), "participant", "--config", str(preset)]
    rc = main([*argv, "--dry-run"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"pipeline {cfg.pipeline}" in text and "dry run: nothing computed" in text
    n_nodes = int(text.split(" nodes")[0].rsplit(", ", 1)[1])
    assert n_nodes >= (10 if cfg.pipeline == "qsm" else 30)
    assert not (out / "dataset_description.json").exists()  # a dry run writes no derivative


JOB_TEMPLATES = {"slurm-array.sbatch": "SLURM_ARRAY_TASK_ID", "pbs-array.pbs": "PBS_ARRAY_INDEX"}


@pytest.mark.parametrize("template", sorted(JOB_TEMPLATES))
def test_batch_job_templates_dry_run(template, simulated_bids, tmp_path):
    """Each HPC template runs one subject per array index (here: --dry-run, no scheduler)."""
    import subprocess
    import sys

    script = REPO / "workflows" / template
    env = {
        **os.environ,
        "BIDS_DIR": str(simulated_bids),
        "OUTPUT_DIR": str(tmp_path / "out"),
        "PIPELINE": "cosmos",
        "QSMFLOW": str(Path(sys.executable).with_name("qsmflow")),
        "QSMFLOW_EXTRA_ARGS": "--dry-run",
        JOB_TEMPLATES[template]: "2",
    }
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "qsmflow task 2: sub-02" in res.stdout
    assert "pipeline cosmos, 1 subject/session(s) (sub-02)" in res.stdout
    env[JOB_TEMPLATES[template]] = "3"  # only 2 subjects
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "outside 1..2" in res.stderr
