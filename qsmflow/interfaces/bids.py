"""Writing BIDS derivatives, as niworkflows' DerivativesDataSink.

:class:`DerivativesDataSink` copies one result into the derivatives tree with a JSON sidecar;
:class:`DerivativesDirSink` stores a folder (a patch set). Both name the output from a
(multi-valued) ``source_file``: the entities all source files share, then ``desc`` and
``suffix`` (:func:`qsmflow.io.naming.derivative_name`). Writes are atomic
(:mod:`qsmflow.io.atomic`): an interrupted run never leaves a half-written derivative.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nipype.interfaces import base

from ..io.atomic import atomic_copy, atomic_dir, nifti_extension
from ..io.naming import bids_uri, derivative_name
from ..io.nifti import sidecar_path, write_json


class _SinkInputSpec(base.BaseInterfaceInputSpec):
    base_directory = base.Directory(
        mandatory=True, desc="derivatives root (e.g. derivatives/qsmflow)"
    )
    source_file = base.InputMultiObject(
        base.traits.Str,
        mandatory=True,
        desc="BIDS inputs the output came from: their common entities name it",
    )
    suffix = base.traits.Str(mandatory=True, desc="BIDS suffix, e.g. Chimap, mask")
    desc = base.traits.Str(desc="desc- label")


def _destination(inputs: _SinkInputSpec, extension: str) -> Path:
    desc = inputs.desc if base.isdefined(inputs.desc) else None
    rel = derivative_name(inputs.source_file, inputs.suffix, extension, desc=desc)
    return Path(inputs.base_directory) / rel


class _DerivativesDataSinkInputSpec(_SinkInputSpec):
    in_file = base.File(exists=True, mandatory=True, desc="file to store")
    bids_root = base.traits.Str(desc="raw BIDS root, for bids:raw: URIs in Sources")
    meta_dict = base.traits.Dict(base.traits.Str, base.traits.Any, desc="extra sidecar fields")
    skull_stripped = base.traits.Bool(
        True, usedefault=True, desc="SkullStripped of image sidecars (our maps are 0 outside)"
    )


class _DerivativesDataSinkOutputSpec(base.TraitedSpec):
    out_file = base.File(exists=True, desc="the stored derivative")
    out_meta = base.File(desc="its JSON sidecar")


class DerivativesDataSink(base.SimpleInterface):
    """Store ``in_file`` in the derivatives tree with a sidecar.

    The sidecar merges the producing step's own sidecar (units, method, parameters),
    ``meta_dict`` (e.g. the reference orientation) and ``Sources``: the BIDS URIs of every
    ``source_file`` (replacing the step's work-dir paths).
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run_interface(self, runtime):
        src = self.inputs.in_file
        ext = nifti_extension(src)
        out = _destination(self.inputs, ext)
        meta: dict = {}
        own = sidecar_path(src)
        if own.exists() and own != Path(src):
            meta.update(json.loads(own.read_text()))
        if base.isdefined(self.inputs.meta_dict):
            meta.update(self.inputs.meta_dict)
        if ext in (".nii", ".nii.gz"):
            meta.setdefault("SkullStripped", bool(self.inputs.skull_stripped))
        root = self.inputs.bids_root if base.isdefined(self.inputs.bids_root) else None
        meta["Sources"] = [bids_uri(s, root) for s in self.inputs.source_file]
        atomic_copy(src, out)
        self._results["out_file"] = str(out)
        if ext != ".json":
            self._results["out_meta"] = str(write_json(sidecar_path(out), meta))
        return runtime


class _DerivativesDirSinkInputSpec(_SinkInputSpec):
    in_dir = base.Directory(exists=True, mandatory=True, desc="folder to store")


class _DerivativesDirSinkOutputSpec(base.TraitedSpec):
    out_dir = base.Directory(exists=True, desc="the stored folder")


class DerivativesDirSink(base.SimpleInterface):
    """Store a folder (e.g. a patch set); it replaces any earlier version in one rename."""

    input_spec = _DerivativesDirSinkInputSpec
    output_spec = _DerivativesDirSinkOutputSpec

    def _run_interface(self, runtime):
        out = _destination(self.inputs, "")
        with atomic_dir(out) as tmp:
            shutil.copytree(self.inputs.in_dir, tmp, dirs_exist_ok=True)
        self._results["out_dir"] = str(out)
        return runtime
