"""The ``qsmflow`` command: one module per subcommand (``register(subparsers)`` and ``run(args)``).

A subcommand that runs one processing step only translates its options into the arguments of
the step function (:mod:`qsmflow.steps`): :func:`step_arguments`.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any


def step_arguments(
    step: Callable[..., Any], args: argparse.Namespace, **dests: str
) -> dict[str, Any]:
    """Keyword arguments of ``step`` taken from the parsed options ``args``.

    Every parameter of ``step`` is looked up in ``args`` under its own name, or under the
    argparse ``dest`` given as ``parameter=dest``; options left at None (not given) are left
    out, so the step's own defaults apply.
    """
    options = vars(args)
    found = {}
    for name in inspect.signature(step).parameters:
        value = options.get(dests.get(name, name))
        if value is not None:
            found[name] = value
    return found
