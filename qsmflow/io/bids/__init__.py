"""Find and check multi-echo GRE inputs in a BIDS dataset before any computation.

What is read
------------
Multi-echo GRE magnitude and phase per echo, BIDS suffix ``MEGRE``::

    sub-<s>/[ses-<t>/]anat/sub-<s>[_ses-<t>][_acq-<a>][_run-<r>]_echo-<n>_part-<mag|phase>_MEGRE.nii[.gz]

with JSON sidecars (BIDS inheritance is honoured, through pybids). Head orientations of one
subject/session are the distinct ``acq-``/``run-`` combinations; they are sorted naturally by
their label (``acq-ori2`` before ``acq-ori10``) and the **first one is the reference
orientation** (COSMOS registers the others to it). A ``MEGRE`` file without a ``part`` entity
counts as magnitude (the BIDS default); ``part-real``/``part-imag`` files are not used.
``derivatives/`` is not searched.

Units and conventions
---------------------
* ``EchoTime`` in **seconds** (BIDS); a value above 1 is taken for milliseconds and is an error.
  Echo times must be positive and increase with the echo index ``echo-1, echo-2, ...``
  (indices start at 1 without gaps); magnitude and phase of one echo must agree.
* ``MagneticFieldStrength`` in **tesla**, required in every sidecar.
* Phase in radians ([-pi, pi]) or Siemens 12-bit units ([-4096, 4095], or raw [0, 4095]); the
  data of every phase image is read and classified by
  :func:`qsmflow.physics.validation.phase_to_radians` (a sidecar ``"Units": "rad"`` forces the
  radians check). Degrees, unwrapped or arbitrarily scaled phase is an error naming the range.
* All images of one run (every echo, magnitude and phase) must be 3-D (a trailing singleton 4th
  axis is allowed) on one grid: same shape and affine (from the headers, within
  :data:`qsmflow.physics.validation.AFFINE_ATOL_MM`).

API
---
* :func:`discover` - the runs of each subject/session from the file names and sidecars only (no
  image is opened); raises one :class:`~qsmflow.errors.QSMInputError` listing every structural
  or sidecar problem.
* :func:`validate_dataset` - every check above, plus the pipeline's needs; returns
  ``(subjects_ok, problems)``: the :class:`SubjectSession` objects without any problem, and a
  list of :class:`Problem` (``subject``, ``session``, ``path``, ``message``; ``str(problem)`` is
  ``"<path>: <message>"``). A subject/session with any problem is left out of ``subjects_ok``
  as a whole; problems of the dataset itself (missing folder, no dataset_description.json) have
  ``subject=None``. Use it to process the valid subjects and report the rest.
* :func:`collect_inputs` - :func:`validate_dataset`, then one :class:`QSMInputError` listing all
  problems (one per line) if there is any; with ``skip_invalid=True`` the problems are logged
  and only the valid subjects are returned (an error only when none is valid).

Modules: ``records`` (what is found: :class:`GRERun`, :class:`SubjectSession`, :class:`Problem`),
``discover`` (pybids scanning and the functions above), ``checks`` (the rules above).

``pipeline`` is ``"qsm"`` (one orientation is enough), ``"cosmos"`` or ``"training-data"`` (at
least 2 head orientations per subject/session, all on one field strength; see
:data:`MIN_ORIENTATIONS`).
"""

from .checks import MAX_ECHO_TIME_S, MAX_FIELD_STRENGTH_T
from .discover import collect_inputs, discover, format_problems, validate_dataset
from .records import MIN_ORIENTATIONS, EchoFiles, GRERun, Problem, SubjectSession

__all__ = [
    "MAX_ECHO_TIME_S",
    "MAX_FIELD_STRENGTH_T",
    "MIN_ORIENTATIONS",
    "EchoFiles",
    "GRERun",
    "Problem",
    "SubjectSession",
    "collect_inputs",
    "discover",
    "format_problems",
    "validate_dataset",
]
