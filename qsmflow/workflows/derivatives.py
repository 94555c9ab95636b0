"""BIDS derivatives of the workflows, written by :class:`DerivativesDataSink`.

The file names, their meaning and units are listed once, in
:data:`qsmflow.io.naming.DERIVATIVES` (each sink node is built from one entry by its key); a
derivative is named after the BIDS inputs it came from (the sink's ``source_file``), so per-run
outputs carry the run's ``acq-``/``run-`` entities and multi-orientation outputs only
``sub-``/``ses-``.

The sinks are cached like every node (no ``_always_run``, so a rerun executes nothing): a
derivative deleted from the output folder is written again only once the work dir is removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink, DerivativesDirSink
from ..io.naming import DERIVATIVES

#: Sidecar ``Type`` of every mask (BIDS: Brain, Lesion, Face or ROI).
_BRAIN = {"Type": "Brain"}


def _datasink(
    *,
    derivative: str,
    output_dir: str,
    bids_root: str,
    source_file: Sequence[str] | Sequence[Sequence[str]],
    desc: str | None = None,
    meta: Mapping[str, Any] | None = None,
    per_orientation: bool = False,
    name: str | None = None,
) -> pe.Node:
    """A sink node for ``DERIVATIVES[derivative]``, named ``ds_<derivative>`` by default.

    ``per_orientation``: a MapNode over ``in_file`` and ``source_file`` (one list of BIDS
    inputs per orientation).
    """
    kind = DERIVATIVES[derivative]
    sink = DerivativesDataSink(
        base_directory=output_dir,
        bids_root=bids_root,
        suffix=kind.suffix,
        desc=desc or kind.desc,
        meta_dict=dict(meta or {}),
    )
    name = name or f"ds_{derivative}"
    if per_orientation:
        node = pe.MapNode(
            sink, iterfield=["in_file", "source_file"], name=name, run_without_submitting=True
        )
        node.inputs.source_file = [list(sources) for sources in source_file]
    else:
        node = pe.Node(sink, name=name, run_without_submitting=True)
        node.inputs.source_file = list(source_file)
    return node


def init_derivatives_wf(
    *,
    output_dir: str,
    bids_root: str,
    source_files: Sequence[str],
    qsm_methods: Sequence[str] = (),
    name: str = "derivatives_wf",
) -> pe.Workflow:
    """Store the derivatives of one run (head orientation).

    One sink per output, each named after ``source_files`` and listing them as Sources.

    Parameters
    ----------
    output_dir : str
        Derivatives root (``derivatives/qsmflow``).
    bids_root : str
        Raw BIDS root, for the ``bids:raw:`` URIs in Sources.
    source_files : sequence of str
        The run's BIDS inputs (every echo's magnitude and phase), absolute paths.
    qsm_methods : sequence of str
        Inversion methods whose maps are stored (``desc-<method>_Chimap``).
    name : str
        Workflow name.

    Inputs
    ------
    brain_mask
        Brain mask.
    field_hz
        Total field, Hz.
    local_field
        Local field, ppm.
    local_mask
        Voxels where the local field is valid.
    chi_<method>
        Susceptibility of each of ``qsm_methods``, ppm.
    """
    wf = pe.Workflow(name=name)
    common = {"output_dir": output_dir, "bids_root": bids_root, "source_file": source_files}
    sinks = {
        "brain_mask": _datasink(derivative="brain_mask", meta=_BRAIN, **common),
        "field_hz": _datasink(derivative="field_hz", **common),
        "local_field": _datasink(derivative="local_field", **common),
        "local_mask": _datasink(derivative="local_mask", meta=_BRAIN, **common),
    }
    for method in qsm_methods:
        sinks[f"chi_{method}"] = _datasink(
            derivative="chi", desc=method, name=f"ds_chi_{method}", **common
        )
    inputnode = pe.Node(niu.IdentityInterface(fields=list(sinks)), name="inputnode")
    # fmt: off
    wf.connect([(inputnode, sink, [(field, "in_file")]) for field, sink in sinks.items()])
    # fmt: on
    return wf


def init_cosmos_derivatives_wf(
    *,
    output_dir: str,
    bids_root: str,
    run_sources: Sequence[Sequence[str]],
    reference_orientation: str,
    training: bool = False,
    name: str = "cosmos_derivatives_wf",
) -> pe.Workflow:
    """Store the multi-orientation derivatives of one subject/session.

    COSMOS outputs (and the patch set) are named after every orientation's inputs, so they
    carry ``sub-``/``ses-`` only; each orientation's field and mask on the reference grid and
    its transforms are named after that orientation's inputs (one MapNode sink per kind).

    Parameters
    ----------
    output_dir, bids_root : str
        As for :func:`init_derivatives_wf`.
    run_sources : sequence of sequences of str
        One list of BIDS inputs per orientation, reference first (absolute paths).
    reference_orientation : str
        The reference orientation's label (``acq-ori1``), recorded as ReferenceOrientation.
    training : bool
        Also store the training patch set.
    name : str
        Workflow name.

    Inputs
    ------
    chi
        COSMOS susceptibility, ppm.
    mask
        COSMOS mask.
    local_fields_ref
        One per orientation (reference first), ppm on the reference grid.
    masks_ref
        One per orientation (reference first), on the reference grid.
    transforms
        Rigid transforms (text), one per orientation after the reference.
    fsl_matrices
        The same as FLIRT matrices.
    patch_dir
        With ``training``: the patch-set folder.
    """
    wf = pe.Workflow(name=name)
    every_input = [f for sources in run_sources for f in sources]
    common = {"output_dir": output_dir, "bids_root": bids_root}
    on_reference = {"ReferenceOrientation": reference_orientation}
    each = {"per_orientation": True, "meta": on_reference, **common}
    others = run_sources[1:]
    sinks = {
        "chi": _datasink(derivative="cosmos_chi", source_file=every_input, **common),
        "mask": _datasink(derivative="cosmos_mask", source_file=every_input, meta=_BRAIN, **common),
        "local_fields_ref": _datasink(
            derivative="reference_field",
            source_file=run_sources,
            per_orientation=True,
            meta={**on_reference, "Units": "ppm"},  # resampling keeps the unit, not records it
            **common,
        ),
        "masks_ref": _datasink(derivative="reference_mask", source_file=run_sources, **each),
        "transforms": _datasink(derivative="rigid_xfm", source_file=others, **each),
        "fsl_matrices": _datasink(derivative="flirt_xfm", source_file=others, **each),
    }
    if training:
        patches = DERIVATIVES["training_patches"]
        sinks["patch_dir"] = pe.Node(
            DerivativesDirSink(
                base_directory=output_dir,
                source_file=every_input,
                suffix=patches.suffix,
                desc=patches.desc,
            ),
            name="ds_training_patches",
            run_without_submitting=True,
        )
    inputnode = pe.Node(niu.IdentityInterface(fields=list(sinks)), name="inputnode")
    destination = {key: "in_dir" if key == "patch_dir" else "in_file" for key in sinks}
    # fmt: off
    wf.connect([
        (inputnode, sink, [(key, destination[key])]) for key, sink in sinks.items()
    ])
    # fmt: on
    return wf
