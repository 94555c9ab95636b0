"""Nipype workflow factories: wiring only. Every computation is a step function
(:mod:`qsmflow.steps`) run by a thin interface (:mod:`qsmflow.interfaces`).

* :func:`~.fieldmap.init_fieldmap_wf`: one multi-echo GRE run -> brain mask, field (Hz),
  local field (ppm) and its eroded mask.
* :func:`~.qsm.init_qsm_wf`: single-orientation dipole inversion(s).
* :func:`~.cosmos.init_cosmos_wf`: registration of every orientation to the reference and
  COSMOS.
* :func:`~.training.init_training_data_wf`: training pairs -> cubic patches.
* :func:`~.derivatives.init_derivatives_wf`: BIDS derivatives with sidecars.
* :func:`~.base.init_qsmflow_wf`: all of the above for every subject/session.
"""
