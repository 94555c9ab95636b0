"""Brain extraction (masking) from magnitude images.

* :mod:`.brain_mask` - qsmflow's own threshold-and-morphology method on arrays (numerics only).
* :mod:`.files` - a brain mask from a magnitude *file*, with FSL BET or that method as backend.
"""

from .brain_mask import brain_mask, otsu_threshold

__all__ = ["brain_mask", "otsu_threshold"]
