"""``qsmflow models``: the model zoo, one line per network, and the ISDU denoiser ablation."""

from __future__ import annotations

import argparse

HELP = "list the networks (model zoo): family, parameters, normalisation, loss, preset"

DESCRIPTION = """\
Every network qsmflow can train (`qsmflow train --config PRESET`) and run (`qsmflow invert
--method NAME --weights FILE`, the pipeline's inversion.methods): its family (model-based: the
dipole kernel inside the network, any B0 direction and voxel size; data-driven: field in, map
out, B0 along the third array axis), parameter count (all / trainable, and the count of the
authors' module in isdu_qsmnet_spec.md), input normalisation, default training loss and
training preset. Then the denoisers ISDU-QSMNet can use (`[model] denoiser = NAME` in a
training preset; the supplement's ablation), counted with their lambda and p. Counts are
computed from the modules themselves (built on torch's meta device: no memory, no weights).
--json prints the same as JSON.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)
    return p


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def run(args: argparse.Namespace) -> int:
    import json

    from ..models.registry import denoiser_rows, model_rows

    models, denoisers = model_rows(), denoiser_rows()
    if args.json:
        print(json.dumps({"models": models, "denoisers": denoisers}, indent=2))
        return 0
    header = ("model", "family", "parameters", "trainable", "paper", "loss", "preset")
    rows = [
        (
            r["name"],
            r["family"],
            _count(r["parameters"]),
            _count(r["trainable"]),
            _count(r["paper_parameters"]),
            r["loss"],
            r["preset"] or "-",
        )
        for r in models
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    right = {2, 3, 4}

    def line(cells: tuple) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(header))
    for row in rows:
        print(line(row))
    print()
    for r in models:
        print(f"{r['name']:<8} {r['summary']}")
        print(f"{'':<8} normalisation: {r['normalisation']}")
    print()
    print("ISDU-QSMNet denoisers (with lambda and p; [model] denoiser = NAME):")
    name_w = max(len(r["name"]) for r in denoisers)
    print(f"  {'denoiser':<{name_w}}  {'parameters':>12}  {'paper':>12}")
    for r in denoisers:
        print(
            f"  {r['name']:<{name_w}}  {_count(r['parameters']):>12}  "
            f"{_count(r['paper_parameters']):>12}"
        )
    return 0
