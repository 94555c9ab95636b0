"""Brain extraction (masking) from magnitude images; numerics only (see :mod:`.bet`)."""

from .bet import brain_mask, otsu_threshold

__all__ = ["brain_mask", "otsu_threshold"]
