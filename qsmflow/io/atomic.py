"""Atomic writes: a reader never sees a half-written file or folder.

* :func:`atomic_path` - a temporary file beside the target, renamed onto it on success
  (``fsync=True`` flushes it to disk first, for checkpoints and transforms).
* :func:`atomic_dir` - a temporary folder beside the target, swapped in on success (an older
  target is moved aside first and removed after; put back if the swap fails).
* :func:`write_text_atomic` - text through :func:`atomic_path`; :func:`atomic_copy` - a file copy.

An interrupted write leaves at most a hidden ``.tmp-*`` entry that nothing reads. A folder that
is not writable raises :class:`QSMInputError` naming it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import QSMInputError

#: Extensions of NIfTI files, longest first (``nifti_stem`` strips them).
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without its folder and its ``.nii.gz``/``.nii`` (or any other) extension.

    ``nifti_stem("/d/sub-01_T2starw.nii.gz") == "sub-01_T2starw"``; ``"a.json" -> "a"``.
    """
    name = Path(path).name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def nifti_extension(path: str | os.PathLike) -> str:
    """The extension :func:`nifti_stem` strips: ``".nii.gz"``, ``".nii"``, ``".json"``, ``""``."""
    name = Path(path).name
    return name[len(nifti_stem(name)) :]


def writable_parent(path: str | os.PathLike) -> Path:
    """Create ``path``'s folder if needed; raise QSMInputError naming it if it is not writable."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(p.parent, os.W_OK):
        raise QSMInputError("output directory is not writable", str(p.parent))
    return p


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process umask (read from /proc where possible: setting it is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public_mode(path: str | os.PathLike) -> None:
    """Give a temporary file or folder the mode a plain ``open``/``mkdir`` would have.

    ``mkstemp``/``mkdtemp`` make them private (0600/0700); outputs must be readable by the
    group and others as the umask allows (shared lab folders, containers run as another user).
    """
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~_current_umask())


@contextmanager
def atomic_path(
    path: str | os.PathLike, suffix: str | None = None, *, fsync: bool = False
) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``.

    ``suffix`` (default: the target's, e.g. ``.nii.gz``) lets writers that infer the format from
    the name (nibabel) work on the temporary file. ``fsync`` flushes the file (and the rename)
    to disk. The folder is created; a folder that is not writable raises QSMInputError naming it.
    """
    p = writable_parent(path)
    fd, tmp = tempfile.mkstemp(
        prefix=".tmp-", suffix=nifti_extension(p) if suffix is None else suffix, dir=p.parent
    )
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if os.path.exists(tmp):
            _public_mode(tmp)
        os.replace(tmp, p)
        if fsync:
            fsync_dir(p.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced: it is renamed aside, the new folder renamed in, and the
    old one removed (or renamed back when the swap fails). On an exception inside the block the
    temporary folder is removed and ``path`` is untouched. ``fsync`` flushes the parent folder
    after the swap (the caller flushes the files it wrote).
    """
    target = writable_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        yield tmp
        if fsync:
            fsync_dir(tmp)
        _public_mode(tmp)
        _swap_in(tmp, target)
        if fsync:
            fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, moving an older ``target`` aside first."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)  # only reserve a unique name
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)  # put the previous version back
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (mode as a new file under the umask)."""
    with atomic_path(dst, "") as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
