"""Nipype interfaces of qsmflow (thin :class:`~nipype.interfaces.base.SimpleInterface` wrappers).

Each module wraps one processing step: the interfaces read NIfTI files, call the numerics of
:mod:`qsmflow.physics`, :mod:`qsmflow.masking` or :mod:`qsmflow.registration` (or an FSL tool
through Nipype) and write their results into the node's working directory.
"""
