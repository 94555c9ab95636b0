"""The whole pipeline for a set of subjects/sessions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..io.bids import MIN_ORIENTATIONS, GRERun, SubjectSession
from .cosmos import init_cosmos_wf
from .derivatives import init_cosmos_derivatives_wf, init_derivatives_wf
from .fieldmap import init_fieldmap_wf
from .qsm import init_qsm_wf
from .training import init_training_data_wf

#: Field-map outputs stored per run, under the same names in the derivatives workflow.
_RUN_DERIVATIVES = ("brain_mask", "field_hz", "local_field", "local_mask")
#: COSMOS outputs stored per subject/session, under the same names.
_COSMOS_DERIVATIVES = (
    "chi",
    "mask",
    "local_fields_ref",
    "masks_ref",
    "transforms",
    "fsl_matrices",
)
#: Field-map output merged (one per orientation) into each COSMOS input list.
_COSMOS_INPUTS = {
    "magnitudes": "magnitude_echo1",
    "local_fields": "local_field",
    "local_masks": "local_mask",
}


def _node_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", label)


def _same_names(fields: Sequence[str]) -> list[tuple[str, str]]:
    """``outputnode.<f>`` -> ``inputnode.<f>`` connections between two sub-workflows."""
    return [(f"outputnode.{f}", f"inputnode.{f}") for f in fields]


def subject_wf_name(subject: SubjectSession) -> str:
    """Name of a subject/session's workflow: ``sub_01_ses_a_wf``."""
    return f"{_node_name(subject.label)}_wf"


def init_qsmflow_wf(
    *,
    subjects: Sequence[SubjectSession],
    config: PipelineConfig,
    bids_dir: str | Path,
    output_dir: str | Path,
    name: str = "qsmflow_wf",
) -> pe.Workflow:
    """The pipeline for every subject/session.

    One :func:`init_subject_wf` per subject/session, named by :func:`subject_wf_name`;
    the sub-workflows are independent.

    Parameters
    ----------
    subjects : sequence of SubjectSession
        Validated inputs (:func:`qsmflow.io.bids.validate_dataset`).
    config, bids_dir, output_dir
        As for :func:`init_subject_wf`.
    name : str
        Workflow name.
    """
    wf = pe.Workflow(name=name)
    wf.add_nodes(
        [
            init_subject_wf(
                subject=subject,
                config=config,
                bids_dir=bids_dir,
                output_dir=output_dir,
                name=subject_wf_name(subject),
            )
            for subject in subjects
        ]
    )
    return wf


def init_subject_wf(
    *,
    subject: SubjectSession,
    config: PipelineConfig,
    bids_dir: str | Path,
    output_dir: str | Path,
    name: str = "subject_wf",
) -> pe.Workflow:
    """The pipeline for one subject/session.

    Every run (head orientation) gets a field-map workflow and its derivatives; then, by
    ``config.pipeline``:

    * ``qsm``: each run's local field -> the ``config.inversion.methods`` (``qsm_<run>_wf``).
    * ``cosmos``: every run registered to the first (reference) one, then COSMOS
      (``cosmos_wf``) and the multi-orientation derivatives.
    * ``training-data``: ``cosmos`` plus training pairs cut into patches.

    A multi-orientation pipeline needs :data:`qsmflow.io.bids.MIN_ORIENTATIONS` runs, which
    :func:`qsmflow.io.bids.validate_dataset` checks.

    Parameters
    ----------
    subject : SubjectSession
        The subject/session's runs, reference first.
    config : PipelineConfig
        Pipeline and step settings.
    bids_dir : str or Path
        Raw BIDS root.
    output_dir : str or Path
        Derivatives root (``derivatives/qsmflow``).
    name : str
        Workflow name.
    """
    wf = pe.Workflow(name=name)
    pipeline = config.pipeline
    runs = list(subject.runs)
    fieldmaps = [
        _add_run(wf, run=run, index=i, config=config, bids_dir=bids_dir, output_dir=output_dir)
        for i, run in enumerate(runs)
    ]
    if MIN_ORIENTATIONS[pipeline] < 2:
        return wf

    cosmos = init_cosmos_wf(
        n_orientations=len(runs),
        registration_backend=config.registration.backend,
        method=config.cosmos.method,
        lam=config.cosmos.lam,
        iterations=config.cosmos.iterations,
    )
    for key, output in _COSMOS_INPUTS.items():
        merge = pe.Node(niu.Merge(len(runs)), name=f"merge_{key}")
        for i, fmap in enumerate(fieldmaps):
            wf.connect(fmap, f"outputnode.{output}", merge, f"in{i + 1}")
        wf.connect(merge, "out", cosmos, f"inputnode.{key}")

    training = pipeline == "training-data"
    ds = init_cosmos_derivatives_wf(
        output_dir=str(output_dir),
        bids_root=str(bids_dir),
        run_sources=[r.source_files for r in runs],
        reference_orientation=subject.reference.label,
        training=training,
    )
    wf.connect([(cosmos, ds, _same_names(_COSMOS_DERIVATIVES))])
    if training:
        tr = init_training_data_wf(
            patch_size=config.training.patch_size,
            stride=config.training.stride,
            min_mask_fraction=config.training.min_mask_fraction,
        )
        tr.inputs.inputnode.source_files = [f for r in runs for f in r.source_files]
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


def _add_run(
    wf: pe.Workflow,
    *,
    run: GRERun,
    index: int,
    config: PipelineConfig,
    bids_dir: str | Path,
    output_dir: str | Path,
) -> pe.Workflow:
    """Add one run's field-map, (qsm pipeline) inversion and derivatives workflows to ``wf``;
    return the field-map workflow."""
    label = _node_name(run.label) or f"run{index + 1}"
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
    methods = list(config.inversion.methods) if config.pipeline == "qsm" else []
    ds = init_derivatives_wf(
        output_dir=str(output_dir),
        bids_root=str(bids_dir),
        source_files=run.source_files,
        qsm_methods=methods,
        name=f"derivatives_{label}_wf",
    )
    wf.connect([(fmap, ds, _same_names(_RUN_DERIVATIVES))])
    if methods:
        qsm = init_qsm_wf(
            methods=methods,
            options=config.inversion.options,
            magnitude_weights=[m for m in config.inversion.magnitude_weights if m in methods],
            name=f"qsm_{label}_wf",
        )
        chis = [f"chi_{m}" for m in methods]
        # fmt: off
        wf.connect([
            (fmap, qsm, [("outputnode.local_field", "inputnode.local_field"),
                         ("outputnode.local_mask", "inputnode.mask"),
                         ("outputnode.magnitude", "inputnode.magnitude")]),
            (qsm, ds, _same_names(chis)),
        ])
        # fmt: on
    return fmap
