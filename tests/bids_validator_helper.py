"""Run the official BIDS validator (PyPI ``bids-validator-deno``) offline from the tests.

Install: ``.venv/bin/pip install bids-validator-deno`` (pulls the ``deno`` wheel; tested with
bids-validator-deno 3.0.2 / deno 2.9). Its console script is ``bids-validator-deno``; it runs
``deno --allow-read --allow-env --allow-net --allow-write --allow-run=git bids-validator.js``.
The validator bundles its schema, so no network is needed; to be sure nothing is fetched this
helper starts deno itself with read and environment access only::

    deno run --allow-read --allow-env --deny-net --no-prompt \\
        <site-packages>/bids_validator_deno/bids-validator.js DATASET --format json

(the same as ``bids-validator-deno DATASET --format json``; ``--format json`` replaces the
deprecated ``--json``). Exit status 0 means no errors, 16 errors found. The JSON has
``issues.issues`` (each with ``code``, ``severity`` "error"/"warning", ``location`` relative to
the dataset root, optional ``subCode``/``issueMessage``), ``issues.codeMessages`` and
``summary``; with ``-r`` also ``derivativesSummary`` ({"/derivatives/<name>/": {issues,
summary}}). Caveat: HED validation, when a dataset uses HED tags, may want to download HED
schemas, which fails offline.

Derivatives: by default only the raw dataset is validated (``derivatives/`` is skipped).

* Validating a derivative folder directly, ``run_bids_validator(root /
  "derivatives/<pipeline>")``, works: with ``"DatasetType": "derivative"`` in its
  dataset_description.json the derivative rules apply (e.g. ``SkullStripped`` is required in
  image derivative sidecars, mask ``Type`` must be Brain/Lesion/Face/ROI) and the folder's own
  ``.bidsignore`` is honoured. This is the recommended way.
* ``recursive=True`` (``-r``) validates the raw dataset and every ``derivatives/*`` in one run,
  but in 3.0.2 it does *not* apply a derivative's own ``.bidsignore`` (fixed upstream in
  bids-validator PR #331), so ignored files are reported as errors there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def _command() -> list[str] | None:
    """The offline validator command (without the dataset), or None when not installed."""
    try:
        import bids_validator_deno
        from deno import find_deno_bin
    except ImportError:
        bundle = None
    else:
        bundle = Path(bids_validator_deno.__file__).with_name("bids-validator.js")
        deno = os.fsdecode(find_deno_bin())
        if bundle.is_file() and Path(deno).is_file():
            return [deno, "run", "--allow-read", "--allow-env", "--deny-net", "--no-prompt"] + [
                str(bundle)
            ]
    script = Path(sys.executable).with_name("bids-validator-deno")
    exe = str(script) if script.is_file() else shutil.which("bids-validator-deno")
    return [exe] if exe else None


def validator_available() -> bool:
    """Whether ``bids-validator-deno`` is installed for this Python."""
    return _command() is not None


def _summarise(report: dict, where: str, lines: list[str]) -> int:
    issues = report.get("issues", {}).get("issues", [])
    errors = [i for i in issues if i.get("severity") == "error"]
    warnings = Counter(i.get("code") for i in issues if i.get("severity") == "warning")
    summary = report.get("summary", {})
    lines.append(
        f"{where}: {len(errors)} error(s), {sum(warnings.values())} warning(s); "
        f"{summary.get('totalFiles', '?')} files, subjects {sorted(summary.get('subjects', []))}"
    )
    for i in errors:
        sub = f" [{i['subCode']}]" if i.get("subCode") else ""
        msg = (i.get("issueMessage") or "").strip().splitlines()
        lines.append(f"  ERROR {i.get('code')}{sub} {i.get('location')}: {msg[0] if msg else ''}")
    for code, n in sorted(warnings.items()):
        lines.append(f"  warning {code} x{n}")
    return len(errors)


def run_bids_validator(
    path: str | os.PathLike, *, recursive: bool = False, timeout: float = 300
) -> tuple[bool, str]:
    """Validate the BIDS dataset at ``path``; return ``(ok, report)``.

    ``ok`` is True when the validator reports no error (warnings are allowed); ``report`` is a
    readable summary: one line per error (code, file, message) and warning counts per code.
    ``recursive`` adds ``-r`` (also validate ``derivatives/*``; see the module caveat).
    Raises RuntimeError when the validator is not installed.
    """
    cmd = _command()
    if cmd is None:
        raise RuntimeError("bids-validator-deno is not installed (pip install bids-validator-deno)")
    cmd = [*cmd, str(path), "--format", "json"] + (["-r"] if recursive else [])
    env = {**os.environ, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        text = f"validator failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return False, text.strip()
    lines: list[str] = []
    n_err = _summarise(report, str(path), lines)
    for name, sub in (report.get("derivativesSummary") or {}).items():
        n_err += _summarise(sub, f"{path} {name}", lines)
    return n_err == 0, "\n".join(lines)
