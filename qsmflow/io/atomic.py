"""Atomic file creation: write to a temporary file beside the target, then rename.

A reader never sees a half-written file, and an interrupted write leaves at most a hidden
``.tmp-*`` file that nothing reads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import QSMInputError


def _suffix(p: Path) -> str:
    return ".nii.gz" if p.name.endswith(".nii.gz") else p.suffix


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``.

    ``suffix`` (default: the target's, e.g. ``.nii.gz``) lets writers that infer the format from
    the name (nibabel) work on the temporary file. The folder is created; a folder that is not
    writable raises QSMInputError naming it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(p.parent, os.W_OK):
        raise QSMInputError("output directory is not writable", str(p.parent))
    fd, tmp = tempfile.mkstemp(
        prefix=".tmp-", suffix=_suffix(p) if suffix is None else suffix, dir=p.parent
    )
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
