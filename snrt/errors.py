"""Errors snrt raises. Each says what happened and what to do about it."""

from __future__ import annotations


class SnrtError(Exception):
    """Base class of every error snrt raises on purpose."""


class ModelFileError(SnrtError, ValueError):
    """A weights or checkpoint file is unreadable, corrupt, or not what snrt expects."""


class TaskFileError(ModelFileError):
    """A task (tuner) file that does not follow the documented format (snrt.tuners)."""


class BackboneMismatchError(TaskFileError):
    """A task file trained on another backbone than the bundle's (its backbone_sha256 differs)."""


class UnsupportedModelError(SnrtError, ValueError):
    """The weights describe an architecture snrt cannot export (yet)."""


class BundleError(SnrtError):
    """A bundle directory is missing, incomplete, tampered with or of an unknown schema."""


class InputError(SnrtError, ValueError):
    """An input to `Runtime.infer` (image, array, batch) is not usable."""


class UnknownVariantError(SnrtError, KeyError):
    """A variant id or cfg_id that the bundle does not contain."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MissingExtraError(SnrtError, ImportError):
    """An optional dependency is needed for this feature and is not installed."""

    def __init__(self, feature: str, package: str, extra: str):
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed; "
            f"install it with: pip install 'snrt[{extra}]'"
        )
        self.package = package
        self.extra = extra


class SubnetConfigError(UnknownVariantError, ValueError):
    """A subnet id or config outside its space; the message names the offending position and
    the allowed values."""
