"""Training data and training of the networks.

* numpy only (no torch import, so patch sets can be written and inspected without it):
  :mod:`.patch_grid` (the patch grid, extraction, statistics) and :mod:`.patch_store` (the
  ``qsmflow-patches`` folder format);
* torch: :mod:`.dataset` and :mod:`.synthetic` (training pairs), :mod:`.losses`,
  :mod:`.config` (stage settings and presets), :mod:`.state` (checkpoint and RNG bookkeeping),
  :mod:`.trainer` (one stage), :mod:`.recipe` (a preset's data and stage chain), :mod:`.ddp`.
"""
