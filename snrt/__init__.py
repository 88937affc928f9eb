"""snrt — Stitchable Neural RunTime: change which network runs between two frames.

Pipeline: Family -> VariantSpace -> exporters -> Bundle -> snrt-profile -> LookupTable ->
Runtime <- Controller <- Monitor.
"""

from .bundle import Bundle, VariantInfo
from .errors import (
    BundleError, InputError, MissingExtraError, ModelFileError, SnrtError, UnknownVariantError,
    UnsupportedModelError,
)
from .runtime import FrameRecord, Result, Runtime, SwitchEvent
from .version import __version__

__all__ = [
    "Bundle", "BundleError", "FrameRecord", "InputError", "MissingExtraError", "ModelFileError",
    "Result", "Runtime", "SnrtError", "SwitchEvent", "UnknownVariantError", "UnsupportedModelError",
    "VariantInfo", "__version__",
]
