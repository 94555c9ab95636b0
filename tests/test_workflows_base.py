"""Graph tests (as sdcflows'): the derivatives and subject workflows are built over their
options and their nodes, interfaces, inputs and edges checked without running anything.

The subject/session records are built directly (no dataset on disk is needed to build a graph).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nipype.pipeline import engine as pe

from qsmflow.config import PipelineConfig
from qsmflow.interfaces.bids import DerivativesDataSink, DerivativesDirSink
from qsmflow.io.bids import MIN_ORIENTATIONS, EchoFiles, GRERun, SubjectSession
from qsmflow.io.naming import DERIVATIVES, derivative_name, parse_entities
from qsmflow.workflows.base import init_qsmflow_wf, init_subject_wf, subject_wf_name
from qsmflow.workflows.derivatives import init_cosmos_derivatives_wf, init_derivatives_wf

BIDS = Path("/data/bids")
OUT = "/data/bids/derivatives/qsmflow"
TE = (0.005, 0.01, 0.015)


def _run(acq: str, subject: str = "01", session: str | None = None) -> GRERun:
    folder = BIDS / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "") + f"_acq-{acq}"
    echoes = tuple(
        EchoFiles(
            echo=e,
            magnitude=folder / f"{prefix}_echo-{e}_part-mag_MEGRE.nii.gz",
            phase=folder / f"{prefix}_echo-{e}_part-phase_MEGRE.nii.gz",
            echo_time_s=te,
        )
        for e, te in enumerate(TE, start=1)
    )
    return GRERun(subject, session, acq, None, echoes, 3.0, BIDS)


def _subject(n_orientations: int, session: str | None = None) -> SubjectSession:
    runs = tuple(_run(f"ori{i + 1}", session=session) for i in range(n_orientations))
    return SubjectSession("01", session, runs)


def _edges(wf: pe.Workflow) -> set[tuple[str, str, str, str]]:
    """``(source node, output, destination node, input)`` of every connection of ``wf``."""
    return {
        (u.name, src, v.name, dst)
        for u, v, data in wf._graph.edges(data=True)
        for src, dst in data["connect"]
    }


def _sinks(wf: pe.Workflow) -> dict[str, pe.Node]:
    return {
        name: wf.get_node(name)
        for name in wf.list_node_names()
        if isinstance(wf.get_node(name).interface, (DerivativesDataSink, DerivativesDirSink))
    }


# ------------------------------------------------------------------------- io.naming


def test_derivative_name_keeps_the_entities_common_to_all_sources():
    run1, run2 = _run("ori1"), _run("ori2")
    one_run = derivative_name(run1.source_files, "mask", ".nii.gz", desc="brain")
    assert one_run == Path("sub-01/anat/sub-01_acq-ori1_desc-brain_mask.nii.gz")
    both = derivative_name(run1.source_files + run2.source_files, "Chimap", ".nii.gz", desc="x")
    assert both == Path("sub-01/anat/sub-01_desc-x_Chimap.nii.gz")
    ses = _run("ori1", session="a")
    assert derivative_name(ses.source_files, "xfm", ".txt") == Path(
        "sub-01/ses-a/anat/sub-01_ses-a_acq-ori1_xfm.txt"
    )
    assert parse_entities(run1.phase_files[0]) == {
        "sub": "01",
        "acq": "ori1",
        "echo": "1",
        "part": "phase",
    }
    assert run1.bids_prefix == "sub-01_acq-ori1" and ses.bids_prefix == "sub-01_ses-a_acq-ori1"
    with pytest.raises(ValueError, match="no sub- entity"):
        derivative_name(["a_acq-1_x.nii"], "mask", ".nii.gz")
    with pytest.raises(ValueError, match="alphanumeric"):
        derivative_name(run1.source_files, "mask", ".nii.gz", desc="a-b")


# ------------------------------------------------------------------------- derivatives


@pytest.mark.parametrize("methods", [(), ("tkd", "ndi")])
def test_init_derivatives_wf(methods):
    run = _run("ori2")
    wf = init_derivatives_wf(
        output_dir=OUT, bids_root=str(BIDS), source_files=run.source_files, qsm_methods=methods
    )
    sinks = _sinks(wf)
    expected = {"brain_mask", "field_hz", "local_field", "local_mask"}
    assert set(sinks) == {f"ds_{k}" for k in expected} | {f"ds_chi_{m}" for m in methods}
    for name, node in sinks.items():
        assert type(node) is pe.Node and node.inputs.source_file == run.source_files
        assert node.inputs.base_directory == OUT and node.inputs.bids_root == str(BIDS)
        field = name.removeprefix("ds_")
        assert ("inputnode", field, name, "in_file") in _edges(wf)
    assert sinks["ds_brain_mask"].inputs.meta_dict == {"Type": "Brain"}
    assert sinks["ds_local_mask"].inputs.suffix == "mask"
    assert sinks["ds_local_mask"].inputs.desc == "vsharp"
    for m in methods:
        assert sinks[f"ds_chi_{m}"].inputs.suffix == "Chimap"
        assert sinks[f"ds_chi_{m}"].inputs.desc == m


@pytest.mark.parametrize("n_orientations", [2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_init_cosmos_derivatives_wf(n_orientations, training):
    subject = _subject(n_orientations)
    run_sources = [r.source_files for r in subject.runs]
    wf = init_cosmos_derivatives_wf(
        output_dir=OUT,
        bids_root=str(BIDS),
        run_sources=run_sources,
        reference_orientation=subject.reference.label,
        training=training,
    )
    sinks = _sinks(wf)
    every_input = [f for sources in run_sources for f in sources]
    for name in ("ds_cosmos_chi", "ds_cosmos_mask"):
        assert type(sinks[name]) is pe.Node and sinks[name].inputs.source_file == every_input
    per_orientation = {
        "ds_reference_field": ("local_fields_ref", run_sources),
        "ds_reference_mask": ("masks_ref", run_sources),
        "ds_rigid_xfm": ("transforms", run_sources[1:]),
        "ds_flirt_xfm": ("fsl_matrices", run_sources[1:]),
    }
    for name, (field, sources) in per_orientation.items():
        node = sinks[name]
        assert isinstance(node, pe.MapNode) and node.iterfield == ["in_file", "source_file"]
        assert node.inputs.source_file == sources
        units = {"Units": "ppm"} if name == "ds_reference_field" else {}
        assert node.inputs.meta_dict == {"ReferenceOrientation": "acq-ori1", **units}
        assert ("inputnode", field, name, "in_file") in _edges(wf)
    assert set(sinks) - set(per_orientation) == {"ds_cosmos_chi", "ds_cosmos_mask"} | (
        {"ds_training_patches"} if training else set()
    )
    if training:
        patches = sinks["ds_training_patches"]
        assert isinstance(patches.interface, DerivativesDirSink)
        assert patches.inputs.source_file == every_input
        assert (patches.inputs.suffix, patches.inputs.desc) == ("patches", "training")
        assert ("inputnode", "patch_dir", "ds_training_patches", "in_dir") in _edges(wf)


def test_sink_names_follow_the_naming_table():
    """Every sink's suffix/desc is an entry of io.naming.DERIVATIVES."""
    subject = _subject(2)
    wfs = [
        init_derivatives_wf(
            output_dir=OUT,
            bids_root=str(BIDS),
            source_files=subject.reference.source_files,
            qsm_methods=("tkd",),
        ),
        init_cosmos_derivatives_wf(
            output_dir=OUT,
            bids_root=str(BIDS),
            run_sources=[r.source_files for r in subject.runs],
            reference_orientation=subject.reference.label,
            training=True,
        ),
    ]
    table = {(d.suffix, d.desc) for d in DERIVATIVES.values()}
    used = set()
    for wf in wfs:
        for node in _sinks(wf).values():
            key = (node.inputs.suffix, node.inputs.desc)
            used.add(key if key in table else (key[0], None))  # the method's desc varies
    assert used == table


# ------------------------------------------------------------------------- subject


def _config(pipeline: str) -> PipelineConfig:
    cfg = PipelineConfig(pipeline=pipeline)
    if pipeline == "qsm":
        cfg.inversion.methods = ["tkd", "star"]
    return cfg


@pytest.mark.parametrize(
    "pipeline, n_orientations",
    [("qsm", 1), ("qsm", 3), ("cosmos", 2), ("cosmos", 3), ("training-data", 3)],
)
def test_init_subject_wf(pipeline, n_orientations):
    subject = _subject(n_orientations)
    cfg = _config(pipeline)
    wf = init_subject_wf(subject=subject, config=cfg, bids_dir=BIDS, output_dir=OUT)
    top = set(wf.list_node_names())
    labels = [f"acq_ori{i + 1}" for i in range(n_orientations)]
    for label, run in zip(labels, subject.runs, strict=True):
        fmap = wf.get_node(f"fieldmap_{label}_wf")
        assert fmap.get_node("inputnode").inputs.phase_files == [str(f) for f in run.phase_files]
        assert fmap.get_node("inputnode").inputs.magnitude_files == [
            str(f) for f in run.magnitude_files
        ]
        ds = wf.get_node(f"derivatives_{label}_wf")
        assert ds.get_node("ds_local_field").inputs.source_file == run.source_files
        assert any(n.startswith(f"fieldmap_{label}_wf.") for n in top)
    edges = _edges(wf)
    for label in labels:
        for field in ("brain_mask", "field_hz", "local_field", "local_mask"):
            edge = (f"fieldmap_{label}_wf", f"outputnode.{field}")
            assert (*edge, f"derivatives_{label}_wf", f"inputnode.{field}") in edges
    multi = MIN_ORIENTATIONS[pipeline] > 1
    qsm_wfs = {n.split(".")[0] for n in top if n.startswith("qsm_")}
    assert qsm_wfs == (set() if multi else {f"qsm_{label}_wf" for label in labels})
    for label in [] if multi else labels:
        for m in cfg.inversion.methods:
            edge = (f"qsm_{label}_wf", f"outputnode.chi_{m}")
            assert (*edge, f"derivatives_{label}_wf", f"inputnode.chi_{m}") in edges
    assert any(n.startswith("cosmos_wf.") for n in top) == multi
    assert any(n.startswith("cosmos_derivatives_wf.") for n in top) == multi
    assert any(n.startswith("training_data_wf.") for n in top) == (pipeline == "training-data")
    if not multi:
        return
    for key, output in (("magnitudes", "magnitude_echo1"), ("local_fields", "local_field")):
        for i, label in enumerate(labels):
            assert (
                f"fieldmap_{label}_wf",
                f"outputnode.{output}",
                f"merge_{key}",
                f"in{i + 1}",
            ) in edges
        assert ("merge_" + key, "out", "cosmos_wf", f"inputnode.{key}") in edges
    ds = wf.get_node("cosmos_derivatives_wf")
    assert ds.get_node("ds_cosmos_chi").inputs.source_file == [
        f for r in subject.runs for f in r.source_files
    ]
    assert ("cosmos_wf", "outputnode.chi", "cosmos_derivatives_wf", "inputnode.chi") in edges
    if pipeline == "training-data":
        assert ("cosmos_wf", "outputnode.b0_dirs", "training_data_wf", "inputnode.b0_dirs") in edges
        assert (
            "training_data_wf",
            "outputnode.patch_dir",
            "cosmos_derivatives_wf",
            "inputnode.patch_dir",
        ) in edges


def test_init_qsmflow_wf_one_subworkflow_per_subject_session():
    sessions = [_subject(2, session="a"), _subject(2, session="b")]
    wf = init_qsmflow_wf(subjects=sessions, config=_config("cosmos"), bids_dir=BIDS, output_dir=OUT)
    names = {n.split(".")[0] for n in wf.list_node_names()}
    assert names == {"sub_01_ses_a_wf", "sub_01_ses_b_wf"}
    assert [subject_wf_name(s) for s in sessions] == ["sub_01_ses_a_wf", "sub_01_ses_b_wf"]
    a = wf.get_node("sub_01_ses_a_wf").get_node("cosmos_derivatives_wf")
    assert (
        a.get_node("ds_cosmos_chi").inputs.source_file[0].startswith(str(BIDS / "sub-01" / "ses-a"))
    )


# ------------------------------------------------------------------------- the sinks


def test_datasink_names_by_common_entities_and_lists_every_source(tmp_path):
    import json

    import nibabel as nib
    import numpy as np

    from qsmflow.io.nifti import sidecar_path

    raw = tmp_path / "raw"
    sources = [str(raw / f) for f in _run("ori1").relative_source_files[:2]]
    sources += [str(raw / f) for f in _run("ori2").relative_source_files[:2]]
    image = tmp_path / "work" / "chi.nii.gz"
    image.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), image)
    own = {"Units": "ppm", "Sources": [str(image)]}  # a step's sidecar: work-dir paths
    sidecar_path(image).write_text(json.dumps(own))
    sink = DerivativesDataSink(
        base_directory=str(tmp_path / "out"),
        in_file=str(image),
        source_file=sources,
        bids_root=str(raw),
        suffix="Chimap",
        desc="cosmos",
        meta_dict={"Extra": 1},
    )
    result = sink.run().outputs
    assert Path(result.out_file) == tmp_path / "out/sub-01/anat/sub-01_desc-cosmos_Chimap.nii.gz"
    meta = json.loads(Path(result.out_meta).read_text())
    assert meta["Units"] == "ppm" and meta["Extra"] == 1 and meta["SkullStripped"] is True
    assert meta["Sources"] == [f"bids:raw:{Path(s).relative_to(raw)}" for s in sources]
    assert oct(Path(result.out_file).stat().st_mode & 0o777) == "0o644"


def test_dirsink_replaces_an_earlier_folder_in_one_rename(tmp_path):
    run = _run("ori1")
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "new.npy").write_text("new")
    target = tmp_path / "out" / DERIVATIVES["training_patches"].name(run.source_files)
    target.mkdir(parents=True)
    (target / "old.npy").write_text("old")
    sink = DerivativesDirSink(
        base_directory=str(tmp_path / "out"),
        in_dir=str(patches),
        source_file=run.source_files,
        suffix="patches",
        desc="training",
    )
    assert Path(sink.run().outputs.out_dir) == target
    assert sorted(p.name for p in target.iterdir()) == ["new.npy"]
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no leftovers
