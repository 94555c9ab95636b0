"""BIDS derivatives of the workflows (written by :class:`DerivativesDataSink`).

Per run (entities of the run's first-echo phase file)::

    sub-<s>[_ses-<x>]_acq-<a>[_run-<r>]_desc-brain_mask.nii.gz      brain mask (+ backend)
    sub-..._acq-<a>_desc-total_fieldmap.nii.gz                     total field, Hz
    sub-..._acq-<a>_desc-local_fieldmap.nii.gz                     local field, ppm of B0
    sub-..._acq-<a>_desc-vsharp_mask.nii.gz                         valid local-field voxels
    sub-..._acq-<a>_desc-<method>_Chimap.nii.gz                     qsm pipeline, ppm

Per subject/session (multi-orientation, reference orientation's grid)::

    sub-<s>[_ses-<x>]_desc-cosmos_Chimap.nii.gz / _desc-cosmos_mask.nii.gz
    sub-..._acq-<a>_desc-reference_fieldmap.nii.gz  local field of orientation a on the
                                                    reference grid (ppm; training input)
    sub-..._acq-<a>_desc-reference_mask.nii.gz      its mask on the reference grid
    sub-..._acq-<a>_desc-rigid_xfm.txt              4x4 RAS world transform reference -> a
    sub-..._acq-<a>_desc-flirt_xfm.mat              the same as an FSL FLIRT matrix (a -> ref)
    sub-<s>[_ses-<x>]_desc-training_patches/        patch set (qsmflow.training.patches)
"""

from __future__ import annotations

from collections.abc import Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink, DerivativesDirSink, parse_entities


def _sink(name, output_dir, bids_root, source_file, sources, suffix, desc, drop=(), meta=None):
    return pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir),
            bids_root=str(bids_root),
            source_file=str(source_file),
            source_files=[str(s) for s in sources],
            suffix=suffix,
            desc=desc,
            drop_entities=list(drop),
            meta_dict=dict(meta or {}),
        ),
        name=name,
        run_without_submitting=True,
    )


def init_derivatives_wf(
    *,
    output_dir: str,
    bids_root: str,
    source_file: str,
    source_files: Sequence[str],
    qsm_methods: Sequence[str] = (),
    name: str = "derivatives_wf",
) -> pe.Workflow:
    """Per-run derivatives (see the module docstring).

    ``source_file`` gives the entities (sub, ses, acq, run), ``source_files`` the inputs listed
    in every sidecar's Sources. Inputs: brain_mask, field_hz, local_field, local_mask and
    ``chi_<method>`` for each of ``qsm_methods``.
    """
    wf = pe.Workflow(name=name)
    fields = ["brain_mask", "field_hz", "local_field", "local_mask"]
    fields += [f"chi_{m}" for m in qsm_methods]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    args = (output_dir, bids_root, source_file, source_files)
    sinks = {
        "brain_mask": _sink("ds_brain_mask", *args, "mask", "brain", meta={"Type": "Brain"}),
        "field_hz": _sink("ds_field", *args, "fieldmap", "total"),
        "local_field": _sink("ds_local_field", *args, "fieldmap", "local"),
        "local_mask": _sink("ds_local_mask", *args, "mask", "vsharp", meta={"Type": "Brain"}),
    }
    for m in qsm_methods:
        sinks[f"chi_{m}"] = _sink(f"ds_chi_{m}", *args, "Chimap", m)
    for key, node in sinks.items():
        wf.connect(inputnode, key, node, "in_file")
    return wf


def init_cosmos_derivatives_wf(
    *,
    output_dir: str,
    bids_root: str,
    run_source_files: Sequence[str],
    source_files: Sequence[str],
    training: bool = False,
    name: str = "cosmos_derivatives_wf",
) -> pe.Workflow:
    """Subject-level multi-orientation derivatives (see the module docstring).

    ``run_source_files``: one BIDS file per orientation (reference first) giving the entities.
    Inputs: chi, mask, local_fields_ref, masks_ref (lists, reference first), transforms,
    fsl_matrices (lists for orientations 1..N-1) and, with ``training``, patch_dir.
    """
    if len(run_source_files) < 2:
        raise ValueError("multi-orientation derivatives need at least 2 orientations")
    wf = pe.Workflow(name=name)
    fields = ["chi", "mask", "local_fields_ref", "masks_ref", "transforms", "fsl_matrices"]
    fields += ["patch_dir"] if training else []
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    ref = run_source_files[0]
    ref_label = "_".join(f"{k}-{v}" for k, v in parse_entities(ref).items() if k in ("acq", "run"))
    drop = ("acq", "run")
    ds_chi = _sink(
        "ds_cosmos_chi", output_dir, bids_root, ref, source_files, "Chimap", "cosmos", drop
    )
    ds_mask = _sink(
        "ds_cosmos_mask",
        output_dir,
        bids_root,
        ref,
        source_files,
        "mask",
        "cosmos",
        drop,
        meta={"Type": "Brain"},
    )
    wf.connect([(inputnode, ds_chi, [("chi", "in_file")]),
                (inputnode, ds_mask, [("mask", "in_file")])])  # fmt: skip
    for i, src in enumerate(run_source_files):
        args = (output_dir, bids_root, src, source_files)
        for key, suffix in (("local_fields_ref", "fieldmap"), ("masks_ref", "mask")):
            pick = pe.Node(niu.Select(index=[i]), name=f"select_{key}_{i}")
            ds = _sink(
                f"ds_{key}_{i}",
                *args,
                suffix,
                "reference",
                meta={"ReferenceOrientation": ref_label},
            )
            wf.connect([(inputnode, pick, [(key, "inlist")]),
                        (pick, ds, [("out", "in_file")])])  # fmt: skip
        if i == 0:
            continue
        for key, desc in (("transforms", "rigid"), ("fsl_matrices", "flirt")):
            pick = pe.Node(niu.Select(index=[i - 1]), name=f"select_{key}_{i}")
            ds = _sink(
                f"ds_{key}_{i}", *args, "xfm", desc, meta={"ReferenceOrientation": ref_label}
            )
            wf.connect([(inputnode, pick, [(key, "inlist")]),
                        (pick, ds, [("out", "in_file")])])  # fmt: skip
    if training:
        ds_patches = pe.Node(
            DerivativesDirSink(
                base_directory=str(output_dir),
                source_file=str(ref),
                suffix="patches",
                desc="training",
                drop_entities=list(drop),
            ),
            name="ds_patches",
            run_without_submitting=True,
        )
        wf.connect(inputnode, "patch_dir", ds_patches, "in_dir")
    return wf
