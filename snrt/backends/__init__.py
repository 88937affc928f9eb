"""Backends: the engines that run a bundle's variants. Every backend has the same small API:

    backend = create_backend("onnxruntime", bundle, threads=1)
    executor = backend.load(variant)      # make the variant ready (loaded and warmed up)
    logits = executor.run(batch)          # float32 [B, C, H, W] -> float32 [B, classes]
    backend.unload(variant); backend.close()

Backends are looked up by name; an unknown or uninstalled one fails with what is installed and
what to install.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from ..errors import MissingExtraError, SnrtError

# name -> (module, class, python package it needs, pip extra)
_BACKENDS = {
    "onnxruntime": ("snrt.backends.ort", "OrtBackend", "onnxruntime", None),
    "tflite": ("snrt.backends.tflite", "TFLiteBackend", "ai_edge_litert", "litert"),
}


class Executor(Protocol):
    def run(self, batch: np.ndarray) -> np.ndarray: ...


def available_backends() -> dict[str, bool]:
    """Backend name -> whether its engine is importable here."""
    out = {}
    for name, (_, _, pkg, _) in _BACKENDS.items():
        try:
            importlib.import_module(pkg)
            out[name] = True
        except ImportError:
            out[name] = False
    return out


def create_backend(name: str, bundle, **options):
    if name not in _BACKENDS:
        raise SnrtError(f"unknown backend '{name}'; known: {sorted(_BACKENDS)} "
                        f"(installed: {[n for n, ok in available_backends().items() if ok]})")
    module, cls, pkg, extra = _BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if (extra and pkg in str(e)) or "tflite" in str(e):
            raise MissingExtraError(f"the '{name}' backend", pkg, extra) from None
        raise
    return getattr(mod, cls)(bundle, **options)
