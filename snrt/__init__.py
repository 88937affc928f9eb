"""snrt — Stitchable Neural RunTime: change which network runs between two frames.

Pipeline: Family -> VariantSpace -> exporters -> Bundle -> snrt-profile -> LookupTable ->
Runtime <- Controller <- Monitor.
"""

from .bundle import Bundle, VariantInfo
from .errors import (
    BundleError,
    InputError,
    MissingExtraError,
    ModelFileError,
    SnrtError,
    UnknownVariantError,
    UnsupportedModelError,
)
from .runtime import FrameRecord, Result, Runtime, SwitchEvent
from .version import __version__


def default_bundle():
    """Path of the bundled default family (trained by tools/train_default_family.py)."""
    from pathlib import Path

    p = Path(__file__).parent / "data" / "default.snrt"
    if not (p / "manifest.json").is_file():
        raise BundleError(f"{p}: the default bundle is not installed; reinstall snrt or "
                          "regenerate it with tools/train_default_family.py")
    return p


def elastic_bundle():
    """Path of the bundled elastic family (the default family's `b` anchor made elastic,
    POA-style; trained by tools/train_elastic_family.py)."""
    from pathlib import Path

    p = Path(__file__).parent / "data" / "elastic.snrt"
    if not (p / "manifest.json").is_file():
        raise BundleError(f"{p}: the elastic bundle is not installed; reinstall snrt or "
                          "regenerate it with tools/train_elastic_family.py")
    return p


__all__ = [
    "Bundle", "BundleError", "FrameRecord", "InputError", "MissingExtraError", "ModelFileError",
    "Result", "Runtime", "SnrtError", "SwitchEvent", "UnknownVariantError", "UnsupportedModelError",
    "VariantInfo", "__version__", "default_bundle", "elastic_bundle",
]
