"""Writing BIDS derivatives: :class:`DerivativesDataSink` copies one result into the
derivatives tree under a BIDS name with a JSON sidecar (units, method, parameters, backend,
sources).

Names follow ``sub-<label>[_ses-<label>][_acq-<label>][_run-<label>][_desc-<label>]_<suffix>``
(entities taken from the BIDS source file, with the ones in ``drop_entities`` left out). Files
are copied atomically (temporary file in the target folder, then rename), so an interrupted run
never leaves a half-written derivative.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

#: Entities copied from the source file's name, in BIDS order.
SOURCE_ENTITIES = ("sub", "ses", "acq", "run")


def parse_entities(path: str | os.PathLike) -> dict[str, str]:
    """``{"sub": "01", "acq": "ori1", ...}`` from a BIDS file name."""
    name = Path(path).name.split(".")[0]
    out = {}
    for part in name.split("_"):
        if "-" in part:
            key, value = part.split("-", 1)
            out[key] = value
    return out


def derivative_name(
    source_file: str | os.PathLike,
    suffix: str,
    extension: str,
    *,
    desc: str | None = None,
    drop_entities: tuple[str, ...] | list[str] = (),
) -> Path:
    """Relative path ``sub-X[/ses-Y]/anat/<name>`` of a derivative of ``source_file``."""
    ents = parse_entities(source_file)
    if "sub" not in ents:
        raise ValueError(f"not a BIDS file name (no sub- entity): {source_file}")
    parts = [f"{k}-{ents[k]}" for k in SOURCE_ENTITIES if k in ents and k not in drop_entities]
    if desc:
        if not re.fullmatch(r"[A-Za-z0-9]+", desc):
            raise ValueError(f"desc label must be alphanumeric: {desc!r}")
        parts.append(f"desc-{desc}")
    folder = Path(f"sub-{ents['sub']}")
    if "ses" in ents:
        folder /= f"ses-{ents['ses']}"
    return folder / "anat" / ("_".join(parts) + f"_{suffix}{extension}")


def bids_uri(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """``bids:raw:sub-01/anat/...`` for inputs below ``root``, else the absolute path."""
    p = Path(path).resolve()
    if root is not None:
        try:
            return "bids:raw:" + str(p.relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(p)


def _sidecar_of(path: str) -> Path:
    p = Path(path)
    stem = p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(stem + ".json")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` through a temporary file in ``dst``'s folder and a rename."""
    from ..io.atomic import atomic_path

    dst = Path(dst)
    with atomic_path(dst, "") as tmp:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
    return dst


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="derivatives root (e.g. derivatives/qsmflow)")
    in_file = File(exists=True, mandatory=True, desc="file to store")
    source_file = traits.Str(mandatory=True, desc="BIDS input the entities are taken from")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix, e.g. Chimap, mask")
    desc = traits.Str(desc="desc- label")
    drop_entities = traits.List(traits.Str, desc="source entities to leave out (e.g. acq, run)")
    source_files = InputMultiObject(traits.Str, desc="inputs this derivative came from")
    bids_root = traits.Str(desc="raw BIDS root, for bids:raw: URIs in Sources")
    meta_dict = traits.Dict(traits.Str, traits.Any, desc="extra sidecar fields")
    skull_stripped = traits.Bool(
        True, usedefault=True, desc="SkullStripped of image sidecars (our maps are 0 outside)"
    )


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the stored derivative")
    out_meta = File(desc="its JSON sidecar")


class DerivativesDataSink(SimpleInterface):
    """Store ``in_file`` in the derivatives tree; the sidecar merges the producing step's own
    sidecar (units, method, parameters), ``meta_dict`` (backend, orientation...) and Sources."""

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run_interface(self, runtime):
        from ..io.nifti import write_json

        src = self.inputs.in_file
        ext = ".nii.gz" if src.endswith(".nii.gz") else Path(src).suffix
        rel = derivative_name(
            self.inputs.source_file,
            self.inputs.suffix,
            ext,
            desc=self.inputs.desc if isdefined(self.inputs.desc) else None,
            drop_entities=self.inputs.drop_entities if isdefined(self.inputs.drop_entities) else (),
        )
        out = Path(self.inputs.base_directory) / rel
        meta: dict = {}
        own = _sidecar_of(src)
        if own.exists() and own != Path(src):
            meta.update(json.loads(own.read_text()))
        if isdefined(self.inputs.meta_dict):
            meta.update(self.inputs.meta_dict)
        if ext in (".nii", ".nii.gz"):
            meta.setdefault("SkullStripped", bool(self.inputs.skull_stripped))
        if isdefined(self.inputs.source_files):
            root = self.inputs.bids_root if isdefined(self.inputs.bids_root) else None
            meta["Sources"] = [bids_uri(s, root) for s in self.inputs.source_files]
        atomic_copy(src, out)
        self._results["out_file"] = str(out)
        if ext != ".json":
            sidecar = _sidecar_of(str(out))
            write_json(sidecar, meta)
            self._results["out_meta"] = str(sidecar)
        return runtime


class _DerivativesDirSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="derivatives root")
    in_dir = Directory(exists=True, mandatory=True, desc="folder to store")
    source_file = traits.Str(mandatory=True, desc="BIDS input the entities are taken from")
    suffix = traits.Str(mandatory=True)
    desc = traits.Str()
    drop_entities = traits.List(traits.Str)


class _DerivativesDirSinkOutputSpec(TraitedSpec):
    out_dir = Directory(exists=True)


class DerivativesDirSink(SimpleInterface):
    """Store a folder (e.g. a patch set) under a BIDS-like name; the copy goes to a temporary
    sibling first and replaces any earlier version by rename."""

    input_spec = _DerivativesDirSinkInputSpec
    output_spec = _DerivativesDirSinkOutputSpec

    def _run_interface(self, runtime):
        rel = derivative_name(
            self.inputs.source_file,
            self.inputs.suffix,
            "",
            desc=self.inputs.desc if isdefined(self.inputs.desc) else None,
            drop_entities=self.inputs.drop_entities if isdefined(self.inputs.drop_entities) else (),
        )
        out = Path(self.inputs.base_directory) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
        old = None
        try:
            shutil.copytree(self.inputs.in_dir, tmp / "copy")
            if out.exists():
                old = out.with_name(f".old-{out.name}-{os.getpid()}")
                os.replace(out, old)
            os.replace(tmp / "copy", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self._results["out_dir"] = str(out)
        return runtime
