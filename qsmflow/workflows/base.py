"""The whole pipeline for a set of subjects/sessions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..io.bids import SubjectSession
from .cosmos import init_cosmos_wf
from .derivatives import init_cosmos_derivatives_wf, init_derivatives_wf
from .fieldmap import init_fieldmap_wf
from .qsm import init_qsm_wf
from .training import init_training_data_wf


def _node_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", label)


def init_qsmflow_wf(
    *,
    subjects: Sequence[SubjectSession],
    config: PipelineConfig,
    bids_dir: str | Path,
    output_dir: str | Path,
    name: str = "qsmflow_wf",
) -> pe.Workflow:
    """One sub-workflow per subject/session (``<sub>_<ses>_wf``), see :func:`init_subject_wf`."""
    wf = pe.Workflow(name=name)
    for subject in subjects:
        wf.add_nodes(
            [
                init_subject_wf(
                    subject=subject,
                    config=config,
                    bids_dir=bids_dir,
                    output_dir=output_dir,
                    name=subject_wf_name(subject),
                )
            ]
        )
    return wf


def subject_wf_name(subject: SubjectSession) -> str:
    return f"{_node_name(subject.label)}_wf"


def init_subject_wf(
    *,
    subject: SubjectSession,
    config: PipelineConfig,
    bids_dir: str | Path,
    output_dir: str | Path,
    name: str = "subject_wf",
) -> pe.Workflow:
    """Field maps of every run, then the pipeline's inversion, then the derivatives.

    ``config.pipeline``:
      * ``qsm``: every run -> local field -> the ``config.inversion.methods``.
      * ``cosmos``: every run -> local field; registration to the first run (reference);
        COSMOS. Needs >= 2 runs (orientations).
      * ``training-data``: ``cosmos`` plus training pairs cut into patches.
    """
    wf = pe.Workflow(name=name)
    pipeline = config.pipeline
    multi = pipeline in ("cosmos", "training-data")
    runs = list(subject.runs)
    if multi and len(runs) < 2:
        raise ValueError(f"{subject.label}: pipeline {pipeline!r} needs >= 2 orientations")
    all_sources = [str(f) for r in runs for f in r.source_files]
    fieldmaps = []
    for i, run in enumerate(runs):
        label = _node_name(run.label) or f"run{i + 1}"
        fmap = init_fieldmap_wf(
            echo_times=list(run.echo_times_s),
            field_strength=run.field_strength_t,
            mask_backend=config.masking.backend,
            mask_frac=config.masking.frac,
            phase_units=config.field.phase_units,
            unwrapping=config.field.unwrapping,
            radii_mm=config.background.radii_mm,
            threshold=config.background.threshold,
            deconvolution=config.background.deconvolution,
            name=f"fieldmap_{label}_wf",
        )
        fmap.inputs.inputnode.phase_files = [str(f) for f in run.phase_files]
        fmap.inputs.inputnode.magnitude_files = [str(f) for f in run.magnitude_files]
        methods = list(config.inversion.methods) if pipeline == "qsm" else []
        ds = init_derivatives_wf(
            output_dir=str(output_dir),
            bids_root=str(bids_dir),
            source_file=str(run.phase_files[0]),
            source_files=[str(f) for f in run.source_files],
            qsm_methods=methods,
            name=f"derivatives_{label}_wf",
        )
        # fmt: off
        wf.connect([
            (fmap, ds, [
                ("outputnode.brain_mask", "inputnode.brain_mask"),
                ("outputnode.field_hz", "inputnode.field_hz"),
                ("outputnode.local_field", "inputnode.local_field"),
                ("outputnode.local_mask", "inputnode.local_mask"),
            ]),
        ])
        # fmt: on
        if methods:
            qsm = init_qsm_wf(
                methods=methods, options=config.inversion.options, name=f"qsm_{label}_wf"
            )
            # fmt: off
            wf.connect([
                (fmap, qsm, [("outputnode.local_field", "inputnode.local_field"),
                             ("outputnode.local_mask", "inputnode.mask")]),
            ])
            # fmt: on
            for m in methods:
                wf.connect(qsm, f"outputnode.chi_{m}", ds, f"inputnode.chi_{m}")
        fieldmaps.append(fmap)

    if not multi:
        return wf

    n = len(runs)
    cosmos = init_cosmos_wf(
        n_orientations=n,
        registration_backend=config.registration.backend,
        method=config.cosmos.method,
        lam=config.cosmos.lam,
        iterations=config.cosmos.iterations,
    )
    merges = {
        key: pe.Node(niu.Merge(n), name=f"merge_{key}")
        for key in ("magnitudes", "local_fields", "local_masks")
    }
    outputs = {
        "magnitudes": "magnitude_echo1",
        "local_fields": "local_field",
        "local_masks": "local_mask",
    }
    for key, merge in merges.items():
        for i, fmap in enumerate(fieldmaps):
            wf.connect(fmap, f"outputnode.{outputs[key]}", merge, f"in{i + 1}")
        wf.connect(merge, "out", cosmos, f"inputnode.{key}")

    training = pipeline == "training-data"
    ds = init_cosmos_derivatives_wf(
        output_dir=str(output_dir),
        bids_root=str(bids_dir),
        run_source_files=[str(r.phase_files[0]) for r in runs],
        source_files=all_sources,
        training=training,
    )
    # fmt: off
    wf.connect([
        (cosmos, ds, [
            ("outputnode.chi", "inputnode.chi"),
            ("outputnode.mask", "inputnode.mask"),
            ("outputnode.local_fields_ref", "inputnode.local_fields_ref"),
            ("outputnode.masks_ref", "inputnode.masks_ref"),
            ("outputnode.transforms", "inputnode.transforms"),
            ("outputnode.fsl_matrices", "inputnode.fsl_matrices"),
        ]),
    ])
    # fmt: on
    if training:
        tr = init_training_data_wf(
            patch_size=config.training.patch_size,
            stride=config.training.stride,
            min_mask_fraction=config.training.min_mask_fraction,
        )
        tr.inputs.inputnode.source_files = all_sources
        # fmt: off
        wf.connect([
            (cosmos, tr, [
                ("outputnode.local_fields_ref", "inputnode.local_fields_ref"),
                ("outputnode.chi", "inputnode.chi"),
                ("outputnode.mask", "inputnode.mask"),
                ("outputnode.b0_dirs", "inputnode.b0_dirs"),
            ]),
            (tr, ds, [("outputnode.patch_dir", "inputnode.patch_dir")]),
        ])
        # fmt: on
    return wf
